"""What a freshly forked worker does to itself before it serves any task.

The caller's other threads keep running until the fork, and a thread that
was writing to ``sys.stdout`` (or reading ``sys.stdin``) held the stream's
buffer lock at that instant.  Only the forking thread exists in the worker,
so that lock stays held for ever there: the first ``print`` of ``fun`` on the
inherited stream would wait on it for ever.  The worker therefore gets
standard streams of its own, over the same file descriptors 0, 1 and 2 and
with the same settings; the caller flushed its own before the fork.

It also sets up, once per worker (:func:`after_fork`), what the user's code
sees of its process (numpy's global random state, the worker's name for
multiprocessing), and says how an item's failure is reported
(:func:`note_item`, :func:`format_error`, :func:`proc_error`, only when an
item has failed; :func:`hide_ours` in the caller).
"""
import io
import os
import reprlib
import sys

# The inherited streams, kept alive and never used: freeing one would flush
# it, taking the lock that may be held (and writing the caller's data twice).
_inherited = []


def _fresh(old, fd):
    """A new text stream over fd like ``old``, or None when ``old`` is not
    the process's own stream over fd (replaced by the user: left alone)."""
    try:
        if not isinstance(old, io.TextIOWrapper):
            return None
        buf = old.buffer
        # Unbuffered (python -u): the text layer is straight over the file.
        raw = buf if isinstance(buf, io.FileIO) else getattr(buf, "raw", None)
        if not isinstance(raw, io.FileIO) or raw.fileno() != fd:
            return None
        new = io.FileIO(fd, "r" if fd == 0 else "w", closefd=False)
        if buf is not raw:
            new = io.BufferedReader(new) if fd == 0 else io.BufferedWriter(new)
        buf = new
        return io.TextIOWrapper(buf, encoding=old.encoding, errors=old.errors,
                                newline="\n",
                                line_buffering=old.line_buffering,
                                write_through=old.write_through)
    except Exception:
        return None


def fresh_stdio():
    """Replaces sys.stdin/stdout/stderr (and the ``sys.__std*__`` originals)
    by new streams over fds 0-2 when they are the process's own."""
    for fd, name in enumerate(("stdin", "stdout", "stderr")):
        made = {}
        for attr in (name, "__%s__" % name):
            old = getattr(sys, attr, None)
            if old is None:
                continue
            new = made.get(id(old))
            if new is None:
                new = _fresh(old, fd)
                if new is None:
                    continue
                made[id(old)] = new
                _inherited.append(old)
            setattr(sys, attr, new)

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
            # 128 bits from the OS (seed() without one reads more and costs
            # ~150 us per worker; this ~25 us).
            np = sys.modules["numpy"]
            mt.seed(np.frombuffer(os.urandom(16), dtype=np.uint32))
        except Exception:
            pass
    if "multiprocessing.process" in sys.modules:
        try:
            _name_worker(worker)
        except Exception:  # a multiprocessing that differs: left as it is
            pass


# What prepare() made in the caller for its workers' multiprocessing names:
# (the caller's pid, its process object, that object's name and _config as
# they were, its parent_process() object, [one process object per worker]).
# Made before the fork, each worker only assigns its own: making them there
# cost ~0.3 ms per worker, most of it in the pages the copies of the
# caller's objects wrote to (~60 copy-on-write faults).  A worker whose
# caller's process object is no longer the one prepared, or was renamed
# (or given another authkey) since -- between parmap() and the first
# next(), or before a replacement's fork -- makes its own.
_PREPARED = None


def _process_object(process, parent, worker, caller_pid):
    me = process.BaseProcess.__new__(process.BaseProcess)
    me.__dict__.update(parent.__dict__)
    me._identity = tuple(getattr(parent, "_identity", ())) + (worker + 1,)
    me._config = dict(parent._config)
    me._parent_pid = caller_pid
    me._parent_name = parent.name
    me._popen = None
    me._closed = False
    me._target = None
    me._args = ()
    me._kwargs = {}
    me._name = "ParmapWorker-{}".format(worker + 1)
    return me


def _name_worker(worker):
    from multiprocessing import process

    prepared = _PREPARED
    ppid = os.getppid()
    parent = process._current_process
    if prepared is not None and prepared[0] == ppid and \
            prepared[1] is parent and prepared[2] == parent.name and \
            prepared[3] == parent._config and worker < len(prepared[5]):
        parent_object, me = prepared[4], prepared[5][worker]
    else:  # made for another process object, or another map's fewer workers
        parent_object = _Parent(parent.name, ppid)
        me = _process_object(process, parent, worker, ppid)
    process._current_process = me
    process._parent_process = parent_object
    process._children = set()


_PARENT_CLASS = None


