"""Problems found by hostile testing (branch break).  Each test states what
it expects; each fails on the code as it was when it was written."""
import os
import re
import subprocess
import sys
import textwrap

import pytest

import parmapper
from parmapper import Pool, parmap

HERE = os.path.dirname(os.path.abspath(__file__))
# Where the parmapper under test lives (the tree, or an installed copy).
PYPATH = os.path.dirname(os.path.dirname(os.path.abspath(parmapper.__file__)))


def stop_at_3(x):
    if x == 3:
        raise StopIteration("fun stopped at 3")
    return x


def stop_always(*a):
    raise StopIteration("stop in apply")


# --- a StopIteration raised by fun -----------------------------------------

@pytest.mark.parametrize("opts", [dict(N=2), dict(N=2, chunksize=1),
                                  dict(N=2, ordered=False),
                                  dict(N=2, timeout=30)],
                         ids=["procs", "chunk1", "unordered", "timeout"])
def test_stop_iteration_from_fun_is_not_a_silent_end(opts):
    """fun raising StopIteration on item 3 of 8 with exception='raise' (the
    default with processes) must raise in the caller (as N=1 and N=1, Nt=2
    do: RuntimeError 'generator raised StopIteration'), never end the
    results silently after [0, 1, 2] (or an unordered subset)."""
    with pytest.raises(Exception):
        got = list(parmap(stop_at_3, range(8), **opts))
        pytest.fail("silently truncated to {!r}".format(got))


def test_pool_map_does_not_truncate_on_stop_iteration():
    """Pool.map with fun raising StopIteration on one item must raise (as
    multiprocessing.Pool.map does), not return a shortened list."""
    with Pool(2) as p:
        with pytest.raises(Exception):
            got = p.map(stop_at_3, range(8))
            pytest.fail("silently truncated to {!r}".format(got))


def test_pool_apply_raises_the_functions_stop_iteration():
    """Pool.apply of a function raising StopIteration must raise that
    StopIteration (as multiprocessing.Pool.apply does) or at least an error
    naming it -- not IndexError('list index out of range')."""
    with Pool(2) as p:
        with pytest.raises(BaseException) as ei:
            p.apply(stop_always, (1,))
    assert not isinstance(ei.value, IndexError), repr(ei.value)


# --- a list is read as it is at the first next() ---------------------------

def double(x):
    return 2 * x


@pytest.mark.parametrize("N", [1, 2])
def test_list_filled_between_call_and_first_next(N):
    """docs/api.md: a list is read as it was when the map started (the first
    next()).  A list empty at parmap() and filled before iterating must give
    its items' results with N=2 as with N=1 and map() -- not []."""
    seq = []
    it = parmap(double, seq, N=N)
    seq.extend([1, 2, 3])
    assert list(it) == [2, 4, 6]


@pytest.mark.parametrize("opts", [dict(N=1), dict(N=1, Nt=2)],
                         ids=["serial", "threads"])
def test_list_snapshot_holds_on_the_thread_and_serial_paths(opts):
    """docs/api.md: 'the same rules hold on every path (processes, N=1,
    threads...)': changing a list during the map does not change the
    results.  Appending to (or clearing) the list while iterating must give
    the results of the list as it was, as with N=2."""
    seq = list(range(6))
    out = []
    for r in parmap(double, seq, **opts):
        out.append(r)
        if len(seq) < 12:
            seq.append(100)
        if len(out) > 50:
            break
    assert out == [0, 2, 4, 6, 8, 10]
    seq = list(range(6))
    out = []
    for r in parmap(double, seq, **opts):
        out.append(r)
        seq.clear()
    assert out == [0, 2, 4, 6, 8, 10]


# --- len() is only a hint --------------------------------------------------

class NegativeLen:
    """Iterates 1, 2, 3; __len__ is unusable (negative)."""

    def __iter__(self):
        return iter([1, 2, 3])

    def __len__(self):
        return -1


@pytest.mark.parametrize("opts", [dict(N=1), dict(N=2)], ids=["serial", "procs"])
def test_unusable_len_is_iterated(opts):
    """docs/api.md: len() is a hint; an object without a usable len is
    simply iterated (as map() does).  A __len__ returning -1 (len() raises
    ValueError) must not fail the map."""
    assert list(parmap(double, NegativeLen(), **opts)) == [2, 4, 6]


# --- a large array item is copied at one moment ----------------------------

def min_max(a):
    return int(a.min()), int(a.max())


