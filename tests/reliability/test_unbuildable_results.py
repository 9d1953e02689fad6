"""The issue's example in a clean interpreter (no library that changes how
exceptions pickle, as distributed does by installing tblib's): an Exception
subclass whose __init__ takes two arguments pickles in the worker but cannot
be unpickled in the caller; a class made only in the worker cannot be found
there.  Each is an error for its item alone."""
import pytest

CODE = r'''
import parmapper

class TwoArgs(Exception):
    def __init__(self, a, b):
        super().__init__()

def f(x):
    if x == 2:
        return TwoArgs(1, 2)
    if x == 5:
        Local = type("Local", (), {"__module__": "__main__"})
        globals()["Local"] = Local      # only in this worker
        return {"v": Local()}
    return x

opts = P
out = []
try:
    for r in parmapper.parmap(f, range(8), **opts):
        out.append(r)
    err = None
except Exception as e:
    err = e
emit(out=[exc_facts(r) if isinstance(r, BaseException) else r for r in out],
     err=exc_facts(err))
'''


@pytest.mark.parametrize("opts", [
    dict(N=2, exception="return"), dict(N=2, chunksize=8, exception="return"),
    dict(N=2, Nt=2, exception="return"),
    dict(N=2, chunksize=3, ordered=False, exception="return"),
], ids=["N2", "N2-chunk8", "N2-Nt2", "N2-chunk3-unordered"])
def test_twoargs_exception_result_return_mode(run_facts, opts):
    f = run_facts(CODE, params=opts)
    assert f["err"] is None
    out = f["out"]
    assert len(out) == 8
    errs = {e["seq_index"]: e for e in out if isinstance(e, dict)}
    vals = sorted(v for v in out if not isinstance(v, dict))
    assert vals == [0, 1, 3, 4, 6, 7]
    assert sorted(errs) == [2, 5]
    assert errs[2]["type"] == "ResultPicklingError"
    assert "item 2" in errs[2]["str"] and "TwoArgs" in errs[2]["str"]
    assert "missing 2 required positional arguments" in errs[2]["str"]
    assert errs[5]["type"] == "ResultPicklingError"
    assert "Local" in errs[5]["str"] and "AttributeError" in errs[5]["str"]
    if opts.get("ordered", True):
        assert out[:2] == [0, 1] and out[3:5] == [3, 4] and out[6:] == [6, 7]


def test_twoargs_exception_result_raise_mode(run_facts):
    f = run_facts(CODE, params=dict(N=2, exception="raise"))
    assert f["out"] == [0, 1]
    assert f["err"]["type"] == "ResultPicklingError"
    assert f["err"]["seq_index"] == 2


# The same kind in the other direction: an item the caller pickles but the
# worker cannot rebuild (its class was made after the workers were forked).
LATE_ITEMS = r'''
import parmapper

def gen():
    for i in range(10):
        if i in (5, 7):
            cls = globals().get("Late") or type("Late", (), {"__module__": "__main__"})
            globals()["Late"] = cls
            o = cls()
            o.v = i
            yield o
        else:
            yield i

def f(x):
    return x * 10

out = []
try:
    for r in parmapper.parmap(f, gen(), **P):
        out.append(r)
    err = None
except Exception as e:
    err = e
emit(out=[exc_facts(r) if isinstance(r, BaseException) else r for r in out],
     err=exc_facts(err))
'''


@pytest.mark.parametrize("opts", [
    dict(N=2, chunksize=1), dict(N=2, chunksize=4), dict(N=2, Nt=2, chunksize=3),
    dict(N=2),
], ids=["chunk1", "chunk4", "Nt2-chunk3", "adaptive"])
def test_item_the_worker_cannot_rebuild(run_facts, opts):
    f = run_facts(LATE_ITEMS, params=dict(opts, exception="return"))
    assert f["err"] is None
    out = f["out"]
    assert [v for i, v in enumerate(out) if i not in (5, 7)] == \
        [i * 10 for i in range(10) if i not in (5, 7)]
    for i in (5, 7):
        assert out[i]["type"] == "ItemPicklingError"
        assert out[i]["seq_index"] == i
        assert "cannot be rebuilt in the worker" in out[i]["str"]
        assert "Late" in out[i]["str"] and "AttributeError" in out[i]["str"]


def test_item_the_worker_cannot_rebuild_raise_mode(run_facts):
    f = run_facts(LATE_ITEMS, params=dict(N=2, chunksize=2))
    assert f["out"] == [0, 10, 20, 30, 40]
    assert f["err"]["type"] == "ItemPicklingError"
    assert f["err"]["seq_index"] == 5
