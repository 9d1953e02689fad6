"""Pool: a multiprocessing.Pool look-alike on parmapper's engine.

``multiprocessing.Pool(4)`` -> ``parmapper.Pool(4)`` is a drop-in change
that makes lambdas, closures and functions defined in notebooks work.

What differs, honestly: there is no standing pool.  Each call
(``map``, ``imap``...) forks fresh workers that inherit the current function
and globals, and stops them when the call is done.  So a worker always sees
the caller's state as it is at the call (never stale), and ``imap`` starts
working when its first result is asked for, not at the call.
``terminate()`` kills the workers of the calls still running, from any
thread.
"""
import builtins
import multiprocessing
import multiprocessing.pool
import operator
import os
import signal
import threading
import time
import weakref

from ._api import _count, _one_worker_process, CPU_COUNT, parmap
from ._errors import ParmapperError, RemoteTraceback
from ._progress import check_progress, progress_iter, wants_progress
from ._worker import hide_ours

__all__ = ["Pool", "AsyncResult", "TimeoutError", "PoolTerminatedError"]

_RUN, _CLOSE, _TERMINATE = "RUN", "CLOSE", "TERMINATE"

# How long terminate() goes on killing the workers of a call that another
# thread is waiting on before it gives up on that call (it then ends by
# itself: its workers are dead).  Generous: a kill is noticed in milliseconds.
_STOP_PATIENCE = 10.0


class TimeoutError(multiprocessing.TimeoutError, builtins.TimeoutError):
    """:meth:`AsyncResult.get` found no result within its `timeout`.

    Both ``multiprocessing.TimeoutError`` (what code written for
    ``multiprocessing.Pool`` catches) and the builtin ``TimeoutError``.
    """


class PoolTerminatedError(ParmapperError):
    """The call's results were not all computed: :meth:`Pool.terminate` (or
    leaving the pool's ``with`` block) stopped its workers first."""


def _apply_value(res):
    """The value of an apply call.  A StopIteration raised by the function
    comes out of the results iterator as a RuntimeError (it would end them
    silently); apply is no iterator, so it raises the StopIteration itself,
    as multiprocessing's does."""
    try:
        return res._all()[0]
    except RuntimeError as e:
        stop = getattr(e, "_parmap_stop", None)
        if stop is None:
            raise
        raise stop from None


def _terminated():
    return PoolTerminatedError(
        "parmapper.Pool: terminate() stopped this call's workers before it "
        "finished (leaving a 'with Pool(...)' block terminates); its "
        "remaining results were not computed")


def _as_multiprocessing(exc):
    """Makes the worker's traceback attached to `exc` a
    ``multiprocessing.pool.RemoteTraceback``, exactly that class and text
    form, as code written for multiprocessing's Pool reads it."""
    cause = exc.__cause__
    if isinstance(cause, RemoteTraceback):
        exc.__cause__ = multiprocessing.pool.RemoteTraceback(
            '\n"""\n' + cause.tb.rstrip("\n") + '\n"""')
    return exc


