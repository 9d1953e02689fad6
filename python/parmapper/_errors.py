"""Exceptions raised by parmapper.

Every error a map raises names the item concerned through ``seq_index`` (the
item's position in the input) when one item is concerned.
"""
import multiprocessing.pool
import pickle

__all__ = [
    "ParmapperError",
    "WorkerDiedError",
    "WorkerMemoryError",
    "RemoteError",
    "RemoteTraceback",
    "ItemPicklingError",
    "ResultPicklingError",
]


class ParmapperError(RuntimeError):
    """Base class of the errors parmapper itself raises."""


class WorkerDiedError(ParmapperError):
    """A worker process died (exited, crashed or was killed) while running items.

    Attributes
    ----------
    pid : int
        The worker's process id.
    exitcode : int or None
        Its exit status, or None when a signal killed it (or its status is
        unknown: reaped elsewhere, e.g. SIGCHLD set to SIG_IGN).
    signal : int or None
        The signal that killed it, or None when it exited (or its status is
        unknown).
    seq_indices : list of int
        The indices of the items that were in flight on it (lost).
    seq_index : int
        The first of those, when there is one.
    remote_traceback : str or None
        With ``exception='proc'``: the traceback the worker died with (it
        printed it to its own stderr), also attached as the ``__cause__``
        (a :class:`RemoteTraceback`); None otherwise.
    """

    remote_traceback = None
    pid = None
    exitcode = None
    signal = None
    seq_indices = ()


class WorkerMemoryError(ParmapperError, MemoryError):
    """The worker running an item grew past ``max_memory`` and was killed
    (and replaced by a fresh worker that runs the other items).

    Raised or returned in the item's place according to ``exception``, after
    ``retries`` further attempts.  Catchable as ``MemoryError``.

    Attributes
    ----------
    seq_index : int
        The item's index.
    limit : int
        The ``max_memory`` limit, in bytes.
    rss : int
        What the worker had grown by (resident bytes since its fork) when it
        was measured over the limit.
    """

    seq_index = None
    limit = None
    rss = None


class RemoteError(ParmapperError):
    """An exception raised in a worker whose object could not be pickled.

    It carries the original's type name and message; the worker's traceback
    is attached as the ``__cause__`` (a :class:`RemoteTraceback`).
    """

    def __init__(self, message, type_name=None, remote_message=None):
        super().__init__(message)
        self.type_name = type_name
        self.remote_message = remote_message


class RemoteTraceback(multiprocessing.pool.RemoteTraceback):
    """The formatted traceback of an exception raised in a worker process.

    Attached as the ``__cause__`` of the re-raised exception, so Python prints
    the worker's traceback above the caller's.  Also a
    ``multiprocessing.pool.RemoteTraceback``, so code written for
    multiprocessing that looks for one finds it.
    """

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return '\n"""\n' + self.tb.rstrip("\n") + '\n"""'


class ItemPicklingError(ParmapperError, pickle.PicklingError):
    """An input item could not be pickled to send it to a worker."""


class ResultPicklingError(ParmapperError, pickle.PicklingError,
                          multiprocessing.pool.MaybeEncodingError):
    """A result could not be pickled to send it back from a worker, or could
    not be rebuilt (unpickled) in the caller.

    Also a ``multiprocessing.pool.MaybeEncodingError`` (what code written for
    multiprocessing catches), with its ``exc`` and ``value``.

    Attributes
    ----------
    type_name : str or None
        When it could not be rebuilt: the class or callable that failed
        (``module.name``); the message has the unpickler's error.
    exc : str
        The message (multiprocessing: the pickling error's repr).
    value : str
        `type_name` when known, else the message (multiprocessing: the
        result's repr, which the caller never has here).
    """

    type_name = None
    # MaybeEncodingError's own __str__ and __repr__ read attributes its
    # __init__ sets, which is not the one called: keep the exception's own.
    __str__ = ParmapperError.__str__
    __repr__ = ParmapperError.__repr__
    exc = property(lambda self: str(self))
    value = property(lambda self: self.type_name or str(self))


class _Unsent:
    """Stands in a task for an item that could not be pickled.

    The worker raises ``error`` (an :class:`ItemPicklingError` naming the
    item) in the item's place, so it follows ``exception`` like any error.
    """

    __slots__ = ("error",)

    def __init__(self, error):
        self.error = error

    def __reduce__(self):
        return (_Unsent, (self.error,))


def item_stop_iteration(exc, index):
    """The error to raise for a ``StopIteration`` that `fun` raised on item
    `index`: raised out of an iterator's ``__next__`` as it is, it would end
    the results silently, so it becomes a ``RuntimeError`` naming the item
    with the ``StopIteration`` as its ``__cause__`` (as a generator turns
    one, PEP 479).  Any other exception is returned as it is."""
    if not isinstance(exc, StopIteration):
        return exc
    err = RuntimeError(
        "parmap: item {}: fun raised StopIteration ({!r}); raised as this "
        "RuntimeError, as it would otherwise end the results".format(
            index, exc))
    err.seq_index = index
    err.__cause__ = exc
    err.__traceback__ = None
    err._parmap_stop = exc  # Pool.apply raises the StopIteration itself
    return err
