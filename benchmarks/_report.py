"""docs/benchmarks.md and docs/benchmarks.png from the measurements of run.py."""
import datetime
import importlib.util
import os
import platform
import re
import statistics
import subprocess

from importlib import metadata

MIB = 1 << 20
REF = 0  # the first peer of every case is the parmapper reference
KEEP_SECTION = "Per-item cost in instructions"
# Written by hand from benchmarks/startup.py's tables; kept like KEEP_SECTION,
# just before it, and left out when the old file has none.
KEEP_STARTUP = "Start-up and teardown against resident memory"
# Written by hand from benchmarks/cpu_split.py's tables, kept the same way.
KEEP_CPU = "Where the CPU goes: the caller and the workers"
KEEP_PLACEHOLDER = ("TODO: instructions per item on the chunksize=1 path (parent and "
                    "worker), measured with callgrind; to be filled in by hand "
                    "(run.py keeps this section when it rewrites the file).")
PEER_COLORS = {
    "parmapper": "#d62728",
    "serial map": "#7f7f7f",
    "Pool.map": "#1f77b4",
    "Pool.imap": "#17becf",
    "ProcessPoolExecutor.map": "#9467bd",
    "joblib": "#ff7f0e",
    "mpire": "#2ca02c",
    "ThreadPoolExecutor": "#8c564b",
}


# --- machine ------------------------------------------------------------------

def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mem_total():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return "{:.1f} GiB".format(int(line.split()[1]) / (1 << 20))
    except OSError:
        pass
    return "?"


