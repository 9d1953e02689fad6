"""A runaway item never takes the caller down: OOM ordering (issue 18).

Each case runs in a child interpreter (``run_facts``) with a deadline.
"""
import os
import uuid

import pytest

ADJ = r'''
import parmapper

def adj(_):
    with open("/proc/self/oom_score_adj") as fh:
        return os.getpid(), int(fh.read())
'''


@pytest.mark.parametrize("N,Nt,ordered,chunksize", [
    (2, 1, True, None), (2, 2, False, 1), (3, 1, True, 4)])
def test_workers_volunteer_for_the_oom_killer(run_facts, N, Nt, ordered,
                                              chunksize):
    f = run_facts(ADJ + r'''
with open("/proc/self/oom_score_adj") as fh:
    mine = int(fh.read())
got = list(parmapper.parmap(adj, range(40), N=P["N"], Nt=P["Nt"],
                            ordered=P["ordered"], chunksize=P["chunksize"]))
# A replaced worker (retries after a death) volunteers too.
def die_once(x):
    if x == 2 and not os.path.exists(os.path.join(TMP, "died")):
        open(os.path.join(TMP, "died"), "w").close()
        os._exit(3)
    return adj(x)
again = list(parmapper.parmap(die_once, range(6), N=2, retries=1))
with open("/proc/self/oom_score_adj") as fh:
    after = int(fh.read())
emit(mine=mine, after=after, me=os.getpid(), got=got, again=again)
''', params={"N": N, "Nt": Nt, "ordered": ordered, "chunksize": chunksize})
    assert len(f["got"]) == 40 and len(f["again"]) == 6
    assert {a for _, a in f["got"] + f["again"]} == {1000}
    assert f["me"] not in {p for p, _ in f["got"]}
    # The caller keeps its own score.
    assert f["after"] == f["mine"] < 1000


def test_sigkill_is_reported_as_probably_the_oom_killer(run_facts):
    f = run_facts(r'''
import parmapper
def f(x):
    if x == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return x
try:
    list(parmapper.parmap(f, range(8), N=2, chunksize=1))
    e = None
except Exception as exc:
    e = exc
emit(e=exc_facts(e))
''')
    e = f["e"]
    assert e["type"] == "WorkerDiedError"
    assert e["seq_index"] == 3 and e["signal"] == 9
    assert "killed by signal 9 (SIGKILL)" in e["str"]
    # Nothing was short of memory: the engine does not claim it was.
    assert "probably by the kernel's OOM killer" in e["str"]
    assert e["seq_indices"][0] == 3


def _memcg(limit):
    """A memory cgroup of this test's own making, limited to ``limit``
    bytes: (procs file to join, directory), or pytest.skip saying why."""
    name = "parmapper-test-" + uuid.uuid4().hex[:12]
    v2 = "/sys/fs/cgroup"
    if os.path.exists(os.path.join(v2, "cgroup.controllers")):
        try:
            with open(os.path.join(v2, "cgroup.subtree_control")) as fh:
                if "memory" not in fh.read().split():
                    with open(os.path.join(v2, "cgroup.subtree_control"),
                              "w") as fh2:
                        fh2.write("+memory")
            d = os.path.join(v2, name)
            os.mkdir(d)
        except OSError as e:
            pytest.skip("cannot make a cgroup v2 with the memory controller "
                        "under {}: {}".format(v2, e))
        try:
            with open(os.path.join(d, "memory.max"), "w") as fh:
                fh.write(str(limit))
            if os.path.exists(os.path.join(d, "memory.swap.max")):
                with open(os.path.join(d, "memory.swap.max"), "w") as fh:
                    fh.write("0")
        except OSError as e:
            os.rmdir(d)
            pytest.skip("cannot set memory.max in {}: {}".format(d, e))
        return os.path.join(d, "cgroup.procs"), d
    v1 = "/sys/fs/cgroup/memory"
    if not os.path.exists(os.path.join(v1, "memory.limit_in_bytes")):
        pytest.skip("no cgroup v2 with a memory controller, nor a cgroup v1 "
                    "memory hierarchy, under /sys/fs/cgroup")
    d = os.path.join(v1, name)
    try:
        os.mkdir(d)
        with open(os.path.join(d, "memory.limit_in_bytes"), "w") as fh:
            fh.write(str(limit))
    except OSError as e:
        if os.path.isdir(d):
            os.rmdir(d)
        pytest.skip("cannot make a cgroup v1 memory cgroup with a limit "
                    "under {}: {}".format(v1, e))
    return os.path.join(d, "cgroup.procs"), d


