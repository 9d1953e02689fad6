"""What a forked worker sets up for the user's code, and how it reports.

Called by the binding: :func:`after_fork` right after a worker is forked
(once per worker, never per item); :func:`note_item` and
:func:`format_error` only when an item has failed.
"""
import os
import reprlib
import sys

__all__ = []

# The longest item repr put in an error's note; a longer one is left out.
_REPR_MAX = 80
_repr = reprlib.Repr()
_repr.maxstring = _REPR_MAX
_repr.maxother = _REPR_MAX
_repr.maxlevel = 3


def after_fork(worker):
    """Runs in worker number `worker` (0-based) right after its fork.

    - numpy's legacy global RandomState (``numpy.random.random()``...) is
      re-seeded from fresh entropy when the caller has imported it, as
      CPython re-seeds :mod:`random` in every fork: otherwise every worker
      draws the caller's stream, the same numbers in each.
    - The worker is named ``ParmapWorker-<worker + 1>`` for
      :mod:`multiprocessing` (``current_process().name``, so
      ``%(processName)s`` in log records) and ``parent_process()`` is the
      caller, as in multiprocessing's own workers.
    """
    mt = sys.modules.get("numpy.random.mtrand")
    if mt is not None:
        try:
            mt.seed()  # fresh entropy from the OS
        except Exception:
            pass
    if "multiprocessing.process" in sys.modules:
        try:
            _name_worker(worker)
        except Exception:  # a multiprocessing that differs: left as it is
            pass


def _name_worker(worker):
    from multiprocessing import process

    parent = process._current_process
    me = process.BaseProcess.__new__(process.BaseProcess)
    me.__dict__.update(parent.__dict__)
    me._identity = tuple(getattr(parent, "_identity", ())) + (worker + 1,)
    me._config = dict(parent._config)
    me._parent_pid = os.getppid()
    me._parent_name = parent.name
    me._popen = None
    me._closed = False
    me._target = None
    me._args = ()
    me._kwargs = {}
    me._name = "ParmapWorker-{}".format(worker + 1)
    process._current_process = me
    process._parent_process = _Parent(parent.name, os.getppid())
    process._children = set()


def _parent_class():
    from multiprocessing import process

    class _ParmapParent(process._ParentProcess):
        """The caller, as ``multiprocessing.parent_process()`` gives it.  It
        has no sentinel: alive while it is still this worker's parent."""

        def __init__(self, name, pid):
            super().__init__(name, pid, None)

        def is_alive(self):
            return os.getppid() == self._pid

        def join(self, timeout=None):
            import time
            end = None if timeout is None else time.monotonic() + timeout
            while self.is_alive():
                if end is not None and time.monotonic() >= end:
                    return
                time.sleep(0.01)

    return _ParmapParent


def _Parent(name, pid):
    return _parent_class()(name, pid)


def item_note(index, item, has_item=True):
    """The line added to an exception raised by an item: its index and, when
    short, its repr."""
    text = "parmap: raised by item {}".format(index)
    if has_item:
        try:
            r = _repr.repr(item)
        except Exception:
            r = None
        if r is not None and len(r) <= _REPR_MAX:
            text += ": " + r
    return text


def note_item(exc, index, item=None, has_item=True):
    """Puts the item's index (and short repr) in what the user reads of
    `exc`: a note (``add_note``, Python 3.11+; before, the same line in
    ``__notes__``, which :func:`format_error` prints in the worker's
    traceback text).  Sets ``exc.seq_index``.  Never raises."""
    try:
        exc.seq_index = index
    except Exception:  # an exception class with __slots__
        pass
    try:
        note = item_note(index, item, has_item)
        notes = getattr(exc, "__notes__", None)
        if notes and any(str(n).startswith("parmap: raised by item ")
                         for n in notes):
            return  # already named (a re-raise through nested maps)
        if hasattr(exc, "add_note"):
            exc.add_note(note)
        else:
            if not isinstance(notes, list):
                notes = []
            notes.append(note)
            exc.__notes__ = notes
    except Exception:
        pass


def format_error(exc):
    """The traceback text of `exc`, with its notes also before Python 3.11
    (where the traceback module does not print them)."""
    import traceback
    text = "".join(traceback.format_exception(type(exc), exc,
                                              exc.__traceback__))
    if sys.version_info < (3, 11):
        notes = getattr(exc, "__notes__", None)
        if isinstance(notes, list):
            text += "".join(str(n) + "\n" for n in notes)
    return text
