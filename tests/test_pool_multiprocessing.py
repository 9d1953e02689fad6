"""parmapper.Pool behaves as multiprocessing.Pool where migrated code can
tell: exception types, map's error rule, a pool of one, maxtasksperchild.

(The terminate() cases run in child interpreters:
tests/reliability/test_pool_terminate.py.)
"""
import builtins
import multiprocessing
import multiprocessing.pool
import os
import subprocess
import sys
import textwrap
import time

import pytest

import parmapper

SEEN = []


def raise_at(bad, x, nap_dir=None):
    """Raises ValueError for the items in `bad`; the others nap and leave a
    file behind in `nap_dir`, so that the test sees they ran to the end."""
    if x in bad:
        raise ValueError("bad item {}".format(x))
    time.sleep(0.1)
    if nap_dir is not None:
        open(os.path.join(nap_dir, "ran-{}".format(x)), "w").close()
    return x


def ran(path):
    return sorted(int(n.split("-")[1]) for n in os.listdir(path)
                  if n.startswith("ran-"))


# -- issue 15 item 6: AsyncResult.get's timeout ----------------------------

@pytest.mark.parametrize("call", ["apply_async", "map_async", "starmap_async"])
def test_get_timeout_is_multiprocessing_and_builtin_timeout_error(call):
    rfd, wfd = os.pipe()   # the worker waits on the pipe it inherited
    try:
        with parmapper.Pool(2) as pool:
            if call == "apply_async":
                r = pool.apply_async(os.read, (rfd, 1))
            elif call == "map_async":
                r = pool.map_async(lambda _: os.read(rfd, 1), [0])
            else:
                r = pool.starmap_async(os.read, [(rfd, 1)])
            with pytest.raises(multiprocessing.TimeoutError) as ei:
                r.get(timeout=0.1)
            assert isinstance(ei.value, builtins.TimeoutError)
            os.write(wfd, b"x")
            got = r.get(timeout=30)
            assert got == (b"x" if call == "apply_async" else [b"x"])
    finally:
        os.close(rfd)
        os.close(wfd)


# -- map: every item runs, then the first error is raised -------------------

@pytest.mark.parametrize("N", [1, 2])
@pytest.mark.parametrize("call", ["map", "starmap", "map_async"])
def test_map_runs_every_item_before_raising(tmp_path, N, call):
    items = range(6)
    with parmapper.Pool(N) as pool:
        with pytest.raises(ValueError, match="bad item 0") as ei:
            if call == "map":
                pool.map(lambda x: raise_at({0}, x, str(tmp_path)), items)
            elif call == "starmap":
                pool.starmap(raise_at, [({0}, x, str(tmp_path)) for x in items])
            else:
                pool.map_async(lambda x: raise_at({0}, x, str(tmp_path)),
                               items).get(timeout=60)
    # multiprocessing's rule (no fail-fast): the items after the failure,
    # running or queued, all ran to their end before map raised
    assert ran(str(tmp_path)) == [1, 2, 3, 4, 5]
    assert ei.value.seq_index == 0


def test_map_raises_the_first_error_by_position():
    def f(x):
        if x == 2:
            time.sleep(0.3)      # fails last
            raise KeyError("two")
        if x == 4:
            raise ValueError("four")
        return x
    with parmapper.Pool(2, chunksize=1) as pool:
        with pytest.raises(KeyError) as ei:
            pool.map(f, range(6))
    assert ei.value.seq_index == 2


def test_map_error_callback_gets_the_error_after_every_item(tmp_path):
    errors = []
    with parmapper.Pool(2) as pool:
        r = pool.map_async(lambda x: raise_at({1}, x, str(tmp_path)), range(4),
                           error_callback=errors.append)
        r.wait(60)
        assert ran(str(tmp_path)) == [0, 2, 3]
        assert len(errors) == 1 and isinstance(errors[0], ValueError)
        assert not r.successful()


