"""How the input is read, on every path: counts at full width, len() as a
hint, the first StopIteration ends the input, an input that raises keeps
the results before it, and replacement workers read the items as they were
when the map started."""
import concurrent.futures
import itertools
import os
import signal
import traceback

import pytest

import parmapper
from parmapper import _core

# Every way parmap runs a map: forked workers (adaptive, fixed and automatic
# chunks, unordered), serial, threads, and an executor.
PATHS = {
    "procs": dict(N=2),
    "procs-chunk3": dict(N=2, chunksize=3),
    "procs-chunk1-unordered": dict(N=2, chunksize=1, ordered=False),
    "procs-threads": dict(N=2, Nt=2),
    "serial": dict(N=1),
    "threads": dict(N=1, Nt=2, chunksize=3),
    "threads-unordered": dict(N=1, Nt=2, ordered=False),
    "executor": "executor",
}


def run(path, fun, seq, **kw):
    """list(parmap(fun, seq, ...)) on the named path."""
    opts = PATHS[path]
    if opts == "executor":
        kw.setdefault("chunksize", 3)
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            return list(parmapper.parmap(fun, seq, executor=ex, **kw))
    got = list(parmapper.parmap(fun, seq, **dict(opts, **kw)))
    return got if opts.get("ordered", True) else sorted(got)


def inc(x):
    return x + 1


def sq(x):
    return x * x


# --- counts that do not fit 32 (or 64) bits --------------------------------

def test_automatic_chunks_over_2_pow_32_items():
    # chunksize=-1 over 2**33 + 2 items asked for tasks of 2**32 + 1 items,
    # whose count the engine truncated to 1: [0, 18446744082299486209].
    it = parmapper.parmap(sq, range(2 ** 33 + 2), N=2, chunksize=-1)
    assert list(itertools.islice(it, 5)) == [0, 1, 4, 9, 16]
    it.close()


@pytest.mark.parametrize("path", sorted(PATHS))
def test_chunksize_beyond_a_task_is_refused(path):
    with pytest.raises(ValueError, match=r"chunksize must be at most 4294967295"):
        run(path, inc, range(10), chunksize=2 ** 32 + 1)


@pytest.mark.parametrize("path", sorted(PATHS))
def test_range_longer_than_ssize_t_is_iterated(path):
    # len(range(10**19)) raises OverflowError; a plain loop works.
    seq = range(10 ** 19)
    opts = PATHS[path]
    if opts == "executor":
        with concurrent.futures.ThreadPoolExecutor(2) as ex:
            it = parmapper.parmap(inc, seq, executor=ex)
            assert list(itertools.islice(it, 3)) == [1, 2, 3]
            it.close()
        return
    it = parmapper.parmap(inc, seq, **opts)
    got = list(itertools.islice(it, 3))
    it.close()
    if opts.get("ordered", True):
        assert got == [1, 2, 3]
    else:  # any three of the first items read, each once
        assert len(set(got)) == 3 and all(1 <= r <= 4096 for r in got)


@pytest.mark.parametrize("opt, value, match", [
    ("N", 4097, r"N must be at most 4096"),
    ("Nt", 5000, r"Nt must be at most 4096"),
    ("retries", 2 ** 40, r"retries must be between 0 and"),
    ("timeout", 1e300, r"timeout must be .* at most"),
    ("timeout", float("nan"), r"timeout must be"),
])
def test_counts_past_the_engine_limits_are_refused(opt, value, match):
    kw = {"N": 2, opt: value}
    with pytest.raises(ValueError, match=match):
        list(parmapper.parmap(inc, range(4), **kw))


def test_engine_limits_are_exported():
    assert _core.TASK_MAX_ITEMS == 2 ** 32 - 1
    assert _core.MAX_WORKERS == 4096


# --- len() is a hint --------------------------------------------------------

class LenLies:
    """len() says `claim`; iteration yields range(n)."""

    def __init__(self, claim, n):
        self.claim, self.n = claim, n

    def __len__(self):
        return self.claim

    def __iter__(self):
        return iter(range(self.n))


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("claim", [0, 1, 3, 100])
def test_len_is_a_hint_not_a_bound(path, claim):
    assert run(path, sq, LenLies(claim, 10)) == [i * i for i in range(10)]


@pytest.mark.parametrize("claim", [0, 2])
def test_len_hint_with_automatic_chunks(claim):
    got = list(parmapper.parmap(sq, LenLies(claim, 10), N=2, chunksize=-1))
    assert got == [i * i for i in range(10)]


