"""Results that pickle in a worker but cannot be rebuilt in the caller
(imported by tests/test_unbuildable.py and by executor workers)."""
import sys


class TwoArgs(Exception):
    """Pickles, but its __init__ does not take its args back."""

    def __init__(self, a, b):
        super().__init__("two %s %s" % (a, b))


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
        return TwoArgs(1, 2)
    if x == 4:
        return [x, ghost()]
    if x == 5:
        raise ghost_error()
    if x == 6:
        import array
        # a large buffer: the record carries it out of band
        return (bytearray(200000), TwoArgs(5, 6))
    return x * 10
