"""Results that pickle in a worker but cannot be rebuilt in the caller
(imported by tests/test_unbuildable.py and by executor workers)."""
import sys


class TwoArgsObj:
    """Pickles, but is rebuilt with one argument where __init__ takes two
    (unlike an Exception subclass, whose pickling another library may
    change: distributed installs tblib's)."""

    def __init__(self, a, b):
        self.a, self.b = a, b

    def __reduce__(self):
        return (TwoArgsObj, (self.a,))


def ghost():
    """An instance of a class that exists only in the process that calls
    this (registered in this module there, never in the caller)."""
    mod = sys.modules[__name__]
    cls = getattr(mod, "Ghost", None)
    if cls is None:
        cls = type("Ghost", (), {"__module__": __name__})
        mod.Ghost = cls
    return cls()


def ghost_error():
    mod = sys.modules[__name__]
    cls = getattr(mod, "GhostError", None)
    if cls is None:
        cls = type("GhostError", (Exception,), {"__module__": __name__})
        mod.GhostError = cls
    return cls("raised in the worker")


def fun(x):
    if x == 2:
        return TwoArgsObj(1, 2)
    if x == 4:
        return [x, ghost()]
    if x == 5:
        raise ghost_error()
    if x == 6:
        # a large buffer: the record carries it out of band
        return (bytearray(200000), TwoArgsObj(5, 6))
    return x * 10
