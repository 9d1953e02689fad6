"""`fun` forks (os.fork, multiprocessing with the fork start method) inside a
worker, and a worker dies of a SystemExit under exception='proc'.

A forked copy of a worker shares the worker's rings: it must never touch
them.  When it comes back from `fun` it ends as a program whose main was
`fun` (status 0 for a return, the SystemExit's code, 1 after printing any
other exception), without running the rest of its task or the worker loop:
every item runs once and every result is the worker's.
"""
import pytest

FORKS_IN_FUN = r'''
import parmapper

RUNS = os.path.join(TMP, "runs")

def log(x):
    fd = os.open(RUNS, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, b"%d\n" % x)
    os.close(fd)

def runs():
    with open(RUNS) as fh:
        return sorted(int(v) for v in fh.read().split())

STATUS = []

def f(x):
    log(x)
    if x == 3:
        pid = os.fork()
        if pid == 0:
            how = P["how"]
            if how == "return":
                return "from the copy"
            if how == "exit":
                sys.exit(5)
            raise ValueError("raised in the copy")
        _, st = os.waitpid(pid, 0)
        return ("status", os.waitstatus_to_exitcode(st))
    return x * 10

opts = dict(P["opts"])
seq = range(12) if not opts.pop("gen", False) else (x for x in range(12))
out = list(parmapper.parmap(f, seq, **opts))
emit(out=out, runs=runs())
'''


@pytest.mark.parametrize("how,status", [("return", 0), ("exit", 5),
                                        ("raise", 1)])
@pytest.mark.parametrize("opts", [
    dict(N=2), dict(N=2, chunksize=4), dict(N=2, Nt=2),
    dict(N=2, Nt=2, chunksize=3, ordered=False), dict(N=1, retries=1),
    dict(N=2, chunksize=5, gen=True),
], ids=["N2", "N2-chunk4", "N2-Nt2", "N2-Nt2-chunk3-unordered",
        "N1-retries", "N2-generator"])
def test_forked_copy_never_touches_the_rings(run_facts, opts, how, status):
    f = run_facts(FORKS_IN_FUN, params={"opts": opts, "how": how})
    out = f["out"]
    if opts.get("ordered", True):
        assert out[3] == ["status", status]
    out = [tuple(v) if isinstance(v, list) else v for v in out]
    assert sorted(out, key=repr) == sorted(
        [x * 10 for x in range(12) if x != 3] + [("status", status)], key=repr)
    assert f["runs"] == list(range(12))      # every item ran once
    if how == "raise":
        assert "raised in the copy" in f["_stderr"]


MP_IN_FUN = r'''
import multiprocessing, parmapper

def child_target(path, x):
    with open(path, "w") as fh:
        fh.write("child of item %d in %d" % (x, os.getpid()))

def f(x):
    if x % 4 == 1:
        path = os.path.join(TMP, "mp_%d" % x)
        p = multiprocessing.get_context("fork").Process(target=child_target,
                                                        args=(path, x))
        p.start()
        p.join()
        with open(path) as fh:
            return (p.exitcode, fh.read().split(" in ")[0])
    return x * 10

out = list(parmapper.parmap(f, range(12), N=2, Nt=P["Nt"]))
emit(out=out)
'''


@pytest.mark.parametrize("Nt", [1, 2])
def test_multiprocessing_fork_inside_fun(run_facts, Nt):
    f = run_facts(MP_IN_FUN, params={"Nt": Nt})
    want = [[0, "child of item %d" % x] if x % 4 == 1 else x * 10
            for x in range(12)]
    assert f["out"] == want


PROC_SYSTEM_EXIT = r'''
import atexit, parmapper
ME = os.getpid()
MARK = os.path.join(TMP, "atexit")

def at_exit():
    if os.getpid() != ME:
        with open(MARK, "a") as fh:
            fh.write("worker %d ran the caller's atexit\n" % os.getpid())

atexit.register(at_exit)

def f(x):
    if x == 5:
        sys.exit(3)
    return x

try:
    list(parmapper.parmap(f, range(8), N=2, Nt=P["Nt"], exception="proc"))
    err = None
except Exception as e:
    err = e
emit(err=exc_facts(err), atexit_in_worker=os.path.exists(MARK))
'''


@pytest.mark.parametrize("Nt", [1, 2])
def test_proc_mode_system_exit_kills_only_the_worker(run_facts, Nt):
    f = run_facts(PROC_SYSTEM_EXIT, params={"Nt": Nt})
    assert f["err"]["type"] == "WorkerDiedError"
    assert 5 in f["err"]["seq_indices"]
    assert f["err"]["exitcode"] == 70          # dies like for any exception
    assert not f["atexit_in_worker"]           # no finalization in the worker
    assert "SystemExit: 3" in f["_stderr"]     # its traceback is printed
