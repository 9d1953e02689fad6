"""The binding's shared definitions (issue 16): the kinds of error entries
and the exception modes are defined once, in the C module (binding/core.h),
and the Python package's own paths use those numbers."""
import parmapper
from parmapper import _api, _cluster, _core, _salvage


def test_error_kinds_and_modes_come_from_the_c_module():
    kinds = (_core.ERR_CALL, _core.ERR_SHAPE, _core.ERR_BASE)
    assert len(set(kinds)) == 3
    assert _api._MODES == {"raise": _core.MODE_RAISE,
                           "return": _core.MODE_RETURN,
                           "proc": _core.MODE_PROC}
    assert len(set(_api._MODES.values())) == 3
    # No private copy of the kinds is left in the Python package.
    for mod in (_api, _cluster, _salvage):
        for name in ("_OK", "_SHAPE", "_CALL", "_BASE"):
            assert not hasattr(mod, name), (mod.__name__, name)


def test_thread_chunks_report_the_c_kinds():
    """The N=1, Nt>1 path tags each failure with the same kinds as the C
    engine's error entries."""
    def f(x):
        if x == 1:
            raise ValueError("one")
        return x

    caller = _core.Caller(f, (), None, False, False)
    out = _api._run_chunk(caller, 0, [0, 1])
    assert out[0] == (None, 0)
    assert out[1][0] == _core.ERR_CALL and isinstance(out[1][1], ValueError)
    shaped = _core.Caller(f, (), None, True, False)
    out = _api._run_chunk(shaped, 0, [5])
    assert out[0][0] == _core.ERR_SHAPE
    assert isinstance(out[0][1], parmapper.ItemShapeError)

    def stop(x):
        raise KeyboardInterrupt

    out = _api._run_chunk(_core.Caller(stop, (), None, False, False), 0, [1, 2])
    assert len(out) == 1 and out[0][0] == _core.ERR_BASE


def test_exception_return_on_every_path():
    """A guard for the change of numbers: exception='return' still returns
    an Exception of `fun` in the item's place on the engine and thread paths."""
    def f(x):
        if x % 3 == 0:
            raise ValueError(x)
        return x

    for opts in ({"N": 2}, {"N": 1, "Nt": 2}, {"N": 2, "Nt": 2}):
        got = list(parmapper.parmap(f, range(6), exception="return", **opts))
        assert [isinstance(r, ValueError) for r in got] == [
            i % 3 == 0 for i in range(6)], opts
        assert [r for r in got if not isinstance(r, ValueError)] == [1, 2, 4, 5]
