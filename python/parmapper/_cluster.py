"""parmap on an existing executor: a dask cluster, MPI, a process pool...

``parmap(fun, seq, executor=ex)`` runs the same map on `ex` instead of the C
engine's forked workers.  `ex` is a ``dask.distributed.Client`` or any
``concurrent.futures.Executor`` (``MPIPoolExecutor``, ``ProcessPoolExecutor``,
``ThreadPoolExecutor``...).  parmapper does not schedule anything itself
here: it cuts the input into chunks, submits them with bounded look-ahead,
and turns what comes back into parmap's results, errors and progress.

Each chunk runs :func:`_run_chunk` on a worker, which builds the same C
``Caller`` as the engine (so star/kwstar behave identically) and catches
exceptions per item, so one failing item does not lose its chunk's other
results and the caller can name it (``seq_index``).  parmapper must
therefore be importable on the workers (it is on a ``LocalCluster``).
"""
import collections
import math
import os
import pickle
import warnings

from ._core import ERR_BASE, ERR_CALL, ERR_SHAPE  # the kinds of error entries
from ._errors import RemoteError, RemoteTraceback, item_stop_iteration
from ._input import InputThread, check_owner, open_input, read_ahead
from ._progress import progress_iter, wants_progress
from ._worker import hide_ours

__all__ = ["executor_map"]

_PACKED = "parmapper.packed"  # _run_chunk's result, pickled by parmapper


def _portable(exc, tb):
    """`exc`, or a RemoteError standing for it when it cannot be pickled."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RemoteError(
            "{}: {} (the exception could not be pickled; the worker's "
            "traceback is attached)".format(type(exc).__name__, exc),
            type(exc).__name__, str(exc))


def _run_chunk(fun, args, kwargs, star, kwstar, mode, first, items):
    """Runs one chunk on a worker of the executor.

    Returns ``(results, errors)``: `results` has one entry per item (None
    where the item failed) and `errors` maps the position in the chunk to
    ``(kind, exception, traceback text)``, kind one of ``_core.ERR_*``.
    With ``mode == 'proc'`` an exception from `fun` propagates out of the
    task instead (with ``seq_index`` set), for the executor to report.
    """
    from . import _core  # imported on the worker, where this runs
    from ._core import ItemShapeError
    from ._worker import format_error, note_item

    caller = _core.Caller(fun, tuple(args), kwargs, star, kwstar)
    results = []
    errors = {}
    for j, item in enumerate(items):
        i = first + j
        try:
            results.append(caller(i, item))
            continue
        except ItemShapeError as e:
            kind, exc, tb = ERR_SHAPE, e, None
        except Exception as e:
            note_item(e, i, item, star is not None)
            if mode == "proc":
                raise
            kind, exc, tb = ERR_CALL, e, format_error(e)
        except BaseException as e:
            # Not an Exception (KeyboardInterrupt, SystemExit...): it ends
            # the chunk here, as it would end a serial loop, and the caller
            # raises it after the results before it, whatever the mode.
            note_item(e, i, item, star is not None)
            if mode == "proc":
                raise
            errors[j] = (ERR_BASE, _portable(e, None), format_error(e))
            results.append(None)
            break
        errors[j] = (kind, _portable(exc, tb), tb)
        results.append(None)
    # Pickled here, so that a result the caller cannot rebuild fails only
    # its item (_unpack) instead of the chunk, or the whole process pool;
    # what plain pickle refuses goes the executor's way (dask: cloudpickle).
    try:
        return (_PACKED, pickle.dumps((results, errors),
                                      protocol=pickle.HIGHEST_PROTOCOL), None)
    except Exception:
        return results, errors


def _unpack(returned, first):
    """``(results, errors)`` from what _run_chunk returned; a result (or
    an exception) that cannot be unpickled here becomes an error for its
    item alone: ResultPicklingError (or RemoteError) with the type's name
    and the unpickler's message."""
    if len(returned) == 2:
        return returned
    blob = returned[1]
    try:
        return pickle.loads(blob)
    except Exception as e:
        from . import _salvage
        try:
            results, errors = _salvage.load(blob)
        except Exception:
            raise e from None
    errors = dict(errors)
    for j, (kind, exc, tb) in list(errors.items()):
        marker = _salvage.reaches_marker(exc)
        if marker is not None:
            # The worker's message is the last line of its traceback, before
            # the note naming the item (_worker.note_item).
            last = [ln for ln in (tb or "").strip().splitlines()
                    if not ln.startswith("parmap: raised by item ")][-1:] or [""]
            msg = last[0].partition(": ")[2]
            errors[j] = (kind, _salvage.exception_error(
                marker.what.rpartition(".")[2], msg, marker), tb)
    for j, marker in _salvage.unbuilt_items(results).items():
        if j not in errors:
            errors[j] = (ERR_CALL, _salvage.result_error(first + j, results[j],
                                                      marker), None)
            results[j] = None
    return results, errors


