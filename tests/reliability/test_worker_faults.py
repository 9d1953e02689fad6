"""Faults inside the workers: deaths, retries, timeouts, unpicklable objects.

Each case runs in a child interpreter (``run_facts``) with a deadline; the
child prints its observations as JSON and the test asserts on them.
"""
import re

import pytest

# Shared by the child programs of this module: how a worker dies.
DIE = r'''
import ctypes, parmapper

def die(how):
    if how == "exit":
        os._exit(3)
    elif how == "segv":
        ctypes.string_at(0)
    elif how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    elif how == "abort":
        os.abort()
    raise AssertionError("still alive after " + how)

def wait_for(path, limit=10.0):
    t = time.monotonic() + limit
    while not os.path.exists(path) and time.monotonic() < t:
        time.sleep(0.002)

def log_run(x):
    """Appends one line per call of fun (O_APPEND: atomic small writes)."""
    fd = os.open(os.path.join(TMP, "runs"), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"%d\n" % x)
    os.close(fd)

def runs():
    try:
        with open(os.path.join(TMP, "runs")) as fh:
            data = fh.read().split()
    except FileNotFoundError:
        return {}
    out = {}
    for x in data:
        out[x] = out.get(x, 0) + 1
    return out
'''

SIGNALS = {"exit": None, "segv": 11, "kill": 9, "abort": 6}


# ------------------------------------------------------------ worker deaths