def _version(dist):
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(root, *args):
    try:
        return subprocess.run(["git", "-C", root] + list(args), capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def repo_state():
    """The repository's commit and whether parmapper's sources have uncommitted
    changes, taken when the run starts."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return (_git(root, "rev-parse", "--short", "HEAD"),
            bool(_git(root, "status", "--porcelain", "--", "engine", "binding",
                      "python", "setup.py")))


def machine_info(N, started, load_start, calib, note, repo):
    spec = importlib.util.find_spec("parmapper")
    where = os.path.dirname(spec.origin) if spec and spec.origin else "not importable"
    commit, dirty = repo
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "affinity": affinity,
        "memory": _mem_total(),
        "os": "{} {} ({})".format(platform.system(), platform.release(), platform.machine()),
        "python": "{} {}".format(platform.python_implementation(), platform.python_version()),
        "versions": {d: _version(d) for d in
                     ("parmapper", "joblib", "mpire", "numpy", "matplotlib")},
        "parmapper_path": where,
        "commit": commit,
        "dirty": bool(dirty),
        "date": datetime.datetime.fromtimestamp(started).astimezone().strftime(
            "%Y-%m-%d %H:%M %Z"),
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "N": N,
        "calib": calib,
        "note": note,
    }


# --- numbers ------------------------------------------------------------------

def fmt_time(s):
    if s < 1e-3:
        return "{:.0f} µs".format(s * 1e6)
    if s < 1:
        return "{:.1f} ms".format(s * 1e3) if s < 0.1 else "{:.0f} ms".format(s * 1e3)
    return "{:.2f} s".format(s)


def fmt_rate(r):
    if r >= 1e6:
        return "{:.2f} M/s".format(r / 1e6)
    if r >= 1e3:
        return "{:.1f} k/s".format(r / 1e3)
    return "{:.0f} /s".format(r)


def fmt_ratio(x):
    if x >= 100:
        return "{:.0f}×".format(x)
    if x >= 10:
        return "{:.1f}×".format(x)
    return "{:.2f}×".format(x)


def stat(case, label):
    """Median measurements of one peer in one case, or None (n/a)."""
    ms = case.get("results", {}).get(label) or []
    if not ms:
        return None
    out = {"time": statistics.median(m["time"] for m in ms), "runs": len(ms)}
    if all("import_time" in m for m in ms):
        out["import"] = statistics.median(m["import_time"] for m in ms)
    if ms[0].get("peak_kb") is not None:
        out["peak"] = statistics.median(m["peak_kb"] for m in ms) / 1024
        out["growth"] = statistics.median(m["peak_kb"] - m["rss_start_kb"] for m in ms) / 1024
    return out


def ref_label(case):
    return case["peers"][REF][0]


def value(case, label):
    """The compared quantity: median time, or median peak RSS (metric 'rss')."""
    s = stat(case, label)
    if s is None:
        return None
    return s["peak"] if case["metric"] == "rss" else s["time"]


def na_reason(case, label):
    m = case.get("na", {}).get(label)
    return m["na"] if m else "not run"


# --- goals ----------------------------------------------------------------------

def _case(cases, cid):
    for c in cases:
        if c["id"] == cid:
            return c
    return None


def _times(cases, cid, *labels):
    c = _case(cases, cid)
    if c is None:
        return None, "workload not run"
    out = []
    for lb in labels:
        s = stat(c, lb)
        if s is None:
            if lb != "parmapper" and "timeout" in c.get("na", {}).get(lb, {}):
                out.append(float(c["na"][lb]["timeout"]))  # a lower bound
                continue
            return None, "{}: n/a ({})".format(lb, na_reason(c, lb))
        out.append(s["time"])
    return out, None


def _pow10(n):
    k = len(str(n)) - 1
    return "10^{}".format(k) if n == 10 ** k else "{:,}".format(n)


def _faster(r):
    return "{} faster".format(_prec(r)) if r >= 1 else "{} slower".format(fmt_ratio(1 / r))


def _prec(r):
    """A ratio, with a third decimal where two would round onto a goal's bound."""
    txt = fmt_ratio(r)
    if r < 10 and "{:.2f}".format(r) in ("1.90", "1.70", "2.00", "3.00"):
        return "{:.3f}×".format(r)
    return txt


# Known reasons for goals that can be missed, keyed by a fragment of the
# goal's text; printed only for the goals a run actually misses.
_MISSED_WHY = [
    ("faster than Pool create+map",
     "Pool.map over 10^6 trivial items cuts them into 4 chunks per worker, so its "
     "cost is about 3x a serial map's: 3x faster than Pool is about the time of a "
     "serial map. parmapper's call needs about 60 ms of the caller's CPU (decoding "
     "and handing out 10^6 results one by one, and the page faults for their "
     "memory) and about 135 ms of the workers' (the function alone takes ~72 ms in "
     "a serial map), on 2 cores: about 100 ms at best (see 'Where the CPU goes')."),
    ("ndarray in (generator)",
     "every array from a generator has to be sent: parmapper writes it out of "
     "band from the array's memory into the ring (one copy) and the worker "
     "builds its array on the memory the task was assembled in (one copy)."),
    ("1 ms tasks",
     "with 2 workers on 2 cores the parent shares a core with them; runs have "
     "measured 1.82 to 2.18."),
    ("20 µs tasks",
     "the 2 workers keep both cores busy for the whole run, so whatever else "
     "runs on the machine, the parent included, comes out of their time; the "
     "full runs recorded in this repository have measured 1.63 to 2.03, the "
     "lower ones on a contended machine."),
    ("≤ 2× the serial map time",
     "start-up and the parent's per-item cost; between 1.02x and 2.07x across runs "
     "on this shared machine."),
]


# Missed goals whose work is a calibrated busy loop: the case to look at.
_CALIBRATED = {"1 ms tasks": "w4a", "20 µs tasks": "w4b"}


def _contention(cases, key):
    """For a calibrated CPU-bound case: how far the serial map's repetitions
    strayed from the calibration, when that says the cores were not all the
    run's during it ('' otherwise)."""
    c = _case(cases, _CALIBRATED.get(key))
    ms = (c or {}).get("results", {}).get("serial map") or []
    if not c or not c.get("calibrated") or len(ms) < 2:
        return ""
    want = c["n"] * c["calibrated"]
    ts = sorted(m["time"] for m in ms)
    if ts[-1] / ts[0] < 1.15 and statistics.median(ts) / want < 1.05:
        return ""
    return (" In this run the serial map's {} repetitions took {} to {} for work "
            "calibrated at {} at the start of the run: the machine's cores were not "
            "all the run's during this workload, which affects every peer's speedup "
            "(compare the load average above).".format(
                len(ts), fmt_time(ts[0]), fmt_time(ts[-1]), fmt_time(want)))


def goals(cases):
    """[(goal, measured, status)] computed from the run."""
    rows = []

    def add(goal, cid, labels, compute):
        t, why = _times(cases, cid, *labels)
        if t is None:
            rows.append((goal, why, "not measured"))
            return
        measured, ok = compute(*t)
        rows.append((goal, measured, "**met**" if ok else "**not met**"))

    c1 = _case(cases, "w1")
    n1 = c1["n"] if c1 else 0
    c2 = _case(cases, "w2")
    n2 = _pow10(c2["n"]) if c2 else "10^6"

    def g1(pm, imap):
        r = imap / pm
        return ("items/s: parmapper {} vs Pool.imap {} = {}".format(
            fmt_rate(n1 / pm), fmt_rate(n1 / imap), _prec(r)), r >= 25)
    add("chunksize=1: ≥ 25× the items/s of Pool.imap(chunksize=1) (workload 1)",
        "w1", ["parmapper", "Pool.imap"], g1)

    def g2a(pm, serial):
        r = pm / serial
        return ("parmapper {} vs serial map {}: {} the serial time".format(
            fmt_time(pm), fmt_time(serial), _prec(r)), r <= 2)
    add("default settings, {} trivial items: ≤ 2× the serial map time "
        "(workload 2)".format(n2),
        "w2", ["parmapper", "serial map"], g2a)

    def g2b(pm, pool):
        r = pool / pm
        return ("parmapper {} vs Pool create+map {}: {}".format(
            fmt_time(pm), fmt_time(pool), _faster(r)), r >= 3)
    add("default settings, {} trivial items: ≥ 3× faster than Pool create+map "
        "(workload 2)".format(n2), "w2", ["parmapper", "Pool.map"], g2b)

    def g3(pm, pool):
        r = pool / pm
        return ("parmapper {} vs Pool create+map {}: {}".format(
            fmt_time(pm), fmt_time(pool), _faster(r)), r >= 2)
    add("4-item start-up: ≥ 2× faster than Pool create+map (workload 3)",
        "w3", ["parmapper", "Pool.map"], g3)

    def speedup(target):
        def g(pm, serial):
            r = serial / pm
            return ("serial {} / parmapper {} = speedup {}".format(
                fmt_time(serial), fmt_time(pm), _prec(r).rstrip("×")), r >= target)
        return g
    add("1 ms tasks: speedup over serial ≥ 1.9 on 2 cores (workload 4)",
        "w4a", ["parmapper", "serial map"], speedup(1.9))
    add("20 µs tasks, default settings: speedup over serial ≥ 1.7 (workload 4)",
        "w4b", ["parmapper", "serial map"], speedup(1.7))

    for c in cases:
        if c["w"] != 5:
            continue

        def g5(pm, pool, c=c):
            r = pool / pm
            mb = c["bytes"] / MIB
            return ("parmapper {:,.0f} MB/s vs Pool.map {:,.0f} MB/s: {}".format(
                mb / pm, mb / pool, _prec(r)), r >= 3)
        add("8 MB items, {}: ≥ 3× the throughput of Pool (workload 5)".format(
            c["row"].split(" x ")[0].replace("8 MB ", "")), c["id"],
            ["parmapper", "Pool.map"], g5)

    # ahead of joblib and mpire everywhere
    behind, unknown, compared = [], [], 0
    for c in cases:
        ref = ref_label(c)
        pm = value(c, ref)
        for lb in ("joblib", "mpire"):
            if lb not in [p[0] for p in c["peers"]]:
                continue
            if pm is None:
                unknown.append("{} ({}): parmapper n/a ({})".format(
                    SHORTW(c), c["row"], na_reason(c, ref)))
                continue
            v = value(c, lb)
            if v is None:
                if "timeout" in c.get("na", {}).get(lb, {}):
                    compared += 1  # slower than the timeout: behind parmapper
                else:
                    unknown.append("{} ({}): {} n/a ({})".format(
                        SHORTW(c), c["row"], lb, na_reason(c, lb)))
                continue
            compared += 1
            if v <= pm:
                if c["metric"] == "rss":
                    behind.append("workload {} ({}): {} peak RSS {:.0f} MB vs parmapper "
                                  "{:.0f} MB".format(c["w"], c["row"], lb, v, pm))
                else:
                    behind.append("workload {} ({}): {} {} vs parmapper {} "
                                  "(parmapper {} slower)".format(
                                      c["w"], c["row"], lb, fmt_time(v), fmt_time(pm),
                                      fmt_ratio(pm / v)))
    if compared == 0 and not unknown:
        rows.append(("ahead of joblib and mpire on every workload", "no workload run",
                     "not measured"))
    else:
        measured = ("behind on {} of {} comparisons (listed below)".format(len(behind), compared)
                    if behind else "ahead in all {} comparisons".format(compared))
        if unknown:
            measured += "; {} not comparable".format(len(unknown))
        rows.append(("ahead of joblib and mpire on every workload (time; peak RSS "
                     "for workload 6)", measured,
                     "**not met**" if behind else ("**met**" if not unknown else "partly measured")))
    return rows, behind, unknown


def SHORTW(c):
    return "workload {}".format(c["w"])


# --- markdown -------------------------------------------------------------------

def _kept_section(md_path, title=KEEP_SECTION):
    """The body of the hand-written section `title` of the old file."""
    try:
        with open(md_path) as f:
            old = f.read()
    except OSError:
        return None
    m = re.search(r"^## {}\s*\n(.*?)(?=^## |\Z)".format(re.escape(title)), old,
                  re.S | re.M)
    if not m:
        return None
    body = m.group(1).strip()
    return body or None


def _table(case):
    """One markdown table: a row per peer."""
    ref = ref_label(case)
    pm = value(case, ref)
    serial = stat(case, "serial map")
    metric = case["metric"]
    cols = ["peer", "settings"]
    if metric == "rss":
        cols += ["peak RSS of the caller", "RSS before the map", "growth during the map",
                 "time", "peak ÷ parmapper's"]
    else:
        cols += ["median time"]
        if metric == "items":
            cols.append("items/s")
        elif metric == "bytes":
            cols.append("throughput")
        cols.append("time ÷ parmapper's")
        if case.get("speedup"):
            cols.append("speedup over serial map")
        if metric == "time":
            cols.append("import time (not in the median)")
    cols.append("runs")
    lines = ["| " + " | ".join(cols) + " |",
             "|---|---|" + "---:|" * (len(cols) - 2)]
    for label, key, params, settings in case["peers"]:
        name = "**{}**".format(label) if label == ref else label
        s = stat(case, label)
        row = [name, settings]
        if s is None:
            m = case.get("na", {}).get(label, {})
            row.append("n/a: " + na_reason(case, label).replace("|", "/"))
            cells = [""] * (len(cols) - 4)
            if "timeout" in m and pm is not None and metric != "rss":
                cells[cols.index("time ÷ parmapper's") - 3] = "> " + fmt_ratio(m["timeout"] / pm)
            row += cells + ["0"]
            lines.append("| " + " | ".join(row) + " |")
            continue
        is_ref = label == ref
        if metric == "rss":
            row += ["{:.0f} MB".format(s["peak"]), "{:.0f} MB".format(s["peak"] - s["growth"]),
                    "{:.0f} MB".format(s["growth"]),
                    fmt_time(s["time"]),
                    "1 (reference)" if is_ref else (fmt_ratio(s["peak"] / pm) if pm else "")]
        else:
            row.append(fmt_time(s["time"]))
            if metric == "items":
                row.append(fmt_rate(case["n"] / s["time"]))
            elif metric == "bytes":
                row.append("{:,.0f} MB/s".format(case["bytes"] / MIB / s["time"]))
            row.append("1 (reference)" if is_ref else
                       (fmt_ratio(s["time"] / pm) if pm else ""))
            if case.get("speedup"):
                row.append("{:.2f}".format(serial["time"] / s["time"]) if serial else "")
            if metric == "time":
                row.append(fmt_time(s["import"]) if "import" in s else "")
        row.append(str(s["runs"]))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


WORKLOAD_TEXT = {
    1: "The cost of moving one item and one result: `inc(x) = x + 1` over a list, "
       "one item per task wherever the library has a chunk size (parmapper "
       "`chunksize=1`, Pool `chunksize=1`, ProcessPoolExecutor `chunksize=1`, joblib "
       "`batch_size=1`, mpire `chunk_size=1`).",
    2: "`inc(x) = x + 1` over a list, every library with its default settings.",
    3: "Create the workers, map `inc` over 4 items, shut down: the fixed cost of "
       "one call (median of more repetitions).",
    4: "A pure-Python busy loop calibrated at the start of the run to the target "
       "duration (see Machine), default settings. Speedup is over the serial map "
       "measured in the same run.",
    5: "64 items of 8 MB (8 MiB) each way, default settings. *In*: the items are "
       "8 MB `bytes` or float64 arrays and the function returns their size; from a list "
       "(parmapper's workers then read the items from the copy of the list they "
       "inherit at fork) and from a generator (every peer has to send the bytes). "
       "*Out*: the items are ints and the function returns a fresh 8 MB object. "
       "mpire is called with `concatenate_numpy_output=False` so that it returns the "
       "same list of arrays as everybody else. Throughput counts the 8 MB payloads "
       "(MB = 2^20 bytes). Copies made by parmapper: arrays travel out of band "
       "(pickle protocol 5) both ways: one copy on the sending side (the object's "
       "memory -> the ring) and one on the receiving side (ring -> the memory the "
       "array is then built on). A large `bytes` is also written straight from the "
       "object into the ring (one copy), and the receiving side copies it once, "
       "from the ring into the new `bytes` object (the engine routes that range of "
       "the message there while it assembles the rest).",
    6: "The function returns a fresh 1 MB `bytes`; the caller consumes the results "
       "one by one and sleeps 1 ms per result without keeping them. Each library's "
       "streaming call where it has one (Pool.imap, ProcessPoolExecutor.map, joblib "
       "`return_as='generator'`, mpire `imap`; Pool.map returns a list). Peak RSS is "
       "the caller's own VmHWM (reset with /proc/self/clear_refs just before the "
       "map); the RSS before the map holds the interpreter and each library's "
       "imports; growth is the peak minus it.",
    7: "`time.sleep(0.001)` releases the GIL: 8 threads in total, parmapper's `Nt` "
       "threads against `concurrent.futures.ThreadPoolExecutor(8)`.",
}


def markdown(cases, info, workloads, quick, md_path, png_rel):
    out = []
    w = out.append
    w("# Benchmarks\n")
    w("<!-- Generated by benchmarks/run.py from a real run: do not edit the numbers "
      "by hand, rerun the script. The sections '{}', '{}' and '{}' are kept when "
      "the file is rewritten. -->\n".format(KEEP_STARTUP, KEEP_CPU, KEEP_SECTION))
    w("parmapper against serial `map`, `multiprocessing.Pool` (`map`, and `imap` "
      "with chunksize=1), `concurrent.futures.ProcessPoolExecutor.map`, joblib "
      "`Parallel` (loky backend) and mpire `WorkerPool.map`, measured side by side "
      "in one run of:\n")
    w("```sh\n{}{}\n```\n".format(info.get("env_prefix", ""), info["command"]))
    if quick:
        w("**This is a `--quick` smoke run: small sizes, one repetition. Its numbers "
          "are not the reference.**\n")
    w("![speed of each peer relative to parmapper, per workload]({})\n".format(png_rel))

    w("## Machine\n")
    v = info["versions"]
    la, lb = info["load_start"], info["load_end"]
    rows = [
        ("CPU", "{}, {} cores (os.cpu_count() = {}, usable {})".format(
            info["cpu"], info["cores"], info["cores"], info["affinity"])),
        ("memory", info["memory"]),
        ("OS", info["os"]),
        ("Python", info["python"]),
        ("parmapper", "{} from `{}` (repository at {} when the run started{})".format(
            v["parmapper"], info["parmapper_path"], info["commit"] or "?",
            ", with uncommitted changes in engine/, binding/ or python/"
            if info["dirty"] else "")),
        ("peers", "joblib {joblib} (loky), mpire {mpire}, numpy {numpy}; "
                  "charts: matplotlib {matplotlib}".format(**v)),
        ("date", info["date"]),
        ("N (workers for every peer)", str(info["N"])),
        ("load average (1 min) at start / end", "{:.2f} / {:.2f} (the machine is shared; "
         "timings are noisy)".format(la[0], lb[0])),
        ("wall time of the run", "{:.0f} s".format(info["wall"])),
    ]
    for target, (loops, dur) in sorted(info["calib"].items(), reverse=True):
        rows.append(("busy loop for {}".format(
            "1 ms" if target >= 1e-3 else "{:.0f} µs".format(target * 1e6)),
            "{} iterations, measured {:.1f} µs per call".format(loops, dur * 1e6)))
    if info.get("note"):
        rows.append(("note", info["note"]))
    w("| | |\n|---|---|")
    for k, val in rows:
        w("| {} | {} |".format(k, val))
    w("")

    w("## How it is measured\n")
    w("- Every measurement runs in a fresh Python process started by `run.py`, "
      "after the imports and the construction of the inputs; the clock covers "
      "creating the pool (parmapper forks its workers in each call), the map, "
      "consuming every result into a list (workload 6: the slow consumer) and "
      "shutting the pool down (`close()` + `join()`, the `with` block's exit; "
      "joblib keeps loky's reusable workers alive by design).")
    w("- Import times are those of compiled packages: `run.py` first writes "
      "the `.pyc` files of parmapper, joblib and mpire that are missing (as pip "
      "does at install), so a source tree run with PYTHONDONTWRITEBYTECODE does "
      "not count the compiler.")
    w("- All peers map the same module-level functions (benchmarks/_funcs.py), so "
      "every library can run every workload; results are checked (count, values, "
      "order) and a wrong answer is reported as n/a.")
    w("- A watchdog kills a measurement (with its whole process group) after its "
      "timeout, reported as n/a with the reason; a timed-out peer is slower than "
      "the timeout, hence the `>` ratios.")
    w("- Each measurement is repeated (the planned count is given above each table; "
      "a peer whose first run takes long gets fewer: column *runs*) and the "
      "**median** is reported; within a repetition the peers run one after the "
      "other in an order rotated (and reversed) from one repetition to the next, "
      "so drift affects all of them alike.")
    w("- *time ÷ parmapper's* > 1 means parmapper is faster; the chart shows the "
      "inverse (each peer's speed relative to parmapper, log scale).\n")

    w("## Goals\n")
    grows, behind, unknown = goals(cases)
    w("Computed from this run.\n")
    w("| goal | measured | status |\n|---|---|---|")
    for g, m, st in grows:
        w("| {} | {} | {} |".format(g, m, st))
    w("")
    missed = [g for g, m, st in grows if st == "**not met**"]
    whys = [(key, why) for key, why in _MISSED_WHY if any(key in g for g in missed)]
    if whys:
        w("Why the goals not met in this run are missed (as far as we know):\n")
        for key, why in whys:
            w("- *{}*: {}{}".format(key, why, _contention(cases, key)))
        w("")
    if behind:
        w("Where parmapper is not ahead of joblib or mpire:\n")
        for b in behind:
            w("- " + b)
        w("")
    if unknown:
        w("Not comparable:\n")
        for b in unknown:
            w("- " + b)
        w("")

    for wnum in sorted({c["w"] for c in cases}):
        w("## {}. {}\n".format(wnum, workloads[wnum]))
        w(WORKLOAD_TEXT[wnum] + "\n")
        for c in [c for c in cases if c["w"] == wnum]:
            w("**{}** ({} repetition{} planned, timeout {:g} s per measurement)\n".format(
                c["row"], c["reps_used"], "" if c["reps_used"] == 1 else "s",
                c["timeout_used"]))
            w(_table(c) + "\n")

    for title in (KEEP_STARTUP, KEEP_CPU):
        body = _kept_section(md_path, title)
        if body:
            w("## {}\n".format(title))
            w(body + "\n")
    w("## {}\n".format(KEEP_SECTION))
    w((_kept_section(md_path) or KEEP_PLACEHOLDER) + "\n")
    return "\n".join(out)


# --- chart ------------------------------------------------------------------------

CHART_HIDE_SERIAL = {3, 5}   # serial map does not start or move anything there


def chart(cases, workloads, png, info):
    """Bar chart of speed (or memory) relative to parmapper; error text or None."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.patches import Patch
    except ImportError as e:
        return "matplotlib not installed ({})".format(e)
    wnums = sorted({c["w"] for c in cases})
    if not wnums:
        return "nothing measured"
    # two panels a row; workload 5 (six cases) gets a full-width row
    layout, pending = [], []
    for wn in wnums:
        if wn == 5:
            if pending:
                layout.append(pending)
                pending = []
            layout.append([wn])
        else:
            pending.append(wn)
            if len(pending) == 2:
                layout.append(pending)
                pending = []
    if pending:
        layout.append(pending)
    row_h, head = 4.0, 1.3
    height = row_h * len(layout) + head
    fig = plt.figure(figsize=(15, height))
    gs = fig.add_gridspec(len(layout), 2, hspace=0.5, wspace=0.16,
                          top=1 - head / height, bottom=0.5 / height,
                          left=0.06, right=0.99)
    used = {}
    for r, panel in enumerate(layout):
        for k, wn in enumerate(panel):
            ax = fig.add_subplot(gs[r, :] if len(panel) == 1 else gs[r, k])
            _panel(ax, [c for c in cases if c["w"] == wn], wn, workloads, used)
    handles = [Patch(facecolor=_color(lb), label=lb) for lb in used]
    handles.append(plt.Line2D([], [], color=PEER_COLORS["parmapper"], ls="--",
                              label="parmapper = 1"))
    fig.legend(handles=handles, loc="upper center", ncol=min(9, len(handles)),
               frameon=False, fontsize=9.5, bbox_to_anchor=(0.5, 1 - 0.45 / height))
    fig.suptitle("Each peer relative to parmapper (N = {}; {}, {}; median of repeated "
                 "runs, log scale)".format(info["N"], info["cpu"], info["python"]),
                 y=1 - 0.12 / height, fontsize=12)
    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)
    return None


def _color(label):
    if label == "parmapper (other settings)":
        return "#f4a3a3"
    return PEER_COLORS.get(label, "#555555")


def _panel(ax, wcases, wn, workloads, used):
    import numpy as np
    rss = wcases[0]["metric"] == "rss"
    others = [p[0] for p in wcases[0]["peers"][1:]]
    if wn in CHART_HIDE_SERIAL:
        others = [lb for lb in others if lb != "serial map"]
    width = 0.84 / max(1, len(others))
    many = len(wcases) * len(others) > 16
    x = np.arange(len(wcases))
    ymin, ymax = 1.0, 1.0
    for j, lb in enumerate(others):
        key = "parmapper (other settings)" if lb.startswith("parmapper") else lb
        used.setdefault(key, None)
        col = _color(key)
        for i, c in enumerate(wcases):
            ref = value(c, ref_label(c))
            v = value(c, lb)
            xpos = x[i] - 0.42 + width * (j + 0.5)
            if ref is None:
                ax.text(xpos, 1, "n/a", rotation=90, ha="center", va="center", fontsize=7)
                continue
            if v is None:
                m = c.get("na", {}).get(lb, {})
                if "timeout" in m and not rss:
                    y = ref / m["timeout"]
                    ax.bar(xpos, y, width * 0.92, facecolor=col, hatch="///", alpha=0.45,
                           edgecolor="black", linewidth=0.3)
                    ax.text(xpos, y * 1.1, "< {:.2g}\n(timeout)".format(y), ha="center",
                            va="bottom", fontsize=6.5)
                    ymin = min(ymin, y)
                else:
                    ax.text(xpos, 1, "n/a", rotation=90, ha="center", va="center",
                            fontsize=7)
                continue
            y = (v / ref) if rss else (ref / v)
            ax.bar(xpos, y, width * 0.92, color=col)
            ymin, ymax = min(ymin, y), max(ymax, y)
            ax.text(xpos, y * (1.08 if y >= 1 else 0.92), "{:.2g}".format(y),
                    ha="center", va="bottom" if y >= 1 else "top",
                    fontsize=6.5 if many else 7.5, rotation=90 if many else 0)
    ax.axhline(1, color=PEER_COLORS["parmapper"], lw=1.5, ls="--", zorder=0)
    ax.set_yscale("log")
    ax.set_ylim(ymin / 4, max(ymax * 3, 3))
    ax.set_xticks(x)
    ax.set_xticklabels([_short_row(c["row"]) for c in wcases], fontsize=9)
    ax.set_xlim(-0.5, len(wcases) - 0.5)
    if rss:
        ax.set_ylabel("peak RSS ÷ parmapper's\n(above 1 = more memory)", fontsize=9)
    else:
        ax.set_ylabel("speed ÷ parmapper's\n(below 1 = slower)", fontsize=9)
    title = "{}. {}".format(wn, workloads[wn])
    if wn == 7:
        title = "7. Threads, GIL-releasing sleep (parmapper = {})".format(ref_label(wcases[0]))
    if wn in CHART_HIDE_SERIAL:
        title += " (serial map: see table)"
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", which="major", alpha=0.3)


def _short_row(row):
    return row.replace(" (generator)", "\n(generator)").replace(" (list)", "\n(list)") \
        .replace(", 1 ms per result", "\n1 ms per result")
