"""parmapper.Pool: a drop-in for multiprocessing.Pool that takes lambdas."""
import os

import pytest

import parmapper

SETTING = "before"
INIT_CALLS = []


def add(a, b):
    return a + b


def boom_at_3(x):
    if x == 3:
        raise KeyError("three")
    return x


def remember_init(tag):
    INIT_CALLS.append(tag)


def init_state(x):
    return (os.getpid(), tuple(INIT_CALLS), x)


def test_drop_in_for_multiprocessing_pool():
    import multiprocessing
    with multiprocessing.Pool(2) as mp_pool:
        expected = mp_pool.map(abs, range(-5, 5))
    with parmapper.Pool(2) as pool:
        assert pool.map(abs, range(-5, 5)) == expected
        # ...and what multiprocessing cannot pickle
        assert pool.map(lambda x: x * 10, range(4)) == [0, 10, 20, 30]


def test_methods():
    k = 3
    with parmapper.Pool(2) as pool:
        assert pool.map(lambda x: x + k, range(6), chunksize=2) == [3, 4, 5, 6, 7, 8]
        it = pool.imap(lambda x: -x, range(5))
        assert not isinstance(it, list)
        assert list(it) == [0, -1, -2, -3, -4]
        assert sorted(pool.imap_unordered(lambda x: x * x, range(6))) == [0, 1, 4, 9, 16, 25]
        assert pool.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
        assert pool.apply(lambda a, b=0: a * b, (6,), {"b": 7}) == 42
        assert pool.apply(os.getpid) != os.getpid()


def test_async_methods_and_callbacks():
    got = []
    errors = []
    with parmapper.Pool(2) as pool:
        r1 = pool.map_async(lambda x: x + 1, range(5), callback=got.append)
        r2 = pool.starmap_async(add, [(1, 1), (2, 2)])
        r3 = pool.apply_async(add, (20, 22))
        r4 = pool.map_async(boom_at_3, range(6), error_callback=errors.append)
        assert r1.get(timeout=30) == [1, 2, 3, 4, 5]
        assert r2.get(timeout=30) == [2, 4]
        assert r3.get(timeout=30) == 42
        with pytest.raises(KeyError):
            r4.get(timeout=30)
        assert r1.ready() and r1.successful()
        assert not r4.successful()
    assert got == [[1, 2, 3, 4, 5]]
    assert len(errors) == 1 and isinstance(errors[0], KeyError)


def test_async_result_not_ready():
    rfd, wfd = os.pipe()   # the forked worker inherits the pipe
    try:
        pool = parmapper.Pool(2)
        r = pool.apply_async(os.read, (rfd, 1))
        assert not r.ready()
        with pytest.raises(ValueError):
            r.successful()
        with pytest.raises(TimeoutError):
            r.get(timeout=0.05)
        os.write(wfd, b"x")
        assert r.get(timeout=30) == b"x"
        pool.close()
        pool.join()
    finally:
        os.close(rfd)
        os.close(wfd)


def test_errors_as_in_multiprocessing_with_seq_index():
    with parmapper.Pool(2) as pool:
        with pytest.raises(KeyError) as ei:
            pool.map(boom_at_3, range(6))
    assert ei.value.seq_index == 3


def test_defaults_and_per_call_overrides():
    with parmapper.Pool(2, exception="return", chunksize=2) as pool:
        out = pool.map(boom_at_3, range(5))
        assert isinstance(out[3], KeyError) and out[3].seq_index == 3
        assert [o for i, o in enumerate(out) if i != 3] == [0, 1, 2, 4]
        with pytest.raises(KeyError):
            pool.map(boom_at_3, range(5), exception="raise")


def test_processes_alias_and_bad_arguments():
    with parmapper.Pool(processes=2) as pool:
        assert pool.map(abs, [-1, -2]) == [1, 2]
    with pytest.raises(ValueError):
        parmapper.Pool(0)
    with pytest.raises(TypeError):
        parmapper.Pool(2, processes=2)
    with pytest.raises(TypeError):
        parmapper.Pool(2, initializer=42)


def test_workers_see_current_globals():
    global SETTING
    with parmapper.Pool(2) as pool:
        SETTING = "first"
        assert set(pool.map(lambda _: SETTING, range(4))) == {"first"}
        SETTING = "second"   # a standing pool would still see "first"
        assert set(pool.map(lambda _: SETTING, range(4))) == {"second"}


def test_initializer_runs_once_per_worker_process():
    INIT_CALLS.clear()
    with parmapper.Pool(2, initializer=remember_init, initargs=("hi",)) as pool:
        out = pool.map(init_state, range(40))
    assert [x for _, _, x in out] == list(range(40))
    by_pid = {}
    for pid, calls, _ in out:
        by_pid.setdefault(pid, set()).add(calls)
    assert os.getpid() not in by_pid
    # in every worker the initializer ran exactly once, before any item
    assert all(c == {("hi",)} for c in by_pid.values())
    assert INIT_CALLS == []     # never in the caller's process


def test_close_join_terminate_states():
    pool = parmapper.Pool(2)
    with pytest.raises(ValueError):
        pool.join()                      # still running
    r = pool.map_async(lambda x: x, range(3))
    pool.close()
    with pytest.raises(ValueError, match="not running"):
        pool.map(abs, [1])
    pool.join()
    assert r.ready() and r.get() == [0, 1, 2]
    pool.terminate()
    with pytest.raises(ValueError):
        with pool:
            pass


def test_terminate_stops_open_iterators(children):
    import itertools
    base = children.pids()
    pool = parmapper.Pool(2)
    it = pool.imap(lambda x: x, itertools.count())
    assert next(it) == 0
    assert children.pids() - base        # workers are running
    pool.terminate()
    assert children.wait_back_to(base) == set()
    # its remaining results were never computed: it says so, never a
    # silently short list
    with pytest.raises(parmapper._pool.PoolTerminatedError):
        list(it)


def test_context_manager_terminates(children):
    import itertools
    base = children.pids()
    with parmapper.Pool(2) as pool:
        it = pool.imap_unordered(lambda x: x, itertools.count())
        next(it)
    assert children.wait_back_to(base) == set()


def test_pool_with_progress(capfd, monkeypatch):
    import parmapper._progress
    monkeypatch.setattr(parmapper._progress, "tqdm", None)
    with parmapper.Pool(2, progress="pooled") as pool:
        assert pool.map(abs, range(-3, 3)) == [3, 2, 1, 0, 1, 2]
    assert "pooled: 100%" in capfd.readouterr().err