@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
@pytest.mark.parametrize("N,Nt", [(2, 1), (2, 2)])
@pytest.mark.parametrize("how", ["exit", "segv", "kill", "abort"])
def test_worker_death_raises_and_cleans_up(run_facts, how, N, Nt, ordered):
    f = run_facts(DIE + r'''
KILLER = 5
GO = os.path.join(TMP, "go")
DIED = os.path.join(TMP, "died")

def f(x):
    if x == KILLER:
        wait_for(GO)            # die only once the caller knows the pids
        with open(DIED, "w") as fh:
            fh.write(repr(time.time()))
        die(P["how"])
    time.sleep(0.002)
    return x * 10

maps_before = shared_maps()
it = parmapper.parmap(f, range(40), N=P["N"], Nt=P["Nt"], ordered=P["ordered"],
                      chunksize=1)
got, pids, err, t_err = [], None, None, None
try:
    for r in it:
        got.append(r)
        if pids is None:
            pids = it._pids()
            open(GO, "w").close()
except BaseException as e:
    t_err = time.time()
    err = e
with open(DIED) as fh:
    t_died = float(fh.read())
states = {p: pid_state(p) for p in pids}
waited = waitpid_any()
maps_after = shared_maps()
again = list(parmapper.parmap(lambda x: x + 1, range(20), N=2))
emit(err=exc_facts(err),
     is_parmapper_error=isinstance(err, parmapper.ParmapperError),
     is_runtime_error=isinstance(err, RuntimeError),
     is_died=isinstance(err, parmapper.WorkerDiedError),
     delay=t_err - t_died, got=got, pids=pids, states=states, waited=waited,
     maps_before=maps_before, maps_after=maps_after,
     children=my_children(), again=again)
''', params={"how": how, "N": N, "Nt": Nt, "ordered": ordered})
    err = f["err"]
    assert err is not None, "the map finished although a worker died"
    assert f["is_died"] and err["type"] == "WorkerDiedError", err
    assert f["is_parmapper_error"] and f["is_runtime_error"]
    assert f["delay"] < 3.0, "WorkerDiedError came %.2fs after the death" % f["delay"]
    # The lost item is named, in the attribute and in the message.
    assert 5 in err["seq_indices"], err
    assert re.search(r"\b5\b", err["str"]), err["str"]
    assert err["pid"] in f["pids"]
    assert str(err["pid"]) in err["str"]
    assert err["exitcode"] == (3 if how == "exit" else None)
    assert err["signal"] == SIGNALS[how]
    assert err["seq_index"] == min(err["seq_indices"])
    # What was yielded is right and is not among the lost items.
    lost = set(err["seq_indices"])
    if ordered:
        assert f["got"] == [10 * i for i in range(min(lost))]
    else:
        assert len(set(f["got"])) == len(f["got"])
        assert all(r % 10 == 0 and r // 10 not in lost for r in f["got"])
    # Every worker stopped and reaped: no zombie, no orphan, nothing to reap.
    assert len(f["pids"]) == N
    assert all(s == "gone" for s in f["states"].values()), f["states"]
    assert f["waited"] == "ChildProcessError"
    assert f["children"] == []
    # No shared mapping left behind.
    assert len(f["maps_after"]) <= len(f["maps_before"]), (
        f["maps_before"], f["maps_after"])
    # Still usable.
    assert f["again"] == list(range(1, 21))


@pytest.mark.parametrize("chunksize", [1, None])
@pytest.mark.parametrize("Nt", [1, 2])
def test_ordered_yields_everything_before_the_lost_item(run_facts, Nt, chunksize):
    """Item 0 is slow, so the results of the worker that dies at item 5 wait,
    complete, in its ring: they must still be delivered, in order."""
    f = run_facts(DIE + r'''
def f(x):
    if x == 0:
        time.sleep(0.4)
    if x == 5:
        die("kill")
    return x * 10

got, err = [], None
try:
    for r in parmapper.parmap(f, range(30), N=2, Nt=P["Nt"],
                              chunksize=P["chunksize"]):
        got.append(r)
except Exception as e:
    err = e
emit(err=exc_facts(err), got=got, waited=waitpid_any())
''', params={"Nt": Nt, "chunksize": chunksize})
    err = f["err"]
    assert err["type"] == "WorkerDiedError"
    assert 5 in err["seq_indices"]
    first_lost = min(err["seq_indices"])
    assert f["got"] == [10 * i for i in range(first_lost)]
    if Nt == 1 and chunksize == 1:  # only the item that killed it is lost
        assert first_lost == 5
        assert f["got"] == [0, 10, 20, 30, 40]
    assert f["waited"] == "ChildProcessError"


# ------------------------------------------------------------------ retries

@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
@pytest.mark.parametrize("Nt", [1, 2])
def test_retries_rerun_an_item_that_killed_its_worker_once(run_facts, Nt, ordered):
    f = run_facts(DIE + r'''
def f(x):
    log_run(x)
    if x == 7:
        marker = os.path.join(TMP, "killed-once")
        if not os.path.exists(marker):
            open(marker, "w").close()
            die("kill")
    time.sleep(0.003)
    return x * x

maps_before = shared_maps()
res = list(parmapper.parmap(f, range(40), N=2, Nt=P["Nt"], retries=1,
                            ordered=P["ordered"], chunksize=P["Nt"]))
emit(res=res, serial=[x * x for x in range(40)], runs=runs(),
     waited=waitpid_any(), maps_before=maps_before, maps_after=shared_maps())
''', params={"Nt": Nt, "ordered": ordered})
    if ordered:
        assert f["res"] == f["serial"]
    else:
        assert sorted(f["res"]) == f["serial"]
    assert f["runs"]["7"] == 2
    # Nothing of the dead worker is lost: every item ran.
    assert set(f["runs"]) == {str(i) for i in range(40)}
    if Nt == 1:
        # Results the dead worker had completed are kept, not run again.
        assert {k: v for k, v in f["runs"].items() if v != 1} == {"7": 2}
    assert f["waited"] == "ChildProcessError"
    assert len(f["maps_after"]) <= len(f["maps_before"])


@pytest.mark.parametrize("K", [1, 2])
@pytest.mark.parametrize("Nt", [1, 2])
def test_retries_used_up_by_an_item_that_always_kills(run_facts, Nt, K):
    f = run_facts(DIE + r'''
def f(x):
    log_run(x)
    if x == 7:
        die("kill")
    time.sleep(0.003)
    return x * x

got, err = [], None
t0 = time.monotonic()
try:
    for r in parmapper.parmap(f, range(30), N=2, Nt=P["Nt"], retries=P["K"],
                              chunksize=P["Nt"]):
        got.append(r)
except Exception as e:
    err = e
emit(err=exc_facts(err), got=got, runs=runs(), elapsed=time.monotonic() - t0,
     waited=waitpid_any(), children=my_children(),
     again=list(parmapper.parmap(abs, range(-3, 3), N=2)))
''', params={"Nt": Nt, "K": K})
    err = f["err"]
    assert err is not None and err["type"] == "WorkerDiedError", err
    assert 7 in err["seq_indices"]
    assert "retries" in err["str"]
    assert err["signal"] == 9
    # The item ran once plus K retries, each on a fresh worker; with threads,
    # plus at most one run whose death it shared with the other thread's
    # task (nobody is charged then: each runs again alone in its worker).
    assert K + 1 <= f["runs"]["7"] <= K + 1 + (Nt > 1)
    assert f["got"] == [x * x for x in range(min(err["seq_indices"]))]
    if Nt == 1:
        assert err["seq_index"] == 7
        assert f["got"] == [x * x for x in range(7)]
    assert f["elapsed"] < 10
    assert f["waited"] == "ChildProcessError" and f["children"] == []
    assert f["again"] == [3, 2, 1, 0, 1, 2]


@pytest.mark.parametrize("K", [0, 2])
def test_threads_only_the_killer_is_charged(run_facts, K):
    """N=2, Nt=4: item 50 segfaults its worker while the worker's other
    threads run other tasks.  Those are not charged: they run again (alone
    in their worker) and succeed; only item 50's task uses up the retries,
    so the other tasks' items run at most twice, never once per retry of
    item 50."""
    f = run_facts(DIE + r'''
def f(x):
    log_run(x)
    if x == 50:
        time.sleep(0.005)
        die("segv")
    time.sleep(0.003)
    return x * 3

err = None
try:
    list(parmapper.parmap(f, range(200), N=2, Nt=4, retries=P["K"],
                          chunksize=1))
except Exception as e:
    err = e
emit(err=exc_facts(err), runs=runs(), children=my_children())
''', params={"K": K})
    err = f["err"]
    assert err is not None and err["type"] == "WorkerDiedError", err
    assert err["signal"] == 11
    assert 50 in err["seq_indices"]
    runs = f["runs"]
    assert K + 1 <= runs["50"] <= K + 2, runs["50"]
    # Python makes tasks of at least Nt items: 48-51 is item 50's task, run
    # again with it; the items of the other threads' tasks are innocent.
    again = {x: n for x, n in runs.items() if not 48 <= int(x) <= 51 and n > 2}
    assert again == {}, "innocent items ran once per retry of item 50: %r" % again
    assert f["children"] == []


def test_retries_with_one_process(run_facts):
    """N=1 with retries runs in one (replaceable) worker process."""
    f = run_facts(DIE + r'''
def f(x):
    log_run(x)
    if x == 4:
        marker = os.path.join(TMP, "killed-once")
        if not os.path.exists(marker):
            open(marker, "w").close()
            die("segv")
    return (x, os.getpid())

res = list(parmapper.parmap(f, range(12), N=1, retries=1))
emit(values=[r[0] for r in res], pids=sorted({r[1] for r in res}),
     me=os.getpid(), runs=runs(), waited=waitpid_any())
''')
    assert f["values"] == list(range(12))
    assert f["me"] not in f["pids"]          # ran in worker processes
    assert len(f["pids"]) == 2               # the first and its replacement
    assert f["runs"]["4"] == 2
    assert f["waited"] == "ChildProcessError"


def test_exception_proc_mode_kills_the_worker(run_facts):
    """exception='proc' with N > 1: the worker prints the traceback and
    exits 70; the caller gets WorkerDiedError naming the item."""
    res_facts = run_facts(DIE + r'''
def f(x):
    if x == 6:
        raise KeyError("proc mode %d" % x)
    return x

got, err = [], None
try:
    for r in parmapper.parmap(f, range(20), N=2, chunksize=1, exception="proc"):
        got.append(r)
except Exception as e:
    err = e
emit(err=exc_facts(err), got=got, waited=waitpid_any(),
     again=list(parmapper.parmap(abs, [-1, 1], N=2)))
''')
    err = res_facts["err"]
    assert err["type"] == "WorkerDiedError"
    assert err["exitcode"] == 70 and err["signal"] is None
    assert 6 in err["seq_indices"]
    assert res_facts["got"] == list(range(min(err["seq_indices"])))
    assert "KeyError" in res_facts["_stderr"]
    assert "proc mode 6" in res_facts["_stderr"]
    assert res_facts["waited"] == "ChildProcessError"
    assert res_facts["again"] == [1, 1]


# ------------------------------------------------------------------ timeout

@pytest.mark.parametrize("N,Nt", [(1, 1), (2, 1), (2, 2)])
def test_timeout_raises_timeouterror(run_facts, N, Nt):
    f = run_facts(r'''
import parmapper
TIMEOUT = 1.0

def f(x):
    if x == 3:
        with open(os.path.join(TMP, "stuck"), "w") as fh:
            fh.write(repr(time.time()))
        time.sleep(60)
    time.sleep(0.01)
    return x

got, err = [], None
try:
    for r in parmapper.parmap(f, range(12), N=P["N"], Nt=P["Nt"], timeout=TIMEOUT):
        got.append(r)
except Exception as e:
    t_err = time.time()
    err = e
with open(os.path.join(TMP, "stuck")) as fh:
    t_stuck = float(fh.read())
emit(err=exc_facts(err), is_timeout=isinstance(err, TimeoutError), got=got,
     delay=t_err - t_stuck, waited=waitpid_any(), children=my_children())
''', params={"N": N, "Nt": Nt})
    assert f["is_timeout"], f["err"]
    assert f["err"]["seq_index"] == 3
    assert f["delay"] < 1.0 + 1.0, f["delay"]
    assert f["delay"] > 0.9
    assert f["got"] == [0, 1, 2]
    assert f["waited"] == "ChildProcessError" and f["children"] == []


@pytest.mark.parametrize("N,Nt", [(1, 1), (2, 1), (2, 2)])
def test_timeout_return_mode_yields_in_place_and_replaces_the_worker(run_facts, N, Nt):
    f = run_facts(r'''
import parmapper

def f(x):
    if x == 3:
        with open(os.path.join(TMP, "stuck"), "w") as fh:
            fh.write(str(os.getpid()))
        time.sleep(60)
    time.sleep(0.01)
    return (x, os.getpid())

it = parmapper.parmap(f, range(30), N=P["N"], Nt=P["Nt"], timeout=1.0,
                      exception="return")
out, first_pids = [], None
t0 = time.monotonic()
for r in it:
    if first_pids is None:
        first_pids = it._pids()
    out.append(r)
elapsed = time.monotonic() - t0
with open(os.path.join(TMP, "stuck")) as fh:
    stuck_pid = int(fh.read())
emit(values=[r[0] if isinstance(r, tuple) else None for r in out],
     result_pids=[r[1] if isinstance(r, tuple) else None for r in out],
     errors=[[i, exc_facts(r), isinstance(r, TimeoutError)]
             for i, r in enumerate(out) if isinstance(r, BaseException)],
     first_pids=first_pids, stuck_pid=stuck_pid, elapsed=elapsed,
     stuck_state=pid_state(stuck_pid), waited=waitpid_any())
''', params={"N": N, "Nt": Nt})
    assert len(f["errors"]) == 1, f["errors"]
    idx, err, is_timeout = f["errors"][0]
    assert idx == 3 and is_timeout and err["seq_index"] == 3
    assert f["values"] == [i if i != 3 else None for i in range(30)]
    assert f["elapsed"] < 1.0 + 4.0
    # The stuck worker was killed; a replacement processed later items.
    assert f["stuck_pid"] in f["first_pids"]
    assert f["stuck_state"] == "gone"
    later = set(f["result_pids"][4:]) - {None}
    assert later - set(f["first_pids"]), (later, f["first_pids"])
    if Nt == 1:  # (with Nt=2 its other thread ran later items meanwhile)
        assert f["stuck_pid"] not in later
    assert f["waited"] == "ChildProcessError"


# ------------------------------------------- exceptions that cannot travel

UNPICKLABLE_EXC = r'''
import threading, parmapper

class LockError(Exception):
    """Holds a lock: pickling the object fails."""
    def __init__(self, msg):
        super().__init__(msg)
        self.lock = threading.Lock()

class ReduceError(Exception):
    """__reduce__ raises: pickling the object fails."""
    def __reduce__(self):
        raise RuntimeError("no reduce for you")

class TwoArgError(Exception):
    """__init__ needs two arguments: pickling works, unpickling fails."""
    def __init__(self, a, b):
        super().__init__("%s and %s" % (a, b))

def raising_function(x):
    if x == 4:
        cls = {"lock": LockError, "reduce": ReduceError}.get(P["kind"])
        if cls is not None:
            raise cls("unsendable message %d" % x)
        raise TwoArgError("unsendable message", x)
    return x * 2

out = {}
for N, Nt in [(2, 1), (2, 2)]:
    got, err = [], None
    try:
        for r in parmapper.parmap(raising_function, range(10), N=N, Nt=Nt):
            got.append(r)
    except Exception as e:
        err = e
    ret = list(parmapper.parmap(raising_function, range(10), N=N, Nt=Nt,
                                exception="return"))
    out["%d,%d" % (N, Nt)] = dict(
        err=exc_facts(err), got=got,
        is_remote=isinstance(err, parmapper.RemoteError),
        is_parmapper=isinstance(err, parmapper.ParmapperError),
        cause_is_tb=isinstance(getattr(err, "__cause__", None),
                               parmapper.RemoteTraceback),
        ret_values=[None if isinstance(r, BaseException) else r for r in ret],
        ret_errors=[[i, exc_facts(r), isinstance(r, parmapper.RemoteError)]
                    for i, r in enumerate(ret) if isinstance(r, BaseException)])
emit(out=out, waited=waitpid_any())
'''


@pytest.mark.parametrize("kind,type_name", [("lock", "LockError"),
                                            ("reduce", "ReduceError"),
                                            ("twoargs", "TwoArgError")])
def test_unpicklable_exception_arrives_as_remote_error(run_facts, kind, type_name):
    f = run_facts(UNPICKLABLE_EXC, params={"kind": kind})
    assert f["waited"] == "ChildProcessError"
    for cfg, r in f["out"].items():
        err = r["err"]
        assert r["is_remote"] and r["is_parmapper"], (cfg, err)
        assert type_name in err["str"], (cfg, err)
        assert "unsendable message" in err["str"], (cfg, err)
        assert err["seq_index"] == 4
        assert r["cause_is_tb"], (cfg, err)
        assert "raising_function" in err["cause_str"]
        assert r["got"] == [0, 2, 4, 6]
        # exception='return': in the item's place, the rest is right.
        assert r["ret_values"] == [x * 2 if x != 4 else None for x in range(10)]
        [[idx, e, is_remote]] = r["ret_errors"]
        assert idx == 4 and is_remote and e["seq_index"] == 4
        assert type_name in e["str"]


# -------------------------------------------------- unpicklable results

@pytest.mark.parametrize("kind,type_word", [("lambda", "function"),
                                            ("generator", "generator"),
                                            ("lock", "lock")])
def test_unpicklable_result(run_facts, kind, type_word):
    f = run_facts(r'''
import pickle, threading, parmapper

def make_result(x):
    if x == 4:
        if P["kind"] == "lambda":
            return lambda y: y
        if P["kind"] == "generator":
            return (i for i in range(3))
        return threading.Lock()
    return x + 100

out = {}
for N, Nt in [(2, 1), (2, 2)]:
    got, err = [], None
    try:
        for r in parmapper.parmap(make_result, range(10), N=N, Nt=Nt):
            got.append(r)
    except Exception as e:
        err = e
    ret = list(parmapper.parmap(make_result, range(10), N=N, Nt=Nt,
                                exception="return"))
    out["%d,%d" % (N, Nt)] = dict(
        err=exc_facts(err), got=got,
        is_rpe=isinstance(err, parmapper.ResultPicklingError),
        is_pickling=isinstance(err, pickle.PicklingError),
        ret_values=[None if isinstance(r, BaseException) else r for r in ret],
        ret_errors=[[i, exc_facts(r), isinstance(r, parmapper.ResultPicklingError)]
                    for i, r in enumerate(ret) if isinstance(r, BaseException)])
emit(out=out, waited=waitpid_any())
''', params={"kind": kind})
    assert f["waited"] == "ChildProcessError"
    for cfg, r in f["out"].items():
        err = r["err"]
        assert r["is_rpe"] and r["is_pickling"], (cfg, err)
        assert "item 4" in err["str"] and type_word in err["str"], (cfg, err)
        assert err["seq_index"] == 4
        assert r["got"] == [100, 101, 102, 103]
        assert r["ret_values"] == [x + 100 if x != 4 else None for x in range(10)]
        [[idx, e, is_rpe]] = r["ret_errors"]
        assert idx == 4 and is_rpe and e["seq_index"] == 4
        assert "item 4" in e["str"] and type_word in e["str"]


# ---------------------------------------------------- unpicklable items

def test_unpicklable_items_of_a_list_need_no_pickling(run_facts):
    """A list (tuple, range, ndarray) is read by the workers from the copy
    they inherit at fork (index dispatch): its items are never pickled, so
    items that cannot be pickled work."""
    f = run_facts(r'''
import threading, parmapper
r = list(parmapper.parmap(lambda x: type(x).__name__,
                          [0, threading.Lock(), (i for i in range(3)), 3], N=2))
emit(r=r)
''')
    assert f["r"] == ["int", "lock", "generator", "int"]


@pytest.mark.parametrize("container", ["iterator"])
@pytest.mark.parametrize("kind,type_word", [("lock", "lock"),
                                            ("generator", "generator")])
def test_unpicklable_item(run_facts, kind, type_word, container):
    """An item of an iterator input that cannot be pickled to be sent:
    ItemPicklingError naming it, raised or returned in its place."""
    f = run_facts(r'''
import pickle, threading, parmapper

def items():
    bad = threading.Lock() if P["kind"] == "lock" else (i for i in range(3))
    lst = [0, 1, 2, bad, 4, 5, 6, 7]
    return lst if P["container"] == "list" else (x for x in lst)

def f(x):
    return x * 3

out = {}
for N, Nt, cs in [(2, 1, 1), (2, 2, 1), (2, 1, 3)]:
    got, err = [], None
    try:
        for r in parmapper.parmap(f, items(), N=N, Nt=Nt, chunksize=cs):
            got.append(r)
    except Exception as e:
        err = e
    ret = list(parmapper.parmap(f, items(), N=N, Nt=Nt, chunksize=cs,
                                exception="return"))
    out["%d,%d,%d" % (N, Nt, cs)] = dict(
        err=exc_facts(err), got=got,
        is_ipe=isinstance(err, parmapper.ItemPicklingError),
        is_parmapper=isinstance(err, parmapper.ParmapperError),
        is_pickling=isinstance(err, pickle.PicklingError),
        ret_values=[None if isinstance(r, BaseException) else r for r in ret],
        ret_errors=[[i, exc_facts(r), isinstance(r, parmapper.ItemPicklingError)]
                    for i, r in enumerate(ret) if isinstance(r, BaseException)])
emit(out=out, waited=waitpid_any())
''', params={"kind": kind, "container": container})
    assert f["waited"] == "ChildProcessError"
    for cfg, r in f["out"].items():
        err = r["err"]
        assert r["is_ipe"] and r["is_parmapper"] and r["is_pickling"], (cfg, err)
        assert "item 3" in err["str"] and type_word in err["str"], (cfg, err)
        assert err["seq_index"] == 3
        assert r["got"] == [0, 3, 6]
        assert r["ret_values"] == [x * 3 if x != 3 else None for x in range(8)]
        [[idx, e, is_ipe]] = r["ret_errors"]
        assert idx == 3 and is_ipe and e["seq_index"] == 3
        assert "item 3" in e["str"] and type_word in e["str"]
