"""BaseExceptions that are not Exceptions raised by `fun`: one rule on every path.

KeyboardInterrupt, SystemExit, GeneratorExit and custom BaseException
subclasses propagate to the caller, as a serial loop and concurrent.futures
do, whatever `exception` says ('return' never hands them out as values), with
``seq_index``; every result before them is delivered first (none is dropped).
"""
import concurrent.futures as cf
import multiprocessing

import pytest

import parmapper

BAD = 5


class Custom(BaseException):
    """A BaseException subclass that is not an Exception."""


KINDS = {
    "KeyboardInterrupt": KeyboardInterrupt,
    "SystemExit": SystemExit,
    "GeneratorExit": GeneratorExit,
    "Custom": Custom,
}


def make_fun(kind):
    cls = KINDS[kind]

    def f(x):
        if x == BAD:
            raise cls("item %d" % x)
        return x * 10
    return f


# Module-level functions for executors that pickle by reference.
def raise_ki(x):
    if x == BAD:
        raise KeyboardInterrupt("item %d" % x)
    return x * 10


def raise_custom(x):
    if x == BAD:
        raise Custom("item %d" % x)
    return x * 10


PATHS = {
    "serial": dict(N=1),
    "threads": dict(N=1, Nt=2),
    "threads-chunk3": dict(N=1, Nt=2, chunksize=3),
    "procs": dict(N=2),
    "procs-chunk3": dict(N=2, chunksize=3),
    "procs-threads": dict(N=2, Nt=2),
    "procs-generator": dict(N=2, chunksize=4, gen=True),
    "one-proc-retries": dict(N=1, retries=1),
}


def collect(it):
    got = []
    try:
        for r in it:
            got.append(r)
    except BaseException as e:  # noqa: BLE001 - what the test looks at
        return got, e
    return got, None


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["return", "raise"])
@pytest.mark.parametrize("kind", sorted(KINDS))
@pytest.mark.parametrize("path", sorted(PATHS))
def test_base_exception_propagates_after_earlier_results(path, kind, mode):
    opts = dict(PATHS[path])
    seq = range(12)
    if opts.pop("gen", False):
        seq = (x for x in range(12))
    got, exc = collect(parmapper.parmap(make_fun(kind), seq, exception=mode,
                                        **opts))
    assert type(exc) is KINDS[kind]
    assert exc.args == ("item %d" % BAD,)
    assert exc.seq_index == BAD
    # every result before it, none dropped, none after
    assert got == [x * 10 for x in range(BAD)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("path", ["threads", "procs", "procs-threads"])
def test_base_exception_unordered(path):
    got, exc = collect(parmapper.parmap(make_fun("Custom"), range(12),
                                        ordered=False, exception="return",
                                        **PATHS[path]))
    assert type(exc) is Custom and exc.seq_index == BAD
    assert len(set(got)) == len(got)
    assert set(got) <= {x * 10 for x in range(12) if x != BAD}


@pytest.mark.timeout(60)
def test_exception_still_returned_beside_base_rule():
    # An ordinary Exception keeps following 'return' on every path.
    def f(x):
        if x == BAD:
            raise ValueError(x)
        return x
    for opts in PATHS.values():
        opts = {k: v for k, v in opts.items() if k != "gen"}
        out = list(parmapper.parmap(f, range(8), exception="return", **opts))
        assert out[:BAD] + out[BAD + 1:] == [0, 1, 2, 3, 4, 6, 7]
        assert type(out[BAD]) is ValueError and out[BAD].seq_index == BAD


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["return", "raise"])
def test_base_exception_pool(mode):
    with parmapper.Pool(2) as pool:
        got, exc = collect(pool.imap(make_fun("KeyboardInterrupt"), range(12),
                                     exception=mode))
        assert type(exc) is KeyboardInterrupt and exc.seq_index == BAD
        assert got == [x * 10 for x in range(BAD)]
        with pytest.raises(SystemExit) as info:
            pool.map(make_fun("SystemExit"), range(12), exception=mode)
        assert info.value.seq_index == BAD


@pytest.fixture(scope="module")
def executors():
    ctx = multiprocessing.get_context("fork")
    with cf.ThreadPoolExecutor(2) as tex, \
            cf.ProcessPoolExecutor(2, mp_context=ctx) as pex:
        yield {"thread": tex, "process": pex}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("mode", ["return", "raise"])
@pytest.mark.parametrize("fun", [raise_ki, raise_custom])
@pytest.mark.parametrize("which", ["thread", "process"])
def test_base_exception_executor(executors, which, fun, mode):
    got, exc = collect(parmapper.parmap(fun, range(12), chunksize=3,
                                        executor=executors[which],
                                        exception=mode))
    assert type(exc) is (KeyboardInterrupt if fun is raise_ki else Custom)
    assert exc.seq_index == BAD
    assert got == [x * 10 for x in range(BAD)]
