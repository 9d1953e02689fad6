"""How far results lag behind a slow input: first-result latency and lag.

    python benchmarks/slow_input.py [--items 40] [--every 0.05]
    python benchmarks/slow_input.py --builds old=/tmp/site-a,new=/tmp/site-b
    python benchmarks/slow_input.py --pause 1 --items 10 --builds ...

A generator yields one item every `--every` seconds (sleeping before each);
the identity function is mapped over it on several option paths, and
multiprocessing.Pool.imap (chunksize 1) is the reference.  Printed per path:
the time to the first result, the largest lag of a result behind the moment
its item was yielded (seconds), and the largest read-ahead (items the input
had yielded beyond the result being delivered).  With --builds, each path
runs once per parmapper build (PYTHONPATH directories) in fresh processes,
side by side.  With --pause S, the input yields five items at once, then
blocks S seconds before the rest: the lag of those five shows whether
results wait for a blocked next().
"""
import argparse
import json
import os
import subprocess
import sys
import time

PATHS = {
    "N=2": dict(N=2),
    "N=2 chunksize=1": dict(N=2, chunksize=1),
    "N=2 unordered": dict(N=2, ordered=False),
    "N=2 Nt=2": dict(N=2, Nt=2),
    "N=1 Nt=2": dict(N=1, Nt=2),
    "executor": "executor",
    "Pool.imap": None,
}


def ident(x):
    return x


def measure(path, items, every, pause=None):
    """Runs one path in this process; returns (first, max_lag, max_ahead)."""
    yielded = {}

    def slow():
        for i in range(items):
            if pause is None:
                time.sleep(every)
            elif i == 5:
                time.sleep(pause)  # five items at once, then a pause
            yielded[i] = time.monotonic()
            yield i

    t0 = time.monotonic()
    first = None
    lag = ahead = 0.0
    opts = PATHS[path]
    if opts is None:
        import multiprocessing
        pool = multiprocessing.get_context("fork").Pool(2)
        results = pool.imap(ident, slow(), chunksize=1)
    elif opts == "executor":
        import concurrent.futures
        import parmapper
        pool = concurrent.futures.ThreadPoolExecutor(2)
        results = parmapper.parmap(ident, slow(), executor=pool, chunksize=1)
    else:
        import parmapper
        pool = None
        results = parmapper.parmap(ident, slow(), **opts)
    for r in results:
        now = time.monotonic()
        if first is None:
            first = now - t0
        lag = max(lag, now - yielded[r])
        ahead = max(ahead, len(yielded) - 1 - r)
    if opts == "executor":
        pool.shutdown()
    elif pool is not None:
        pool.close()
        pool.join()
    return first, lag, ahead


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=40)
    ap.add_argument("--every", type=float, default=0.05, help="seconds")
    ap.add_argument("--pause", type=float, default=None,
                    help="seconds: five items, then one pause")
    ap.add_argument("--builds", default="", help="name=PYTHONPATH,...")
    ap.add_argument("--child", default="", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(measure(a.child, a.items, a.every, a.pause)))
        return
    builds = [b.split("=", 1) for b in a.builds.split(",") if b] or [("this", "")]
    if a.pause is None:
        print("input: one item every {} s, {} items".format(a.every, a.items))
    else:
        print("input: 5 items, a pause of {} s, then {} more".format(
            a.pause, a.items - 5))
    print("{:<18} {:<10} {:>10} {:>10} {:>10}".format(
        "path", "build", "first (s)", "lag (s)", "ahead"))
    for path in PATHS:
        for name, pp in (builds if PATHS[path] is not None else builds[:1]):
            env = dict(os.environ)
            if pp:
                env["PYTHONPATH"] = pp
            out = subprocess.run(
                [sys.executable, __file__, "--child", path, "--items",
                 str(a.items), "--every", str(a.every)]
                + ([] if a.pause is None else ["--pause", str(a.pause)]),
                env=env, capture_output=True, text=True, check=True).stdout
            first, lag, ahead = json.loads(out)
            print("{:<18} {:<10} {:>10.2f} {:>10.2f} {:>10d}".format(
                path, name if PATHS[path] is not None else "-", first, lag,
                int(ahead)))


if __name__ == "__main__":
    main()