def test_real_oom_kills_the_worker_not_the_caller(run_facts):
    """Under a real OOM the caller, holding more memory than the worker
    whose item runs away, survives; the item is named and said killed by the
    kernel's OOM killer."""
    limit = 400 << 20
    procs, d = _memcg(limit)
    try:
        f = run_facts(r'''
with open(P["procs"], "w") as fh:
    fh.write(str(os.getpid()))
import parmapper
MB = 1 << 20
BALLAST = os.path.join(TMP, "ballast")

def f(x):
    if x == 3:
        t = time.monotonic() + 20
        while not os.path.exists(BALLAST) and time.monotonic() < t:
            time.sleep(0.005)
        hog = []
        while True:  # runs away until the kernel steps in
            hog.append(b"\x01" * (8 * MB))
    return x

got, e, ballast = [], None, None
try:
    for r in parmapper.parmap(f, range(8), N=2, chunksize=1):
        got.append(r)
        if ballast is None:
            # The caller holds more than the runaway worker will: without
            # OOM ordering the kernel would pick the caller.
            ballast = b"\x02" * (250 * MB)
            open(BALLAST, "w").close()
except Exception as exc:
    e = exc
emit(e=exc_facts(e), got=got, ballast=len(ballast or b""))
''', params={"procs": procs}, timeout=60)
    finally:
        for _ in range(100):
            try:
                os.rmdir(d)
                break
            except OSError:
                import time
                time.sleep(0.05)
    e = f["e"]
    assert f["ballast"] == 250 << 20
    assert e is not None and e["type"] == "WorkerDiedError", f
    assert e["seq_index"] == 3 and e["signal"] == 9
    assert e["seq_indices"][0] == 3
    assert "OOM killer killed it for memory" in e["str"], e["str"]
    assert f["got"] == [0, 1, 2]


# ------------------------------------------------------- max_tasks_per_worker

RECYCLE = r'''
import parmapper

def log_run(x):
    fd = os.open(os.path.join(TMP, "runs"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"%d\n" % x)
    os.close(fd)

def f(x):
    log_run(x)
    return os.getpid(), x * 3

n = P["n"]
seq = range(n) if P["indexed"] else (i for i in range(n))
got = list(parmapper.parmap(f, seq, N=P["N"], Nt=P["Nt"],
                            ordered=P["ordered"], chunksize=P["chunksize"],
                            retries=P["retries"],
                            max_tasks_per_worker=P["limit"]))
with open(os.path.join(TMP, "runs")) as fh:
    runs = [int(x) for x in fh.read().split()]
emit(got=got, runs=runs, me=os.getpid())
'''


@pytest.mark.parametrize("N,Nt,ordered,chunksize,indexed,retries", [
    (2, 1, True, 1, True, 0),
    (2, 1, False, 1, False, 0),
    (2, 2, True, None, True, 0),
    (3, 1, True, 4, False, 1),
    (2, 2, False, None, False, 2),
    (1, 1, True, None, True, 0),
])
def test_max_tasks_per_worker_replaces_workers(run_facts, N, Nt, ordered,
                                               chunksize, indexed, retries):
    n, limit = 200, 7
    f = run_facts(RECYCLE, params={
        "n": n, "N": N, "Nt": Nt, "ordered": ordered, "chunksize": chunksize,
        "indexed": indexed, "retries": retries, "limit": limit})
    got = f["got"]
    values = [v for _, v in got]
    if ordered:
        assert values == [3 * i for i in range(n)]
    else:
        assert sorted(values) == [3 * i for i in range(n)]
    # Each item ran exactly once: none lost, none repeated by a retiring
    # worker.
    assert sorted(f["runs"]) == list(range(n))
    pids = [p for p, _ in got]
    assert f["me"] not in pids
    per = {p: pids.count(p) for p in set(pids)}
    # The task that reaches the limit is a worker's last; tasks hold at
    # most `limit` items (adaptive chunks are capped at it).
    most = limit + (chunksize or limit) - 1
    assert max(per.values()) <= most, per
    assert len(per) >= n // most, per


@pytest.mark.parametrize("value,exc,match", [
    (0, ValueError, "max_tasks_per_worker must be >= 1"),
    (-3, ValueError, "max_tasks_per_worker must be >= 1"),
    (2.5, TypeError, "max_tasks_per_worker must be a whole number"),
    ("4", TypeError, "max_tasks_per_worker must be a whole number"),
    (True, TypeError, "max_tasks_per_worker must be a whole number"),
    (1 << 64, ValueError, "max_tasks_per_worker must be below 2\\*\\*64"),
])
def test_max_tasks_per_worker_is_validated(value, exc, match):
    import parmapper
    with pytest.raises(exc, match=match):
        parmapper.parmap(abs, [1, 2], N=2, max_tasks_per_worker=value)


def test_max_tasks_per_worker_is_refused_with_an_executor():
    import concurrent.futures
    import parmapper
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        with pytest.raises(ValueError, match="max_tasks_per_worker cannot be "
                                             "used with executor="):
            parmapper.parmap(abs, [1, 2], executor=ex, max_tasks_per_worker=3)


# ------------------------------------------------------------------ max_memory

