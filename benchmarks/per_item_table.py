"""The per-item instruction table of issue 17 (driven by per_item_instructions.sh).

Every case is one small script run twice under callgrind, at n and at 2n items;
per item = (count at 2n - count at n) / n, so start-up and teardown cancel.
Only the measured statement is counted: it runs inside `_operator.call`, and
callgrind collects only inside that function (`--collect-atstart=no
--toggle-collect=_operator_call`). Making a `list` input (or a blob for a
floor) happens before it and is not counted. Nor is polling: collection is
also toggled off inside `pm__spin_until` (engine/src/wait.c), in the parent
and in the workers, so the per-function split holds no spinning either.

parent  = instructions of the calling process (without `pm__spin_until`).
workers = instructions of every forked worker, summed, minus what is left
          of `worker_wait` (inclusive: its sleep on the bell around the
          spin). A forked worker's file also holds the parent's counts up to
          the fork (constant, cancels in the difference).

Both are forked at the map's start, so a worker file's inherited part holds
no per-item work. The last column, items per task at n and 2n, counts the
parent's `pm_map_next` calls (one per result read): adaptive chunks vary
with timing, and each task costs both sides about 1,100 instructions.

Modes:
  table [n]            the instruction table (markdown; n = 20000), then the
                       4-item start-up: cold, with `gc` imported before, and
                       after a first map (parent, whole statement)
  split [n] [--top K]  parent and workers of default/range, chunksize=1/range
                       and 10-tuple results: self and inclusive cost per
                       function per item (n to 2n, callgrind_annotate), and
                       the binding's and engine's own code by source function
                       (its line-level counts: inlined helpers named)
  syscalls [n]         strace -f -ff over the map at 4 and at n items
                       (n = 10^5), default settings and chunksize=1: system
                       calls per item = the difference / (n - 4), parent and
                       workers apart, median of three runs
Options: --keep DIR keeps the callgrind files; --cases a,b names the cases
to split, or the only rows of the table (keys of CASES, e.g. default_gen,
cs1_list; the table then leaves out the start-up).
"""
import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile

PY = sys.executable
HERE = os.path.dirname(os.path.abspath(__file__))

HEAD = """\
import sys, _operator, marshal, struct
import parmapper
n = int(sys.argv[1])
def inc(x):
    return x + 1
def to_bytes64(x):
    return bytes(64)
def tuple10(x):
    f = float(x)
    return (f, f + 1.0, f + 2.0, f + 3.0, f + 4.0, f + 5.0, f + 6.0, f + 7.0,
            f + 8.0, f + 9.0)
"""

# name: (label, setup (not counted), measured statement)
CASES = collections.OrderedDict([
    ("serial", ("serial `list(map(inc, range(n)))`", "",
                "r = list(map(inc, range(n))); del r")),
    ("floor", ("caller's floor: `list(range(n))` (make the int, one iterator "
               "step, append, free)", "", "r = list(range(n)); del r")),
    ("floor_gen", ("floor for a generator input: `list(i for i in range(n))`",
                   "", "r = list(i for i in range(n)); del r")),
    ("default_range", ("default settings, `range` input", "",
                       "r = list(parmapper.parmap(inc, range(n), N=2)); del r")),
    ("default_list", ("default settings, `list` input (made before, not counted)",
                      "xs = list(range(n))",
                      "r = list(parmapper.parmap(inc, xs, N=2)); del r")),
    ("default_gen", ("default settings, generator input `(i for i in range(n))`",
                     "",
                     "r = list(parmapper.parmap(inc, (i for i in range(n)), N=2)); "
                     "del r")),
    ("cs1_range", ("`chunksize=1`, `range` input", "",
                   "r = list(parmapper.parmap(inc, range(n), N=2, chunksize=1)); "
                   "del r")),
    ("cs1_list", ("`chunksize=1`, `list` input (made before, not counted)",
                  "xs = list(range(n))",
                  "r = list(parmapper.parmap(inc, xs, N=2, chunksize=1)); del r")),
    ("bytes64", ("default, `range` input, results `bytes(64)`", "",
                 "r = list(parmapper.parmap(to_bytes64, range(n), N=2)); del r")),
    ("serial_bytes64", ("serial `list(map(to_bytes64, range(n)))`", "",
                        "r = list(map(to_bytes64, range(n))); del r")),
    ("floor_bytes64", ("caller's floor for `bytes(64)`: `marshal.loads` of the "
                       "results (blob made before)",
                       "blob = marshal.dumps([bytes(64) for _ in range(n)])",
                       "r = marshal.loads(blob); del r")),
    ("tuple10", ("default, `range` input, results 10-tuple of floats", "",
                 "r = list(parmapper.parmap(tuple10, range(n), N=2)); del r")),
    ("serial_tuple10", ("serial `list(map(tuple10, range(n)))`", "",
                        "r = list(map(tuple10, range(n))); del r")),
    ("floor_tuple10", ("caller's floor for 10-tuples: `list(struct.iter_unpack"
                       "('10d', blob))` (blob made before)",
                       "blob = struct.pack('%dd' % (10 * n), *range(10 * n))",
                       "r = list(struct.iter_unpack('10d', blob)); del r")),
])

