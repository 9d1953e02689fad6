"""When each result of a small map arrives, and when the map ends.

    python benchmarks/first_results.py --builds old=/tmp/a/python,new=/tmp/b/python
    python benchmarks/first_results.py --items 4 --reps 5

Each repetition runs in a fresh Python process (the first map of the
process, as in run.py's start-up workload): ``parmap(inc, range(items),
N=2)`` consumed with a for loop, printing the milliseconds from the call to
each result and to the end of the iteration (the workers reaped).  With
--builds the processes alternate between parmapper builds (PYTHONPATH
directories), so builds are compared on the same machine state.
"""
import argparse
import os
import subprocess
import sys

CHILD = r'''
import time, parmapper
def inc(x): return x + 1
t0 = time.perf_counter()
ts = [time.perf_counter() for r in parmapper.parmap(inc, range(%d), N=2)]
te = time.perf_counter()
print(" ".join("%%.2f" %% ((t - t0) * 1e3) for t in ts), "end %%.2f" %% ((te - t0) * 1e3))
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=4)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--builds", default=None,
                    help="name=PYTHONPATH,... (default: the installed one)")
    a = ap.parse_args()
    builds = [b.split("=", 1) for b in a.builds.split(",")] if a.builds \
        else [("installed", None)]
    for _ in range(a.reps):
        for name, path in builds:
            env = dict(os.environ)
            if path:
                env["PYTHONPATH"] = path
            out = subprocess.run([sys.executable, "-c", CHILD % a.items],
                                 env=env, capture_output=True, text=True,
                                 check=True).stdout.strip()
            print("{}: {}".format(name, out), flush=True)


if __name__ == "__main__":
    main()