def test_large_array_item_is_not_torn():
    """An item that is a large numpy array must reach the worker as it was
    at one moment: here the input fills the whole (reused) array with i
    before yielding it, so every item has min == max.  The engine copies
    the array's memory into the ring later, in pieces, while the generator
    goes on writing it: items arrive with halves from different moments
    (e.g. (0, 1), (19, 21)).  builtins.map, multiprocessing.Pool.imap and
    ProcessPoolExecutor.map never give a torn item."""
    np = pytest.importorskip("numpy")
    buf = np.zeros(1 << 21, dtype=np.uint8)

    def frames():
        for i in range(40):
            buf[:] = i
            yield buf

    for _ in range(3):
        got = list(parmap(min_max, frames(), N=2, chunksize=1))
        torn = [(i, g) for i, g in enumerate(got) if g[0] != g[1]]
        assert not torn


# --- errors that do not name the option or the cause -----------------------

def test_bad_total_names_the_option():
    """A total= that is not a whole number must raise a TypeError naming
    'total', like every other option (N, Nt, chunksize, retries...)."""
    with pytest.raises(TypeError, match="total"):
        parmap(double, range(3), total="abc")


def test_thread_creation_failure_in_a_worker_is_named():
    """docs/api.md: resource errors name the call that failed and the
    likely limit.  A worker that cannot start its Nt threads (here each
    thread's stack would be RLIMIT_STACK = 1 TB, as after `ulimit -s
    1073741824`; Python's own threading says "can't start new thread") must
    not be reported only as 'exited with code 70'."""
    import resource

    def huge_stacks():
        resource.setrlimit(resource.RLIMIT_STACK,
                           (1 << 40, resource.RLIM_INFINITY))

    code = textwrap.dedent("""
        from parmapper import parmap
        try:
            list(parmap(abs, range(10), N=2, Nt=2))
            print("NO ERROR")
        except Exception as e:
            print(type(e).__name__, e)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                         text=True, timeout=60, preexec_fn=huge_stacks,
                         env=dict(os.environ, PYTHONPATH=PYPATH)).stdout
    if "NO ERROR" in out:
        pytest.skip("thread creation did not fail here")
    assert re.search(r"pthread_create|thread", out), out


# --- a read-only view of a writable array ----------------------------------

def _die_once_at_30(x, flag):
    if x == 30 and not os.path.exists(flag):
        open(flag, "w").close()
        os._exit(1)
    return int(x)


def test_replacement_worker_reads_a_read_only_view_as_it_was(tmp_path):
    """docs/api.md: a numpy array is read as it was when the map started,
    also by a worker forked later to replace one that died (a writable
    array is copied when retries can replace workers).  A read-only view of
    a writable array is not copied, but its data still change when the
    caller writes the base: the replacement worker then maps -1s."""
    np = pytest.importorskip("numpy")
    import functools
    base = np.arange(200)
    view = base[:]
    view.flags.writeable = False
    fun = functools.partial(_die_once_at_30, flag=str(tmp_path / "died"))
    out = []
    for r in parmap(fun, view, N=2, retries=1, chunksize=5):
        out.append(r)
        if len(out) == 1:
            base[:] = -1
    assert out == list(range(200))


# --- Pool.terminate() and background calls ---------------------------------

def _slow_item(x):
    import time
    time.sleep(0.2)
    return x


def test_pool_terminate_stops_map_async_workers(children):
    """Pool.terminate() (and leaving a with block) must stop the workers of
    a running map_async, as its docstring says ('stop the workers of every
    iterator still open') and as multiprocessing does.  Today the close()
    of the iterator being consumed in the AsyncResult's thread raises
    ValueError, which terminate() swallows: the 40 slow items all run to
    the end (about 4 s) after terminate()."""
    before = children.pids()
    with Pool(2) as p:
        ar = p.map_async(_slow_item, range(40))
        import time
        time.sleep(0.5)
    left = children.wait_back_to(before, timeout=1.5)
    assert not left, "workers still running after terminate()"
    ar.wait(10)


# --- shared objects inside one result --------------------------------------

def _shared_pair(x):
    a = [x]
    return [a, a]


def test_shared_list_inside_a_result_stays_shared():
    """A result that holds the same list twice ([a, a]) must come back with
    both places being one object, as with N=1, map(), multiprocessing and
    pickle (and as parmapper does for a dict: {..} twice stays shared).  The
    compact encoder of plain lists/tuples rebuilds two separate lists, so
    mutating r[0] no longer changes r[1]."""
    for r in parmap(_shared_pair, range(3), N=2):
        assert r[0] is r[1]
