"""A worker's own random state and name (issue 15, items 4 and 5)."""
import os
import subprocess
import sys
import textwrap

import pytest

import parmapper

np = pytest.importorskip("numpy")


def test_numpy_global_state_differs_between_workers():
    """After the caller has used numpy.random, each worker draws its own
    stream: four workers, four different values, and new ones next call."""
    np.random.random()
    first = list(parmapper.parmap(lambda i: np.random.random(), range(4),
                                  N=4, chunksize=1))
    second = list(parmapper.parmap(lambda i: np.random.random(), range(4),
                                   N=4, chunksize=1))
    assert len(set(first)) == 4, first
    assert not set(first) & set(second), (first, second)


def test_numpy_seeded_caller_still_reproducible_with_seedsequence():
    """The documented way to reproducible streams: a SeedSequence spawned
    per item, passed as an argument."""
    def draw(seed):
        return np.random.default_rng(seed).random()
    seeds = np.random.SeedSequence(12345).spawn(4)
    a = list(parmapper.parmap(draw, seeds, N=2))
    b = list(parmapper.parmap(draw, np.random.SeedSequence(12345).spawn(4), N=1))
    assert a == b and len(set(a)) == 4


def test_python_random_still_differs():
    import random
    vals = list(parmapper.parmap(lambda i: random.random(), range(4), N=4,
                                 chunksize=1))
    assert len(set(vals)) == 4


def test_worker_named_for_multiprocessing():
    import multiprocessing as mp
    me = os.getpid()
    got = list(parmapper.parmap(
        lambda i: (mp.current_process().name, mp.parent_process().pid,
                   mp.parent_process().name, mp.parent_process().is_alive(),
                   os.getpid()),
        range(3), N=3, chunksize=1))
    assert sorted(g[0] for g in got) == ["ParmapWorker-1", "ParmapWorker-2",
                                          "ParmapWorker-3"]
    for name, ppid, pname, alive, pid in got:
        assert ppid == me and pid != me and alive
        assert pname == mp.current_process().name == "MainProcess"
    # The caller is untouched.
    assert mp.current_process().name == "MainProcess"
    assert mp.parent_process() is None


def _identity(i):
    import multiprocessing as mp
    p = mp.current_process()
    return (p.name, p._identity, mp.parent_process().pid,
            mp.parent_process().name, os.getpid())


def _nested(i):
    return os.getpid(), list(parmapper.parmap(_identity, range(2), N=2,
                                              chunksize=1))


def test_worker_names_when_maps_interleave_and_nest():
    """The caller makes its workers' process objects when a map is created
    (_worker.prepare): a map started after another was created, a map
    inside a worker and a renamed caller still give each worker its own."""
    import multiprocessing as mp
    me = os.getpid()
    a = parmapper.parmap(_identity, range(3), N=3, chunksize=1)
    b = list(parmapper.parmap(_identity, range(2), N=2, chunksize=1))
    got = list(a)
    assert sorted(g[0] for g in b) == ["ParmapWorker-1", "ParmapWorker-2"]
    assert sorted(g[0] for g in got) == ["ParmapWorker-1", "ParmapWorker-2",
                                          "ParmapWorker-3"]
    assert sorted(g[1] for g in got) == [(1,), (2,), (3,)]
    assert all(g[2] == me and g[3] == "MainProcess" and g[4] != me
               for g in got)
    for wpid, inner in parmapper.parmap(_nested, range(2), N=2, chunksize=1,
                                        daemon=False):
        assert sorted(g[0] for g in inner) == ["ParmapWorker-1",
                                               "ParmapWorker-2"]
        assert all(g[2] == wpid and g[3].startswith("ParmapWorker-")
                   and len(g[1]) == 2 for g in inner), inner
    old = mp.current_process().name
    mp.current_process().name = "Boss"
    try:
        got = list(parmapper.parmap(_identity, range(2), N=2, chunksize=1))
    finally:
        mp.current_process().name = old
    assert [g[3] for g in got] == ["Boss", "Boss"]


def test_log_records_name_workers():
    """%(processName)s tells workers from the caller, in a program that
    imports only logging and parmapper."""
    code = textwrap.dedent("""
        import logging, sys
        import parmapper
        def rec(i):
            return logging.LogRecord("x", 20, "f", 1, "m", None, None).processName
        out = list(parmapper.parmap(rec, range(2), N=2, chunksize=1))
        print(sorted(out), rec(0))
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["['ParmapWorker-1',", "'ParmapWorker-2']",
                                "MainProcess"]


def _slow_identity(i):
    import time
    time.sleep(0.01)
    return _identity(i)


def test_worker_names_follow_a_caller_renamed_before_the_fork():
    """The process objects are made at parmap() (_worker.prepare), the
    workers forked at the first next() and, as replacements, later: a
    caller renamed in between was the parent under its old name
    (parent_process().name, %(processName)s of the parent) -- as it is at
    each fork, as before the objects were prepared."""
    import multiprocessing as mp
    old = mp.current_process().name
    try:
        it = parmapper.parmap(_identity, range(2), N=2, chunksize=1)
        mp.current_process().name = "Boss"
        got = list(it)
        assert [g[3] for g in got] == ["Boss", "Boss"]
        mp.current_process().name = old
        it = parmapper.parmap(_slow_identity, range(8), N=2, chunksize=1,
                              max_tasks_per_worker=1)
        first = next(it)
        mp.current_process().name = "Renamed"
        rest = list(it)
    finally:
        mp.current_process().name = old
    assert first[3] == old
    assert rest[-1][3] == "Renamed", rest
    assert sorted(set(g[0] for g in [first] + rest)) == ["ParmapWorker-1",
                                                         "ParmapWorker-2"]
