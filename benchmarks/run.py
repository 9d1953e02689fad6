#!/usr/bin/env python3
"""parmapper against its peers, side by side, in one run.

    python benchmarks/run.py            # full run (~10 min on 2 cores)
    python benchmarks/run.py --quick    # smoke run: small sizes, 1 repetition
    python benchmarks/run.py --only 3,4 # some workloads only

Peers: serial ``map``, ``multiprocessing.Pool`` (``map``, and ``imap`` with
chunksize=1), ``concurrent.futures.ProcessPoolExecutor.map``, joblib
``Parallel`` (loky backend) and mpire ``WorkerPool.map``; workload 7 compares
parmapper's threads with ``concurrent.futures.ThreadPoolExecutor``.

This script installs nothing: it needs parmapper and the ``bench`` extra
(``pip install ".[bench]"``: joblib, mpire, numpy, matplotlib).  A peer
whose library is missing is reported as n/a.

Every measurement runs in a fresh subprocess (see _child.py) under a
watchdog: a peer that hangs or is too slow is killed with its workers and
reported as n/a with the reason.  Pool creation is inside the clock for every
peer.  Each measurement is repeated (the peers alternate within a repetition
so that drift affects all of them alike) and the median is reported.

Writes docs/benchmarks.md and docs/benchmarks.png (a --quick run writes to
the temporary directory unless --md/--png are given).
"""
import argparse
import json
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _funcs  # noqa: E402
import _report  # noqa: E402

CHILD = os.path.join(HERE, "_child.py")

# The section written by benchmarks/c/run.sh (the C benchmark of the jobs
# API), kept when this script rewrites the file.
C_BENCH_BEGIN = "<!-- c-bench:begin -->"
C_BENCH_END = "<!-- c-bench:end -->"
C_BENCH_HEADING = "## The C library (jobs API)"

WORKLOADS = {
    1: "Per-item overhead (chunksize=1)",
    2: "Default settings, trivial function",
    3: "Start-up: 4 items end to end",
    4: "CPU-bound tasks, default settings",
    5: "Large inputs and results (8 MB)",
    6: "Slow consumer of 1 MB results: peak RSS of the caller",
    7: "Threads with a GIL-releasing function",
}
SHORT = {1: "chunksize=1", 2: "defaults, 10^6", 3: "start-up", 4: "CPU-bound",
         5: "8 MB items", 6: "slow consumer", 7: "threads"}


def std_peers(cs, stream=False):
    """The process-pool peers; cs=1 for workload 1, None (defaults) else."""
    one = cs == 1
    return [
        ("parmapper", "parmapper", {},
         "chunksize=1" if one else "defaults (adaptive chunksize)"),
        ("serial map", "serial", {}, "built-in map"),
        ("Pool.map", "pool_map", {},
         "chunksize=1" if one else "default chunksize"),
        ("Pool.imap", "pool_imap", {}, "chunksize=1"),
        ("ProcessPoolExecutor.map", "ppe", {},
         "chunksize=1" if one else "default (chunksize=1)"),
        ("joblib", "joblib", {},
         "loky, batch_size=1" if one else
         ("loky, return_as='generator'" if stream else "loky, batch_size='auto'")),
        ("mpire", "mpire", {},
         "WorkerPool.map, chunk_size=1" if one else
         ("WorkerPool.imap" if stream else "WorkerPool.map, default chunk_size")),
    ]


