"""A short demonstration of parmapper's main job: a CPU-bound function, with
a lambda and a closure, over a few thousand items, serial then parallel."""
import math
import time

import parmapper


def main():
    scale = 1.0001

    def work(x):  # a closure: it could not be pickled, parmapper does not need to
        s = 0.0
        for k in range(2000):
            s += math.sin(x * scale + k)
        return s

    items = range(4000)
    t0 = time.perf_counter()
    serial = list(map(work, items))
    t1 = time.perf_counter()
    par = list(parmapper.parmap(work, items, progress="parallel"))
    t2 = time.perf_counter()
    assert par == serial
    print("items: {}   processes: {}".format(len(items), parmapper.CPU_COUNT))
    print("serial   {:.3f} s".format(t1 - t0))
    print("parmap   {:.3f} s   speed-up x{:.2f}".format(t2 - t1, (t1 - t0) / (t2 - t1)))

    n = 100_000
    t0 = time.perf_counter()
    out = list(parmapper.parmap(lambda x: x + 1, range(n)))
    t1 = time.perf_counter()
    assert out == list(range(1, n + 1))
    print("per-item overhead (lambda x: x + 1, chunksize=1): {:.2f} us/item, {:,.0f} items/s".format(
        (t1 - t0) / n * 1e6, n / (t1 - t0)))


if __name__ == "__main__":
    main()