class _Returned:
    """A value of ``func`` that is itself an exception object, wrapped so
    that :meth:`Pool.map` does not take it for an exception it raised."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return (_Returned, (self.value,))


def _returning_errors(func, one_arg):
    """`func`, with an exception object it returns wrapped in
    :class:`_Returned` (map runs with exception='return').  `one_arg`: each
    call passes the item alone (the usual map), a cheaper wrapper."""
    if one_arg:
        def call(x):
            r = func(x)
            return _Returned(r) if isinstance(r, BaseException) else r
    else:
        def call(*a, **k):
            r = func(*a, **k)
            return _Returned(r) if isinstance(r, BaseException) else r
    return call


class AsyncResult:
    """The result of ``map_async``, ``starmap_async`` or ``apply_async``.

    As ``multiprocessing.pool.AsyncResult``: :meth:`get`, :meth:`wait`,
    :meth:`ready`, :meth:`successful`.
    """

    def __init__(self, run, callback=None, error_callback=None):
        self._event = threading.Event()
        self._value = None
        self._error = None
        self._callback = callback
        self._error_callback = error_callback
        self._thread = threading.Thread(target=self._work, args=(run,),
                                        daemon=True)
        self._thread.start()

    def _work(self, run):
        try:
            self._value = run()
        except BaseException as e:  # handed to get()
            self._error = e
        try:
            if self._error is None and self._callback is not None:
                self._callback(self._value)
            elif (self._error is not None and self._error_callback is not None
                  and not isinstance(self._error, PoolTerminatedError)):
                # As multiprocessing: a terminated call calls no callback.
                self._error_callback(self._error)
        finally:
            self._event.set()

    def ready(self):
        """Whether the call has finished."""
        return self._event.is_set()

    def successful(self):
        """Whether the call finished without raising.

        Raises
        ------
        ValueError
            When the call has not finished yet.
        """
        if not self.ready():
            raise ValueError("{!r} not ready".format(self))
        return self._error is None

    def wait(self, timeout=None):
        """Wait until the call has finished, or `timeout` seconds."""
        self._event.wait(timeout)

    def get(self, timeout=None):
        """The call's value; raises its exception.

        Raises
        ------
        TimeoutError
            When it has not finished within `timeout` seconds: both
            ``multiprocessing.TimeoutError`` and the builtin
            ``TimeoutError``.
        PoolTerminatedError
            When :meth:`Pool.terminate` stopped the call before it finished.
        """
        if not self._event.wait(timeout):
            raise TimeoutError("parmapper.Pool: the result is not ready "
                               "within {} s".format(timeout))
        if self._error is not None:
            try:
                raise self._error
            except BaseException as e:
                hide_ours(e)  # the worker thread's frames and this one
                raise
        return self._value


class _Results:
    """The state of one call, which :meth:`Pool.terminate` can stop from any
    thread, even while another thread waits for its results.

    `raw` is parmap's iterator (the engine's, with ``_pids()``, when the
    call runs in worker processes); `it` is what is iterated (`raw`, or a
    progress bar over it).  :meth:`iterate` is what ``imap`` hands out and
    :meth:`_all` what ``map`` runs.  The pool holds this object weakly and
    it holds nothing that holds it: an ``imap`` iterator dropped by its user
    stops its workers at once, as parmap's does.

    Whether a thread is waiting inside the call is asked of the iterator
    itself: closing it raises ValueError while a thread is inside (the
    engine's iterator and generators alike).  terminate() closes the call
    when no thread is inside (the next result asked for raises), and kills
    its workers while one is (that thread then gets the engine's error,
    turned into :class:`PoolTerminatedError`).  So no flag is written for
    each result.
    """

    def __init__(self, raw, it):
        self._raw = raw
        self._it = it
        self._stopped = False     # terminate() was called
        self._cut = False         # ...and closed or killed the call unfinished
        self._ended = False       # the call reached its end (or an error)
        self._consumer = None     # the thread that iterates (last seen)

    def _begin(self):
        self._consumer = threading.get_ident()
        if self._stopped and not self._ended:
            self._ended = True
            self._close()
            raise _terminated()

    def _error(self, e):
        """The exception to raise for `e`, raised by the call."""
        self._ended = True
        if self._stopped:         # e.g. the WorkerDiedError of the kill
            return _terminated()
        return _as_multiprocessing(e)

    def _finish(self):
        self._ended = True
        if self._cut:             # closed before its end: results missing
            raise _terminated()

    def iterate(self):
        """The results, one by one (imap)."""
        self._begin()
        try:
            for r in self._it:
                yield r
        except GeneratorExit:     # closed (or dropped) by its user
            raise
        except BaseException as e:
            err = self._error(e)
            if err is e:
                hide_ours(e)      # an item's error: none of our frames
                raise
            raise err from None
        finally:
            self._close()         # stops the workers now
        self._finish()

    def _all(self):
        """All the results, as a list (map: no Python step per result)."""
        self._begin()
        try:
            out = list(self._it)
        except BaseException as e:
            err = self._error(e)
            if err is e:
                raise
            raise err from None
        self._finish()
        return out

    def _close(self):
        close = getattr(self._it, "close", None)
        if close is not None:
            close()

    def _terminate(self):
        """Stop the call: its workers are killed, and the thread waiting in
        it (if any) gets :class:`PoolTerminatedError`."""
        self._stopped = True
        pids = getattr(self._raw, "_pids", None)
        deadline = time.monotonic() + _STOP_PATIENCE
        while not self._ended:
            try:
                self._close()
                if not self._ended:
                    self._cut = True   # the next result asked for raises
                return
            except ValueError:    # a thread is inside the call now
                pass
            if pids is None or self._consumer == threading.get_ident():
                # Threads or an executor run the call (they cannot be
                # stopped), or this very thread is inside (terminate() from
                # a progress callback): the call stops at its next result.
                return
            # The waiting thread sees its workers die and ends the map (the
            # teardown reaps them).  A pid read under the GIL is a live or
            # unreaped child: the engine zeroes it when it reaps.
            for pid in pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                    self._cut = True
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)


def _with_initializer(fun, initializer, initargs):
    """`fun`, running ``initializer(*initargs)`` once per worker process
    (and once per thread-only call) before the first item."""
    state = {"pid": None}
    lock = threading.Lock()

    def wrapped(*a, **k):
        if state["pid"] != os.getpid():
            with lock:
                if state["pid"] != os.getpid():
                    initializer(*initargs)
                    state["pid"] = os.getpid()
        return fun(*a, **k)

    return wrapped



def _raise_first(out):
    """`out` (a map run with exception='return' and
    :func:`_returning_errors`) with returned exception objects unwrapped;
    raises the first exception raised, by input position."""
    # Most maps have no error: look at the types present first (no Python
    # step per result), and at each result only when one is flagged.
    if not any(issubclass(t, (BaseException, _Returned))
               for t in set(map(type, out))):
        return out
    first = None
    for i, r in enumerate(out):
        if isinstance(r, (BaseException, _Returned)):
            if type(r) is _Returned:
                out[i] = r.value
            elif first is None:
                first = r
    if first is not None:
        raise _as_multiprocessing(first)
    return out


def _check_maxtasksperchild(value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError("parmapper.Pool: maxtasksperchild must be a whole "
                         "number >= 1 or None, got {!r}".format(value))
    return value


class Pool:
    """A ``multiprocessing.Pool``-compatible object running on parmap.

    Parameters
    ----------
    N : int, optional
        Worker processes per call; default ``CPU_COUNT``.  Calls of a pool
        of 1 run in one worker process too, as multiprocessing's do.
    Nt : int, default 1
        Threads inside each worker process.
    initializer : callable, optional
        Called as ``initializer(*initargs)`` once in each worker process
        before its first item.
    initargs : tuple, default ()
        Arguments for `initializer`.
    maxtasksperchild : int, optional
        A worker is replaced by a fresh process after this many items: it is
        parmap's `max_tasks_per_worker` for every call (which counts items,
        where multiprocessing counts chunks of ``chunksize`` items).  No
        item is lost or run twice.
    processes : int, optional
        multiprocessing's name for `N` (give one of the two).
    context : optional
        multiprocessing's start-method context: accepted and unused
        (parmapper forks its workers itself).  ``Pool(4, initializer,
        initargs)`` in multiprocessing's positional order works too.
    **defaults
        Default keyword options of :func:`parmap` for every call
        (`progress`, `exception`, `chunksize`, `daemon`, `executor`...);
        each method also takes them as keywords, overriding these.

    Notes
    -----
    Differences from ``multiprocessing.Pool`` (docs/migrating.md lists them
    all, with the reasons): workers are forked for each call and stopped at
    its end, so they always see the current function and globals; nothing
    is pickled but items and results (and the items of a list, tuple, range
    or numpy array not even those), so lambdas work; ``imap`` and
    ``imap_unordered`` start when first iterated and stop at the first
    error; ``chunksize`` defaults to parmap's (adaptive) rather than
    multiprocessing's, unless given.  As multiprocessing's: ``map`` runs
    every item and then raises the first error (by input position);
    :meth:`terminate` (and leaving a ``with`` block) kills the workers of
    every call still running, whose results then raise
    :class:`PoolTerminatedError`.

    Examples
    --------
    >>> with Pool(2) as pool:
    ...     pool.map(lambda x: x * x, range(5))
    [0, 1, 4, 9, 16]
    """

    def __init__(self, N=None, Nt=1, initializer=None, initargs=(),
                 maxtasksperchild=None, processes=None, context=None,
                 **defaults):
        if callable(Nt):
            # multiprocessing's positional order: Pool(processes,
            # initializer, initargs, maxtasksperchild, context).
            Nt, initializer, initargs, maxtasksperchild, context = (
                1, Nt, () if initializer is None else initializer,
                None if initargs == () else initargs, maxtasksperchild)
            if not isinstance(initargs, (tuple, list)):
                raise TypeError("parmapper.Pool: with multiprocessing's "
                                "argument order Pool(processes, initializer, "
                                "initargs, ...), initargs must be a tuple, got "
                                "{!r}".format(initargs))
        # context: multiprocessing's start method context; parmapper forks
        # its workers itself, so it has no use (docs/migrating.md).
        del context
        if processes is not None:
            if N is not None:
                raise TypeError("Pool: give N or processes, not both")
            N = processes
        if N is not None:
            name = "N" if processes is None else "processes"
            try:
                if isinstance(N, bool):  # True is 1 to operator.index
                    raise TypeError
                N = operator.index(N)
            except TypeError:
                raise TypeError("parmapper.Pool: the number of processes ({}) "
                                "must be a whole number >= 1, got {!r}".format(
                                    name, N)) from None
            if N < 1:
                raise ValueError("parmapper.Pool: the number of processes ({}) "
                                 "must be at least 1, got {}".format(name, N))
        Nt = _count("Nt", Nt, 1, who="parmapper.Pool")
        if initializer is not None and not callable(initializer):
            raise TypeError("parmapper.Pool: initializer must be a callable, "
                            "got {!r}".format(initializer))
        try:
            initargs = tuple(initargs)
        except TypeError:
            raise TypeError("parmapper.Pool: initargs must be a tuple, got "
                            "{!r}".format(initargs)) from None
        for bad in ("fun", "seq"):
            if bad in defaults:
                raise TypeError("Pool: {!r} is not an option".format(bad))
        # The default options are checked now, as parmap checks them at a
        # call (by name, with what was given): a map over no items starts
        # nothing.  An executor is only checked when used.
        parmap(abs, (), **{k: v for k, v in defaults.items()
                           if k != "executor"})
        self._maxtasksperchild = _check_maxtasksperchild(maxtasksperchild)
        self._N = N if N is not None else CPU_COUNT
        self._Nt = Nt
        self._initializer = initializer
        self._initargs = initargs
        self._defaults = defaults
        self._state = _RUN
        self._open = weakref.WeakSet()   # results handed out (_Results)
        self._async = []
        self._lock = threading.Lock()
        # apply_async calls running at once: at most N, as N workers would
        # run them (each has a worker process of its own).
        self._apply_slots = threading.BoundedSemaphore(self._N)

    # -- helpers ----------------------------------------------------------

    def _check_running(self):
        if self._state != _RUN:
            raise ValueError("Pool not running")

    def _start(self, func, iterable, chunksize, options):
        """Starts one call (lazily, as parmap does): its :class:`_Results`,
        registered for terminate()."""
        self._check_running()
        opts = dict(self._defaults)
        opts.update(options)
        opts.setdefault("N", self._N)
        opts.setdefault("Nt", self._Nt)
        if self._maxtasksperchild is not None:
            opts.setdefault("max_tasks_per_worker", self._maxtasksperchild)
        if chunksize is not None:
            opts["chunksize"] = chunksize
        progress = opts.pop("progress", False)
        check_progress(progress)
        if self._initializer is not None:
            func = _with_initializer(func, self._initializer, self._initargs)
        # parmap runs N=1 in the caller's process; a pool's worker is a
        # process (isolation, terminate()).
        token = _one_worker_process.set(opts["N"] == 1)
        try:
            raw = parmap(func, iterable, **opts)
        finally:
            _one_worker_process.reset(token)
        it = raw
        if wants_progress(progress):
            total = opts.get("total")
            if total is None:
                try:
                    total = len(iterable)
                except (TypeError, OverflowError):
                    total = None
            it = progress_iter(raw, progress, total)
        res = _Results(raw, it)
        with self._lock:
            self._open.add(res)
        return res

    def _map_run(self, func, iterable, chunksize, options):
        """Starts a map; returns the function that gives its list.

        As multiprocessing's ``map``: when an item raises, every item still
        runs, then the first error (by input position) is raised.  This
        costs a Python call per item in the workers (to tell an exception
        raised from one returned); an `exception` option given to the pool
        or the call has parmap's meaning instead ('raise' stops at the
        first error, without that cost)."""
        mode = options.get("exception", self._defaults.get("exception"))
        if mode is not None:
            # Given: parmap's meaning ('raise' stops at the first error).
            res = self._start(func, iterable, chunksize, options)
            return res._all
        opts = dict(self._defaults)
        opts.update(options)
        star = opts.get("star", False)
        one_arg = (star is not None and not star and not opts.get("kwstar")
                   and not opts.get("args") and not opts.get("kwargs"))
        options = dict(options, exception="return")
        res = self._start(_returning_errors(func, one_arg), iterable,
                          chunksize, options)
        return lambda: _raise_first(res._all())

    def _apply_start(self, func, args, kwds):
        # One item and N >= 2: exactly one worker process is forked.
        return self._start(func, [None], None, {
            "star": None, "args": tuple(args), "kwargs": kwds,
            "N": max(2, self._N)})

    def _async_call(self, run, callback, error_callback):
        self._check_running()
        res = AsyncResult(run, callback, error_callback)
        with self._lock:
            self._async = [r for r in self._async if not r.ready()]
            self._async.append(res)
        return res

    # -- multiprocessing.Pool's methods -----------------------------------

    def map(self, func, iterable, chunksize=None, **options):
        """A list of ``func(x)`` for each ``x`` of `iterable`, in order.

        As multiprocessing's: when an item raises, the other items still
        run, then the first error (by input position) is raised.

        Parameters
        ----------
        func : callable
        iterable : iterable
        chunksize : int, optional
            Items per task; default parmap's (or the pool's default).
        **options
            parmap options for this call.
        """
        try:
            return self._map_run(func, iterable, chunksize, options)()
        except BaseException as e:
            hide_ours(e)
            raise

    def imap(self, func, iterable, chunksize=None, **options):
        """An iterator of ``func(x)``, in order, computed in parallel.

        It starts when first iterated; an error is raised in its place and
        stops the call (the items after it are not run)."""
        return self._start(func, iterable, chunksize, options).iterate()

    def imap_unordered(self, func, iterable, chunksize=None, **options):
        """An iterator of ``func(x)`` in the order they complete."""
        options["ordered"] = False
        return self._start(func, iterable, chunksize, options).iterate()

    def starmap(self, func, iterable, chunksize=None, **options):
        """A list of ``func(*args)`` for each ``args`` of `iterable`."""
        options["star"] = True
        try:
            return self._map_run(func, iterable, chunksize, options)()
        except BaseException as e:
            hide_ours(e)
            raise

    def apply(self, func, args=(), kwds=None):
        """``func(*args, **kwds)`` run in one worker process; its value."""
        try:
            return _apply_value(self._apply_start(func, args, kwds))
        except BaseException as e:
            hide_ours(e)
            raise

    def map_async(self, func, iterable, chunksize=None, callback=None,
                  error_callback=None, **options):
        """:meth:`map` in the background; returns an :class:`AsyncResult`."""
        run = self._map_run(func, iterable, chunksize, options)
        return self._async_call(run, callback, error_callback)

    def starmap_async(self, func, iterable, chunksize=None, callback=None,
                      error_callback=None, **options):
        """:meth:`starmap` in the background; an :class:`AsyncResult`."""
        options["star"] = True
        run = self._map_run(func, iterable, chunksize, options)
        return self._async_call(run, callback, error_callback)

    def apply_async(self, func, args=(), kwds=None, callback=None,
                    error_callback=None):
        """:meth:`apply` in the background; an :class:`AsyncResult`."""
        res = self._apply_start(func, args, kwds)

        def run():
            with self._apply_slots:
                return _apply_value(res)
        return self._async_call(run, callback, error_callback)

    def close(self):
        """No new calls; those running finish."""
        if self._state == _RUN:
            self._state = _CLOSE

    def terminate(self):
        """No new calls; kill the workers of every call still running.

        As multiprocessing's: the outstanding work is not completed.  The
        results of those calls (``AsyncResult.get``, an ``imap`` iterator,
        a ``map`` running in another thread) raise
        :class:`PoolTerminatedError`; their callbacks are not called.  It
        returns when their workers are gone (for calls on threads or an
        ``executor``, which cannot be killed, at once: they stop at their
        next result).  It may be called from a callback.
        """
        self._state = _TERMINATE
        with self._lock:
            running = list(self._open)
        for res in running:
            res._terminate()

    def join(self):
        """Wait for the background calls (``*_async``) to finish.

        Raises
        ------
        ValueError
            When the pool is still running (call close() or terminate()
            first), as with multiprocessing.
        """
        if self._state == _RUN:
            raise ValueError("Pool is still running")
        with self._lock:
            pending = list(self._async)
        me = threading.current_thread()
        for r in pending:
            if r._thread is not me:   # join() from a callback
                r.wait()

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, *exc):
        self.terminate()

    def __repr__(self):
        return "<parmapper.Pool state={} N={} Nt={}>".format(
            self._state, self._N, self._Nt)
