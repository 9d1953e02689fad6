"""Results are delivered while the input's next() blocks (issue 14, item 6),
on every path, and reading the input in a thread of its own keeps every
input rule: each item is sent as it was when it was yielded, the items
before an input's exception are delivered first, unpicklable items fail
alone, and the map's end stops the thread."""
import concurrent.futures
import sqlite3
import threading
import time

import pytest

import parmapper

# A deadline for what must happen at once: generous (a busy machine), and
# the test fails only when it passes, never on a timing goal.
DEADLINE = 30.0

PAUSE_PATHS = {
    "procs": dict(N=2),
    "procs-chunk1": dict(N=2, chunksize=1),
    "procs-chunk4": dict(N=2, chunksize=4),
    "procs-unordered": dict(N=2, ordered=False),
    "procs-threads": dict(N=2, Nt=2),
    "procs-timeout": dict(N=2, timeout=60),
    "one-process-retries": dict(N=1, retries=1),
    "threads": dict(N=1, Nt=2),
    "threads-chunk4": dict(N=1, Nt=2, chunksize=4),
    "threads-unordered": dict(N=1, Nt=2, ordered=False),
    "executor": "executor",
    "pool-imap": "pool-imap",
}


def ten(x):
    return x * 10


def pausing(resume, n_before=5, n_after=3):
    """Yields n_before items, then blocks until `resume` is set (or the
    deadline: then it says so), then yields n_after more."""
    for i in range(n_before):
        yield i
    if not resume.wait(DEADLINE):
        raise AssertionError("the input's pause ended on the deadline: the "
                             "results before it never came")
    for i in range(n_before, n_before + n_after):
        yield i


@pytest.mark.parametrize("path", sorted(PAUSE_PATHS))
def test_results_arrive_while_the_input_blocks(path):
    # The source yields 5 items, then blocks until the caller has their 5
    # results: before, nothing came until the pause ended.
    resume = threading.Event()
    opts = PAUSE_PATHS[path]
    ex = pool = None
    if opts == "executor":
        ex = concurrent.futures.ThreadPoolExecutor(2)
        it = parmapper.parmap(ten, pausing(resume), executor=ex)
    elif opts == "pool-imap":
        pool = parmapper.Pool(2)
        it = pool.imap(ten, pausing(resume))
    else:
        it = parmapper.parmap(ten, pausing(resume), **opts)
    got = []
    try:
        for r in it:
            got.append(r)
            if len(got) == 5:
                resume.set()
    finally:
        resume.set()
        if ex is not None:
            ex.shutdown()
        if pool is not None:
            pool.close()
            pool.join()
    assert sorted(got) == [x * 10 for x in range(8)]


def test_input_thread_false_reads_in_the_callers_thread():
    # An iterator bound to its thread (sqlite3's check_same_thread) works
    # with input_thread=False; with the default it fails with its own error,
    # raised after the results before it, with a note saying why.
    import contextlib
    with contextlib.closing(sqlite3.connect(":memory:")) as db:
        _sqlite_cases(db)


def _sqlite_cases(db):
    db.execute("create table t (x)")
    db.executemany("insert into t values (?)", [(i,) for i in range(20)])
    got = list(parmapper.parmap(lambda row: row[0] + 1,
                                db.execute("select x from t order by x"),
                                N=2, input_thread=False))
    assert got == list(range(1, 21))
    with pytest.raises(sqlite3.ProgrammingError) as ei:
        list(parmapper.parmap(lambda row: row[0] + 1,
                              db.execute("select x from t order by x"), N=2))
    notes = "\n".join(getattr(ei.value, "__notes__", []))
    assert "input_thread=False" in notes


def test_input_thread_must_be_a_bool():
    with pytest.raises(TypeError, match="input_thread"):
        parmapper.parmap(ten, iter(range(3)), N=2, input_thread=1)


# --- each item as it was when it was yielded ----------------------------------

def refilled_list(n):
    row = [0, 0, 0]
    for i in range(n):
        row[:] = [i, i, i]
        yield row


class Box:
    def __init__(self, v):
        self.v = v


def refilled_object(n):
    b = Box(0)
    for i in range(n):
        b.v = i
        yield b


