"""Exception modes, seq_index, RemoteTraceback, shape errors and dead workers."""
import os
import signal

import pytest

import parmapper

BAD = 7
NITEMS = 15


class MyError(Exception):
    pass


def fails_at_seven(i):
    if i == BAD:
        raise ValueError("bad item %d" % i)
    return i * 10


def raises_custom(i):
    if i % 5 == 3:
        raise MyError("custom %d" % i)
    return -i


def collect_until_error(it):
    got = []
    try:
        for x in it:
            got.append(x)
    except Exception as exc:  # noqa: BLE001 - returned to the test
        return got, exc
    return got, None


# --------------------------------------------------------------------- raise

@pytest.mark.parametrize("N,Nt", [(1, 1), (1, 3), (2, 1), (2, 3), (3, 1)])
@pytest.mark.parametrize("mode", ["raise", None])
def test_raise_mode_ordered(mode, N, Nt):
    it = parmapper.parmap(fails_at_seven, range(NITEMS), N=N, Nt=Nt,
                          exception=mode)
    got, exc = collect_until_error(it)
    assert isinstance(exc, ValueError)
    assert type(exc) is ValueError
    assert str(exc) == "bad item 7"
    assert exc.seq_index == BAD
    assert got == [i * 10 for i in range(BAD)]


@pytest.mark.parametrize("N,Nt", [(2, 1), (2, 3), (3, 1)])
def test_raise_mode_remote_traceback(N, Nt):
    with pytest.raises(ValueError) as info:
        list(parmapper.parmap(fails_at_seven, range(NITEMS), N=N, Nt=Nt,
                              exception="raise"))
    exc = info.value
    assert str(exc) == "bad item 7"
    assert exc.seq_index == BAD
    cause = exc.__cause__
    assert isinstance(cause, parmapper.RemoteTraceback)
    text = str(cause)
    assert "fails_at_seven" in text
    assert "ValueError" in text


@pytest.mark.parametrize("N", [2, 3])
def test_default_mode_with_processes_is_raise(N):
    with pytest.raises(ValueError) as info:
        list(parmapper.parmap(fails_at_seven, range(NITEMS), N=N))
    assert info.value.seq_index == BAD
    assert isinstance(info.value.__cause__, parmapper.RemoteTraceback)


@pytest.mark.parametrize("N,Nt", [(1, 1), (2, 1), (2, 2)])
def test_raise_custom_exception_class(N, Nt):
    with pytest.raises(MyError) as info:
        list(parmapper.parmap(raises_custom, range(10), N=N, Nt=Nt,
                              exception="raise"))
    assert type(info.value) is MyError
    assert str(info.value) == "custom 3"
    assert info.value.seq_index == 3


@pytest.mark.parametrize("N,Nt", [(2, 1), (2, 3), (3, 2)])
def test_raise_mode_unordered(N, Nt):
    it = parmapper.parmap(fails_at_seven, range(NITEMS), N=N, Nt=Nt,
                          ordered=False, exception="raise")
    got, exc = collect_until_error(it)
    assert type(exc) is ValueError
    assert exc.seq_index == BAD
    assert str(exc) == "bad item 7"
    assert set(got) <= {i * 10 for i in range(NITEMS) if i != BAD}


@pytest.mark.parametrize("N", [1, 2])
def test_raise_mode_with_star_index_is_input_index(N):
    def div(a, b):
        return a // b

    items = [(i, (i - 4) or 0) for i in range(8)]  # item 4 divides by zero
    with pytest.raises(ZeroDivisionError) as info:
        list(parmapper.parmap(div, items, N=N, star=True, chunksize=3,
                              exception="raise"))
    assert info.value.seq_index == 4


@pytest.mark.parametrize("N", [1, 2])
def test_raise_mode_generator_input(N):
    with pytest.raises(ValueError) as info:
        list(parmapper.parmap(fails_at_seven, (i for i in range(NITEMS)), N=N,
                              exception="raise"))
    assert info.value.seq_index == BAD


