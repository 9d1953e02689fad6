"""``python -m parmapper``: a short demonstration of parmapper's main job.

A CPU-bound function (a closure: it could not be pickled, and need not be)
over a few thousand items, first serially then in parallel, with progress
bars; then the speed-up and the per-item overhead of the engine.
"""
import argparse
import math
import os
import sys
import time

from . import CPU_COUNT, __version__, parmap


def _args(argv):
    p = argparse.ArgumentParser(
        prog="python -m parmapper",
        description="Demonstrate parmapper: a CPU-bound function over many "
                    "items, serial then parallel, with the speed-up and the "
                    "per-item overhead.")
    p.add_argument("-N", type=int, default=CPU_COUNT,
                   help="worker processes (default: CPU_COUNT = %(default)s)")
    p.add_argument("--items", type=int, default=3000,
                   help="number of items (default: %(default)s)")
    p.add_argument("--size", type=int, default=2000,
                   help="task size: sin() calls per item (default: "
                        "%(default)s)")
    p.add_argument("--overhead-items", type=int, default=100_000,
                   help="items of a trivial function for the overhead "
                        "measurement (default: %(default)s; 0 skips it)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars")
    p.add_argument("--version", action="version",
                   version="parmapper " + __version__)
    a = p.parse_args(argv)
    for name in ("N", "items", "size"):
        if getattr(a, name) < 1:
            p.error("{} must be >= 1".format(name if name == "N" else
                                               "--" + name))
    if a.overhead_items < 0:
        p.error("--overhead-items must be >= 0")
    return a


def main(argv=None):
    """Runs the demonstration; returns the process exit status."""
    a = _args(argv)
    scale = 1.0001

    def work(x):  # a closure over `scale` and `a`
        s = 0.0
        for k in range(a.size):
            s += math.sin(x * scale + k)
        return s

    items = range(a.items)
    print("parmapper {}: {} items of {} sin() calls each, N={} "
          "processes".format(__version__, a.items, a.size, a.N))
    print("CPUs      {} usable by this process (CPU_COUNT; the host has {})"
          .format(CPU_COUNT, os.cpu_count()))
    prog = (lambda label: False) if a.no_progress else (lambda label: label)

    # Warm-up, outside the timed region: the first progress bar imports
    # tqdm (tens of ms, which would be charged to the serial run and make
    # the speed-up look better than it is) and the first calls of `work`
    # warm Python's caches.
    if not a.no_progress:
        from . import _progress
        getattr(_progress, "tqdm")
    for x in range(min(3, a.items)):
        work(x)

    t0 = time.perf_counter()
    serial = list(parmap(work, items, N=1, progress=prog("serial  ")))
    t1 = time.perf_counter()
    par = list(parmap(work, items, N=a.N, progress=prog("parallel")))
    t2 = time.perf_counter()
    if par != serial:  # pragma: no cover - would be a bug
        print("error: the parallel results differ from the serial ones",
              file=sys.stderr)
        return 1
    ts, tp = t1 - t0, t2 - t1
    print("serial    {:8.3f} s   (wall time, one process)".format(ts))
    print("parallel  {:8.3f} s   speed-up x{:.2f} on {} processes "
          "(ideal x{})".format(tp, ts / tp, a.N, min(a.N, CPU_COUNT)))
    print("          (speed-up: serial time / parallel time, both after the "
          "same warm-up)")

    n = a.overhead_items
    if n:
        def inc(x):
            return x + 1
        ref = list(range(1, n + 1))
        t0 = time.perf_counter()
        loop = [inc(x) for x in range(n)]
        t1 = time.perf_counter()
        out = list(parmap(inc, range(n), N=a.N, chunksize=1))
        t2 = time.perf_counter()
        if out != ref or loop != ref:  # pragma: no cover
            print("error: wrong results", file=sys.stderr)
            return 1
        per_loop, per_map = (t1 - t0) / n, (t2 - t1) / n
        print("overhead  {:8.2f} us per item at chunksize=1 ({:,.0f} items/s "
              "on {} processes)".format((per_map - per_loop) * 1e6,
                                        1 / per_map, a.N))
        print("          ({:,} items of x + 1: {:.2f} us each through parmap "
              "with chunksize=1, minus {:.3f} us each in a serial loop)".format(
                  n, per_map * 1e6, per_loop * 1e6))
    return 0


if __name__ == "__main__":
    sys.exit(main())