def refilled_array(n):
    np = pytest.importorskip("numpy")
    a = np.zeros(100_000)  # past the out-of-band size: sent from its memory
    for i in range(n):
        a[:] = i
        yield a


def slowly(gen, every=7):
    """The same items, with a pause every few (the reader runs ahead of
    the map's asking only while the input is quick)."""
    for k, x in enumerate(gen):
        if k % every == 0:
            time.sleep(0.002)
        yield x


@pytest.mark.parametrize("opts", [dict(N=2), dict(N=2, chunksize=1),
                                  dict(N=2, chunksize=16)])
@pytest.mark.parametrize("make,check", [
    (refilled_list, lambda r: r == [r[0]] * 3),
    (refilled_object, None),
    (refilled_array, None),
])
def test_an_input_that_reuses_its_object_sends_each_item_as_yielded(
        opts, make, check):
    n = 300 if make is not refilled_array else 40

    if make is refilled_list:
        def fun(row):
            return row[0] if row == [row[0]] * 3 else -1
    elif make is refilled_object:
        def fun(b):
            return b.v
    else:
        def fun(a):
            return int(a[0]) if (a == a[0]).all() else -1
    assert list(parmapper.parmap(fun, make(n), **opts)) == list(range(n))
    assert list(parmapper.parmap(fun, slowly(make(n)), **opts)) == list(range(n))


def test_mixed_items_keep_their_order_and_values():
    # Compact values, pickled ones, large bytes (sent from the object) and
    # arrays with large buffers (tasks of their own), in one input.
    np = pytest.importorskip("numpy")

    def mixed():
        for i in range(200):
            k = i % 5
            if k == 0:
                yield i
            elif k == 1:
                yield {"i": i}
            elif k == 2:
                yield bytes([i % 256]) * 100_000
            elif k == 3:
                yield np.full(20_000, i)
            else:
                yield (i, "s", 1.5, None, [i])

    def key(x):
        if isinstance(x, int):
            return x
        if isinstance(x, dict):
            return x["i"]
        if isinstance(x, bytes):
            return (len(x), x[0])
        if isinstance(x, tuple):
            return x[0]
        return int(x[0])

    want = [key(x) for x in mixed()]
    for opts in (dict(N=2), dict(N=2, chunksize=3), dict(N=2, ordered=False)):
        got = list(parmapper.parmap(key, mixed(), **opts))
        if not opts.get("ordered", True):
            got, want2 = sorted(got, key=repr), sorted(want, key=repr)
            assert got == want2
        else:
            assert got == want


# --- the input rules, through the thread --------------------------------------

def test_unpicklable_item_fails_alone_naming_it():
    def items():
        for i in range(10):
            yield (lambda: i) if i == 6 else i

    got = list(parmapper.parmap(lambda x: x, items(), N=2,
                                exception="return"))
    assert got[:6] == list(range(6)) and got[7:] == list(range(7, 10))
    assert isinstance(got[6], parmapper.ItemPicklingError)
    assert "item 6" in str(got[6])


def test_input_exception_after_the_results_before_it():
    def items():
        yield from range(7)
        raise KeyError("input broke")

    got = []
    with pytest.raises(KeyError, match="input broke"):
        for r in parmapper.parmap(ten, items(), N=2):
            got.append(r)
    assert got == [x * 10 for x in range(7)]


def test_input_base_exception_ends_the_map():
    def items():
        yield from range(3)
        raise SystemExit(7)

    with pytest.raises(SystemExit):
        list(parmapper.parmap(ten, items(), N=2))


def test_closing_the_map_stops_the_input_thread():
    # The thread stops before its next read once the map is closed: the
    # input is not drained in the background.
    read = []

    def items():
        for i in range(10**6):
            read.append(i)
            yield i

    it = parmapper.parmap(ten, items(), N=2)
    assert next(it) == 0
    it.close()
    time.sleep(0.3)
    n = len(read)
    time.sleep(0.3)
    assert len(read) == n
    assert n < 10**5
    assert not [t for t in threading.enumerate()
                if t.name == "parmapper-input" and t.is_alive()]