def _is_dask(ex):
    mod = type(ex).__module__ or ""
    return mod.split(".")[0] == "distributed"


def _slots(ex):
    """How many tasks the executor runs at once, as well as it tells."""
    if _is_dask(ex):
        try:
            return max(1, sum(ex.nthreads().values()))
        except Exception:
            return os.cpu_count() or 1
    for name in ("_max_workers", "num_workers", "max_workers"):
        v = getattr(ex, name, None)
        if isinstance(v, int) and v > 0:
            return v
    return os.cpu_count() or 1


def executor_map(ex, fun, seq, n, N, Nt, chunksize, ordered, progress, total,
                 args, kwargs, star, kwstar, mode, retries=0, timeout=None,
                 input_thread=True):
    """parmap's executor path; the options are already validated.

    Nothing is submitted until the first result is requested.
    """
    if not callable(getattr(ex, "submit", None)):
        raise TypeError(
            "parmap: executor must be a dask.distributed.Client or a "
            "concurrent.futures.Executor (something with submit()), got "
            "{!r}".format(type(ex).__name__))
    if timeout is not None:
        raise ValueError("parmap: timeout is not supported with executor=: "
                         "an executor cannot stop a running task")
    if retries and not _is_dask(ex):
        raise ValueError("parmap: retries with executor= needs a "
                         "dask.distributed.Client (which reruns the chunks of "
                         "a lost worker); {} cannot".format(type(ex).__name__))
    results = _executor_iter(ex, fun, seq, n, N, Nt, chunksize,
                             bool(ordered), args, kwargs, star, kwstar, mode,
                             retries, input_thread)
    if wants_progress(progress):
        results = progress_iter(results, progress,
                                total if total is not None else n)
    return results


def _raise_or_return(kind, exc, tb, index, mode):
    try:
        exc.seq_index = index
    except Exception:  # an exception class with __slots__
        pass
    if tb and exc.__cause__ is None:
        exc.__cause__ = RemoteTraceback(tb)
    if kind != ERR_CALL or mode != "return":
        raise item_stop_iteration(exc, index)
    return exc


def _executor_iter(ex, fun, seq, n, slots, Nt, chunksize, ordered, args,
                   kwargs, star, kwstar, mode, retries, input_thread=True):
    dask = _is_dask(ex)
    if slots is None:
        slots = _slots(ex)
    if chunksize == -1:
        if n is not None:
            chunksize = max(1, math.ceil(n / slots))
        else:
            warnings.warn("parmap: chunksize=-1 needs len(seq); the input has "
                          "no length, so chunksize={} is used".format(Nt),
                          UserWarning, stacklevel=3)
            chunksize = Nt
    ahead = 2 * slots
    src = open_input(seq, input_thread, read_ahead(chunksize, ahead))
    threaded = isinstance(src, InputThread)
    kw = dict(kwargs) if kwargs else None

    def submit(first, items):
        a = (_run_chunk, fun, tuple(args), kw, star, kwstar, mode, first,
             items)
        if dask:
            # pure=False: two chunks with equal items are still two tasks.
            if retries:
                return ex.submit(*a, pure=False, retries=retries)
            return ex.submit(*a, pure=False)
        return ex.submit(*a)

    if dask:
        from distributed import as_completed
        done_iter = as_completed()
    pending = collections.OrderedDict()  # future -> index of its first item
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
                fut = submit(first, items)
                pending[fut] = first
                if threaded:
                    fut.add_done_callback(src.poke)
                if dask and not ordered:
                    done_iter.add(fut)
                first += len(items)
                if (next(iter(pending)).done() if ordered
                        else any(f.done() for f in pending)):
                    break  # deliver before reading on (a slow input)
            if not pending and src.done:
                src.raise_error()
                return
            if threaded and not (
                    pending and (next(iter(pending)).done() if ordered
                                 else any(f.done() for f in pending))):
                # For a result, or input while there is room: whichever
                # comes first (the input's next() may block for ever).
                room = len(pending) < ahead
                src.wait(src.due() if room else None, room)
                continue
            if ordered:
                fut = next(iter(pending))
            elif dask:
                fut = next(done_iter)
            else:
                import concurrent.futures as cf
                done, _ = cf.wait(list(pending),
                                  return_when=cf.FIRST_COMPLETED)
                fut = next(iter(done))
            start = pending.pop(fut)
            values, errors = _unpack(fut.result(), start)
            for j, value in enumerate(values):
                if errors and j in errors:
                    kind, exc, tb = errors[j]
                    try:
                        value = _raise_or_return(kind, exc, tb, start + j,
                                                 mode)
                    except BaseException as e:
                        hide_ours(e)
                        raise  # bare: adds no frame of ours
                yield value
    finally:
        if threaded:
            src.close()
        for fut in pending:
            try:
                fut.cancel()
            except Exception:  # the executor is already shut down
                pass