def test_len_hint_in_pool_imap():
    with parmapper.Pool(2) as p:
        assert list(p.imap(sq, LenLies(0, 10))) == [i * i for i in range(10)]


# --- the input is finished at its first StopIteration -----------------------

class Revives:
    """An iterator that raises StopIteration after 5 items, then yields
    again (6, 7, ... are never to be read)."""

    def __init__(self):
        self.i = 0

    def __iter__(self):
        return self

    def __next__(self):
        self.i += 1
        if self.i % 6 == 0:
            raise StopIteration
        return self.i


@pytest.mark.parametrize("path", sorted(PATHS))
def test_first_stop_iteration_ends_the_input(path):
    assert run(path, inc, Revives()) == [2, 3, 4, 5, 6]


@pytest.mark.parametrize("path", sorted(PATHS))
def test_first_stop_iteration_ends_the_input_chunk3(path):
    assert run(path, inc, Revives(), chunksize=3) == [2, 3, 4, 5, 6]


# --- the input raises -------------------------------------------------------

class InputBroke(ValueError):
    pass


def breaking(n):
    yield from range(n)
    raise InputBroke("the input broke after {} items".format(n))


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("n", [0, 5, 50])
def test_input_exception_after_every_result(path, n):
    got = []
    with pytest.raises(InputBroke) as info:
        opts = PATHS[path]
        if opts == "executor":
            with concurrent.futures.ThreadPoolExecutor(2) as ex:
                for r in parmapper.parmap(sq, breaking(n), executor=ex):
                    got.append(r)
        else:
            for r in parmapper.parmap(sq, breaking(n), **opts):
                got.append(r)
    assert sorted(got) == [i * i for i in range(n)]
    if opts == "executor" or opts.get("ordered", True):
        assert got == [i * i for i in range(n)]
    # The input's own traceback: the frame that raised is the generator's.
    frames = traceback.extract_tb(info.value.__traceback__)
    assert frames[-1].name == "breaking"


@pytest.mark.parametrize("chunksize", [1, 7, None])
def test_input_exception_counted_by_progress(chunksize):
    seen = []
    with pytest.raises(InputBroke):
        for _ in parmapper.parmap(sq, breaking(20), N=2, chunksize=chunksize,
                                  progress=seen.append):
            pass
    assert seen and seen[-1] == 20


def test_input_exception_in_pool_imap():
    with parmapper.Pool(2) as p:
        got = []
        with pytest.raises(InputBroke):
            for r in p.imap(sq, breaking(12)):
                got.append(r)
    assert got == [i * i for i in range(12)]


class Stop(BaseException):
    pass


def stopping():
    yield 1
    yield 2
    raise Stop()


@pytest.mark.parametrize("path", sorted(PATHS))
def test_input_base_exception_propagates(path):
    # Not an Exception: it ends the map at once, as in a plain loop.
    with pytest.raises(Stop):
        run(path, inc, stopping())


# --- replacement workers read the items as they were at the start ----------

