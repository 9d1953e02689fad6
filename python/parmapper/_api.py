"""parmap: the public map function and its serial and threaded paths."""
import collections
import contextvars
import operator
import os
import re
import sys
import threading
import warnings
from collections.abc import Mapping

from . import _core, _worker  # noqa: F401  (_worker: imported before forks)
from ._core import ItemShapeError
from ._cpu import cpu_count
from ._errors import item_stop_iteration
from ._input import (InputThread, check_owner, indexable, open_input,
                     read_ahead)
from ._progress import check_progress, progress_iter, wants_progress
from ._worker import hide_ours, note_item

__all__ = ["parmap", "parmapper", "CPU_COUNT", "set_start_method"]

# The CPUs this process may use (affinity, cgroup quota), read at import.
CPU_COUNT = cpu_count()

# exception= as the engine numbers it (binding/core.h).
_MODES = {"raise": _core.MODE_RAISE, "return": _core.MODE_RETURN,
          "proc": _core.MODE_PROC}

# The engine counts time in 64-bit nanoseconds: a timeout of at most 10^9 s
# (about 31 years) keeps every deadline far inside that range.
_MAX_TIMEOUT = 1e9

# Set by Pool around its parmap() call: with N=1 a pool's worker is still a
# process of its own (isolation, terminate()), where parmap would run in the
# caller.  Read once, when parmap() is called.
_one_worker_process = contextvars.ContextVar("parmapper_one_worker_process",
                                             default=False)

# chunksize=-1 makes tasks of at most this many items (the adaptive sizing's
# own bound, in the binding).
_AUTO_CHUNK_MAX = 1 << 20


def _count(name, value, default, who="parmap"):
    """Validates a positive whole-number option."""
    if value is None:
        return default
    try:
        if isinstance(value, bool):  # True is 1 to operator.index
            raise TypeError
        v = operator.index(value)
    except TypeError:
        raise TypeError(
            "{}: {} must be a whole number >= 1, got {!r}".format(who, name, value)
        ) from None
    if v < 1:
        raise ValueError("{}: {} must be >= 1, got {}".format(who, name, v))
    return v


def _flag(name, value, allowed=(True, False)):
    """Validates a bool option (`star` also takes None): 1, 'no' or an array
    are refused, not read by truth value."""
    if value is None and None in allowed or isinstance(value, bool):
        return value
    t = type(value)
    if t.__module__ == "numpy" and t.__name__ in ("bool", "bool_"):
        return bool(value)
    raise TypeError("parmap: {} must be {}, got {!r}".format(
        name, " or ".join(repr(a) for a in allowed), value))


def _total(total):
    """Validates `total`: None or a whole number >= 0."""
    if total is None:
        return None
    try:
        if isinstance(total, bool):
            raise TypeError
        total = operator.index(total)
    except TypeError:
        raise TypeError("parmap: total must be None or a whole number >= 0 "
                        "(the number of items), got {!r}".format(total)) from None
    if total < 0:
        raise ValueError("parmap: total must be >= 0 (the number of items), "
                         "got {}".format(total))
    return total


_MEMORY_UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9,
                 "tb": 10 ** 12, "kib": 1 << 10, "mib": 1 << 20,
                 "gib": 1 << 30, "tib": 1 << 40}


def _memory(value):
    """Validates max_memory: bytes (a whole number >= 1) or a string such as
    "2GB" (10**9) or "512MiB" (2**20); returns bytes, or None."""
    if value is None:
        return None
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)\s*",
                         value)
        unit = m and _MEMORY_UNITS.get(m.group(2).lower())
        if not unit:
            raise ValueError(
                "parmap: max_memory must be a number of bytes or a string "
                "such as '2GB', '512MB' or '1.5GiB' (units B, kB, MB, GB, TB, "
                "KiB, MiB, GiB, TiB), got {!r}".format(value))
        n = int(float(m.group(1)) * unit)
    else:
        if isinstance(value, bool):
            raise TypeError("parmap: max_memory must be a number of bytes or a "
                            "string such as '2GB', got {!r}".format(value))
        try:
            n = operator.index(value)
        except TypeError:
            raise TypeError("parmap: max_memory must be a number of bytes or "
                            "a string such as '2GB', got {!r}".format(
                                value)) from None
    if n < 1 << 20 or n >= 1 << 64:
        raise ValueError("parmap: max_memory must be at least 1 MiB (1048576 "
                         "bytes) and below 2**64 bytes, got {!r} ({} bytes)"
                         .format(value, n))
    return n