def thread_peers(N):
    t = 8
    return [
        ("parmapper N=1 Nt=8", "parmapper", {"N": 1, "Nt": 8}, "one process, 8 threads"),
        ("parmapper N={} Nt={}".format(N, t // N), "parmapper", {"N": N, "Nt": t // N},
         "{} processes x {} threads".format(N, t // N)),
        ("ThreadPoolExecutor", "tpe", {"threads": t}, "max_workers=8"),
        ("serial map", "serial", {}, "built-in map"),
    ]


def build_cases(quick, N):
    q = quick
    n1 = 10_000 if q else 100_000
    n2 = 100_000 if q else 1_000_000
    n4a = 100 if q else 1000
    n4b = 10_000 if q else 100_000
    n5 = 8 if q else 64
    n6 = 100 if q else 500
    n7 = 400 if q else 2000
    big = _funcs.LARGE
    cases = [
        dict(w=1, id="w1", row="increment, {:,} items".format(n1), kind="inc", n=n1,
             cs=1, peers=std_peers(1), reps=3, timeout=120, metric="items"),
        dict(w=2, id="w2", row="increment, {:,} items".format(n2), kind="inc", n=n2,
             cs=None, peers=std_peers(None), reps=3, timeout=60, metric="items",
             speedup=True),
        dict(w=3, id="w3", row="increment, 4 items", kind="startup", n=4,
             cs=None, peers=std_peers(None), reps=7, timeout=60, metric="time"),
        dict(w=4, id="w4a", row="1 ms tasks x {:,}".format(n4a), kind="busy", n=n4a,
             cs=None, target=1e-3, peers=std_peers(None), reps=5, timeout=90,
             metric="items", speedup=True),
        dict(w=4, id="w4b", row="20 µs tasks x {:,}".format(n4b), kind="busy", n=n4b,
             cs=None, target=20e-6, peers=std_peers(None), reps=3, timeout=90,
             metric="items", speedup=True),
    ]
    for kind, row in [("bytes_in", "8 MB bytes in (list)"),
                      ("bytes_in_gen", "8 MB bytes in (generator)"),
                      ("bytes_out", "8 MB bytes out"),
                      ("array_in", "8 MB ndarray in (list)"),
                      ("array_in_gen", "8 MB ndarray in (generator)"),
                      ("array_out", "8 MB ndarray out")]:
        cases.append(dict(w=5, id="w5_" + kind, row="{} x {}".format(row, n5),
                          kind=kind, n=n5, cs=None, peers=std_peers(None),
                          reps=2, timeout=90, metric="bytes", bytes=n5 * big))
    cases += [
        dict(w=6, id="w6", row="{} x 1 MB results, 1 ms per result".format(n6),
             kind="slow_consumer", n=n6, cs=None, stream=True,
             peers=std_peers(None, stream=True), reps=2, timeout=90, metric="rss"),
        dict(w=7, id="w7", row="time.sleep(0.001) x {:,}".format(n7), kind="sleep",
             n=n7, cs=None, peers=thread_peers(N), reps=3, timeout=60,
             metric="items", speedup=True),
    ]
    return cases


# --- calibration --------------------------------------------------------------

def calibrate(target, quick):
    """Iterations of _funcs.busy that take `target` seconds on this machine.

    Each estimate is the fastest of a few batches of calls (the least
    disturbed by other work on a shared machine); the size is refined until
    an estimate at the chosen size lands within 5% of the target.  Returns
    (iterations, measured seconds per call)."""
    def per_call(loops):
        reps = max(3, min(5000, int(0.05 / target)))
        samples = []
        for _ in range(3 if quick else 7):
            t0 = time.perf_counter()
            for _ in range(reps):
                _funcs.busy(loops)
            samples.append((time.perf_counter() - t0) / reps)
        return min(samples)
    loops, t = 1000, None
    for _ in range(12):
        t = per_call(loops)
        if abs(t / target - 1) <= 0.05:
            break
        loops = max(1, round(loops * target / t))
    return loops, t


# --- one measurement ------------------------------------------------------------

def measure(case, peer, N, timeout):
    label, key, params, _ = peer
    spec = {"kind": case["kind"], "peer": key, "n": case["n"], "N": N,
            "cs": case["cs"], "params": params, "stream": case.get("stream", False),
            "loops": case.get("loops")}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, CHILD, json.dumps(spec)],
                                stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                cwd=HERE, start_new_session=True)
        timed_out = False
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        # the child leads its own process group: end it and any worker it
        # left behind (a hung pool, loky's reusable workers...)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        proc.wait()
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if timed_out:
        return {"na": "timed out after {:g} s".format(timeout), "timeout": timeout}
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
        why = tail[-1] if tail else "exit code {}".format(proc.returncode)
        if "ModuleNotFoundError" in why or "ImportError" in why:
            why = "not installed ({})".format(why.split(":", 1)[-1].strip())
        return {"na": why[:200]}
    res = json.loads(lines[-1])
    if "error" in res:
        return {"na": res["error"], "time": res["time"]}
    return res


def keep_c_bench(text, md_path):
    """text with the C-bench section of the old md_path (its markers, what is
    between them and the heading just above) appended, when the old file has
    one and text does not."""
    try:
        with open(md_path) as f:
            old = f.read()
    except OSError:
        return text
    m = re.search(r"(^## [^\n]*\n\s*)?" + re.escape(C_BENCH_BEGIN) + r".*?" +
                  re.escape(C_BENCH_END), old, re.S | re.M)
    if not m or C_BENCH_BEGIN in text:
        return text
    block = m.group(0) if m.group(1) else C_BENCH_HEADING + "\n\n" + m.group(0)
    return text.rstrip("\n") + "\n\n" + block + "\n"


def compile_bytecode():
    """Writes the .pyc files of the measured packages that lack them, as
    pip does at install: run from a source tree with PYTHONDONTWRITEBYTECODE
    set, every child would compile parmapper anew and its import time would
    count the compiler (~20 ms here) where a user's does not."""
    import compileall
    import importlib.util
    for name in ("parmapper", "joblib", "mpire"):
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            for where in spec.submodule_search_locations:
                compileall.compile_dir(where, quiet=1)


def parse_only(text):
    """--only: workload numbers (1,4) or words matched against the names."""
    sel = set()
    for part in text.split(","):
        part = part.strip().lower()
        if not part:
            continue
        if part.isdigit():
            sel.add(int(part))
            continue
        hits = {w for w, name in WORKLOADS.items()
                if part in name.lower() or part in SHORT[w].lower()}
        if not hits:
            raise SystemExit("--only: {!r} matches no workload; workloads: {}".format(
                part, "; ".join("{} {}".format(w, n) for w, n in WORKLOADS.items())))
        sel |= hits
    return sel


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="Benchmark parmapper against serial map, multiprocessing.Pool, "
                    "ProcessPoolExecutor, joblib and mpire.",
        epilog="Workloads: " + "; ".join("{} {}".format(w, n) for w, n in WORKLOADS.items()))
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: small sizes, 1 repetition, short timeouts")
    ap.add_argument("--only", metavar="LIST",
                    help="comma-separated workload numbers or name fragments, "
                         "e.g. '1,4' or 'start-up,threads'")
    ap.add_argument("--peers", metavar="LIST",
                    help="comma-separated peer name fragments to run besides "
                         "parmapper (e.g. 'pool,joblib')")
    ap.add_argument("--reps", type=int, help="repetitions (default: 3-5 per workload, 1 with --quick)")
    ap.add_argument("--budget", type=float, default=20.0,
                    help="seconds of measured time per peer and workload case beyond "
                         "which fewer repetitions are made (default 20)")
    ap.add_argument("-N", type=int, default=os.cpu_count(),
                    help="worker processes for every peer (default os.cpu_count())")
    ap.add_argument("--md", help="markdown output (default docs/benchmarks.md)")
    ap.add_argument("--png", help="chart output (default docs/benchmarks.png)")
    ap.add_argument("--json", help="also dump the raw measurements to this file")
    ap.add_argument("--note", help="a line added to the machine section "
                                   "(e.g. which build of parmapper was measured)")
    args = ap.parse_args(argv)

    command = " ".join(["python", "benchmarks/run.py"] + [shlex.quote(a) for a in
                                                          (sys.argv[1:] if argv is None else argv)])
    if args.quick:
        tmp = tempfile.gettempdir()
        md = args.md or os.path.join(tmp, "parmapper-benchmarks-quick.md")
        png = args.png or os.path.join(tmp, "parmapper-benchmarks-quick.png")
    else:
        md = args.md or os.path.join(ROOT, "docs", "benchmarks.md")
        png = args.png or os.path.join(ROOT, "docs", "benchmarks.png")

    N = args.N
    selected = parse_only(args.only) if args.only else set(WORKLOADS)
    cases = [c for c in build_cases(args.quick, N) if c["w"] in selected]
    if args.peers:
        frags = [f.strip().lower() for f in args.peers.split(",") if f.strip()]
        for c in cases:
            c["peers"] = [p for i, p in enumerate(c["peers"])
                          if p[1] == "parmapper" or any(f in p[0].lower() or f in p[1] for f in frags)]

    compile_bytecode()
    started = time.time()
    load_start = os.getloadavg()
    repo = _report.repo_state()
    calib = {}
    for c in cases:
        if "target" in c:
            if c["target"] not in calib:
                calib[c["target"]] = calibrate(c["target"], args.quick)
            c["loops"], c["calibrated"] = calib[c["target"]]
            log("calibrated busy loop: {} iterations = {:.1f} us".format(
                c["loops"], c["calibrated"] * 1e6))

    for c in cases:
        R = 1 if args.quick else (args.reps or c["reps"])
        timeout = min(c["timeout"], 30) if args.quick else c["timeout"]
        c["timeout_used"] = timeout
        c["reps_used"] = R
        c["results"] = {p[0]: [] for p in c["peers"]}
        c["na"] = {}
        planned = {p[0]: R for p in c["peers"]}
        for rep in range(R):
            k = rep % len(c["peers"])
            order = c["peers"][k:] + c["peers"][:k]
            if rep % 2:
                order = order[::-1]
            for peer in order:
                label = peer[0]
                if rep >= planned[label] or label in c["na"]:
                    continue
                m = measure(c, peer, N, timeout)
                if "na" in m:
                    c["na"][label] = m
                    log("[{}] {:<26} n/a: {}".format(c["id"], label, m["na"]))
                    continue
                c["results"][label].append(m)
                if rep == 0 and m["time"] > 0:
                    planned[label] = max(1, min(R, int(args.budget // m["time"])))
                log("[{}] rep {}/{} {:<26} {:9.4f} s{}".format(
                    c["id"], rep + 1, planned[label], label, m["time"],
                    "  peak {:.0f} MB".format(m["peak_kb"] / 1024)
                    if c["metric"] == "rss" else ""))

    info = _report.machine_info(N, started, load_start, calib, args.note, repo)
    info["wall"] = time.time() - started
    info["command"] = command
    info["env_prefix"] = "PYTHONPATH={} ".format(shlex.quote(os.environ["PYTHONPATH"])) \
        if os.environ.get("PYTHONPATH") else ""
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "cases": cases}, f, indent=1, default=str)
    text = _report.markdown(cases, info, WORKLOADS, quick=args.quick, md_path=md,
                            png_rel=os.path.relpath(png, os.path.dirname(os.path.abspath(md))))
    text = keep_c_bench(text, md)
    os.makedirs(os.path.dirname(os.path.abspath(md)), exist_ok=True)
    with open(md, "w") as f:
        f.write(text)
    chart_err = _report.chart(cases, WORKLOADS, png, info)
    log("wrote {}{}".format(md, "" if chart_err else " and " + png))
    if chart_err:
        log("no chart: " + chart_err)
    log("total {:.0f} s".format(info["wall"]))


def log(msg):
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
