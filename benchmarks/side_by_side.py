"""Builds of parmapper against each other and the serial map, one run each in turn.

    python benchmarks/side_by_side.py --builds old=/tmp/a/python,new=/tmp/b/python
    python benchmarks/side_by_side.py --items 1000000 --reps 15 --peers serial,pool

Each run is a fresh Python process that makes ``list(range(items))``, then
times ``list(parmap(inc, items, N=2))`` (or the serial map, or
``multiprocessing.Pool(2).map`` with the pool's creation and shutdown), as
workload 2 of run.py does.  The builds (PYTHONPATH directories) and peers
take turns, so all see the same machine state; the medians and their ratio
to the last column are printed, with the caller's and the workers' CPU time
(getrusage of the caller and of its reaped children) and minor page faults.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r'''
import json, resource, sys, time
sys.path.insert(0, %(bench)r)
import _funcs
n, peer = %(n)d, %(peer)r
items = list(range(n))
if peer == "pool":
    from multiprocessing import Pool
elif peer != "serial":
    import parmapper
def usage():
    s = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime,
            s.ru_minflt, c.ru_minflt)
u0 = usage()
t0 = time.perf_counter()
if peer == "serial":
    r = list(map(_funcs.inc, items))
elif peer == "pool":
    p = Pool(2)
    r = p.map(_funcs.inc, items)
    p.close()
    p.join()
else:
    r = list(parmapper.parmap(_funcs.inc, items, N=2))
t = time.perf_counter() - t0
u1 = usage()
assert len(r) == n and r[0] == 1 and r[-1] == n
print(json.dumps([t * 1e3] + [(b - a) * (1e3 if i < 2 else 1)
                              for i, (a, b) in enumerate(zip(u0, u1))]))
'''


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=1000000)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--builds", default="",
                    help="name=PYTHONPATH,... (parmapper builds to compare)")
    ap.add_argument("--peers", default="serial",
                    help="others besides the builds: serial, pool (the last "
                         "one is the reference of the ratios)")
    a = ap.parse_args()
    bench = os.path.dirname(os.path.abspath(__file__))
    runs = [b.split("=", 1) for b in a.builds.split(",") if b]
    runs += [(p, None) for p in a.peers.split(",") if p]
    got = {name: [] for name, _ in runs}
    for _ in range(a.reps):
        for name, path in runs:
            env = dict(os.environ)
            if path:
                env["PYTHONPATH"] = path
            code = CHILD % {"bench": bench, "n": a.items,
                            "peer": "parmapper" if path else name}
            out = subprocess.run([sys.executable, "-c", code], env=env,
                                 capture_output=True, text=True, check=True)
            got[name].append(json.loads(out.stdout))
    ref = statistics.median(v[0] for v in got[runs[-1][0]])
    print("{} items, {} runs each, medians (fresh process per run, in turn)"
          .format(a.items, a.reps))
    print("| run | time | ÷ {} | caller CPU | workers CPU | caller faults "
          "| workers faults |".format(runs[-1][0]))
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, _ in runs:
        cols = [statistics.median(c) for c in zip(*got[name])]
        print("| {} | {:.1f} ms | {:.2f} | {:.1f} ms | {:.1f} ms | {:,.0f} | "
              "{:,.0f} |".format(name, cols[0], cols[0] / ref, *cols[1:]))


if __name__ == "__main__":
    main()