def test_exception_objects_returned_by_func_stay_values():
    with parmapper.Pool(2) as pool:
        out = pool.map(lambda x: ValueError(x) if x % 2 else x, range(4))
    assert out[0] == 0 and out[2] == 2
    assert [type(o) for o in out[1::2]] == [ValueError, ValueError]
    assert [o.args for o in out[1::2]] == [(1,), (3,)]


def test_map_with_exception_return_keeps_its_meaning():
    with parmapper.Pool(2, exception="return") as pool:
        out = pool.map(lambda x: raise_at({1}, x), range(3))
    assert out[0] == 0 and out[2] == 2 and isinstance(out[1], ValueError)


def test_imap_still_raises_at_the_failing_item():
    with parmapper.Pool(2) as pool:
        it = pool.imap(lambda x: raise_at({3}, x), range(6), chunksize=1)
        assert [next(it) for _ in range(3)] == [0, 1, 2]
        with pytest.raises(ValueError) as ei:
            next(it)
    assert ei.value.seq_index == 3


# -- exception classes migrated code catches --------------------------------

def test_unpicklable_result_is_a_maybe_encoding_error():
    errors = []
    with parmapper.Pool(2) as pool:
        r = pool.apply_async(lambda: (lambda: 42), error_callback=errors.append)
        with pytest.raises(multiprocessing.pool.MaybeEncodingError) as ei:
            r.get(timeout=30)
        with pytest.raises(multiprocessing.pool.MaybeEncodingError):
            pool.map(lambda x: (lambda: x), range(2))
    e = ei.value
    assert isinstance(e, parmapper.ResultPicklingError)
    assert e.exc and e.value and "pickle" in str(e) and "item 0" in str(e)
    assert repr(e).startswith("ResultPicklingError(")
    assert errors == [e]


def boom():
    raise RuntimeError(123)  # the line the traceback shows


def test_worker_traceback_is_multiprocessings_remote_traceback():
    with parmapper.Pool(2) as pool:
        with pytest.raises(RuntimeError) as ei:
            pool.apply(boom)
    cause = ei.value.__cause__
    assert type(cause) is multiprocessing.pool.RemoteTraceback
    assert "raise RuntimeError(123)  # the line the traceback shows" in cause.tb
    # parmap's own is one too, for `except`/isinstance in migrated code
    with pytest.raises(RuntimeError) as ei:
        list(parmapper.parmap(lambda _: boom(), range(2), N=2))
    assert isinstance(ei.value.__cause__, multiprocessing.pool.RemoteTraceback)
    assert isinstance(ei.value.__cause__, parmapper.RemoteTraceback)


# -- a pool of one is one worker process ------------------------------------

def test_pool_of_one_runs_in_a_worker_process():
    SEEN.clear()

    def remember(x):
        SEEN.append(x)        # in a worker: the caller's list is untouched
        return os.getpid()

    with parmapper.Pool(1) as pool:
        pids = set(pool.map(remember, range(5)))
        assert os.getpid() not in set(pool.imap(remember, range(3)))
        assert pool.apply(os.getpid) != os.getpid()
    assert os.getpid() not in pids and len(pids) == 1
    assert SEEN == []


# -- maxtasksperchild --------------------------------------------------------

@pytest.mark.parametrize("value", [0, -1, 0.5, "12", True, 2.0])
def test_maxtasksperchild_invalid_values_are_refused(value):
    with pytest.raises(ValueError, match="maxtasksperchild"):
        parmapper.Pool(2, maxtasksperchild=value)


def _pid_of(x):
    return os.getpid(), x * x


