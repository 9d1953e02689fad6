"""Start-up and teardown of a map against the caller's resident memory.

    python benchmarks/startup.py                       # 20M,200M,1G,4G; ~5 min
    python benchmarks/startup.py --sizes 20M,1G --reps 9
    python benchmarks/startup.py --builds base=/tmp/site-a,new=/tmp/site-b

Every measurement runs in a fresh Python process that first builds a heap of
Python objects (a list of records ``(int, str, [float])``, grown until the
process's resident memory reaches the size asked for) or, for the ``ndarray``
rows, one float64 array of that size, then times, repetition after
repetition (the order of the peers rotated each time):

- ``os.fork()`` as seen by the parent, and the exit of that child
  (``os._exit(0)`` at once) until ``waitpid`` returns: the raw cost of one
  fork and one teardown of an address space of that size;
- a 4-item ``parmapper.parmap(f, range(4), N=...)`` consumed with ``next``:
  the whole call, the time to the first result, and *teardown*, from the
  last result to the ``StopIteration`` (the workers are stopped and reaped);
- the same 4-item map with ``multiprocessing.Pool`` (fork context): create,
  ``map``, ``close`` + ``join``;
- for each call, the parent's CPU time and minor page faults
  (``getrusage(RUSAGE_SELF)``) and those of the workers, reaped during the
  call (``RUSAGE_CHILDREN``).

``f`` is ``inc(x) = x + 1``, or ``gc_first``, which runs ``gc.collect()`` on
its first call in each worker: a full collection writes to the header of
every tracked object, so its page faults show the copy-on-write that
``gc.freeze()`` avoids.  Each size runs in two processes: one that leaves
the heap alone and one that calls ``gc.freeze()`` after building it.

``--trivial`` adds the map of 10^6 trivial items (``inc`` over a list, default
settings) against serial ``map`` and ``Pool.map``, in a fresh process holding
that list, with the same first-result and teardown split.

``--builds`` runs every process once per parmapper build (PYTHONPATH
entries), interleaved, so builds are compared side by side.  The script
installs nothing and prints a markdown table of medians on stdout (progress
on stderr).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}


# --- the child: one process, one heap, several repetitions -------------------

def inc(x):
    return x + 1


_collected = False


def gc_first(x):
    global _collected
    if not _collected:
        import gc
        gc.collect()
        _collected = True
    return x + 1


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build_heap(kind, target):
    if kind == "ndarray":
        import numpy as np
        n = max(1, (target - rss_bytes()) // 8)
        a = np.ones(n)                          # touched: resident
        return a
    # Records that stay tracked by the gc (a tuple holding a list is never
    # untracked), as a program's data usually is: a tuple of ints, strs and
    # floats alone would be untracked by the first collection.
    heap = []
    i = 0
    while rss_bytes() < target:
        heap.extend((j, str(j), [float(j)]) for j in range(i, i + 10000))
        i += 10000
    return heap


class Usage:
    """Wall clock, CPU and minor faults of this process and of the children
    reaped in between."""

    def __init__(self):
        import resource
        self.r = resource
        self.t = time.perf_counter()
        self.s = resource.getrusage(resource.RUSAGE_SELF)
        self.c = resource.getrusage(resource.RUSAGE_CHILDREN)

    def end(self, out):
        t = time.perf_counter()
        s = self.r.getrusage(self.r.RUSAGE_SELF)
        c = self.r.getrusage(self.r.RUSAGE_CHILDREN)
        out["time"] = t - self.t
        out["cpu"] = (s.ru_utime + s.ru_stime) - (self.s.ru_utime + self.s.ru_stime)
        out["minflt"] = s.ru_minflt - self.s.ru_minflt
        out["w_cpu"] = (c.ru_utime + c.ru_stime) - (self.c.ru_utime + self.c.ru_stime)
        out["w_minflt"] = c.ru_minflt - self.c.ru_minflt
        return out


def run_fork():
    t0 = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    t1 = time.perf_counter()
    os.waitpid(pid, 0)
    t2 = time.perf_counter()
    return {"fork": t1 - t0, "exit": t2 - t1}


def run_parmap(fun, items, n, expect):
    import parmapper
    out = {}
    u = Usage()
    it = iter(parmapper.parmap(fun, items, N=n))
    res = [next(it)]
    first = last = time.perf_counter()
    for r in it:
        res.append(r)
        last = time.perf_counter()
    u.end(out)
    out["first"] = first - u.t
    out["teardown"] = u.t + out["time"] - last
    if res != expect:
        raise SystemExit("parmapper: wrong results")
    return out


def run_pool(fun, items, n, expect):
    import multiprocessing
    out = {}
    u = Usage()
    pool = multiprocessing.get_context("fork").Pool(n)
    res = pool.map(fun, items)
    t = time.perf_counter()
    pool.close()
    pool.join()
    u.end(out)
    out["teardown"] = u.t + out["time"] - t
    if res != expect:
        raise SystemExit("Pool: wrong results")
    return out


def run_serial(fun, items, expect):
    out = {}
    u = Usage()
    res = list(map(fun, items))
    u.end(out)
    if res != expect:
        raise SystemExit("serial: wrong results")
    return out


def child(spec):
    import gc
    import multiprocessing.pool  # noqa: F401  (imported before the clock)
    import parmapper  # noqa: F401
    if spec["case"] == "trivial":
        heap = list(range(spec["items"]))
        expect = [x + 1 for x in heap]
        runs = {"parmapper": lambda: run_parmap(inc, heap, spec["N"], expect),
                "serial": lambda: run_serial(inc, heap, expect),
                "Pool": lambda: run_pool(inc, heap, spec["N"], expect)}
    else:
        heap = build_heap(spec["kind"], spec["size"])
        if spec["freeze"]:
            gc.freeze()
        items = list(range(4))
        expect = [x + 1 for x in items]
        n = spec["N"]
        runs = {"fork": run_fork,
                "parmapper": lambda: run_parmap(inc, items, n, expect),
                "Pool": lambda: run_pool(inc, items, n, expect),
                "parmapper gc": lambda: run_parmap(gc_first, items, n, expect),
                "Pool gc": lambda: run_pool(gc_first, items, n, expect)}
    rss = rss_bytes()
    names = list(runs)
    for name in names:                   # warm-up, not counted
        if not name.endswith(" gc"):
            runs[name]()
    got = {name: [] for name in names}
    for rep in range(spec["reps"]):
        order = names[rep % len(names):] + names[:rep % len(names)]
        if rep % 2:
            order.reverse()
        for name in order:
            got[name].append(runs[name]())
    print(json.dumps({"rss": rss, "runs": got}))
    del heap


# --- the driver ----------------------------------------------------------------

def parse_size(s):
    s = s.strip().upper().rstrip("B")
    if s and s[-1] in UNITS:
        return int(float(s[:-1]) * UNITS[s[-1]])
    return int(s)


def fmt_size(b):
    for u in ("G", "M", "K"):
        if b >= UNITS[u]:
            return "{:.3g} {}B".format(b / UNITS[u], u)
    return "{} B".format(b)


def ms(x):
    if x is None:
        return ""
    x *= 1000
    return "{:.0f}".format(x) if x >= 100 else "{:.1f}".format(x) if x >= 1 else "{:.2f}".format(x)


def num(x):
    return "" if x is None else "{:,.0f}".format(x)


def mem_available():
    with open("/proc/meminfo") as f:
        for ln in f:
            if ln.startswith("MemAvailable:"):
                return int(ln.split()[1]) * 1024
    return None


def run_child(spec, pythonpath, timeout):
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(spec)]
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True,
                           timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": "timed out after {} s".format(timeout)}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        tail = (p.stderr.strip().splitlines() or ["exit {}".format(p.returncode)])[-1]
        return {"error": tail[:200]}
    return json.loads(lines[-1])


def median(runs, key):
    v = [r[key] for r in runs if r.get(key) is not None]
    return statistics.median(v) if v else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="20M,200M,1G,4G",
                    help="resident memory of the caller (K, M, G suffixes)")
    ap.add_argument("--kinds", default="objects,ndarray",
                    help="objects (tuples of int, str, float) and/or ndarray")
    ap.add_argument("--reps", type=int, default=7, help="repetitions per process")
    ap.add_argument("--rounds", type=int, default=1,
                    help="fresh processes per configuration (and build); "
                         "the medians are over all their repetitions")
    ap.add_argument("-N", default="2", help="worker processes, e.g. 2 or 2,4,8")
    ap.add_argument("--trivial", type=int, default=1000000, metavar="ITEMS",
                    help="items of the trivial map (0: skip it)")
    ap.add_argument("--no-gc", action="store_true",
                    help="skip the gc.collect() variant and the gc.freeze() processes")
    ap.add_argument("--builds", default=None,
                    help="label=PYTHONPATH,...: compare parmapper builds side by side")
    ap.add_argument("--timeout", type=float, default=900)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return

    builds = [(None, None)]
    if args.builds:
        builds = [tuple(b.split("=", 1)) for b in args.builds.split(",")]
    Ns = [int(n) for n in args.N.split(",")]
    sizes = [parse_size(s) for s in args.sizes.split(",") if s]
    kinds = [k for k in args.kinds.split(",") if k]
    freezes = [False] if args.no_gc else [False, True]
    started = time.time()
    load0 = os.getloadavg()[0]

    configs = []
    for kind in kinds:
        for size in sizes:
            for freeze in (freezes if kind == "objects" else [False]):
                for n in Ns:
                    configs.append({"case": "startup", "kind": kind, "size": size,
                                    "freeze": freeze, "N": n, "reps": args.reps})
    if args.trivial:
        for n in Ns:
            configs.append({"case": "trivial", "items": args.trivial, "N": n,
                            "reps": args.reps})
    results = {}
    for cfg in configs:
        need = 3.5 * cfg.get("size", 0)
        avail = mem_available()
        for rnd in range(args.rounds):
            for label, path in builds:
                key = (json.dumps(cfg, sort_keys=True), label)
                if avail is not None and need > avail:
                    results[key] = {"error": "skipped: needs ~{} free".format(fmt_size(need))}
                    continue
                t = time.time()
                r = run_child(cfg, path, args.timeout)
                print("{} {} round {}: {:.0f} s{}".format(
                    label or "", {k: v for k, v in cfg.items() if k != "reps"},
                    rnd + 1, time.time() - t,
                    "  " + r["error"] if "error" in r else ""),
                    file=sys.stderr, flush=True)
                old = results.setdefault(key, {"rss": [], "runs": {}})
                if "error" in r or "error" in old:
                    results[key] = r if "error" in r else old
                    continue
                old["rss"].append(r["rss"])
                for name, runs in r["runs"].items():
                    old["runs"].setdefault(name, []).extend(runs)
    report(args, configs, builds, results, started, load0)


def report(args, configs, builds, results, started, load0):
    w = print
    w("Command: `{}`  ".format(" ".join(["python", "benchmarks/startup.py"] + sys.argv[1:])))
    w("Medians over {} repetition(s) x {} process(es) per row; {} ; load average "
      "{:.2f} -> {:.2f}; {:.0f} s.\n".format(
          args.reps, args.rounds, time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
          load0, os.getloadavg()[0], time.time() - started))
    bcol = ["build"] if args.builds else []

    def rows(case):
        for cfg in configs:
            if cfg["case"] != case:
                continue
            for label, _ in builds:
                yield cfg, label, results.get((json.dumps(cfg, sort_keys=True), label))

    startup = [x for x in rows("startup")]
    if startup:
        w("**Raw fork and exit** (`os.fork()` in the parent; the child `os._exit(0)`s "
          "at once, exit until `waitpid` returns)\n")
        hdr = bcol + ["heap", "RSS", "fork", "exit + reap"]
        w("| " + " | ".join(hdr) + " |")
        w("|" + "---|" * (len(bcol) + 1) + "---:|" * 3)
        for cfg, label, r in startup:
            if cfg["freeze"] or cfg["N"] != int(args.N.split(",")[0]):
                continue
            head = ([label] if bcol else []) + [cfg["kind"]]
            if not r or "error" in r:
                w("| " + " | ".join(head + [fmt_size(cfg["size"]),
                                          (r or {}).get("error", "n/a"), ""]) + " |")
                continue
            f = r["runs"]["fork"]
            w("| " + " | ".join(head + [fmt_size(statistics.median(r["rss"])),
                                      ms(median(f, "fork")) + " ms",
                                      ms(median(f, "exit")) + " ms"]) + " |")
        w("")
        for fun, tag, what in (("", "", "inc(x) = x + 1"),
                               (" gc", " gc", "gc_first: gc.collect() on the first call in each worker")):
            if tag and args.no_gc:
                continue
            w("**4 items, `{}`** (ms; *faults*: minor page faults; *pm*: parmapper)\n".format(what))
            hdr = bcol + ["heap", "RSS", "gc.freeze()", "N", "pm total", "pm first result",
                          "pm teardown", "pm parent CPU", "pm parent faults",
                          "pm workers' CPU", "pm workers' faults", "Pool total",
                          "Pool close+join", "Pool parent faults", "Pool workers' faults",
                          "Pool ÷ pm"]
            w("| " + " | ".join(hdr) + " |")
            w("|" + "---|" * (len(bcol) + 3) + "---:|" * (len(hdr) - len(bcol) - 3))
            for cfg, label, r in startup:
                head = ([label] if bcol else []) + [cfg["kind"]]
                if not r or "error" in r:
                    w("| " + " | ".join(head + [fmt_size(cfg["size"]), "",
                                              (r or {}).get("error", "n/a")]) + " |")
                    continue
                p, q = r["runs"]["parmapper" + fun], r["runs"]["Pool" + fun]
                pt, qt = median(p, "time"), median(q, "time")
                w("| " + " | ".join(head + [
                    fmt_size(statistics.median(r["rss"])), "yes" if cfg["freeze"] else "no",
                    str(cfg["N"]), ms(pt), ms(median(p, "first")), ms(median(p, "teardown")),
                    ms(median(p, "cpu")), num(median(p, "minflt")), ms(median(p, "w_cpu")),
                    num(median(p, "w_minflt")), ms(qt), ms(median(q, "teardown")),
                    num(median(q, "minflt")), num(median(q, "w_minflt")),
                    "{:.2f}×".format(qt / pt)]) + " |")
            w("")
    trivial = [x for x in rows("trivial")]
    if trivial:
        w("**{:,} trivial items** (`inc` over a list, default settings; ms)\n".format(
            args.trivial))
        hdr = bcol + ["N", "pm total", "pm first result", "pm teardown", "pm parent CPU",
                      "serial map", "Pool.map total", "pm ÷ serial", "Pool ÷ pm"]
        w("| " + " | ".join(hdr) + " |")
        w("|" + "---|" * len(bcol) + "---:|" * (len(hdr) - len(bcol)))
        for cfg, label, r in trivial:
            head = [label] if bcol else []
            if not r or "error" in r:
                w("| " + " | ".join(head + [str(cfg["N"]), (r or {}).get("error", "n/a")]) + " |")
                continue
            p, s, q = r["runs"]["parmapper"], r["runs"]["serial"], r["runs"]["Pool"]
            pt, st, qt = median(p, "time"), median(s, "time"), median(q, "time")
            w("| " + " | ".join(head + [
                str(cfg["N"]), ms(pt), ms(median(p, "first")), ms(median(p, "teardown")),
                ms(median(p, "cpu")), ms(st), ms(qt), "{:.2f}".format(pt / st),
                "{:.2f}×".format(qt / pt)]) + " |")
        w("")


if __name__ == "__main__":
    main()