def test_dropped_map_stops_the_input_thread_and_its_workers():
    import gc

    def items():
        i = 0
        while True:
            yield i
            i += 1

    it = parmapper.parmap(ten, items(), N=2)
    assert next(it) == 0
    pids = it._pids()
    del it
    gc.collect()
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline and [
            t for t in threading.enumerate()
            if t.name == "parmapper-input" and t.is_alive()]:
        time.sleep(0.01)
    assert not [t for t in threading.enumerate()
                if t.name == "parmapper-input" and t.is_alive()]
    import os
    for p in pids:  # the workers went with the map
        with pytest.raises(ProcessLookupError):
            os.kill(p, 0)


def test_context_variables_reach_the_input():
    import contextvars
    import decimal
    var = contextvars.ContextVar("var", default="unset")
    var.set("caller's")
    seen = []

    def items():
        seen.append((var.get(), decimal.getcontext().prec))
        yield from range(3)

    with decimal.localcontext() as ctx:
        ctx.prec = 7
        assert list(parmapper.parmap(ten, items(), N=2)) == [0, 10, 20]
    assert seen == [("caller's", 7)]


# --- dicts in the compact codec -----------------------------------------------

DICTS = [
    {},
    {"a": 1, "b": 2.5, "c": None, "d": True, "e": "s", "f": b"b"},
    {1: "one", 2.5: "f", (1, "t"): [1, 2], None: {"nested": {"x": [1]}}},
    {True: 1, 0: 2},              # True and 0 are distinct keys
    {"order": 1, "kept": 2, "as": 3, "inserted": 4},
    {"big": bytes(100_000), "small": b"x"},  # a spliced value inside
    {"obj": Box(3)},              # a value only pickle holds
]


def _dict_pair(x):
    d = {"x": x}
    return {"a": d, "b": d, "c": [d]}


@pytest.mark.parametrize("opts", [dict(N=2), dict(N=2, chunksize=1),
                                  dict(N=2, input_thread=False)])
def test_dicts_round_trip_as_items_and_results(opts):
    def gen():
        yield from DICTS

    def same(d):
        return d

    got = list(parmapper.parmap(same, gen(), **opts))
    assert len(got) == len(DICTS)
    for g, d in zip(got, DICTS):
        if "obj" in d:
            assert g["obj"].v == 3
            continue
        assert g == d and list(g) == list(d)
        assert [type(k) for k in g] == [type(k) for k in d]
    # A dict held twice in one result (or item) stays one object.
    for r in parmapper.parmap(_dict_pair, range(4), **opts):
        assert r["a"] is r["b"] and r["c"][0] is r["a"]
    for r in parmapper.parmap(lambda v: v["a"] is v["b"] is v["c"][0],
                              (_dict_pair(i) for i in range(4)), **opts):
        assert r is True


def test_dict_subclasses_keep_their_type():
    import collections
    items = [collections.OrderedDict(a=1), collections.defaultdict(int, a=2),
             collections.Counter("aab")]
    got = list(parmapper.parmap(lambda d: d, iter(items), N=2))
    assert got == items and [type(g) for g in got] == [type(d) for d in items]


# --- found by a hostile tester ------------------------------------------------

REFILLED_BOX = r'''
import sys
sys.path.insert(0, {path!r})
import parmapper

def gen(n, size):
    box = {{}}                          # one dict, a new large bytes each time
    for i in range(n):
        box["data"] = bytes([i % 256]) * size(i)
        yield box

def gen_list(n, size):                 # a list, growing sizes: each one
    box = [None]                       # mmapped, unmapped when replaced
    for i in range(n):
        box[0] = bytes([i % 256]) * size(i)
        yield box

def f(x):
    data = x[0] if isinstance(x, list) else x["data"]
    return (len(data), data[0], data[-1])
for gen, n, size in ((gen, 100, lambda i: 100_000),
                     (gen, 30, lambda i: (1 << 20) * (1 + i % 29)),
                     (gen_list, 29, lambda i: (i + 1) << 20)):
    want = list(map(f, gen(n, size)))
    for opts in ({opts}):
        got = list(parmapper.parmap(f, gen(n, size), **opts))
        if not opts.get("ordered", True):
            got, want2 = sorted(got), sorted(want)
        else:
            want2 = want
        assert got == want2, (opts, sum(a != b for a, b in zip(got, want2)))
print("ok")
'''