def parmap(fun, seq, N=None, Nt=1, chunksize=None, ordered=True, daemon=True,
           progress=False, total=None, args=(), kwargs=None, star=False,
           kwstar=False, exception=None, executor=None, retries=0,
           timeout=None, max_tasks_per_worker=None, max_memory=None,
           input_thread=True):
    """Map `fun` over `seq` in parallel processes and/or threads.

    The function is inherited by forked worker processes, never pickled, so
    lambdas, closures and methods of local classes work.  Only the items and
    the results cross process boundaries (pickled).  Variables in scope are
    read-only copies in the workers.

    Parameters
    ----------
    fun : callable
        The function to apply to each item.
    seq : iterable
        The items.  Read lazily, a bounded number of items ahead of the
        results, so generators and infinite iterators work.
    N : int, optional
        Number of worker processes; default ``CPU_COUNT``.  ``N=1`` starts
        no process: a plain serial map, or a thread pool when ``Nt > 1``.
        Fewer processes are started when the input has fewer chunks.
    Nt : int, default 1
        Number of threads inside each process (useful when `fun` releases
        the GIL: I/O, sleep, numpy...).
    chunksize : int or None, default None
        Items per task sent to a worker.  ``None`` (adaptive): the engine
        measures the time per item and grows tasks toward a couple of
        milliseconds of work, smaller near the end of known-length input.
        An int is used as given (raised to at least `Nt`, at most
        ``2**32 - 1``, the engine's items per task); ``-1`` means
        ``ceil(len(seq) / (N * Nt))``, at most ``2**20`` (a warning and
        ``Nt`` when the length is unknown).  Results never depend on it.
    ordered : bool, default True
        Yield results in input order; ``False`` yields them as they complete.
    daemon : bool, default True
        When False, a worker may itself run a parmap with ``N > 1``
        (nesting).  With True such a nested map raises a RuntimeError.
    progress : bool, str, tqdm class or instance, or callable, default False
        Show progress counting items (never chunks) as results arrive:
        ``True`` or a label gives a ``tqdm.auto`` bar when tqdm is installed,
        else a text bar on stderr; a tqdm class is instantiated with the
        total, a tqdm instance is updated and closed; any other callable is
        called with the number of completed items.
    total : int, optional
        The number of items, for the progress bar, when ``len(seq)`` is not
        available (or to override it).
    args : tuple, default ()
        Extra positional arguments passed after the item's.
    kwargs : dict, optional
        Extra keyword arguments; per-item `kwvals` win over them.
    star : bool or None, default False
        How the item gives positional arguments (see the table below).
    kwstar : bool, default False
        Whether the item also carries a mapping of keyword arguments.
    exception : {'raise', 'return', 'proc'}, optional
        What happens when `fun` raises; default 'raise' when ``N > 1`` else
        'proc'.  'raise' re-raises in the caller with the original type and
        message, ``seq_index`` set to the item's index and the worker's
        traceback chained as the cause; 'return' yields the exception object
        in the item's place; 'proc' lets the exception propagate where `fun`
        runs (with ``N > 1`` the worker prints it and dies, and the map
        raises :class:`WorkerDiedError` naming the item).  An item of the
        wrong shape for star/kwstar always raises a TypeError
        (:class:`ItemShapeError`) naming its index.  A BaseException that
        is not an Exception (KeyboardInterrupt, SystemExit, GeneratorExit...)
        is raised in the caller with 'raise' and 'return' alike, after the
        results before it, as from a serial loop.  A result that cannot be
        unpickled in the caller is a :class:`ResultPicklingError` for its
        item alone.
    retries : int, default 0
        Items lost to a worker that dies (crash, kill, OOM) are run again on
        a fresh worker up to this many times before :class:`WorkerDiedError`
        is raised.  Off by default: `fun` may not be idempotent.
    timeout : float, optional
        Seconds one item may run.  A worker stuck past it is killed and
        replaced, and the item fails with a ``TimeoutError`` carrying
        ``seq_index`` (raised or returned according to `exception`).  Each
        task then holds one item.  With `retries` or `timeout`, ``N=1`` also
        runs in one worker process (a thread cannot be stopped).
    max_tasks_per_worker : int, optional
        A worker process is replaced by a fresh one after it has been given
        this many items (items, not chunks: the chunk that reaches the count
        is its last; adaptive chunks are capped at this many items, and
        ``chunksize=1`` makes it exact).  It finishes the items it has, and
        no item is lost or run twice.  For functions that leak memory.
        Needs worker processes: with ``N=1`` one worker process is used.
    max_memory : int or str, optional
        Per worker process: bytes (at least 1 MiB), or a string such as
        ``"2GB"`` (10**9) or ``"512MiB"`` (2**20).  A worker whose resident
        memory grew by more than this since it was forked is killed and
        replaced; the item it was running fails with
        :class:`WorkerMemoryError` (a ``MemoryError``) carrying
        ``seq_index``, ``limit`` and ``rss``, raised or returned according
        to `exception`, or run again with `retries`.  Measured by the
        parent about every 20 ms: an allocation faster than that can pass
        it (docs/design.md).  Each task then holds one item.
    input_thread : bool, default True
        Read an input that is not a list, tuple, range or numpy array (a
        generator, a file, any iterator) in a thread of its own, so that
        results already computed are delivered while the input's ``next()``
        blocks.  Each item is still copied before the input is asked for the
        next one, so an input that reuses one buffer or object for every
        item is safe.  ``False`` reads it in the caller's thread (results
        then wait while a ``next()`` blocks): for an iterator bound to the
        thread that made it, such as a ``sqlite3`` cursor.  With threads
        (``N=1, Nt > 1``) and `executor`, the items are handed over as they
        are, read ahead a bounded number of chunks, as always there.  A map
        that ends (closed, an error, dropped) stops the thread before its
        next read; a ``next()`` that never returns keeps it (a daemon
        thread) but nothing else.
    executor : dask.distributed.Client or concurrent.futures.Executor, optional
        Run the map on this executor (a cluster, an ``MPIPoolExecutor``, a
        ``ProcessPoolExecutor``...) instead of forked workers.  Chunks of
        `chunksize` items are submitted with bounded look-ahead (``2 * N``
        chunks in flight, `N` defaulting to the executor's worker count);
        star/kwstar, args/kwargs, `ordered`, `exception` with ``seq_index``
        and `progress` keep their meaning; `Nt` and `daemon` are unused;
        `retries` is passed to dask (chunks lost with a worker run again)
        and `timeout` is refused (an executor cannot stop a running task).
        `fun` and the items are sent the way the executor sends them (dask
        uses cloudpickle, so lambdas work there too).

    Returns
    -------
    iterator
        The results.  Nothing starts until the first result is requested.

    Notes
    -----
    How each item is turned into a call (`kwvals` win over `kwargs`):

    =====  ======  ===============  ===============  ===================
    star   kwstar  item             positional       keywords
    =====  ======  ===============  ===============  ===================
    False  False   ``val``          ``(val,)+args``  ``kwargs``
    True   False   ``vals``         ``vals+args``    ``kwargs``
    None   False   ignored          ``args``         ``kwargs``
    None   True    ``kwvals``       ``args``         ``kwargs | kwvals``
    False  True    ``val,kwvals``   ``(val,)+args``  ``kwargs | kwvals``
    True   True    ``vals,kwvals``  ``vals+args``    ``kwargs | kwvals``
    =====  ======  ===============  ===============  ===================

    ``parmap.map`` and ``parmap.imap`` are the same call, and
    ``parmap.close()`` does nothing, so parmap can stand in for a
    multiprocessing pool.

    Examples
    --------
    >>> list(parmap(lambda x: x * x, range(5)))
    [0, 1, 4, 9, 16]
    >>> list(parmap(lambda a, b, c=0: a + b + c, [(1, 2), (3, 4)], star=True,
    ...             kwargs={'c': 10}))
    [13, 17]
    """
    if not callable(fun):
        raise TypeError("parmap: fun must be callable, got {!r}".format(
            type(fun).__name__))
    # The same test iter() makes, without creating an iterator yet.
    if not hasattr(seq, "__iter__") and not hasattr(seq, "__getitem__"):
        raise TypeError("parmap: seq must be iterable, got {!r}".format(
            type(seq).__name__))
    user_N = _count("N", N, CPU_COUNT)
    Nt = _count("Nt", Nt, 1)
    adaptive = chunksize is None
    if not adaptive:
        try:
            if isinstance(chunksize, bool):
                raise TypeError
            chunksize = operator.index(chunksize)
        except TypeError:
            raise TypeError("parmap: chunksize must be None (adaptive), a whole "
                            "number >= 1, or -1, got {!r}".format(chunksize)) from None
    if not adaptive and (chunksize == 0 or chunksize < -1):
        raise ValueError("parmap: chunksize must be >= 1, or -1 for automatic; "
                         "got {}".format(chunksize))
    if not adaptive and chunksize > _core.TASK_MAX_ITEMS:
        raise ValueError("parmap: chunksize must be at most {} (items in one "
                         "task), got {}".format(_core.TASK_MAX_ITEMS, chunksize))
    try:
        if isinstance(retries, bool):
            raise TypeError
        retries = operator.index(retries)
    except TypeError:
        raise TypeError("parmap: retries must be a whole number >= 0, got "
                        "{!r}".format(retries)) from None
    if retries < 0 or retries > _core.MAX_RETRIES:
        raise ValueError("parmap: retries must be between 0 and {}, got "
                         "{}".format(_core.MAX_RETRIES, retries))
    if timeout is not None:
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise TypeError("parmap: timeout must be a number of seconds or "
                            "None, got {!r}".format(timeout))
        if not 0 < timeout <= _MAX_TIMEOUT:
            raise ValueError("parmap: timeout must be a number of seconds > 0 "
                             "and at most {:g}, got {!r}".format(_MAX_TIMEOUT,
                                                                 timeout))
    if max_tasks_per_worker is not None:
        if isinstance(max_tasks_per_worker, bool):
            raise TypeError("parmap: max_tasks_per_worker must be a whole "
                            "number >= 1 or None, got {!r}".format(
                                max_tasks_per_worker))
        max_tasks_per_worker = _count("max_tasks_per_worker",
                                      max_tasks_per_worker, None)
        if max_tasks_per_worker >= 1 << 64:
            raise ValueError("parmap: max_tasks_per_worker must be below "
                             "2**64, got {}".format(max_tasks_per_worker))
    max_memory = _memory(max_memory)
    # retries, timeout, worker recycling and the memory limit need a process
    # that can be killed and replaced.
    use_procs = (user_N > 1 or retries > 0 or timeout is not None
                 or max_tasks_per_worker is not None
                 or max_memory is not None
                 or _one_worker_process.get())
    if exception is None:
        exception = "raise" if use_procs or executor is not None else "proc"
    if not isinstance(exception, str) or exception not in _MODES:
        raise ValueError("parmap: exception must be 'raise', 'return' or 'proc',"
                         " got {!r}".format(exception))
    if not isinstance(args, (tuple, list)):
        raise TypeError("parmap: args must be a tuple or a list, got {!r}".format(
            type(args).__name__))
    if kwargs is not None and not isinstance(kwargs, Mapping):
        raise TypeError("parmap: kwargs must be a mapping (dict), got {!r}".format(
            type(kwargs).__name__))
    if kwargs is not None:
        for k in kwargs:
            if not isinstance(k, str):
                raise TypeError("parmap: kwargs keys must be strings, got "
                                "{!r}".format(k))
    star = _flag("star", star, (True, False, None))
    kwstar = _flag("kwstar", kwstar)
    ordered = _flag("ordered", ordered)
    daemon = _flag("daemon", daemon)
    input_thread = _flag("input_thread", input_thread)
    total = _total(total)

    # len() is a hint (progress, worker count, chunk sizes), never a bound on
    # what is read, except for the indexed inputs whose lengths are true.  A
    # range longer than sys.maxsize has no len(): it is iterated.
    try:
        n = len(seq)
    except Exception:  # no len, or an unusable one: iterate
        n = None
    indexed = n is not None and indexable(seq)

    check_progress(progress)
    for name, v in (("max_tasks_per_worker", max_tasks_per_worker),
                    ("max_memory", max_memory)):
        if executor is not None and v is not None:
            raise ValueError("parmap: {} cannot be used with executor= (the "
                             "executor owns its workers)".format(name))
    if executor is not None:
        from ._cluster import executor_map
        return executor_map(executor, fun, seq, n, N, Nt,
                            1 if adaptive else chunksize, ordered,
                            progress, total, args, kwargs, star, kwstar,
                            exception, retries, timeout, input_thread)

    if chunksize == -1:
        if n is not None:
            # At most _AUTO_CHUNK_MAX: a task's results are held in memory
            # whole, and results flow only as tasks complete.
            chunksize = min(max(1, -(-n // (user_N * Nt))), _AUTO_CHUNK_MAX)
        else:
            warnings.warn("parmap: chunksize=-1 needs len(seq); the input has "
                          "no length, so chunksize={} is used".format(Nt),
                          UserWarning, stacklevel=2)
            chunksize = Nt
    if not adaptive:
        chunksize = min(max(chunksize, Nt), _core.TASK_MAX_ITEMS)
    if timeout is not None or max_memory is not None:
        # The timeout and the memory limit are per item: one per task.
        chunksize, adaptive = 1, False

    if use_procs and _core.in_worker() == 1:
        raise RuntimeError(
            "parmap: a nested parmap with N={} cannot start processes inside a "
            "worker of a parmap with daemon=True; pass daemon=False to the "
            "outer parmap to allow nesting".format(user_N))

    caller = _core.Caller(fun, tuple(args), kwargs, star, kwstar)
    if not use_procs:
        if Nt == 1:
            results = _serial(caller, seq, exception, star is not None)
        else:
            results = _threaded(caller, seq, Nt, Nt if adaptive else chunksize,
                                ordered, exception, star is not None,
                                input_thread)
    else:
        for name, v in (("N", user_N), ("Nt", Nt)):
            if v > _core.MAX_WORKERS:
                raise ValueError("parmap: {} must be at most {} with worker "
                                 "processes, got {}".format(
                                     name, _core.MAX_WORKERS, v))
        # Log records name their process through multiprocessing, which a
        # worker can only set when it is loaded: load it here once (~10 ms)
        # rather than in every worker.
        if "logging" in sys.modules and "multiprocessing" not in sys.modules:
            import multiprocessing.process  # noqa: F401
        nproc = user_N
        # A list is read at the first next(), not now: it may be filled
        # meanwhile (its length now is no bound).
        if n is not None and not (n == 0 and type(seq) is list):
            nproc = max(1, min(nproc, n if adaptive else -(-n // chunksize)))
        _worker.prepare(nproc)
        if n == 0 and indexed and type(seq) is not list:
            results = iter(())
        else:
            results = _core.MapIter(caller, seq, nproc, Nt,
                                    0 if adaptive else chunksize,
                                    bool(ordered), _MODES[exception],
                                    bool(daemon), retries=retries,
                                    timeout=timeout, index=indexed,
                                    length=-1 if n is None else n,
                                    proc_log=(_worker.ProcLog()
                                              if exception == "proc"
                                              else None),
                                    max_tasks=max_tasks_per_worker or 0,
                                    max_memory=max_memory or 0,
                                    input_thread=input_thread)
    if wants_progress(progress):
        results = progress_iter(results, progress, total if total is not None else n)
    return results


def _serial(caller, seq, mode, has_item=True):
    if type(seq) is list:  # the items as they are at the first next()
        seq = tuple(seq)
    for i, item in enumerate(seq):
        try:
            r = caller(i, item)
        except ItemShapeError:
            raise
        except BaseException as e:
            note_item(e, i, item, has_item)
            # A BaseException that is not an Exception (KeyboardInterrupt,
            # SystemExit...) always propagates, whatever the mode.
            if mode != "return" or not isinstance(e, Exception):
                err = item_stop_iteration(e, i)
                if err is e:
                    hide_ours(e)
                    raise  # bare: adds no frame of ours
                raise err
            r = e
        yield r


def _run_chunk(caller, first, items, stop=None, has_item=True):
    """Runs a chunk in a thread: ``[(kind, value)]``, kind None for a
    result, else the kind of error entry (``_core.ERR_*``): ERR_SHAPE an
    ItemShapeError, ERR_CALL an Exception, ERR_BASE a BaseException that is
    not an Exception, which ends the chunk there (as it would end a serial
    loop); the results before it are kept, to be delivered before it is
    raised.
    A set `stop` (the map was closed or failed) ends it before the next item
    (a running call cannot be stopped)."""
    out = []
    for j, x in enumerate(items):
        if stop is not None and stop.is_set():
            break
        try:
            out.append((None, caller(first + j, x)))
        except ItemShapeError as e:
            out.append((_core.ERR_SHAPE, e))
        except Exception as e:
            note_item(e, first + j, x, has_item)
            out.append((_core.ERR_CALL, e))
        except BaseException as e:
            note_item(e, first + j, x, has_item)
            out.append((_core.ERR_BASE, e))
            break
    return out


def _ready(pending, ordered):
    """Whether a result can be delivered now: the oldest future (ordered) or
    any (unordered) is done."""
    if ordered:
        return pending[0].done()
    return any(f.done() for f in pending)


def _threaded(caller, seq, Nt, chunksize, ordered, mode, has_item=True,
              input_thread=True):
    """N == 1, Nt > 1: a bounded thread pool in the caller's process."""
    from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

    ahead = 2 * Nt
    src = open_input(seq, input_thread, read_ahead(chunksize, ahead))
    threaded = isinstance(src, InputThread)
    stop = threading.Event()
    pending = collections.deque() if ordered else set()
    ex = ThreadPoolExecutor(max_workers=Nt)
    first = 0
    pid = os.getpid()
    try:
        while True:
            check_owner(pid)  # once per chunk
            if threaded:
                src.wake.clear()  # before looking: a later event sets it
            while not src.done and len(pending) < ahead:
                items = src.take(chunksize, not pending)
                if not items:
                    break
                fut = ex.submit(_run_chunk, caller, first, items, stop,
                                has_item)
                fut.first = first
                if threaded:
                    fut.add_done_callback(src.poke)
                first += len(items)
                if ordered:
                    pending.append(fut)
                else:
                    pending.add(fut)
                if _ready(pending, ordered):
                    break  # deliver before reading on (a slow input)
            if not pending and src.done:
                src.raise_error()
                return
            if threaded and not (pending and _ready(pending, ordered)):
                # For a result, or input while there is room: whichever
                # comes first (the input's next() may block for ever).
                room = len(pending) < ahead
                src.wait(src.due() if room else None, room)
                continue
            if ordered:
                fut = pending.popleft()
            else:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                fut = done.pop()
                pending.discard(fut)
            for j, (kind, val) in enumerate(fut.result()):
                if kind is not None:
                    try:
                        val.seq_index = fut.first + j
                    except Exception:
                        pass
                    if kind != _core.ERR_CALL or mode != "return":
                        err = item_stop_iteration(val, fut.first + j)
                        try:
                            raise err
                        except BaseException as e:
                            hide_ours(e)
                            raise  # bare: adds no frame of ours
                yield val
    finally:
        stop.set()  # chunks running in threads end after their current item
        if threaded:
            src.close()
        for f in pending:
            f.cancel()
        ex.shutdown(wait=False)


parmap.map = parmap.imap = parmap
parmap.close = lambda *a, **k: None
parmapper = parmap


def set_start_method(*args, **kwargs):
    """Kept for compatibility with the original parmapper; does nothing.

    parmapper forks its workers itself, so multiprocessing's start method
    (forkserver by default on Linux from Python 3.14) does not matter.
    """
    return None
