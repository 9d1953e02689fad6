"""Shared helpers for the parmapper test suite.

The project's pytest configuration sets the global timeout and turns warnings
into errors; nothing here changes that.  When the ``pytest-timeout`` plugin is
not installed (e.g. a bare local run), the ``timeout`` ini option and marker
are declared (inert) so that they do not produce unknown-option/marker
warnings.
"""
import glob
import os
import time

import pytest


def pytest_addoption(parser, pluginmanager):
    # Without pytest-timeout the project's "timeout" ini option would be an
    # unknown option (a warning, hence an error); declare it as inert then.
    if not pluginmanager.hasplugin("timeout"):
        parser.addini("timeout", "per-test time limit (needs pytest-timeout)")


def pytest_configure(config):
    if not config.pluginmanager.hasplugin("timeout"):
        config.addinivalue_line(
            "markers", "timeout(seconds): per-test time limit (pytest-timeout)"
        )


def child_pids():
    """The pids of the current process's children (Linux /proc), or None."""
    files = glob.glob("/proc/%d/task/*/children" % os.getpid())
    if not files:
        return None
    pids = set()
    for name in files:
        try:
            with open(name) as fh:
                pids.update(int(p) for p in fh.read().split())
        except OSError:
            pass
    return pids


def wait_children_back_to(baseline, timeout=10.0):
    """Polls until every child not in ``baseline`` is gone; returns the
    leftover set (empty on success)."""
    deadline = time.monotonic() + timeout
    while True:
        now = child_pids()
        extra = now - baseline
        if not extra or time.monotonic() > deadline:
            return extra
        time.sleep(0.05)


@pytest.fixture
def children():
    """Access to the child-process helpers; skips off Linux."""
    if child_pids() is None:
        pytest.skip("needs /proc/<pid>/task/*/children")

    class _Children:
        pids = staticmethod(child_pids)
        wait_back_to = staticmethod(wait_children_back_to)

    return _Children
