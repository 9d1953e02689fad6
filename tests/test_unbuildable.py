"""A result (or an exception) that pickles in the worker but cannot be
rebuilt in the caller is an error for its item alone: ResultPicklingError
(RemoteError for an exception) with seq_index, the type's name and the
unpickler's message, raised or returned according to `exception`; the other
items are unaffected.  Every record kind the caller unpickles: a plain
pickle, a pickle with error entries, a pickle with out-of-band buffers; on
the engine's workers, Pool and executor=.
"""
import concurrent.futures as cf
import multiprocessing

import pytest

import parmapper
from parmapper import RemoteError, ResultPicklingError

import unbuildable_helpers as H

GOOD = {0: 0, 1: 10, 3: 30, 7: 70}


def check_values(out):
    assert len(out) == 8
    for i, want in GOOD.items():
        assert out[i] == want
    e2 = out[2]
    assert type(e2) is ResultPicklingError and e2.seq_index == 2
    assert e2.type_name.endswith("TwoArgsObj")
    assert "item 2" in str(e2) and "TwoArgsObj" in str(e2)
    assert "missing 1 required positional argument" in str(e2)
    e4 = out[4]
    assert type(e4) is ResultPicklingError and e4.seq_index == 4
    assert e4.type_name.endswith("Ghost")
    assert "Ghost" in str(e4) and "AttributeError" in str(e4)
    e5 = out[5]
    assert type(e5) is RemoteError and e5.seq_index == 5
    assert e5.type_name == "GhostError"
    assert "raised in the worker" in str(e5)
    assert "could not be rebuilt in the caller" in str(e5)
    e6 = out[6]        # a record with an out-of-band buffer
    assert type(e6) is ResultPicklingError and e6.seq_index == 6
    assert "TwoArgsObj" in str(e6)


OPTS = {
    "N2": dict(N=2),
    "N2-chunk8": dict(N=2, chunksize=8),
    "N2-Nt2-chunk3": dict(N=2, Nt=2, chunksize=3),
    "N1-retries": dict(N=1, retries=1),
    "N2-generator": dict(N=2, chunksize=4, gen=True),
}


@pytest.mark.timeout(60)
@pytest.mark.parametrize("opts", sorted(OPTS))
def test_unbuildable_return_mode(opts):
    o = dict(OPTS[opts])
    seq = (x for x in range(8)) if o.pop("gen", False) else range(8)
    check_values(list(parmapper.parmap(H.fun, seq, exception="return", **o)))


@pytest.mark.timeout(60)
def test_unbuildable_unordered():
    out = list(parmapper.parmap(H.fun, range(8), N=2, chunksize=2,
                                ordered=False, exception="return"))
    by_index = {}
    for r in out:
        if isinstance(r, Exception):
            by_index[r.seq_index] = r
        else:
            by_index[r // 10] = r
    check_values([by_index[i] for i in range(8)])


@pytest.mark.timeout(60)
@pytest.mark.parametrize("opts", ["N2", "N2-chunk8", "N2-Nt2-chunk3"])
def test_unbuildable_raise_mode(opts):
    got = []
    with pytest.raises(ResultPicklingError) as info:
        for r in parmapper.parmap(H.fun, range(8), exception="raise",
                                  **OPTS[opts]):
            got.append(r)
    assert got == [0, 10]
    assert info.value.seq_index == 2
    assert "TwoArgsObj" in str(info.value)


@pytest.mark.timeout(60)
def test_unbuildable_pool():
    with parmapper.Pool(2) as pool:
        check_values(pool.map(H.fun, range(8), exception="return"))


@pytest.mark.timeout(120)
def test_unbuildable_process_executor():
    ctx = multiprocessing.get_context("fork")
    with cf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
        for cs in (1, 8):
            check_values(list(parmapper.parmap(H.fun, range(8), executor=ex,
                                               chunksize=cs,
                                               exception="return")))
        # the pool is still usable: nothing broke it
        assert list(parmapper.parmap(abs, [-1, -2], executor=ex)) == [1, 2]


@pytest.mark.timeout(120)
def test_unbuildable_dask():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2,
                                  processes=True,
                                  dashboard_address=":0") as cl:
        with distributed.Client(cl) as client:
            check_values(list(parmapper.parmap(H.fun, range(8),
                                               executor=client, chunksize=3,
                                               exception="return")))
            # what plain pickle refuses still goes dask's way (cloudpickle)
            assert list(parmapper.parmap(lambda x: (lambda: x), range(3),
                                         executor=client))[2]() == 2