@pytest.mark.parametrize("opts", [
    "dict(N=2), dict(N=2, chunksize=1), dict(N=2, chunksize=3)",
    "dict(N=2, Nt=2), dict(N=2, ordered=False)",
    "dict(N=2, input_thread=False, chunksize=1), dict(N=2, input_thread=False)",
])
def test_large_bytes_dropped_by_a_refilled_container(opts):
    # The task kept the item (the dict) alive, not the large bytes it
    # referred to, which the input dropped when it refilled the dict: wrong
    # results (93 of 100) through the input's thread, and a segmentation
    # fault of the caller when the bytes' memory was reused before it was
    # written.  In a child interpreter: a crash must fail only this test.
    # (With input_thread=False and chunks of several items, the items of one
    # chunk are the same dict as it was when the chunk was sent: documented;
    # only the absence of a crash is checked there.)
    import os
    import subprocess
    import sys
    path = os.path.dirname(os.path.dirname(parmapper.__file__))
    code = REFILLED_BOX.format(path=path, opts=opts)
    if "input_thread=False)" in opts:
        code = code.replace("assert got == want2,", "assert len(got) == n,")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "ok", (
        p.returncode, p.stdout[-2000:], p.stderr[-2000:])


def test_unpicklable_item_error_says_why():
    # The reason pickling failed was lost ("...: None") on the input
    # thread's path.
    class Bad:
        def __reduce__(self):
            raise ValueError("why it failed")

    got = list(parmapper.parmap(lambda x: x, iter([1, Bad(), 2]), N=2,
                                exception="return"))
    assert got[0] == 1 and got[2] == 2
    assert isinstance(got[1], parmapper.ItemPicklingError)
    assert "why it failed" in str(got[1]) and "item 1" in str(got[1])


REDUCE_CALLS = []


class Holder:
    """An item with a large buffer that counts its pickling."""

    def __init__(self, i):
        import numpy as np
        self.a = np.full(100_000, i)

    def __reduce__(self):
        REDUCE_CALLS.append(1)
        return (_holder, (self.a,))  # the array: out of band


def _holder(a):
    h = Holder.__new__(Holder)
    h.a = a
    return h


def test_an_item_with_large_buffers_is_pickled_once():
    # Its __reduce__ ran twice (the item pickled alone, then again as a
    # task of its own); a second call that raised ended the whole map.
    pytest.importorskip("numpy")
    del REDUCE_CALLS[:]
    got = list(parmapper.parmap(lambda h: int(h.a[0]),
                                (Holder(i) for i in range(10)), N=2))
    assert got == list(range(10))
    assert len(REDUCE_CALLS) == 10


@pytest.mark.parametrize("input_thread", [True, False])
def test_growing_bytes_in_a_reused_list_do_not_crash_the_caller(input_thread):
    # The hostile tester's script: SIGSEGV of the caller, 5 runs in 5, on
    # both ways of reading the input (each bytes object is mmapped, and
    # unmapped when the list drops it, before its task was written).
    import os
    import subprocess
    import sys
    path = os.path.dirname(os.path.dirname(parmapper.__file__))
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "import parmapper\n"
        "def gen():\n"
        "    box = [None]\n"
        "    for i in range(1, 30):\n"
        "        box[0] = b'x' * (i << 20)\n"
        "        yield box\n"
        "print(sum(parmapper.parmap(lambda b: len(b[0]), gen(), N=2,"
        " input_thread=%r)))\n" % (path, input_thread))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0, (p.returncode, p.stderr[-2000:])
    if input_thread:  # each item as it was when yielded
        assert int(p.stdout) == sum(i << 20 for i in range(1, 30))


# --- found by a second hostile tester -----------------------------------------