# Issue 17's goals: case -> (parent max, workers max).
GOALS = {
    "default_range": (220, 850),
    "default_list": (220, 850),
    "cs1_range": (1000, 2000),
    "cs1_list": (1000, 2000),
    "tuple10": (2500, None),
}

STARTUP = [
    ("start_cold", "4-item map, first call in the process", "",
     "r = list(parmapper.parmap(inc, range(4), N=2)); del r"),
    ("start_gc", "4-item map, `gc` imported before (not counted)", "import gc",
     "r = list(parmapper.parmap(inc, range(4), N=2)); del r"),
    ("start_warm", "4-item map, after a first 4-item map (not counted)",
     "list(parmapper.parmap(inc, range(4), N=2))",
     "r = list(parmapper.parmap(inc, range(4), N=2)); del r"),
]

CALL = re.compile(r"^\s*[\d,]+\s+\(\s*[\d.]+%\)\s+=>\s+\S+?:([\w.$@]+)(?:'\d+)?\s+\(([\d,]+)x\)")
LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(\S+?):([\w.$@]+)(?:'\d+)?(?:\s|$)")
TOTAL = re.compile(r"^\s*([\d,]+)\s.*PROGRAM TOTALS")


def script(setup, stmt):
    return (HEAD + setup + "\n" + "def region():\n    " + stmt + "\n"
            "_operator.call(region)\n")


def annotate(path, inclusive, calls=None):
    """{function: Ir} and the program total of one callgrind file; with
    inclusive, `calls` (a Counter) gets the calls made to each function."""
    out = subprocess.run(
        ["callgrind_annotate", "--inclusive=" + ("yes" if inclusive else "no"),
         "--threshold=100", path], capture_output=True, text=True,
        check=True).stdout
    funcs, total = collections.Counter(), 0
    for ln in out.splitlines():
        if calls is not None:
            m = CALL.match(ln)
            if m:
                calls[m.group(1)] += int(m.group(2).replace(",", ""))
                continue
        if ln.lstrip().startswith("=>") or ln.lstrip().startswith("*"):
            continue
        m = TOTAL.match(ln)
        if m:
            total = int(m.group(1).replace(",", ""))
            continue
        m = LINE.match(ln)
        if m:
            c = int(m.group(1).replace(",", ""))
            fn = m.group(3)
            # A function listed under several files (inlined headers):
            # inclusive takes the largest, self sums.
            funcs[fn] = max(funcs[fn], c) if inclusive else funcs[fn] + c
    return funcs, total


SRC = re.compile(r"^\s*([\d,]+|\.)\s+(?:\(\s*[\d.]+%\)\s)?\s(.*)$")
REPO = os.path.dirname(HERE)


def source_costs(path):
    """{(source function, file): Ir} over the repository's own C files, from
    callgrind_annotate's line-level output: static helpers inlined into
    pm_map_next or work_cb are named by the source lines they own."""
    out = subprocess.run(["callgrind_annotate", "--auto=yes", "--threshold=100",
                          path], capture_output=True, text=True, check=True).stdout
    costs = collections.Counter()
    fname, line = None, 0
    for ln in out.splitlines():
        if ln.startswith("-- Auto-annotated source: "):
            f = ln.split(": ", 1)[1].strip()
            f = os.path.abspath(f)  # relative when under the current directory
            fname = f if f.startswith(REPO + "/") else None
            line = 1
            continue
        if ln.startswith("The following files") or "events annotated" in ln:
            fname = None  # the closing lists and totals
        if fname is None:
            continue
        m = re.match(r"^-- line (\d+) -+", ln)
        if m:
            line = int(m.group(1))
            continue
        if ln.lstrip().startswith("=>") or ln.startswith("-----") or \
                ln.startswith("-- "):
            continue
        m = SRC.match(ln)
        if not m or m.group(2).startswith("=> "):
            continue  # a call's inclusive cost, not a source line
        if m.group(1) != ".":
            costs[(fname, line)] += int(m.group(1).replace(",", ""))
        line += 1
    by_func = collections.Counter()
    for (f, ln), c in costs.items():
        by_func[(_enclosing(f, ln), os.path.relpath(f, REPO))] += c
    return by_func


_DEFS = {}
_DEF = re.compile(r"^(?!typedef|struct\s+\w+\s*\{|#|\s|/|\*|\})[^;=(]*?\b(\w+)\s*\(")


def _enclosing(path, line):
    """The name of the C function whose definition holds `line` of `path`
    (definitions start at column 0, their body's brace at column 0)."""
    if path not in _DEFS:
        defs = []
        try:
            with open(path) as f:
                lines = f.read().split("\n")
        except OSError:
            lines = []
        for i, ln in enumerate(lines):
            m = _DEF.match(ln)
            if not m or ln.rstrip().endswith(";"):
                continue
            # The body opens at column 0 within the next few lines.
            for j in range(i, min(i + 6, len(lines))):
                if lines[j].startswith("{"):
                    defs.append((i + 1, m.group(1)))
                    break
                if lines[j].rstrip().endswith(";"):
                    break
        _DEFS[path] = defs
    name = "(file scope)"
    for start, fn in _DEFS[path]:
        if start > line:
            break
        name = fn
    return name


def run_cg(setup, stmt, n, keep=None, tag="", selfcost=False, spin_off=True):
    """Runs one script under callgrind. Returns (parent, [workers]), each a
    dict: total, wait, counted (= total - wait), self (if selfcost).
    spin_off=False counts the spin and subtracts `pm__spin_until` inclusive
    instead (for statements after a map made outside the measured one: a
    toggle inside that map's spin would turn collection on)."""
    d = tempfile.mkdtemp(prefix="pm_i17_")
    try:
        with open(os.path.join(d, "run.py"), "w") as f:
            f.write(script(setup, stmt))
        env = dict(os.environ, PM_STOP_GRACE_MS="30000")
        p = subprocess.run(
            ["valgrind", "--tool=callgrind", "--collect-atstart=no",
             "--toggle-collect=_operator_call"] +
            (["--toggle-collect=pm__spin_until"] if spin_off else []) +
            [PY, "run.py", str(n)],
            cwd=d, env=env, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit("callgrind run failed ({} n={}):\n{}".format(
                tag, n, p.stderr[-3000:]))
        parent, workers = None, []
        for path in sorted(glob.glob(os.path.join(d, "callgrind.out.*"))):
            calls = collections.Counter()
            inc_f, total = annotate(path, True, calls)
            if total == 0:
                continue  # a worker of a map made before the measured statement
            rec = {"total": total}
            if "slot_main" in inc_f:
                rec["wait"] = inc_f.get("worker_wait", 0)
                workers.append(rec)
            else:
                # With spin_off, pm__spin_until is not collected at all.
                rec["wait"] = inc_f.get("pm__spin_until", 0)
                if parent is not None:
                    sys.exit("two parent-like callgrind files in " + d)
                parent = rec
            rec["counted"] = rec["total"] - rec["wait"]
            rec["incl"] = inc_f
            # Results read by the parent: one pm_map_next call per task (and
            # one at the end); adaptive chunks make it vary with timing.
            rec["tasks"] = calls.get("pm_map_next", 0)
            if selfcost:
                rec["self"], _ = annotate(path, False)
                rec["src"] = source_costs(path)
            if keep:
                os.makedirs(keep, exist_ok=True)
                kind = "worker" if rec in workers else "parent"
                shutil.copy(path, os.path.join(keep, "callgrind.{}.n{}.{}.{}".format(
                    tag, n, kind, path.rsplit(".", 1)[1])))
        return parent, workers
    finally:
        shutil.rmtree(d, ignore_errors=True)


def fmt(x):
    return "–" if x is None else "{:,}".format(int(round(x)))


def build_info():
    import parmapper
    head = subprocess.run(["git", "-C", os.path.dirname(HERE), "log", "-1",
                           "--format=%h %s"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", os.path.dirname(HERE), "status",
                            "--porcelain", "--untracked-files=no", "--",
                            "engine", "binding", "python", "setup.py"],
                           capture_output=True, text=True).stdout.strip()
    code = subprocess.run(["git", "-C", os.path.dirname(HERE), "log", "-1",
                           "--format=%h", "--", "engine", "binding", "python",
                           "setup.py"], capture_output=True, text=True).stdout.strip()
    return ("parmapper from {} (tree at {}; engine, binding and python/ last "
            "changed at {}{}), Python {}".format(
                os.path.dirname(parmapper.__file__), head[:60], code,
                ", with uncommitted changes" if dirty else "",
                sys.version.split()[0]))


def table(n, keep, cases=None):
    print("<!-- per_item_table.py table {}: {} -->".format(n, build_info()))
    print()
    print("| case | parent / item | workers / item (all) | goal (parent / workers) "
          "| items per task (n; 2n) |")
    print("|---|---:|---:|---|---|")
    res = {}
    for key, (label, setup, stmt) in CASES.items():
        if cases and key not in cases:
            continue
        a = run_cg(setup, stmt, n, keep, key)
        b = run_cg(setup, stmt, 2 * n, keep, key)
        par = (b[0]["counted"] - a[0]["counted"]) / n
        wk = None
        if a[1] or b[1]:
            wk = (sum(w["counted"] for w in b[1]) -
                  sum(w["counted"] for w in a[1])) / n
        res[key] = (par, wk)
        goal = ""
        if key in GOALS:
            gp, gw = GOALS[key]
            parts = ["≤ {:,} {}".format(gp, "met" if par <= gp else "MISSED")]
            if gw is not None:
                parts.append("≤ {:,} {}".format(
                    gw, "met" if wk is not None and wk <= gw else "MISSED"))
            goal = " / ".join(parts)
        ipt = ""
        if a[0]["tasks"] and b[0]["tasks"]:
            ipt = "{:.0f}; {:.0f}".format(n / a[0]["tasks"], 2 * n / b[0]["tasks"])
        print("| {} | {} | {} | {} | {} |".format(label, fmt(par), fmt(wk), goal, ipt),
              flush=True)
    if cases:
        return res
    print()
    print("Start-up: the parent's instructions for the whole measured statement "
          "(no difference taken; polling not counted):")
    print()
    print("| case | parent |")
    print("|---|---:|")
    st = {}
    for key, label, setup, stmt in STARTUP:
        p, _ = run_cg(setup, stmt, 4, keep, key, spin_off=False)
        st[key] = p["counted"]
        print("| {} | {} |".format(label, fmt(p["counted"])), flush=True)
    print()
    print("First call: {} instructions of the cold call's {} are the import of "
          "`gc` (cold minus `gc` imported before); {} in all are first-call "
          "costs (cold minus warm).".format(
              fmt(st["start_cold"] - st["start_gc"]), fmt(st["start_cold"]),
              fmt(st["start_cold"] - st["start_warm"])))
    return res


# --- the function-level split ----------------------------------------------

SPLIT_CASES = ["default_range", "cs1_range", "tuple10"]
# Functions of the workers' waiting outside the spin (subtracted with
# `worker_wait`'s inclusive cost; marked in the split).
WAITING = {"worker_wait", "worker_wait_inner", "pm__bell_sleep"}


def _per_item(recs_a, recs_b, field, n):
    """{function: (cost at 2n - cost at n) / n}, summed over the processes."""
    sa, sb = collections.Counter(), collections.Counter()
    for r in recs_a:
        sa.update(r[field])
    for r in recs_b:
        sb.update(r[field])
    return {f: (sb[f] - sa[f]) / n for f in set(sa) | set(sb)}


def split(n, top, keep, cases=None):
    print("<!-- per_item_table.py split {}: {} -->".format(n, build_info()))
    print()
    print("Per item (n to 2n), per function: self = its own instructions, "
          "inclusive = with what it calls. Rows: the {} largest by self cost and "
          "the {} largest by inclusive cost below the side's own total "
          "(callers such as `MapIter_next` or `work_cb` hold almost all of it "
          "and are left out when they reach 98% of it).".format(top, top))
    for key in cases or SPLIT_CASES:
        label, setup, stmt = CASES[key]
        a = run_cg(setup, stmt, n, keep, key, selfcost=True)
        b = run_cg(setup, stmt, 2 * n, keep, key, selfcost=True)
        sides = [("parent", [a[0]], [b[0]]), ("workers (all)", a[1], b[1])]
        print()
        print("#### {} (n={:,} and {:,})".format(label, n, 2 * n))
        if a[0]["tasks"] and b[0]["tasks"]:
            print()
            print("Items per task: {:.0f} at n, {:.0f} at 2n.".format(
                n / a[0]["tasks"], 2 * n / b[0]["tasks"]))
        for side, ra, rb in sides:
            counted = (sum(r["counted"] for r in rb) -
                       sum(r["counted"] for r in ra)) / n
            wait = (sum(r["wait"] for r in rb) - sum(r["wait"] for r in ra)) / n
            selfc = _per_item(ra, rb, "self", n)
            incl = _per_item(ra, rb, "incl", n)
            by_self = sorted(selfc, key=lambda f: -selfc[f])[:top]
            below = [f for f in incl if incl[f] < 0.98 * counted]
            by_incl = sorted(below, key=lambda f: -incl[f])[:top]
            rows = sorted(set(by_self) | set(by_incl),
                          key=lambda f: (-incl.get(f, 0), -selfc.get(f, 0)))
            print()
            if side == "parent":
                print("{}: {} per item counted".format(side, fmt(counted)))
            else:
                print("{}: {} per item counted (not counted: `worker_wait` outside "
                      "the spin, {} per item)".format(side, fmt(counted), fmt(wait)))
            print()
            print("| function | self / item | inclusive / item |")
            print("|---|---:|---:|")
            for f in rows:
                if max(selfc.get(f, 0), incl.get(f, 0)) < 1:
                    continue
                mark = " (waiting)" if f in WAITING else ""
                inc_v = incl.get(f, 0)
                # A caller of the whole side (or recursive, such as the eval
                # loop, whose inclusive cost callgrind counts once per level).
                inc_s = "(caller)" if inc_v >= 0.98 * counted else "{:.0f}".format(inc_v)
                print("| `{}`{} | {:.0f} | {} |".format(
                    f, mark, selfc.get(f, 0), inc_s))
            rest = sum(v for f, v in selfc.items() if f not in by_self)
            print("| (self cost of all others) | {:.0f} | |".format(rest))
            # The repository's own code by source function: what callgrind
            # books to pm_map_next or work_cb is split among the static
            # helpers inlined there.
            src = _per_item(ra, rb, "src", n)
            own = sum(src.values())
            print()
            print("{}, the binding's and the engine's own instructions by source "
                  "function (inlined helpers named; {} per item in all):".format(
                      side, fmt(own)))
            print()
            print("| source function | file | self / item |")
            print("|---|---|---:|")
            for (f, path), v in sorted(src.items(), key=lambda kv: -kv[1])[:top]:
                if v < 1:
                    break
                print("| `{}` | {} | {:.0f} |".format(f, path, v))
        sys.stdout.flush()


# --- system calls ------------------------------------------------------------

SYSCALL = re.compile(r"^(?:\d+\s+)?([a-z_0-9]+)\(")


def strace_counts(stmt, n):
    d = tempfile.mkdtemp(prefix="pm_i17s_")
    try:
        with open(os.path.join(d, "run.py"), "w") as f:
            f.write(script("", stmt))
        p = subprocess.run(["strace", "-f", "-ff", "-o", os.path.join(d, "tr"),
                            PY, "run.py", str(n)], cwd=d, capture_output=True,
                           text=True)
        if p.returncode != 0:
            sys.exit("strace run failed:\n" + p.stderr[-3000:])
        parent, workers = collections.Counter(), collections.Counter()
        nworkers = 0
        for path in glob.glob(os.path.join(d, "tr.*")):
            c = collections.Counter()
            first = None
            with open(path, errors="replace") as f:
                for ln in f:
                    m = SYSCALL.match(ln)
                    if m:
                        first = first or m.group(1)
                        c[m.group(1)] += 1
            if first == "execve":
                parent.update(c)
            else:
                workers.update(c)
                nworkers += 1
        return parent, workers, nworkers
    finally:
        shutil.rmtree(d, ignore_errors=True)


def syscalls(n):
    print("<!-- per_item_table.py syscalls {}: {} -->".format(n, build_info()))
    print()
    print("System calls, `strace -f -ff` over one script each (Python start-up "
          "included), N=2, `inc`, `range` input; per item = (count at {:,} items "
          "- count at 4 items) / {:,}, the median of three runs (lowest..highest "
          "in brackets):".format(n, n - 4))
    print()
    print("| case | side | 4 items | {:,} items (median) | per item | goal | most "
          "frequent beyond the 4-item run |".format(n))
    print("|---|---|---:|---:|---:|---|---|")
    for label, kw in [("default settings", ""), ("`chunksize=1`", ", chunksize=1")]:
        stmt = "r = list(parmapper.parmap(inc, range(n), N=2{})); del r".format(kw)
        small = strace_counts(stmt, 4)
        runs = [strace_counts(stmt, n) for _ in range(3)]
        for i, side in ((0, "parent"), (1, "workers (all)")):
            # The median of three runs (futex sleeps and wakes depend on
            # timing, and strace slows every system call down).
            runs.sort(key=lambda r: sum(r[i].values()))
            a, b = small[i], runs[1][i]
            spread = "{:.4f}..{:.4f}".format(
                *((sum(runs[j][i].values()) - sum(a.values())) / (n - 4)
                  for j in (0, 2)))
            d = collections.Counter(b)
            d.subtract(a)
            top = ", ".join("{} {:+,}".format(k, v) for k, v in d.most_common(4)
                            if v)
            ta, tb = sum(a.values()), sum(b.values())
            per = (tb - ta) / (n - 4)
            # Issue 17: "well under 0.1" per item with chunksize=1.
            goal = ("< 0.1 " + ("met" if per < 0.1 else "MISSED")
                    if "chunksize" in label else "")
            print("| {} | {} | {:,} | {:,} | {:.4f} ({}) | {} | {} |".format(
                label, side, ta, tb, per, spread, goal, top), flush=True)


def main(argv):
    args = list(argv)
    keep, top = None, 15
    if "--keep" in args:
        i = args.index("--keep")
        keep = os.path.abspath(args[i + 1])
        del args[i:i + 2]
    if "--top" in args:
        i = args.index("--top")
        top = int(args[i + 1])
        del args[i:i + 2]
    cases = None
    if "--cases" in args:
        i = args.index("--cases")
        cases = args[i + 1].split(",")
        del args[i:i + 2]
        bad = [c for c in cases if c not in CASES]
        if bad:
            sys.exit("unknown case(s) {}; known: {}".format(
                ", ".join(bad), ", ".join(CASES)))
    mode = args[0] if args else "table"
    if mode == "table":
        table(int(args[1]) if len(args) > 1 else 20000, keep, cases)
    elif mode == "split":
        split(int(args[1]) if len(args) > 1 else 20000, top, keep, cases)
    elif mode == "syscalls":
        syscalls(int(args[1]) if len(args) > 1 else 100000)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
