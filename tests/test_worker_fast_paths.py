"""The workers' per-item fast paths keep every behaviour of the general ones.

fun(item) is called through fun's vectorcall function with CPython's result
check (binding/caller.c), exact one-digit ints and floats are encoded inline
(binding/codec.c enc_fast) and an inherited int is read from the object
(binding/worker.c inherited_item): each test names the shape a wrong fast
path would break.
"""
import ctypes
import functools
import math
import operator
import os
import re
import sys
import threading

import pytest

import parmapper

OPTS = [dict(N=1), dict(N=2), dict(N=2, chunksize=1), dict(N=2, Nt=2),
        dict(N=2, chunksize=3, ordered=False)]


class IntSub(int):
    pass


class FloatSub(float):
    pass


# Around one CPython digit (2**30), two digits (2**60) and a long long.
EDGE_INTS = [0, 1, -1, 5, -5, 256, 257, -6, 2**30 - 1, 2**30, 2**30 + 1,
             -(2**30) + 1, -(2**30), -(2**30) - 1, 2**31, -(2**31), 2**60 - 1,
             2**60, -(2**60), 2**62, 2**63 - 1, -(2**63), 2**63, -(2**63) - 1,
             2**64, -(2**64), 10**30, -(10**30)]
EDGE_VALUES = EDGE_INTS + [True, False, IntSub(7), IntSub(2**40), IntSub(-3),
                           FloatSub(1.5), 1.5, -0.0, 2.0**70, float("inf"),
                           None]


def ident(x):
    return x


def typed(x):
    return (type(x), x)