HOG = r'''
import parmapper
MB = 1 << 20

def f(x):
    if x in P["hogs"]:
        flag = os.path.join(TMP, "hogged-%d" % x)
        first = not os.path.exists(flag)
        open(flag, "a").write("x")
        if first or not P["once"]:
            hog = []
            t = time.monotonic() + 30
            while time.monotonic() < t:   # until the parent kills it
                hog.append(b"\x01" * (4 * MB))
                time.sleep(0.002)
            return "not stopped"
    return x * 2

n = P["n"]
seq = range(n) if P["indexed"] else (i for i in range(n))
it = parmapper.parmap(f, seq, N=P["N"], Nt=P["Nt"], ordered=P["ordered"],
                      exception=P["exception"], retries=P["retries"],
                      max_memory=P["limit"])
got, e = [], None
try:
    for r in it:
        if isinstance(r, BaseException):
            r = {"exc": exc_facts(r), "limit": r.limit, "rss": r.rss}
        got.append(r)
except BaseException as exc:
    e = {"exc": exc_facts(exc), "limit": getattr(exc, "limit", None),
         "rss": getattr(exc, "rss", None)}
emit(got=got, e=e, children=my_children())
'''


def _hog(run_facts, **kw):
    p = {"n": 16, "N": 2, "Nt": 1, "ordered": True, "indexed": True,
         "exception": "return", "retries": 0, "limit": "64MB", "hogs": [5],
         "once": False}
    p.update(kw)
    return run_facts(HOG, params=p, timeout=60)


def _is_memory_error(r, index, limit):
    assert r["exc"]["type"] == "WorkerMemoryError", r
    assert "MemoryError" in r["exc"]["mro"] and "ParmapperError" in r["exc"]["mro"]
    assert r["exc"]["seq_index"] == index
    assert r["limit"] == limit
    assert r["rss"] > limit
    assert "item {}".format(index) in r["exc"]["str"]
    assert "max_memory" in r["exc"]["str"]


@pytest.mark.parametrize("N,Nt,ordered,indexed", [
    (2, 1, True, True), (2, 2, False, False), (1, 1, True, False),
    (3, 1, True, True)])
def test_max_memory_names_the_item_and_the_others_arrive(run_facts, N, Nt,
                                                         ordered, indexed):
    f = _hog(run_facts, N=N, Nt=Nt, ordered=ordered, indexed=indexed,
             hogs=[3, 11])
    got = f["got"]
    assert f["e"] is None
    assert len(got) == 16
    errs = [r for r in got if isinstance(r, dict)]
    vals = [r for r in got if not isinstance(r, dict)]
    assert sorted(vals) == [2 * i for i in range(16) if i not in (3, 11)]
    assert sorted(r["exc"]["seq_index"] for r in errs) == [3, 11]
    for r in errs:
        _is_memory_error(r, r["exc"]["seq_index"], 64 * 10 ** 6)
    if ordered:
        assert got[3] == errs[0] and got[11] == errs[1]
        assert [g for i, g in enumerate(got) if i not in (3, 11)] == vals
    assert f["children"] == []


def test_max_memory_raises_with_exception_raise(run_facts):
    f = _hog(run_facts, exception="raise", limit=80 << 20)
    assert f["got"] == [0, 2, 4, 6, 8]
    _is_memory_error(f["e"], 5, 80 << 20)


def test_max_memory_retries_the_item_on_a_fresh_worker(run_facts):
    f = _hog(run_facts, retries=1, once=True, exception="raise")
    assert f["e"] is None
    assert f["got"] == [2 * i for i in range(16)]


@pytest.mark.parametrize("value,exc,match", [
    ("2 parsecs", ValueError, "max_memory must be a number of bytes or a string"),
    ("GB", ValueError, "max_memory must be a number of bytes or a string"),
    (1000, ValueError, "max_memory must be at least 1 MiB"),
    (0, ValueError, "max_memory must be at least 1 MiB"),
    (-5, ValueError, "max_memory must be at least 1 MiB"),
    ("20000000TB", ValueError, "below 2\\*\\*64"),
    (2.5e9, TypeError, "max_memory must be a number of bytes"),
    (True, TypeError, "max_memory must be a number of bytes"),
    ([1], TypeError, "max_memory must be a number of bytes"),
])
def test_max_memory_is_validated(value, exc, match):
    import parmapper
    with pytest.raises(exc, match=match):
        parmapper.parmap(abs, [1, 2], N=2, max_memory=value)


@pytest.mark.parametrize("text,size", [
    ("2GB", 2 * 10 ** 9), ("512MiB", 512 << 20), ("1.5GiB", 3 << 29),
    (" 100 mb ", 10 ** 8), ("3000000", 3000000)])
def test_max_memory_strings(text, size):
    from parmapper import _api
    assert _api._memory(text) == size


def test_max_memory_is_refused_with_an_executor():
    import concurrent.futures
    import parmapper
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        with pytest.raises(ValueError, match="max_memory cannot be used with "
                                             "executor="):
            parmapper.parmap(abs, [1, 2], executor=ex, max_memory="1GB")
