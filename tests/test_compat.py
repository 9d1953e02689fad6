"""ReturnProcess and ParEval, the original parmapper's other names."""
import os

import pytest

import parmapper
from parmapper import ParEval, ReturnProcess


def slow_pid(fd):
    os.read(fd, 1)      # blocks until the test writes
    return os.getpid()


def fails(msg):
    raise LookupError(msg)


# ---------------------------------------------------------- ReturnProcess

def test_return_process_value_in_another_process():
    p = ReturnProcess(lambda a, b=0: (a * b, os.getpid()), args=(6,),
                      kwargs={"b": 7})
    assert p.start() is p
    value, pid = p.join()
    assert value == 42 and pid != os.getpid()
    assert not p.is_alive()


def test_return_processes_run_at_the_same_time():
    rfd, wfd = os.pipe()
    try:
        p1 = ReturnProcess(slow_pid, args=(rfd,)).start()
        p2 = ReturnProcess(slow_pid, args=(rfd,)).start()
        assert p1.join(timeout=0.05) is None and p1.is_alive()
        os.write(wfd, b"xy")          # both are blocked: one byte each
        pid1, pid2 = p1.join(), p2.join()
    finally:
        os.close(rfd)
        os.close(wfd)
    assert len({pid1, pid2, os.getpid()}) == 3


def test_return_process_exception_modes():
    with pytest.raises(LookupError, match="nope") as ei:
        ReturnProcess(fails, args=("nope",)).start().join()
    assert isinstance(ei.value.__cause__, parmapper.RemoteTraceback)
    assert "fails" in ei.value.__cause__.tb

    e = ReturnProcess(fails, exception="return", args=("back",)).start().join()
    assert isinstance(e, LookupError) and e.args == ("back",)

    with pytest.raises(parmapper.WorkerDiedError):
        ReturnProcess(fails, exception="proc", args=("died",)).start().join()


def test_return_process_misuse():
    with pytest.raises(ValueError):
        ReturnProcess()
    with pytest.raises(TypeError):
        ReturnProcess(42)
    with pytest.raises(ValueError):
        ReturnProcess(abs, exception="ignore")
    p = ReturnProcess(abs, args=(-3,))
    with pytest.raises(RuntimeError):
        p.join()
    assert p.start().join() == 3
    with pytest.raises(RuntimeError):
        p.start()


# ----------------------------------------------------------------- ParEval

np = pytest.importorskip("numpy")


@pytest.mark.parametrize("opts", [{}, {"n_chunks": 3}, {"n_eval": 4},
                                  {"n_chunks": 5, "n_min": 4}, {"N": 1}])
def test_pareval_equals_serial(opts):
    X = np.arange(30.0).reshape(15, 2)
    fun = lambda X: X ** 2 + 1  # noqa: E731  (a lambda: nothing is pickled)
    got = ParEval(fun, **opts)(X)
    assert np.array_equal(got, fun(X))


def test_pareval_chunks_follow_the_options():
    sizes = lambda X: np.full(len(X), len(X))  # noqa: E731
    # as numpy.array_split: the first chunks one row longer
    assert ParEval(sizes, n_chunks=3, N=2)(np.arange(10)).tolist() == \
        [4] * 4 + [3] * 6
    assert ParEval(sizes, n_eval=4)(np.arange(10)).tolist() == \
        [4] * 4 + [3] * 6
    assert ParEval(sizes, n_chunks=5, n_min=4)(np.arange(10)).tolist() == [5] * 10
    assert ParEval(sizes, n_chunks=50)(np.arange(3)).tolist() == [1, 1, 1]
    assert ParEval(sizes, n_chunks=3).chunk_count(9) == 3


def test_pareval_runs_in_parallel_processes():
    pids = ParEval(lambda X: np.full(len(X), os.getpid()), n_chunks=4, N=2)(
        np.zeros(8))
    assert os.getpid() not in set(pids.tolist())


def test_pareval_passes_parmap_options():
    f = ParEval(lambda X, c: X + c, n_chunks=2, args=(100,))
    assert f(np.arange(4)).tolist() == [100, 101, 102, 103]
    calls = []
    ParEval(lambda X: X, n_chunks=3, progress=calls.append)(np.arange(9))
    assert calls == [1, 2, 3]     # one count per chunk: a chunk is an item
    assert ParEval(lambda X: X * 2)(np.zeros(0)).shape == (0,)
    assert ParEval(lambda X: X * 2)(5).tolist() == [10]


def test_pareval_errors():
    with pytest.raises(ValueError):
        ParEval(abs, n_chunks=2, n_eval=3)
    with pytest.raises(ValueError):
        ParEval(abs, n_chunks=0)
    with pytest.raises(TypeError):
        ParEval("not callable")
    with pytest.raises(ZeroDivisionError) as ei:
        ParEval(lambda X: 1 // len(X[X > 100]), n_chunks=2, N=2)(np.arange(4))
    assert ei.value.seq_index in (0, 1)