def same(a, b):
    """Equal, of the same type, and -0.0 kept."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return a == b


def gen(values):
    return (v for v in values)


@pytest.mark.parametrize("make", [list, tuple, gen], ids=["list", "tuple", "gen"])
@pytest.mark.parametrize("opts", OPTS)
def test_results_keep_value_and_type(make, opts):
    """Each value comes back equal and of its own type, as result and as
    item: a bool stays a bool, an int or float subclass keeps its class, and
    ints past one digit, two digits and 64 bits come back exact."""
    got = list(parmapper.parmap(typed, make(EDGE_VALUES), **opts))
    want = EDGE_VALUES
    if not opts.get("ordered", True):
        def key(v):
            return (type(v).__name__, repr(v))
        got.sort(key=lambda p: key(p[1]))
        want = sorted(EDGE_VALUES, key=key)
    assert len(got) == len(want)
    for (t, x), v in zip(got, want):
        assert t is type(v) and same(x, v), (t, x, v)


@pytest.mark.parametrize("opts", OPTS)
def test_int_results_alone_are_exact(opts):
    """A task whose results are all ints (the whole record in the compact
    codec, no other type to send it to pickle)."""
    for v in EDGE_INTS:
        got = list(parmapper.parmap(ident, [v] * 5, **opts))
        assert all(type(x) is int and x == v for x in got), (v, got)
    got = list(parmapper.parmap(lambda i: -i, range(-2**31, -2**31 + 70),
                                **opts))
    assert sorted(got) == sorted(-i for i in range(-2**31, -2**31 + 70))


@pytest.mark.parametrize("opts", OPTS)
def test_subclass_results_keep_their_type(opts):
    """Results only of subclasses and bools (each one a result list of one
    type): never encoded as plain ints or floats."""
    for f, want in ((bool, bool), (IntSub, IntSub), (FloatSub, FloatSub)):
        got = list(parmapper.parmap(f, range(6), **opts))
        assert [type(x) for x in got] == [want] * 6, (f, got)
        assert sorted(got) == sorted(f(i) for i in range(6))


class Adder:
    def __init__(self, k):
        self.k = k

    def add(self, x):
        return x + self.k

    def __call__(self, x):
        return x * self.k


@pytest.mark.parametrize("opts", OPTS)
def test_every_kind_of_callable(opts):
    """A bound method (which writes its self into the slot before the item),
    an instance with __call__ (no vectorcall), a partial, a builtin, a type,
    a lambda."""
    a = Adder(3)
    cases = [(a.add, lambda x: x + 3), (a, lambda x: x * 3),
             (functools.partial(pow, 2), lambda x: 2 ** x), (abs, abs),
             (str, str), (lambda x: [x], lambda x: [x])]
    for f, want in cases:
        got = list(parmapper.parmap(f, range(-4, 9), **opts))
        if not opts.get("ordered", True):
            got.sort(key=repr)
            assert got == sorted((want(x) for x in range(-4, 9)), key=repr)
        else:
            assert got == [want(x) for x in range(-4, 9)], f


def _null_function():
    """A C function (METH_O) that returns NULL without setting an exception;
    the ctypes objects it needs are kept with it."""
    cb_type = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.py_object,
                               ctypes.py_object)

    class MethodDef(ctypes.Structure):
        _fields_ = [("ml_name", ctypes.c_char_p), ("ml_meth", cb_type),
                    ("ml_flags", ctypes.c_int), ("ml_doc", ctypes.c_char_p)]

    cb = cb_type(lambda self, x: None)  # None: a NULL pointer
    md = MethodDef(b"null_fun", cb, 0x0008, None)  # METH_O
    new = ctypes.pythonapi.PyCFunction_NewEx
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.POINTER(MethodDef), ctypes.py_object,
                    ctypes.py_object]
    f = new(ctypes.byref(md), None, None)
    return f, (cb, md)


NULL_FUN, _KEEP = _null_function()
# CPython's messages (3.9 says "error" where 3.10 on say "exception").
NULL_WITHOUT_ERROR = "returned NULL without setting an (exception|error)"
RESULT_WITH_ERROR = "returned a result with an (exception|error) set"


def test_null_function_is_what_it_says():
    with pytest.raises(SystemError, match=NULL_WITHOUT_ERROR):
        NULL_FUN(1)


@pytest.mark.parametrize("opts", OPTS)
def test_null_without_exception_is_a_system_error_naming_the_item(opts):
    """fun returns NULL with no exception set: as in a serial call, a
    SystemError (not a crash, not a missing result), named by its item."""
    with pytest.raises(SystemError, match=NULL_WITHOUT_ERROR) as info:
        list(parmapper.parmap(NULL_FUN, [4, 5, 6], **opts))
    assert info.value.seq_index in (0, 1, 2)
    if opts.get("ordered", True):
        assert info.value.seq_index == 0
    out = list(parmapper.parmap(NULL_FUN, range(4), exception="return",
                                **opts))
    assert len(out) == 4
    assert all(type(e) is SystemError and re.search(NULL_WITHOUT_ERROR, str(e))
               for e in out), out
    assert sorted(e.seq_index for e in out) == [0, 1, 2, 3]


def _result_with_error_function():
    """A C function (METH_O) that sets ValueError and returns a result: the
    body of _testcapi.return_result_with_error (which takes no argument and
    ignores the one it is given) under a METH_O method definition."""
    testcapi = pytest.importorskip("_testcapi")

    class MethodDef(ctypes.Structure):
        _fields_ = [("ml_name", ctypes.c_char_p), ("ml_meth", ctypes.c_void_p),
                    ("ml_flags", ctypes.c_int), ("ml_doc", ctypes.c_char_p)]

    src = testcapi.return_result_with_error
    # PyCFunctionObject: the object's head (two words), then its m_ml.
    mdp = ctypes.c_void_p.from_address(
        id(src) + 2 * ctypes.sizeof(ctypes.c_void_p)).value
    orig = MethodDef.from_address(mdp)
    assert orig.ml_name == b"return_result_with_error"
    md = MethodDef(b"result_with_error", orig.ml_meth, 0x0008, None)
    new = ctypes.pythonapi.PyCFunction_NewEx
    new.restype = ctypes.py_object
    new.argtypes = [ctypes.POINTER(MethodDef), ctypes.py_object,
                    ctypes.py_object]
    return new(ctypes.byref(md), None, None), (md, src)


@pytest.mark.parametrize("opts", OPTS)
def test_result_with_exception_set_is_a_system_error_naming_the_item(opts):
    """fun returns a result with an exception set: as in a serial call, a
    SystemError whose cause is the exception that was set (not the result,
    not a stray exception raised later), named by its item."""
    # (Not called here: from 3.12 on, a call site the interpreter has
    # specialized for a builtin does not check the result.)
    f, keep = _result_with_error_function()
    with pytest.raises(SystemError, match=RESULT_WITH_ERROR) as info:
        list(parmapper.parmap(f, [4, 5, 6], **opts))
    if opts.get("ordered", True):
        assert info.value.seq_index == 0
    if opts["N"] == 1:
        assert type(info.value.__cause__) is ValueError
    else:  # the worker's traceback, the ValueError in it
        assert "ValueError" in str(info.value.__cause__)
    out = list(parmapper.parmap(f, range(4), exception="return", **opts))
    assert all(type(e) is SystemError and re.search(RESULT_WITH_ERROR, str(e))
               for e in out), out
    assert sorted(e.seq_index for e in out) == [0, 1, 2, 3]
    assert list(parmapper.parmap(abs, [-1, -2], **opts)) == [1, 2]


def _pid_runs(pids):
    return 1 + sum(a != b for a, b in zip(pids, pids[1:]))


def test_adaptive_chunks_still_learn_the_time_per_item():
    """Workers time their tasks only for the adaptive chunk size (the one
    reader of the time): there it still grows the tasks for fast items, so
    consecutive items run in the same worker (a time of 0 would keep every
    task at one item: about one change of worker per item or two)."""
    import os
    n = 20000
    pids = list(parmapper.parmap(lambda x: os.getpid(), range(n), N=2))
    assert len(set(pids)) <= 2
    assert _pid_runs(pids) < n // 20, _pid_runs(pids)
    # A fixed chunk size is used exactly, untimed.
    pids = list(parmapper.parmap(lambda x: os.getpid(), range(600), N=2,
                                 chunksize=50))
    assert all(len(set(pids[i:i + 50])) == 1 for i in range(0, 600, 50))


# An int item the function keeps no reference to is reused for the next int
# item of the task (binding/worker.c, spare_set): each value must come out
# exactly, with its sign, on both sides of one digit and of the small ints.
SPARE_LIST = (EDGE_INTS + list(range(-300, 300)) + EDGE_INTS[::-1] +
              [12345, -12345, 2**30 - 1, -(2**30 - 1), 7, 2**29, -(2**29)])
SPARE_RANGES = [range(-(2**30) - 3, 2**30 + 4, 2**27 + 1),
                range(300, -300, -7), range(2**30 - 50, 2**30 + 50)]


def text(x):
    return repr(x), type(x).__name__


@pytest.mark.parametrize("opts", OPTS)
@pytest.mark.parametrize("seq", [SPARE_LIST, tuple(SPARE_LIST)] + SPARE_RANGES,
                         ids=["list", "tuple", "range-wide", "range-down",
                              "range-digit"])
def test_int_items_come_out_exact(opts, seq):
    got = list(parmapper.parmap(text, seq, **opts))
    want = [text(x) for x in seq]
    if not opts.get("ordered", True):
        got, want = sorted(got), sorted(want)
    assert got == want


_kept = []


def keep_some(x):
    """Keeps every third item with its repr at the time: a kept item is
    never reused, so each still has the value it had when kept."""
    if x % 3 == 0:
        _kept.append((x, repr(x)))
    return repr(x), all(repr(k) == was for k, was in _kept)


@pytest.mark.parametrize("opts", OPTS)
def test_int_items_the_function_keeps_stay_as_they_were(opts):
    seq = list(range(1000, 1300)) + list(range(-1300, -1000))
    _kept.clear()  # workers inherit it empty (N=1 fills the caller's)
    got = list(parmapper.parmap(keep_some, seq, **opts))
    if not opts.get("ordered", True):
        got.sort(key=lambda p: seq.index(int(p[0])))
    assert got == [(repr(x), True) for x in seq]


# The reference that keeps an int item from being reused may be held
# anywhere the function can put it, not only in a list of its own: a frame
# it keeps, a traceback, a generator, C state (ctypes, an object array), a
# thread that is still running.  Each keeper returns a way to read the item
# back later; keep_held checks every earlier one still reads as it did.
_held = []


def _hold_frame(x):
    return sys._getframe().f_locals.__getitem__


def _hold_traceback(x):
    def inner(y):
        raise ValueError
    try:
        inner(x)
    except ValueError:
        tb = sys.exc_info()[2]
    return lambda k: tb.tb_next.tb_frame.f_locals["y"]


def _hold_generator(x):
    def gen(y):
        yield y
    g = gen(x)  # not started: its frame holds y
    return lambda k: g.gi_frame.f_locals["y"]


def _hold_ctypes(x):
    p = ctypes.py_object(x)
    return lambda k: p.value


def _hold_object_array(x):
    np = pytest.importorskip("numpy")
    a = np.empty(1, dtype=object)
    a[0] = x
    return lambda k: a[0]


def _hold_thread(x):
    go, box = threading.Event(), []
    t = threading.Thread(target=lambda v: (go.wait(), box.append(v)),
                         args=(x,), daemon=True)
    t.start()

    def read(k):
        go.set()
        t.join()
        return box[0]
    return read


def _hold_index(x):  # operator.index, range: the same object, not a copy
    r = range(operator.index(x))
    return lambda k: r.stop


HOLDERS = [_hold_frame, _hold_traceback, _hold_generator, _hold_ctypes,
           _hold_object_array, _hold_thread, _hold_index]


def keep_held(hold, x):
    if _held and _held[0][0] != os.getpid():
        _held.clear()  # inherited from the caller or another worker
    read = hold(x) if type(x) is int and x % 2 == 0 else None
    ok = all(repr(r("x")) == was for _, r, was in _held)
    if read:
        _held.append((os.getpid(), read, repr(x)))
    return repr(x), ok


@pytest.mark.parametrize("opts", OPTS[1:])
@pytest.mark.parametrize("hold", HOLDERS, ids=lambda h: h.__name__[6:])
@pytest.mark.parametrize("seq", [list(range(-1200, -1000)) +
                                 list(range(1000, 1200)) + [2.5, None, True],
                                 range(-3000, 3000, 29)],
                         ids=["list", "range"])
def test_int_items_held_outside_the_function_stay_as_they_were(opts, hold,
                                                               seq):
    got = list(parmapper.parmap(functools.partial(keep_held, hold), seq,
                                **opts))
    want = [(repr(x), True) for x in seq]
    if not opts.get("ordered", True):
        got, want = sorted(got), sorted(want)
    assert got == want