@pytest.mark.parametrize("chunksize", [None, 1, 3])
def test_maxtasksperchild_replaces_workers(chunksize):
    # A worker is replaced after 5 items (items, not chunks), every result
    # comes back in order, with no warning.
    with parmapper.Pool(2, maxtasksperchild=5) as pool:
        got = pool.map(_pid_of, range(60), chunksize=chunksize)
        also = list(pool.imap(_pid_of, range(20)))
    assert [r for _, r in got] == [x * x for x in range(60)]
    assert [r for _, r in also] == [x * x for x in range(20)]
    pids = [p for p, _ in got]
    per = {p: pids.count(p) for p in set(pids)}
    assert len(per) >= 60 // (5 + (chunksize or 5) - 1)
    assert max(per.values()) <= 5 + (chunksize or 5) - 1


def test_processes_must_be_a_whole_number():
    with pytest.raises(TypeError, match="number of processes"):
        parmapper.Pool(2.5)
    with pytest.raises(ValueError, match="at least 1"):
        parmapper.Pool(processes=-1)


# -- a pool held by a global object at exit (CPython's bpo-38744 case) -------

def test_pool_held_by_a_global_at_exit(tmp_path):
    script = tmp_path / "held.py"
    script.write_text(textwrap.dedent('''
        import parmapper

        class Holder:
            def __init__(self):
                self.pool = parmapper.Pool(processes=1)

        problem = None

        if __name__ == "__main__":
            problem = Holder()
            print(problem.pool.map(float, tuple(range(10))))
    '''))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True,
                          text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str([float(i) for i in range(10)])
    assert proc.stderr == ""


# -- multiprocessing's signature ----------------------------------------------

INITIALIZED = []


def initialize(tag, other):
    INITIALIZED.append((tag, other))


def report_init(_):
    return list(INITIALIZED)


def test_multiprocessing_positional_order_and_context():
    INITIALIZED.clear()
    # Pool(processes, initializer, initargs, maxtasksperchild, context)
    with parmapper.Pool(2, initialize, ("a", 1)) as pool:
        assert pool.map(report_init, range(3)) == [[("a", 1)]] * 3
    ctx = multiprocessing.get_context("spawn")
    pool = parmapper.Pool(2, initialize, ("b", 2), 5, ctx)
    assert pool._maxtasksperchild == 5   # the fourth positional argument
    with pool:
        assert pool.map(report_init, range(2)) == [[("b", 2)]] * 2
    with parmapper.Pool(processes=2, context=ctx) as pool:
        assert pool.map(abs, [-3]) == [3]
    assert INITIALIZED == []     # only ever in workers
    with pytest.raises(TypeError, match="initargs must be a tuple"):
        parmapper.Pool(2, initialize, initialize)


def span(x):
    t0 = time.monotonic()
    time.sleep(0.2)
    return t0, time.monotonic()


def test_apply_async_runs_at_most_N_at_once():
    with parmapper.Pool(2) as pool:
        results = [pool.apply_async(span, (i,)) for i in range(6)]
        spans = [r.get(timeout=60) for r in results]
    # at any start, how many calls were running
    most = max(sum(1 for a, b in spans if a <= t0 < b) for t0, _ in spans)
    assert most <= 2, spans


def test_map_with_exception_raise_given_stops_fast(tmp_path):
    # parmap's meaning when the option is given: the error is raised at
    # once, and the queued items are not all run
    def f(x):
        if x == 0:
            raise ValueError("first")
        time.sleep(0.2)
        open(os.path.join(str(tmp_path), "ran-{}".format(x)), "w").close()
        return x
    with parmapper.Pool(2, chunksize=1) as pool:
        with pytest.raises(ValueError, match="first"):
            pool.map(f, range(20), exception="raise")
    assert len(ran(str(tmp_path))) < 19


def test_terminate_and_join_from_an_error_callback():
    import threading
    done = threading.Event()
    pool = parmapper.Pool(2)

    def on_error(e):
        pool.terminate()
        pool.join()       # does not wait for the call running this callback
        done.set()

    r = pool.map_async(lambda x: 1 / 0, [0], error_callback=on_error)
    assert done.wait(30)
    with pytest.raises(ZeroDivisionError):
        r.get(timeout=30)
    pool.join()