@pytest.mark.parametrize("N", [1, 2])
def test_next_call_works_after_raise(N):
    with pytest.raises(ValueError):
        list(parmapper.parmap(fails_at_seven, range(NITEMS), N=N,
                              exception="raise"))
    assert list(parmapper.parmap(abs, range(-3, 3), N=N)) == [3, 2, 1, 0, 1, 2]


# -------------------------------------------------------------------- return

@pytest.mark.parametrize("chunksize", [1, 4])
@pytest.mark.parametrize("N,Nt", [(1, 1), (1, 3), (2, 1), (2, 3), (3, 1)])
def test_return_mode(N, Nt, chunksize):
    out = list(parmapper.parmap(raises_custom, range(20), N=N, Nt=Nt,
                                chunksize=chunksize, exception="return"))
    assert len(out) == 20
    for i, x in enumerate(out):
        if i % 5 == 3:
            assert type(x) is MyError
            assert str(x) == "custom %d" % i
            assert x.seq_index == i
        else:
            assert x == -i


@pytest.mark.parametrize("N,Nt", [(1, 2), (2, 1), (3, 2)])
def test_return_mode_unordered(N, Nt):
    out = list(parmapper.parmap(raises_custom, range(20), N=N, Nt=Nt,
                                ordered=False, exception="return"))
    errs = [x for x in out if isinstance(x, BaseException)]
    vals = [x for x in out if not isinstance(x, BaseException)]
    assert sorted(e.seq_index for e in errs) == [3, 8, 13, 18]
    for e in errs:
        assert str(e) == "custom %d" % e.seq_index
    assert sorted(vals) == sorted(-i for i in range(20) if i % 5 != 3)


def test_return_mode_all_fail():
    def boom(i):
        raise KeyError(i)

    out = list(parmapper.parmap(boom, range(6), N=2, exception="return"))
    assert [type(x) for x in out] == [KeyError] * 6
    assert [x.seq_index for x in out] == list(range(6))
    assert [x.args for x in out] == [(i,) for i in range(6)]


# ---------------------------------------------------------------------- proc

@pytest.mark.parametrize("Nt", [1, 3])
@pytest.mark.parametrize("mode", ["proc", None])
def test_proc_mode_serial_plain_raise(mode, Nt):
    with pytest.raises(ValueError) as info:
        list(parmapper.parmap(fails_at_seven, range(NITEMS), N=1, Nt=Nt,
                              exception=mode))
    assert str(info.value) == "bad item 7"
    assert info.value.seq_index == BAD


@pytest.mark.timeout(60)
@pytest.mark.parametrize("N,Nt", [(2, 1), (2, 2)])
def test_proc_mode_worker_dies(N, Nt, capfd):
    with pytest.raises(parmapper.WorkerDiedError) as info:
        list(parmapper.parmap(fails_at_seven, range(NITEMS), N=N, Nt=Nt,
                              exception="proc"))
    exc = info.value
    assert isinstance(exc, parmapper.ParmapperError)
    assert isinstance(exc, RuntimeError)
    assert BAD in exc.seq_indices
    assert isinstance(exc.pid, int) and exc.pid > 0 and exc.pid != os.getpid()
    assert (exc.exitcode not in (None, 0)) or exc.signal
    err = capfd.readouterr().err
    assert "ValueError" in err
    assert "fails_at_seven" in err
    # the next call still works
    assert list(parmapper.parmap(abs, [-1, -2], N=N)) == [1, 2]


def test_error_hierarchy():
    assert issubclass(parmapper.ParmapperError, RuntimeError)
    assert issubclass(parmapper.WorkerDiedError, parmapper.ParmapperError)
    assert issubclass(parmapper.RemoteTraceback, BaseException)


# ---------------------------------------------------------------- bad shapes

def _f(*a, **k):
    return (a, k)


def _items_star_not_iterable():
    return [(i,) for i in range(3)] + [5] + [(i,) for i in range(4, 6)]


