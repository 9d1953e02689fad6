"""Pool: a multiprocessing.Pool look-alike on parmapper's engine.

``multiprocessing.Pool(4)`` -> ``parmapper.Pool(4)`` is a drop-in change
that makes lambdas, closures and functions defined in notebooks work.

What differs, honestly: there is no standing pool.  Each call
(``map``, ``imap``...) forks fresh workers that inherit the current function
and globals, and stops them when the call is done.  So a worker always sees
the caller's state as it is at the call (never stale), ``maxtasksperchild``
has nothing to do, and ``imap`` starts working when its first result is
asked for, not at the call.
"""
import itertools
import threading
import weakref

from ._api import CPU_COUNT, _count, parmap
from ._worker import hide_ours

__all__ = ["Pool", "AsyncResult"]

_RUN, _CLOSE, _TERMINATE = "RUN", "CLOSE", "TERMINATE"


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
            elif self._error is not None and self._error_callback is not None:
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
            When it has not finished within `timeout` seconds.
        """
        if not self._event.wait(timeout):
            raise TimeoutError("parmapper.Pool: the result is not ready")
        if self._error is not None:
            try:
                raise self._error
            except BaseException as e:
                hide_ours(e)  # the worker thread's frames and this one
                raise
        return self._value


class _Tracked(itertools.chain):
    """`results`, weakly referenced by the pool so that terminate() can close
    it, and closing `results` itself when it is closed or collected (which
    stops the workers).  A chain (C): errors reach the caller through no
    frame of parmapper's."""

    def __new__(cls, results):
        self = super().__new__(cls, results)
        self._results = results
        return self

    def close(self):
        close = getattr(self._results, "close", None)
        if close is not None:
            close()

    def __del__(self):
        self.close()


_tracked = _Tracked


def _with_initializer(fun, initializer, initargs):
    """`fun`, running ``initializer(*initargs)`` once per worker process
    (and once per thread-only call) before the first item."""
    import os
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


