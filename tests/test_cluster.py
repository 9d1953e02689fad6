"""parmap(..., executor=ex): the same map on concurrent.futures executors and
on a real dask.distributed LocalCluster with 2 worker processes.

The concurrent.futures tests come first in the file, so their process pool
forks before the dask cluster (and its threads) exists.
"""
import concurrent.futures as cf
import itertools
import multiprocessing
import os

import pytest

import parmapper

pytestmark = [
    # Closing a LocalCluster can warn about ports/comms/unclosed resources.
    pytest.mark.filterwarnings(r"ignore:.*[Pp]ort.*:UserWarning"),
    pytest.mark.filterwarnings(r"ignore::ResourceWarning"),
    pytest.mark.filterwarnings(
        r"ignore:.*(Event loop|Task was destroyed|coroutine).*:RuntimeWarning"),
    pytest.mark.filterwarnings(r"ignore::pytest.PytestUnraisableExceptionWarning"),
    pytest.mark.filterwarnings(r"ignore::pytest.PytestUnhandledThreadExceptionWarning"),
]


def sq(x):
    return x * x


def recip(x):
    return 1.0 / (x - 3)


def show(*args, **kwargs):
    return (args, sorted(kwargs.items()))


def pid_of(_):
    return os.getpid()


# The star/kwstar table, with args and kwargs, on every executor.
TABLE = [
    (False, False, [1, 2]),
    (True, False, [(1, 2), (3,)]),
    (None, False, [0, 1]),
    (None, True, [{"a": 1}, {"b": 2}]),
    (False, True, [(1, {"a": 1}), (2, {})]),
    (True, True, [((1, 2), {"a": 1}), ((3,), {"k": 0})]),
]


def check_table(ex):
    for star, kwstar, items in TABLE:
        for chunksize in (1, 2):
            opts = dict(star=star, kwstar=kwstar, args=(9,), kwargs={"k": 5})
            want = list(parmapper.parmap(show, items, N=1, **opts))
            got = list(parmapper.parmap(show, items, executor=ex,
                                        chunksize=chunksize, **opts))
            assert got == want, (star, kwstar, chunksize)


def check_exceptions(ex):
    with pytest.raises(ZeroDivisionError) as ei:
        list(parmapper.parmap(recip, range(8), executor=ex, chunksize=3))
    assert ei.value.seq_index == 3
    assert isinstance(ei.value.__cause__, parmapper.RemoteTraceback)
    assert "recip" in ei.value.__cause__.tb

    out = list(parmapper.parmap(recip, range(6), executor=ex, chunksize=2,
                                exception="return"))
    assert isinstance(out[3], ZeroDivisionError) and out[3].seq_index == 3
    assert out[:3] == [recip(i) for i in range(3)]

    with pytest.raises(parmapper.ItemShapeError) as ei:
        list(parmapper.parmap(show, [(1,), 5], star=True, executor=ex,
                              exception="return"))
    assert ei.value.seq_index == 1


def check_orders(ex):
    assert list(parmapper.parmap(sq, range(50), executor=ex, chunksize=4)) == \
        [i * i for i in range(50)]
    got = list(parmapper.parmap(sq, range(50), executor=ex, ordered=False,
                                chunksize=3))
    assert sorted(got) == [i * i for i in range(50)]
    assert list(parmapper.parmap(sq, [], executor=ex)) == []
    auto = list(parmapper.parmap(sq, range(17), executor=ex, chunksize=-1))
    assert auto == [i * i for i in range(17)]


def check_bounded_lookahead(ex, slots):
    pulled = []

    def source():
        for i in itertools.count():
            pulled.append(i)
            yield i

    it = parmapper.parmap(sq, source(), executor=ex, chunksize=2)
    assert pulled == []                       # lazy: nothing before next()
    assert [next(it) for _ in range(5)] == [0, 1, 4, 9, 16]
    it.close()
    # an infinite input: at most 2*slots chunks were in flight (+ the ones
    # delivered, + what the input's thread read ahead), never the whole input
    from parmapper._input import read_ahead
    assert len(pulled) <= (2 * slots + 3) * 2 + read_ahead(2, 2 * slots)


# -------------------------------------------------- concurrent.futures

@pytest.fixture(scope="module")
def thread_ex():
    with cf.ThreadPoolExecutor(2) as ex:
        yield ex


@pytest.fixture(scope="module")
def process_ex():
    ctx = multiprocessing.get_context("fork")
    with cf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        yield ex


def test_thread_executor(thread_ex):
    check_orders(thread_ex)
    check_table(thread_ex)
    check_exceptions(thread_ex)
    check_bounded_lookahead(thread_ex, 2)
    k = 10
    assert list(parmapper.parmap(lambda x: x + k, range(3), executor=thread_ex)) == [10, 11, 12]


def test_process_executor(process_ex):
    check_orders(process_ex)
    check_table(process_ex)
    check_exceptions(process_ex)
    pids = set(parmapper.parmap(pid_of, range(20), executor=process_ex))
    assert os.getpid() not in pids


def test_process_executor_sends_functions_its_own_way(process_ex):
    # ProcessPoolExecutor pickles the function by reference: a lambda fails
    # there, as it would with process_ex.map; parmapper does not hide that.
    with pytest.raises(Exception) as ei:
        list(parmapper.parmap(lambda x: x, range(2), executor=process_ex))
    assert "pickle" in repr(ei.value).lower() or "lambda" in repr(ei.value)


def test_progress_on_executor(thread_ex):
    calls = []
    out = list(parmapper.parmap(sq, range(10), executor=thread_ex,
                                chunksize=4, progress=calls.append))
    assert out == [i * i for i in range(10)]
    assert calls == list(range(1, 11))


def test_executor_option_errors(thread_ex):
    with pytest.raises(TypeError, match="executor"):
        list(parmapper.parmap(sq, range(3), executor=object()))
    with pytest.raises(ValueError, match="timeout"):
        parmapper.parmap(sq, range(3), executor=thread_ex, timeout=1.0)
    with pytest.raises(ValueError, match="retries"):
        parmapper.parmap(sq, range(3), executor=thread_ex, retries=1)


# ------------------------------------------------------------------ dask

@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1,
                                  processes=True, dashboard_address=":0") as cl:
        with distributed.Client(cl) as c:
            yield c


def test_dask_lambdas_closures_and_orders(client):
    k = 7
    out = list(parmapper.parmap(lambda x: x * k, range(20), executor=client))
    assert out == [i * 7 for i in range(20)]
    check_orders(client)
    pids = set(parmapper.parmap(pid_of, range(40), executor=client))
    assert os.getpid() not in pids


def test_dask_star_kwstar_table(client):
    check_table(client)


def test_dask_exceptions(client):
    check_exceptions(client)


def test_dask_proc_mode_raises_the_original(client):
    with pytest.raises(ZeroDivisionError) as ei:
        list(parmapper.parmap(recip, range(6), executor=client,
                              exception="proc"))
    assert ei.value.seq_index == 3


def test_dask_bounded_lookahead(client):
    check_bounded_lookahead(client, 2)


def test_dask_progress_and_retries_option(client):
    calls = []
    out = list(parmapper.parmap(sq, range(9), executor=client, chunksize=2,
                                progress=calls.append, retries=1))
    assert out == [i * i for i in range(9)]
    assert calls == list(range(1, 10))


def test_dask_through_pool(client):
    with parmapper.Pool(executor=client) as pool:
        assert pool.starmap(lambda a, b: a - b, [(5, 1), (9, 4)]) == [4, 5]
