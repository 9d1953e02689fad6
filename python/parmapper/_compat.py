"""Names kept from the original parmapper: ReturnProcess and ParEval.

Both run on parmapper's engine (forked workers, nothing pickled but the
arguments and results), so lambdas and closures work with them too.
"""
import threading

from ._api import CPU_COUNT, parmap

__all__ = ["ReturnProcess", "ParEval"]


class ReturnProcess:
    """Run one call in a forked process and get its value back from join().

    Like ``multiprocessing.Process`` except that ``start()`` returns the
    object itself and ``join()`` returns the function's value (or raises, or
    returns, its exception).  The target is inherited by the forked worker,
    never pickled.

    Parameters
    ----------
    target : callable
        The function to run.
    exception : {'raise', 'return', 'proc'}, default 'raise'
        What ``join()`` does when `target` raises: 'raise' re-raises the
        exception (original type and message, the worker's traceback as the
        ``__cause__``); 'return' returns the exception object; 'proc' lets
        it propagate in the worker, which prints it and dies, and ``join()``
        raises :class:`WorkerDiedError`.
    args : tuple, default ()
        Positional arguments for `target`.
    kwargs : dict, optional
        Keyword arguments for `target`.
    name : str, optional
        A name, as for ``multiprocessing.Process`` (informational).
    daemon : bool, optional
        As for ``multiprocessing.Process``: when True the worker may not
        start a parallel parmap of its own.  Default False.

    Examples
    --------
    >>> p1 = ReturnProcess(sum, args=([1, 2, 3],)).start()
    >>> p2 = ReturnProcess(lambda a, b=0: a * b, args=(6,), kwargs={'b': 7}).start()
    >>> p1.join(), p2.join()
    (6, 42)
    """

    def __init__(self, target=None, exception="raise", args=(), kwargs=None,
                 name=None, daemon=None, group=None):
        if target is None:
            raise ValueError("ReturnProcess: a target must be given")
        if not callable(target):
            raise TypeError("ReturnProcess: target must be callable, got "
                            "{!r}".format(type(target).__name__))
        if exception not in ("raise", "return", "proc"):
            raise ValueError("ReturnProcess: exception must be 'raise', "
                             "'return' or 'proc', got {!r}".format(exception))
        if group is not None:
            raise ValueError("ReturnProcess: group must be None")
        self.target = target
        self.exception = exception
        self.args = tuple(args)
        self.kwargs = dict(kwargs) if kwargs else {}
        self.name = name if name is not None else "ReturnProcess"
        self.daemon = bool(daemon)
        self._thread = None
        self._results = None
        self._value = None
        self._error = None

    def start(self):
        """Fork the worker and start the call; returns self.

        Raises
        ------
        RuntimeError
            When the process was already started.
        """
        if self._thread is not None:
            raise RuntimeError("ReturnProcess: a process can only be started once")
        # One item, N=2: the map starts exactly one worker process (a map
        # never starts more processes than it has chunks).  star=None: the
        # item is ignored and target gets args/kwargs.
        self._results = parmap(self.target, [None], N=2, star=None,
                               args=self.args, kwargs=self.kwargs,
                               exception=self.exception,
                               daemon=self.daemon)
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,),
                                        name=self.name, daemon=True)
        self._thread.start()
        ready.wait()
        return self

    def _run(self, ready):
        results = self._results
        ready.set()
        try:
            self._value = next(results)
        except BaseException as e:  # handed to join()
            self._error = e
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()

    def is_alive(self):
        """Whether the call has been started and has not finished yet."""
        return self._thread is not None and self._thread.is_alive()

    def join(self, timeout=None):
        """Wait for the call and return its value.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait at most; when the call is still running then,
            join returns None (check :meth:`is_alive`).

        Returns
        -------
        object
            The target's return value, or its exception with
            ``exception='return'``.

        Raises
        ------
        Exception
            The target's exception with ``exception='raise'``;
            :class:`WorkerDiedError` when the worker died.
        """
        if self._thread is None:
            raise RuntimeError("ReturnProcess: join() before start()")
        self._thread.join(timeout)
        if self._thread.is_alive():
            return None
        if self._error is not None:
            raise self._error
        return self._value


class ParEval:
    """Evaluate a vectorized function of a numpy array in parallel chunks.

    ``ParEval(fun)(X)`` splits `X` along its first axis into chunks,
    evaluates ``fun(chunk)`` on each in parallel with :func:`parmap`, and
    concatenates the results (``numpy.concatenate``), so it equals
    ``fun(X)`` for a function that works row by row.  Being a callable
    object, it can be passed wherever ``fun`` could.

    Parameters
    ----------
    fun : callable
        A vectorized function of an array.  Use the parmap options
        `args`, `kwargs` and `star` to pass it more.
    n_chunks : int, optional
        How many chunks to split `X` into.
    n_eval : int, optional
        At most this many rows per chunk (the number of chunks follows).
        Give `n_chunks` or `n_eval`, not both; with neither, `n_chunks` is
        `N` when given, else ``CPU_COUNT``.
    n_min : int, default 0
        The fewest rows a chunk may have; fewer chunks are made when needed.
    **parmap_options
        Passed to :func:`parmap` (`N`, `Nt`, `progress`, `exception`...);
        `chunksize` is always 1 (a chunk is one task).

    Examples
    --------
    >>> import numpy as np
    >>> ParEval(lambda X: X ** 2, n_chunks=3)(np.arange(7))
    array([ 0,  1,  4,  9, 16, 25, 36])
    """

    def __init__(self, fun, n_chunks=None, n_eval=None, n_min=0,
                 **parmap_options):
        if not callable(fun):
            raise TypeError("ParEval: fun must be callable, got {!r}".format(
                type(fun).__name__))
        if n_chunks is not None and n_eval is not None:
            raise ValueError("ParEval: give n_chunks or n_eval, not both")
        for name, v in (("n_chunks", n_chunks), ("n_eval", n_eval)):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError("ParEval: {} must be an integer >= 1, got "
                                 "{!r}".format(name, v))
        if not isinstance(n_min, int) or n_min < 0:
            raise ValueError("ParEval: n_min must be an integer >= 0, got "
                             "{!r}".format(n_min))
        if n_chunks is None and n_eval is None:
            n_chunks = parmap_options.get("N") or CPU_COUNT
        self.fun = fun
        self.n_chunks = n_chunks
        self.n_eval = n_eval
        self.n_min = n_min
        parmap_options["chunksize"] = 1
        self.kwargs = parmap_options

    def chunk_count(self, n):
        """The number of chunks for `n` rows."""
        if self.n_eval is not None:
            k = -(-n // max(self.n_eval, self.n_min, 1))
        else:
            k = self.n_chunks
        if self.n_min > 0:
            k = min(k, n // self.n_min)
        return max(1, min(k, n))

    def __call__(self, X):
        """Evaluate ``fun`` on `X` in parallel chunks; returns the
        concatenated results."""
        import numpy as np

        X = np.atleast_1d(np.asanyarray(X))
        n = len(X)
        if n == 0:
            return np.asanyarray(self.fun(X))
        chunks = np.array_split(X, self.chunk_count(n))
        return np.concatenate(list(parmap(self.fun, chunks, **self.kwargs)))