SHAPES = {
    # name: (star, kwstar, items) -- item 3 is the bad one
    "star-int": (True, False, _items_star_not_iterable),
    "kwstar-not-pair-int": (False, True,
                            lambda: [(i, {}) for i in range(3)] + [5]
                            + [(4, {})]),
    "kwstar-not-pair-triple": (False, True,
                               lambda: [(i, {}) for i in range(3)]
                               + [(1, {}, 2)] + [(4, {})]),
    "kwstar-kwvals-not-mapping": (False, True,
                                  lambda: [(i, {"a": i}) for i in range(3)]
                                  + [(3, [1, 2])] + [(4, {})]),
    "kwstar-nonstring-keys": (False, True,
                              lambda: [(i, {"a": i}) for i in range(3)]
                              + [(3, {1: "x"})] + [(4, {})]),
    "star-none-kwstar-not-mapping": (None, True,
                                     lambda: [{"a": i} for i in range(3)]
                                     + [7] + [{}]),
    "star-kwstar-vals-int": (True, True,
                             lambda: [((i,), {}) for i in range(3)]
                             + [(3, {})] + [((4,), {})]),
    "star-kwstar-kwvals-not-mapping": (True, True,
                                       lambda: [((i,), {}) for i in range(3)]
                                       + [((3,), "ab")] + [((4,), {})]),
}


@pytest.mark.parametrize("mode", [None, "raise", "return", "proc"])
@pytest.mark.parametrize("N,Nt", [(1, 1), (1, 3), (2, 1), (2, 3)])
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_bad_shape_is_type_error(shape, N, Nt, mode):
    star, kwstar, items = SHAPES[shape]
    with pytest.raises(TypeError) as info:
        list(parmapper.parmap(_f, items(), N=N, Nt=Nt, star=star,
                              kwstar=kwstar, exception=mode))
    assert "item 3" in str(info.value)
    assert info.value.seq_index == 3
    assert not isinstance(info.value, parmapper.WorkerDiedError)


def test_good_shapes_control():
    # the same shapes with the bad item repaired work fine
    out = list(parmapper.parmap(_f, [((i,), {"a": i}) for i in range(5)], N=2,
                                star=True, kwstar=True))
    assert out == [((i,), {"a": i}) for i in range(5)]


# -------------------------------------------------------------- dead workers

def _killer(i):
    if i == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return i


def _exiter(i):
    if i == 5:
        os._exit(3)
    return i


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", [None, "raise", "return", "proc"])
@pytest.mark.parametrize("N,Nt", [(2, 1), (2, 3), (3, 1)])
def test_worker_killed_by_signal(N, Nt, mode):
    with pytest.raises(parmapper.WorkerDiedError) as info:
        list(parmapper.parmap(_killer, range(12), N=N, Nt=Nt, exception=mode))
    exc = info.value
    assert exc.signal == signal.SIGKILL == 9
    assert 5 in exc.seq_indices
    assert all(isinstance(i, int) for i in exc.seq_indices)
    assert isinstance(exc.pid, int) and exc.pid > 0
    assert list(parmapper.parmap(abs, range(-4, 4), N=N, Nt=Nt)) == [
        4, 3, 2, 1, 0, 1, 2, 3
    ]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("N,Nt", [(2, 1), (2, 2)])
def test_worker_exit_code(N, Nt):
    with pytest.raises(parmapper.WorkerDiedError) as info:
        list(parmapper.parmap(_exiter, range(12), N=N, Nt=Nt))
    exc = info.value
    assert exc.exitcode == 3
    assert not exc.signal
    assert 5 in exc.seq_indices
    assert list(parmapper.parmap(abs, [-1, 1], N=N)) == [1, 1]


@pytest.mark.timeout(60)
def test_worker_killed_chunked_lost_indices():
    with pytest.raises(parmapper.WorkerDiedError) as info:
        list(parmapper.parmap(_killer, range(12), N=2, chunksize=4))
    # item 5 is in the chunk [4, 8): that index must be reported lost
    assert 5 in info.value.seq_indices
    assert set(info.value.seq_indices) <= set(range(12))


@pytest.mark.timeout(60)
def test_worker_killed_unordered():
    with pytest.raises(parmapper.WorkerDiedError) as info:
        list(parmapper.parmap(_killer, range(12), N=2, ordered=False))
    assert 5 in info.value.seq_indices
    assert info.value.signal == 9