class Pool:
    """A ``multiprocessing.Pool``-compatible object running on parmap.

    Parameters
    ----------
    N : int, optional
        Worker processes per call; default ``CPU_COUNT``.
    Nt : int, default 1
        Threads inside each worker process.
    initializer : callable, optional
        Called as ``initializer(*initargs)`` once in each worker process
        before its first item.
    initargs : tuple, default ()
        Arguments for `initializer`.
    maxtasksperchild : int, optional
        Accepted for compatibility; has no effect (workers are fresh for
        every call anyway).
    processes : int, optional
        multiprocessing's name for `N` (give one of the two).
    **defaults
        Default keyword options of :func:`parmap` for every call
        (`progress`, `exception`, `chunksize`, `daemon`, `executor`...);
        each method also takes them as keywords, overriding these.

    Notes
    -----
    Differences from ``multiprocessing.Pool``: workers are forked for each
    call and stopped at its end, so they always see the current function
    and globals; nothing is pickled but items and results, so lambdas work;
    ``imap`` and ``imap_unordered`` start when first iterated;
    ``chunksize`` defaults to parmap's (adaptive) rather than
    multiprocessing's, unless given.  Leaving a ``with`` block calls
    :meth:`terminate`, as multiprocessing does.

    Examples
    --------
    >>> with Pool(2) as pool:
    ...     pool.map(lambda x: x * x, range(5))
    [0, 1, 4, 9, 16]
    """

    def __init__(self, N=None, Nt=1, initializer=None, initargs=(),
                 maxtasksperchild=None, processes=None, **defaults):
        if processes is not None:
            if N is not None:
                raise TypeError("Pool: give N or processes, not both")
            N = processes
        N = _count("N" if processes is None else "processes", N, None,
                   who="Pool")
        Nt = _count("Nt", Nt, 1, who="Pool")
        if initializer is not None and not callable(initializer):
            raise TypeError("Pool: initializer must be a callable, got "
                            "{!r}".format(initializer))
        try:
            initargs = tuple(initargs)
        except TypeError:
            raise TypeError("Pool: initargs must be a tuple, got {!r}".format(
                initargs)) from None
        if maxtasksperchild is not None:
            _count("maxtasksperchild", maxtasksperchild, None, who="Pool")
        for bad in ("fun", "seq"):
            if bad in defaults:
                raise TypeError("Pool: {!r} is not an option".format(bad))
        # The default options are checked now, as parmap checks them at a
        # call (by name, with what was given): a map over no items starts
        # nothing.  An executor is only checked when used.
        parmap(abs, (), **{k: v for k, v in defaults.items()
                           if k != "executor"})
        self._N = N if N is not None else CPU_COUNT
        self._Nt = Nt
        self._initializer = initializer
        self._initargs = initargs
        self._defaults = defaults
        self._state = _RUN
        self._open = weakref.WeakSet()   # iterators handed out, still running
        self._async = []
        self._lock = threading.Lock()

    # -- helpers ----------------------------------------------------------

    def _check_running(self):
        if self._state != _RUN:
            raise ValueError("Pool not running")

    def _iter(self, func, iterable, chunksize, options):
        self._check_running()
        opts = dict(self._defaults)
        opts.update(options)
        opts.setdefault("N", self._N)
        opts.setdefault("Nt", self._Nt)
        if chunksize is not None:
            opts["chunksize"] = chunksize
        if self._initializer is not None:
            func = _with_initializer(func, self._initializer, self._initargs)
        it = _tracked(parmap(func, iterable, **opts))
        self._open.add(it)
        return it

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
            return list(self._iter(func, iterable, chunksize, options))
        except BaseException as e:
            hide_ours(e)
            raise

    def imap(self, func, iterable, chunksize=None, **options):
        """An iterator of ``func(x)``, in order, computed in parallel."""
        return self._iter(func, iterable, chunksize, options)

    def imap_unordered(self, func, iterable, chunksize=None, **options):
        """An iterator of ``func(x)`` in the order they complete."""
        options["ordered"] = False
        return self._iter(func, iterable, chunksize, options)

    def starmap(self, func, iterable, chunksize=None, **options):
        """A list of ``func(*args)`` for each ``args`` of `iterable`."""
        options["star"] = True
        try:
            return list(self._iter(func, iterable, chunksize, options))
        except BaseException as e:
            hide_ours(e)
            raise

    def _apply_iter(self, func, args, kwds):
        # One item and N >= 2: exactly one worker process is forked.
        return self._iter(func, [None], None, {
            "star": None, "args": tuple(args), "kwargs": kwds,
            "N": max(2, self._N)})

    def apply(self, func, args=(), kwds=None):
        """``func(*args, **kwds)`` run in one worker process; its value."""
        try:
            return list(self._apply_iter(func, args, kwds))[0]
        except BaseException as e:
            hide_ours(e)
            raise

    def map_async(self, func, iterable, chunksize=None, callback=None,
                  error_callback=None, **options):
        """:meth:`map` in the background; returns an :class:`AsyncResult`."""
        it = self._iter(func, iterable, chunksize, options)
        return self._async_call(lambda: list(it), callback, error_callback)

    def starmap_async(self, func, iterable, chunksize=None, callback=None,
                      error_callback=None, **options):
        """:meth:`starmap` in the background; an :class:`AsyncResult`."""
        options["star"] = True
        it = self._iter(func, iterable, chunksize, options)
        return self._async_call(lambda: list(it), callback, error_callback)

    def apply_async(self, func, args=(), kwds=None, callback=None,
                    error_callback=None):
        """:meth:`apply` in the background; an :class:`AsyncResult`."""
        it = self._apply_iter(func, args, kwds)
        return self._async_call(lambda: list(it)[0], callback, error_callback)

    def close(self):
        """No new calls; those running finish."""
        if self._state == _RUN:
            self._state = _CLOSE

    def terminate(self):
        """No new calls; stop the workers of every iterator still open."""
        self._state = _TERMINATE
        for it in list(self._open):
            close = getattr(it, "close", None)
            if close is None:
                continue
            try:
                close()
            except ValueError:  # being iterated in another thread right now
                pass

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
        for r in pending:
            r.wait()

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, *exc):
        self.terminate()

    def __repr__(self):
        return "<parmapper.Pool state={} N={} Nt={}>".format(
            self._state, self._N, self._Nt)