def prepare(nproc):
    """In the caller, before `nproc` workers fork: makes what
    :func:`after_fork` would otherwise make in each of them (their
    multiprocessing process objects and the class of parent_process()).
    Made anew for every map, so that they copy the caller's process object
    as it is now (~20 us per worker)."""
    global _PREPARED
    if "multiprocessing.process" not in sys.modules:
        return
    try:
        from multiprocessing import process
        parent, pid = process._current_process, os.getpid()
        _PREPARED = (pid, parent, parent.name, dict(parent._config),
                     _Parent(parent.name, pid),
                     [_process_object(process, parent, w, pid)
                      for w in range(nproc)])
    except Exception:  # a multiprocessing that differs: named in the worker
        _PREPARED = None


def _parent_class():
    global _PARENT_CLASS
    if _PARENT_CLASS is not None:
        return _PARENT_CLASS
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

    _PARENT_CLASS = _ParmapParent
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


def add_note(exc, note):
    """``exc.add_note(note)`` (Python 3.11+); before, the same line in
    ``__notes__``, which :func:`format_error` prints."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
    else:
        notes = getattr(exc, "__notes__", None)
        exc.__notes__ = (notes if isinstance(notes, list) else []) + [note]


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
        add_note(exc, note)
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


def proc_error(exc, log):
    """exception='proc' in a worker: `exc` propagated out of `fun`.  Its
    traceback is written to this process's own ``sys.stderr`` (in a notebook
    the kernel forwards it to the cell; an excepthook may refuse a forked
    process) and appended to `log` (a :class:`ProcLog` or None) for the
    caller's WorkerDiedError.  The worker exits next."""
    text = format_error(exc)
    try:
        if log is not None:
            log.write(text)
    finally:
        err = sys.stderr
        if err is None:
            err = sys.__stderr__
        if err is not None:
            err.write(text)
            err.flush()


class ProcLog:
    """Where the workers of one map with exception='proc' leave the
    traceback they die with: an unlinked temporary file opened for
    appending, inherited by every worker fork.  Each worker appends one
    record (its pid, the length, the text) in one write; the caller reads
    the dead worker's record back to put the text in its WorkerDiedError.
    The file is gone with its last descriptor (closed by :meth:`close` or
    when the map is collected)."""

    _MAX = 1 << 20  # the most traceback text one worker leaves

    def __init__(self):
        import fcntl
        import tempfile
        f = tempfile.TemporaryFile()
        try:
            self.fd = os.dup(f.fileno())
        finally:
            f.close()
        fl = fcntl.fcntl(self.fd, fcntl.F_GETFL)
        fcntl.fcntl(self.fd, fcntl.F_SETFL, fl | os.O_APPEND)

    def write(self, text):
        """Appends this process's record (a worker, before it exits)."""
        data = text.encode("utf-8", "backslashreplace")[-self._MAX:]
        rec = b"%d %d\n" % (os.getpid(), len(data)) + data
        # One write: appends of one write() to a regular file do not mix.
        os.write(self.fd, rec)

    def read(self, pid):
        """The text worker `pid` left, or None."""
        if self.fd < 0:
            return None
        blob = b""
        while True:
            chunk = os.pread(self.fd, 1 << 20, len(blob))
            if not chunk:
                break
            blob += chunk
        at, found = 0, None
        while at < len(blob):
            nl = blob.find(b"\n", at)
            if nl < 0:
                break
            try:
                p, n = (int(v) for v in blob[at:nl].split())
            except ValueError:
                break
            if p == pid:
                found = blob[nl + 1:nl + 1 + n]
            at = nl + 1 + n
        return None if found is None else found.decode("utf-8", "replace")

    def attach(self, exc, pid):
        """Puts the traceback worker `pid` left in its WorkerDiedError `exc`:
        ``exc.remote_traceback`` and a RemoteTraceback as its cause (printed
        above it, wherever the caller's errors are shown)."""
        text = self.read(pid)
        if not text:
            return
        from ._errors import RemoteTraceback
        exc.remote_traceback = text
        exc.__cause__ = RemoteTraceback(text)

    def close(self):
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


_PKG_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def hide_ours(exc):
    """Drops parmapper's own frames from the traceback of `exc`, an error
    of an item (it has ``seq_index``): the user reads their call and their
    function, the original's traceback, not the wrapper's plumbing.  Used
    just before a bare ``raise``, which adds no frame.  Returns `exc`."""
    if getattr(exc, "seq_index", None) is None:
        return exc  # not an item's error: maybe ours, keep every frame
    head = tb = exc.__traceback__
    kept = []
    while tb is not None:
        if not tb.tb_frame.f_code.co_filename.startswith(_PKG_DIR):
            kept.append(tb)
        tb = tb.tb_next
    for a, b in zip(kept, kept[1:]):
        a.tb_next = b
    if kept:
        kept[-1].tb_next = None
    if sys.version_info < (3, 11) and head is not None and (
            not kept or kept[0] is not head):
        # Before 3.11 a bare raise re-raises the traceback the except
        # clause caught, whose first entry (the frame that caught it, ours)
        # cannot be dropped: it stays, followed by the user's frames.
        head.tb_next = kept[0] if kept else None
        exc.__traceback__ = head
        return exc
    exc.__traceback__ = kept[0] if kept else None
    return exc
