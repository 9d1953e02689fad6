"""Where the CPU of one parmapper call goes: the caller's and the workers'.

    python benchmarks/cpu_split.py bytes_out inc:1000000 inc:100000:1 --reps 5
    python benchmarks/cpu_split.py bytes_out --builds old=/tmp/site-a,new=/tmp/site-b

Each case is a workload kind of run.py (see _child.build: inc, sleep,
bytes_in, bytes_in_gen, array_in, array_in_gen, bytes_out, array_out,
slow_consumer, inc_gen, dict_gen), with an item count after a colon (default 64) and a
chunksize after another (default: parmapper's, adaptive), mapped with N=2.  Every measurement runs in a fresh
process (after the imports and the inputs are built) and prints the wall
time of the call, then user and system CPU time and minor page faults of
the caller (getrusage RUSAGE_SELF) and of its workers together
(RUSAGE_CHILDREN: they are reaped by the end of the call).  With --builds,
the repetitions alternate between parmapper builds (PYTHONPATH
directories, e.g. from `pip install --target`), so the comparison sees the
same machine.  Medians are printed per case and build.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def child(kind, n, N, cs):
    sys.path.insert(0, HERE)
    import _child
    import parmapper
    fn, items, check = _child.build({"kind": kind, "n": n, "loops": None})
    s0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    res = list(parmapper.parmap(fn, items, N=N, chunksize=cs))
    wall = time.perf_counter() - t0
    s1 = resource.getrusage(resource.RUSAGE_SELF)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    err = check(res)
    if err:
        raise SystemExit("wrong results: " + err)
    print(json.dumps({
        "wall": wall * 1e3,
        "parent_user": (s1.ru_utime - s0.ru_utime) * 1e3,
        "parent_sys": (s1.ru_stime - s0.ru_stime) * 1e3,
        "parent_faults": s1.ru_minflt - s0.ru_minflt,
        "workers_user": c1.ru_utime * 1e3,
        "workers_sys": c1.ru_stime * 1e3,
        "workers_faults": c1.ru_minflt,
    }))


COLS = ["wall", "parent_user", "parent_sys", "parent_faults",
        "workers_user", "workers_sys", "workers_faults"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cases", nargs="*", help="kind[:items[:chunksize]]")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("-N", type=int, default=2)
    ap.add_argument("--builds", default=None,
                    help="name=PYTHONPATH,... (default: the parmapper importable here)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        cs = None if a.child[2] == "-" else int(a.child[2])
        return child(a.child[0], int(a.child[1]), a.N, cs)
    if not a.cases:
        ap.error("name at least one case")
    builds = [("installed", None)]
    if a.builds:
        builds = [tuple(b.split("=", 1)) for b in a.builds.split(",")]
    print("| case | build | " + " | ".join(c.replace("_", " ") for c in COLS) + " |")
    print("|---|---|" + "---:|" * len(COLS))
    for case in a.cases:
        kind, _, rest = case.partition(":")
        n, _, cs = rest.partition(":")
        n = int(n or 64)
        rows = {name: [] for name, _ in builds}
        for _ in range(a.reps):
            for name, path in builds:
                env = dict(os.environ)
                if path:
                    env["PYTHONPATH"] = path
                out = subprocess.run(
                    [sys.executable, os.path.abspath(__file__), "-N", str(a.N),
                     "--child", kind, str(n), cs or "-"], env=env, cwd=HERE,
                    capture_output=True, text=True, check=True).stdout
                rows[name].append(json.loads(out.strip().splitlines()[-1]))
        for name, _ in builds:
            med = [statistics.median(r[c] for r in rows[name]) for c in COLS]
            cells = ["{:.0f}".format(v) for v in med]
            print("| {} | {} | {} |".format(case, name, " | ".join(cells)))


if __name__ == "__main__":
    main()
