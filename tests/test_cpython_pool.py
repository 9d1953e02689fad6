"""parmapper.Pool judged by CPython's own Pool tests.

The classes ``_TestPool``, ``_TestPoolWorkerErrors`` and
``_TestPoolWorkerLifetime`` are imported from the ``test`` package of the
interpreter running this suite (``test._test_multiprocessing``; nothing is
copied into this project) and turned into test cases the way that module's
``install_tests_in_module_dict`` does for its 'processes' flavour
(``class Temp(base, ProcessesMixin, unittest.TestCase)``), with the mixin's
``Pool`` swapped for ``parmapper.Pool``.  Two of the classes call
``multiprocessing.Pool(...)`` by its module name rather than ``self.Pool``:
for them ``multiprocessing.Pool`` is ``parmapper.Pool`` while each test runs.

pytest collects the resulting ``unittest.TestCase`` classes like any other;
each CPython test is one pytest test.  The few tests left out are listed in
``LEFT_OUT`` with the reason; each is reported as skipped with that reason.
When the interpreter has no ``test`` package (some distributions ship it
separately, e.g. Debian's ``libpython3.X-testsuite``), the module is skipped
saying so.
"""
import multiprocessing
import sys
import unittest

import pytest

import parmapper

try:
    from test import _test_multiprocessing as cpython
except ImportError as e:  # pragma: no cover - depends on the interpreter
    pytest.skip("CPython's test package is not installed for {} ({}: {}); "
                "it holds the Pool tests this module runs".format(
                    sys.executable, type(e).__name__, e),
                allow_module_level=True)

# CPython tests left out, and why: tests that read multiprocessing's
# internals, that assert what parmapper does differently by design (items
# of a list are not pickled; results read before a failing input are all
# delivered), or that run multiprocessing's own Pool where ours cannot be
# swapped in.
LEFT_OUT = {
    "test_map_unplicklable":
        "asserts that the items of a list are pickled (an unpicklable item "
        "must fail); parmapper's workers read the items of a list, tuple, "
        "range or numpy array from their forked copy, unpickled, by design",
    "test_imap_handle_iterable_exception":
        "asserts that results of items read before the input raised are "
        "lost when they share a chunk with the failure (multiprocessing's "
        "chunking); parmapper delivers the result of every item read "
        "before the input's error, then raises it (docs/api.md)",
    "test_make_pool":
        "reads pool._pool, multiprocessing's list of standing worker "
        "objects (parmapper.Pool has no standing workers); the ValueError "
        "for Pool(0) and Pool(-1) it also checks is tested in test_pool.py",
    "test_resource_warning":
        "sets pool._state = multiprocessing.pool.RUN, multiprocessing's "
        "internal state constant, to provoke a ResourceWarning",
    "test_pool_worker_lifetime":
        "reads pool._pool and calls pool._repopulate_pool(), "
        "multiprocessing's standing workers",
    "test_worker_finalization_via_atexit_handler_of_multiprocessing":
        "runs multiprocessing.Pool (imported by name) in a fresh "
        "interpreter, where ours cannot be swapped in; the same case (a pool "
        "held by a global object at exit) is "
        "test_pool.py::test_pool_held_by_a_global_at_exit",
}


class _ParmapperProcessesMixin(cpython.ProcessesMixin):
    """The 'processes' flavour with parmapper's Pool."""

    Pool = staticmethod(parmapper.Pool)

    def setUp(self):
        super().setUp()
        # _TestPoolWorkerErrors and _TestPoolWorkerLifetime write
        # multiprocessing.Pool(...) instead of self.Pool(...).
        saved = multiprocessing.Pool
        multiprocessing.Pool = parmapper.Pool
        self.addCleanup(setattr, multiprocessing, "Pool", saved)


def _install(base):
    """A TestCase class for `base`, built as install_tests_in_module_dict
    builds it, with the left-out tests replaced by skips."""

    class Temp(base, _ParmapperProcessesMixin, unittest.TestCase):
        pass

    name = base.__name__[1:].replace("TestPool", "TestParmapperPool", 1)
    Temp.__name__ = Temp.__qualname__ = name
    Temp.__module__ = __name__
    for test, reason in LEFT_OUT.items():
        if hasattr(Temp, test):
            setattr(Temp, test, unittest.skip(reason)(getattr(Temp, test)))
    globals()[name] = Temp
    return Temp


for _base in ("_TestPool", "_TestPoolWorkerErrors", "_TestPoolWorkerLifetime"):
    _install(getattr(cpython, _base))
del _base


def test_the_cpython_classes_are_found():
    """The classes above come from the interpreter's test package and
    carry tests (a renamed class must not silently run nothing)."""
    for cls in (TestParmapperPool, TestParmapperPoolWorkerErrors,  # noqa: F821
                TestParmapperPoolWorkerLifetime):  # noqa: F821
        tests = [n for n in dir(cls) if n.startswith("test_")]
        assert tests, cls
        assert cls.Pool is parmapper.Pool
    assert set(LEFT_OUT) <= {n for c in (TestParmapperPool,  # noqa: F821
                                         TestParmapperPoolWorkerLifetime)  # noqa: F821
                             for n in dir(c)}


def test_skips_saying_why_without_the_test_package(tmp_path):
    """Where the interpreter has no test package, the module is skipped with
    the reason, not failed (run in a fresh interpreter that hides it)."""
    import os
    import subprocess
    code = ("import sys; sys.modules['test._test_multiprocessing'] = None; "
            "import pytest; sys.exit(pytest.main(['-q', '-rs', '-p', "
            "'no:cacheprovider', {!r}]))".format(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=120, cwd=str(tmp_path), env=env)
    # 5: no test collected (the module skipped itself), not a failure (1)
    assert proc.returncode in (0, 5), proc.stdout + proc.stderr
    assert "CPython's test package is not installed" in proc.stdout
    assert "1 skipped" in proc.stdout