def _kill_once(flag, at):
    def fun(x):
        if x == at and not os.path.exists(flag):
            open(flag, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return x
    return fun


@pytest.mark.parametrize("change", ["replace", "clear"])
@pytest.mark.parametrize("opts", [dict(), dict(chunksize=1),
                                  dict(timeout=60), dict(Nt=2)],
                         ids=["adaptive", "chunk1", "timeout", "threads"])
def test_replacement_worker_reads_the_list_as_it_was(tmp_path, change, opts):
    lst = list(range(400))
    fun = _kill_once(str(tmp_path / "killed"), 150)
    got = []
    for i, r in enumerate(parmapper.parmap(fun, lst, N=2, retries=1, **opts)):
        got.append(r)
        if i == 20:
            if change == "replace":
                lst[:] = [v + 1000 for v in lst]
            else:
                lst.clear()
    assert os.path.exists(str(tmp_path / "killed"))
    assert got == list(range(400))


def test_replacement_worker_reads_the_array_as_it_was(tmp_path):
    np = pytest.importorskip("numpy")
    arr = np.arange(400)
    flag = str(tmp_path / "killed")

    def fun(x):
        if x == 150 and not os.path.exists(flag):
            open(flag, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return int(x)

    got = []
    for i, r in enumerate(parmapper.parmap(fun, arr, N=2, retries=1)):
        got.append(r)
        if i == 20:
            arr += 1000
    assert os.path.exists(flag)
    assert got == list(range(400))


def _slow_int(x):
    import time
    time.sleep(0.002)
    return int(x)


@pytest.mark.parametrize("kind", ["list", "array"])
@pytest.mark.parametrize("how", ["parmap", "Pool.imap"])
def test_retired_workers_successors_read_the_input_as_it_was(kind, how):
    # A worker retired after max_tasks_per_worker is replaced by a fresh
    # fork: a numpy array was copied only with retries or a timeout, so the
    # successors read what the caller had written into it since (a silent
    # wrong answer: [0, 1, 2, 3, -1, -1, ...]).
    if kind == "array":
        np = pytest.importorskip("numpy")
        seq = np.arange(60)
    else:
        seq = list(range(60))
    got = []
    if how == "parmap":
        results = parmapper.parmap(_slow_int, seq, N=2, chunksize=1,
                                   max_tasks_per_worker=2)
    else:
        pool = parmapper.Pool(2, maxtasksperchild=2)
        results = pool.imap(_slow_int, seq)
    for i, r in enumerate(results):
        got.append(r)
        if i == 0:
            seq[:] = [-1] * 60
    if how != "parmap":
        pool.close()
        pool.join()
    assert got == list(range(60))


@pytest.mark.parametrize("opts", [dict(), dict(chunksize=1), dict(Nt=2),
                                  dict(ordered=False)],
                         ids=["adaptive", "chunk1", "threads", "unordered"])
@pytest.mark.parametrize("change", ["assign", "clear", "array"])
def test_workers_read_the_input_as_it_was_at_the_start(opts, change):
    # Without options that fork replacements the input is not copied: each
    # worker reads it in its own copy of the caller's memory, made by the
    # fork before the caller's code runs again.
    if change == "array":
        np = pytest.importorskip("numpy")
        seq = np.arange(300)
    else:
        seq = list(range(300))
    got = []
    for i, r in enumerate(parmapper.parmap(_slow_int, seq, N=2, **opts)):
        got.append(r)
        if i == 5:
            if change == "clear":
                seq.clear()
            else:
                seq[:] = [-1] * 300
    assert sorted(got) == list(range(300))


# --- a slow input does not hold results back --------------------------------

SLOW_PATHS = {
    "procs": dict(N=2),
    "procs-chunk1": dict(N=2, chunksize=1),
    "procs-unordered": dict(N=2, ordered=False),
    "procs-threads": dict(N=2, Nt=2),
    "threads": dict(N=1, Nt=2),
    "executor": "executor",
}


@pytest.mark.parametrize("path", sorted(SLOW_PATHS))
def test_results_do_not_wait_behind_a_slow_input(path):
    # An input yielding an item every 30 ms: each result must be delivered
    # within a few items of its own, not after the read-ahead window fills
    # (before: results came 35 to 39 items behind the input).  Counted in
    # items read, not seconds.
    import time
    read = []

    def slow():
        for i in range(30):
            time.sleep(0.03)
            read.append(i)
            yield i

    opts = SLOW_PATHS[path]
    behind = []
    if opts == "executor":
        ex = concurrent.futures.ThreadPoolExecutor(2)
        it = parmapper.parmap(inc, slow(), executor=ex, chunksize=1)
    else:
        ex = None
        it = parmapper.parmap(inc, slow(), **opts)
    got = []
    for r in it:
        got.append(r)
        behind.append(len(read) - r)
    if ex is not None:
        ex.shutdown()
    assert sorted(got) == list(range(1, 31))
    assert max(behind) <= 6, behind


# --- a closed thread-pool map stops calling fun ------------------------------

def test_closed_thread_map_stops_its_chunks():
    # N=1, Nt=2 with chunks of 50: after close(), the chunks already running
    # in threads used to go on through every item (98 more calls); now each
    # ends after the call it is in.
    import threading
    import time
    calls = []
    lock = threading.Lock()

    def slow(x):
        with lock:
            calls.append(x)
        time.sleep(0.005)
        return x

    it = parmapper.parmap(slow, range(1000), N=1, Nt=2, chunksize=50)
    assert next(it) == 0
    with lock:
        at_close = len(calls)
    it.close()
    time.sleep(0.5)
    with lock:
        n = len(calls)
    time.sleep(0.3)
    with lock:
        assert len(calls) == n  # nothing runs any more
    # At most the call each of the 2 threads was in (and one racing the
    # close), not the rest of their chunks.
    assert n - at_close <= 4, (at_close, n)