def _run_child(code, timeout=120):
    import os
    import subprocess
    import sys
    path = os.path.dirname(os.path.dirname(parmapper.__file__))
    p = subprocess.run([sys.executable, "-c",
                        "import sys; sys.path.insert(0, %r)\n" % path + code],
                       capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, (p.returncode, p.stdout[-2000:],
                               p.stderr[-2000:])
    return p.stdout


def test_a_worker_cannot_drive_its_callers_map():
    # A worker is a fork of the caller and holds copies of its other maps:
    # next() on one of them ran it there (the pid check was skipped in
    # workers), crashing the worker or killing the caller's own workers.
    out = _run_child(
        "import parmapper, time\n"
        "A = parmapper.parmap(lambda x: (time.sleep(0.001), x)[1], range(200),"
        " N=2, chunksize=1)\n"
        "next(A)\n"
        "def g(x):\n"
        "    try:\n"
        "        return ('ran', next(A))\n"
        "    except Exception as e:\n"
        "        return type(e).__name__\n"
        "print(list(parmapper.parmap(g, range(2), N=2, chunksize=1)))\n"
        "print(len(list(A)))\n")
    assert out.split("\n")[:2] == ["['ParmapperError', 'ParmapperError']",
                                   "199"]


@pytest.mark.parametrize("path", ["threads", "executor"])
def test_thread_paths_do_not_spin_while_results_are_pending(path):
    # With a generator input and no room for another chunk, the map polled
    # with a zero timeout: a whole core for as long as results were pending
    # (1.05 s of CPU in 1.07 s).
    import resource
    kw = dict(N=1, Nt=2)
    ex = None
    if path == "executor":
        ex = concurrent.futures.ThreadPoolExecutor(2)
        kw = dict(executor=ex)

    def f(x):
        time.sleep(0.1)
        return x

    r0 = resource.getrusage(resource.RUSAGE_SELF)
    got = list(parmapper.parmap(f, (i for i in range(20)), **kw))
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    if ex is not None:
        ex.shutdown()
    assert got == list(range(20))
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    assert cpu < 0.5, cpu  # about a second of waiting, not of spinning


def test_a_tuple_held_twice_keeps_its_containers_shared():
    # t = ({},); [t, t]: the codec rebuilt two dicts, where pickle and a
    # serial map keep one (a change through one place showed in one only).
    t = ({},)
    r = next(parmapper.parmap(lambda x: [t, t], range(1), N=2))
    assert r[0][0] is r[1][0]
    u = ([],)
    for opts in (dict(N=2), dict(N=2, input_thread=False)):
        assert list(parmapper.parmap(lambda it: it[0][0] is it[1][0],
                                     iter([[u, u]]), **opts)) == [True]
    s = (1, 2)  # a tuple of scalars may come back as copies: values only
    assert list(parmapper.parmap(lambda x: [s, s], range(2), N=2)) == \
        [[s, s], [s, s]]


@pytest.mark.parametrize("make", [lambda x: "r%d" % x * 1000, lambda x: Box(x),
                                  lambda x: bytes(70_000) + bytes([x])],
                         ids=["str", "object", "large-bytes"])
@pytest.mark.parametrize("chunksize", [1, 3, None])
def test_one_item_results_are_not_kept_by_the_map(make, chunksize):
    # The one-element list reused for chunksize=1 kept each result alive
    # until the next one (the last one until the iterator was freed); a
    # chunk kept each delivered result until the whole chunk was handed out.
    import sys
    it = parmapper.parmap(make, range(7), N=2, chunksize=chunksize)
    for r in it:
        assert sys.getrefcount(r) == 2  # r and the argument, nothing else


class Interrupting:
    def __reduce__(self):
        raise KeyboardInterrupt


@pytest.mark.parametrize("input_thread", [True, False])
def test_keyboard_interrupt_while_pickling_an_item_propagates(input_thread):
    # With input_thread=False it became an ItemPicklingError, returned as
    # a value with exception='return': a Ctrl+C swallowed.
    with pytest.raises(KeyboardInterrupt):
        list(parmapper.parmap(lambda x: x, iter([1, Interrupting(), 2]), N=2,
                              exception="return", input_thread=input_thread))


@pytest.mark.parametrize("opts", ["N=1, Nt=2", "executor=ex"])
def test_a_thread_map_continued_in_a_forked_child_raises(opts):
    # It waited for ever there (the child has none of the pool's threads);
    # the worker-process path says the map belongs to another process.
    out = _run_child(
        "import concurrent.futures, os, parmapper\n"
        "ex = concurrent.futures.ThreadPoolExecutor(2)\n"
        "it = parmapper.parmap(lambda x: x, (i for i in range(100)), %s)\n"
        "next(it)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    try:\n"
        "        list(it)\n"
        "        print('ran')\n"
        "    except Exception as e:\n"
        "        print(type(e).__name__)\n"
        "    os._exit(0)\n"
        "os.waitpid(pid, 0)\n"
        "print(len(list(it)))\n"
        "ex.shutdown()\n" % opts, timeout=60)
    assert out.split() == ["ParmapperError", "99"]


@pytest.mark.parametrize("chunksize", [1, 100, None])
def test_a_process_map_continued_in_a_forked_child_raises(chunksize):
    # The results of a compact record are decoded as they are asked for,
    # from where the engine holds the record: in a fork of the caller that
    # memory is not mapped (or is the caller's to release), so the child
    # must be told the map is another process's, not crash or read it
    # (chunksize=100: the child starts in the middle of a record).
    out = _run_child(
        "import os, parmapper\n"
        "it = parmapper.parmap(lambda x: x * 3, range(10000), N=2,\n"
        "                      chunksize=%r)\n"
        "first = next(it)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    try:\n"
        "        list(it)\n"
        "        print('ran')\n"
        "    except Exception as e:\n"
        "        print(type(e).__name__)\n"
        "    os._exit(0)\n"
        "_, st = os.waitpid(pid, 0)\n"
        "print(st)\n"
        "print([first] + list(it) == [x * 3 for x in range(10000)])\n"
        % chunksize, timeout=60)
    assert out.split() == ["ParmapperError", "0", "True"]


@pytest.mark.parametrize("chunksize", [1, 3, 10])
def test_a_fork_while_a_result_is_unpickled_leaves_a_working_child(chunksize):
    # A result the codec cannot hold comes as a pickle, which the caller
    # unpickled straight from the ring: a __reduce__ callable that forks
    # left the unpickler of the child reading memory the child does not
    # have (SIGSEGV, found by a hostile test). The child must get the map's
    # refusal, the caller every result.
    out = _run_child(
        "import os, parmapper\n"
        "FORKED = []\n"
        "class R:\n"
        "    def __init__(self, v): self.v = v\n"
        "    def __reduce__(self): return (hook, (self.v,))\n"
        "def hook(v):\n"
        "    if v == 5 and not FORKED:\n"
        "        FORKED.append(os.fork())\n"
        "    return ('R', v)\n"
        "def mk(x): return R(x) if x == 5 else x\n"
        "got = []\n"
        "try:\n"
        "    for r in parmapper.parmap(mk, range(40), N=2, chunksize=%d):\n"
        "        got.append(r)\n"
        "except Exception as e:\n"
        "    got.append(type(e).__name__)\n"
        "if FORKED[0] == 0:\n"
        "    os._exit(0 if got[-1] == 'ParmapperError' else 3)\n"
        "print(os.waitpid(FORKED[0], 0)[1])\n"
        "print(got == [('R', 5) if x == 5 else x for x in range(40)])\n"
        % chunksize, timeout=60)
    assert out.split() == ["0", "True"]


@pytest.mark.parametrize("input_thread", [True, False])
def test_a_fork_while_an_item_is_unpickled_in_a_worker_leaves_a_clean_copy(
        input_thread):
    # The same in a worker: an item pickled into its task and unpickled
    # from the task ring by a __reduce__ callable that forks. The copy must
    # not fault; it leaves at once (exit 0) and runs nothing; the worker
    # goes on, and the item's result says how its copy ended.
    out = _run_child(
        "import os, parmapper\n"
        "class I:\n"
        "    def __init__(self, v): self.v = v\n"
        "    def __reduce__(self): return (hook, (self.v,))\n"
        "def hook(v):\n"
        "    if v != 5:\n"
        "        return v\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        return v\n"
        "    return ('status', os.waitpid(pid, 0)[1])\n"
        "items = (I(x) if x == 5 else x for x in range(20))\n"
        "r = list(parmapper.parmap(lambda x: x, items, N=2, chunksize=3,\n"
        "                          input_thread=%r))\n"
        "print(r[5])\n"
        "print(r[:5] + r[6:] == [x for x in range(20) if x != 5])\n"
        % input_thread, timeout=60)
    assert out.split("\n")[:2] == ["('status', 0)", "True"]
