"""Reads a map's input: in chunks for the Python-level paths (threads, executor), and starts the thread that reads it for the worker processes.

Two rules, the same as the forked-worker path's (binding) and ``builtins.map``:

* The input is finished at its first ``StopIteration``: an iterator that
  yields again afterwards is never asked again.
* An ``Exception`` raised by the input ends the input; the items it produced
  before are still mapped and delivered, and only then is the input's own
  exception raised (:meth:`ChunkReader.raise_error`), with its traceback.
  A ``BaseException`` that is not an ``Exception`` (``KeyboardInterrupt``,
  ``SystemExit``...) propagates at once, as in a plain loop.
"""
import collections
import contextvars
import itertools
import os
import threading
import time

from ._worker import add_note

# Reading a chunk for longer than this hands over what was read (the
# binding's SLOW_INPUT_NS).
SLOW_INPUT_S = 0.002


class ChunkReader:
    """Pulls chunks of items from ``iter(seq)``.

    Parameters
    ----------
    seq : iterable
        The map's input.
    """

    __slots__ = ("_it", "done", "error")

    def __init__(self, seq):
        # A list is read as it is now (the map's first next()), as the
        # worker processes read it: changes to it during the map are not seen.
        self._it = iter(tuple(seq) if type(seq) is list else seq)
        self.done = False   # the input will not be asked again
        self.error = None   # the Exception that ended the input, if any

    def take(self, n, idle=True):
        """Returns a list of at most `n` (>= 1) items; ``[]`` once the input
        is finished (`done`).  Fewer than `n` items when the input finished or
        reading took longer than ``SLOW_INPUT_S``.  (`idle`: for the same
        call as :meth:`InputThread.take`; reading here always waits.)"""
        if self.done:
            return []
        items = []
        append = items.append
        t0 = time.monotonic()
        k = 0
        try:
            for x in itertools.islice(self._it, n):
                append(x)
                k += 1
                # A slow input: hand over what was read (checked after 1, 2,
                # 4... items) so results are not held back behind it.
                if not k & (k - 1) and time.monotonic() - t0 >= SLOW_INPUT_S:
                    return items
        except Exception as e:
            self.done = True
            self.error = e
            return items
        if len(items) < n:
            self.done = True
        return items

    def raise_error(self):
        """Raises the input's exception, if it ended with one (once)."""
        e, self.error = self.error, None
        if e is not None:
            raise e


class InputThread:
    """Reads the input in a thread of its own for the Python-level paths
    (threads, executor), so that results are delivered while its ``next()``
    blocks.  The same interface as :class:`ChunkReader`, except that
    :meth:`take` never waits: it returns what was read.

    The thread puts items in a deque (at most `limit` waiting: then it
    waits for room).  The map waits on :attr:`wake`, an Event set when an
    item arrives while the map waits for one, when the input ends, and by
    :meth:`poke`, which the map adds as a done callback to its futures.
    Items are handed over as they are (references): the threads and the
    executor get the objects the input yielded, as from ``ChunkReader``.

    Parameters
    ----------
    seq : iterable
        The map's input.
    limit : int
        Items waiting at most (>= 1; the map passes one chunk): the input
        is read that far ahead of what the map took.
    """

    def __init__(self, seq, limit):
        self._it = iter(seq)
        self._items = collections.deque()
        self._limit = max(1, limit)
        self._room = threading.Condition(threading.Lock())
        self._since = 0.0       # when the oldest waiting item arrived
        self._ended = False     # the thread stopped reading
        self._fatal = None      # a BaseException to raise where it is reached
        self._closed = False
        self._waiting = False   # the map waits in wait(): wake it
        self.error = None       # the Exception that ended the input, if any
        self.wake = threading.Event()
        t = threading.Thread(target=contextvars.copy_context().run,
                             args=(self._run,), name="parmapper-input",
                             daemon=True)
        t.start()

    def _run(self):
        items = self._items
        try:
            for x in self._it:
                if self._closed:
                    return
                if not items:
                    self._since = time.monotonic()
                items.append(x)
                if self._waiting:  # else the map looks before it waits
                    self.wake.set()
                if len(items) >= self._limit:
                    with self._room:
                        while len(items) >= self._limit and not self._closed:
                            self._room.wait()
                if self._closed:
                    return
        except Exception as e:
            note_input_thread(e)
            self.error = e
        except BaseException as e:
            note_input_thread(e)
            self._fatal = e
        finally:
            self._ended = True
            self.wake.set()

    @property
    def done(self):
        """Nothing more will come: the input ended, every item was taken,
        and its BaseException, if any, was raised."""
        return self._ended and not self._items and self._fatal is None

    def take(self, n, idle=True):
        """At most `n` (>= 1) of the items read so far, without waiting:
        fewer than `n` only when the input ended, when `idle` (the map has
        nothing running), or when the oldest has waited ``SLOW_INPUT_S``;
        else ``[]``.  Raises the input's BaseException once the items before
        it are taken."""
        items = self._items
        k = len(items)
        if not k:
            if self._ended and self._fatal is not None:
                e, self._fatal = self._fatal, None
                raise e
            return []
        if (k < n and not self._ended and not idle
                and time.monotonic() - self._since < SLOW_INPUT_S):
            return []
        out = [items.popleft() for _ in range(min(n, k))]
        if items:
            self._since = time.monotonic()
        # Always (one lock per chunk): the thread may have filled the deque
        # and gone to wait after `k` was counted.
        with self._room:
            self._room.notify()
        return out

    def due(self):
        """Seconds until a partial chunk is due (see :meth:`take`), or None."""
        if not self._items or self._ended:
            return None
        return max(0.0, SLOW_INPUT_S - (time.monotonic() - self._since))

    def wait(self, timeout=None, room=True):
        """Waits for what can let the map go on: a :meth:`poke` (a future
        done) and, when the map has `room` for a chunk, an item arriving,
        the input ending, or `timeout` seconds (a partial chunk falling
        due; None: no limit).  The map clears :attr:`wake` before it looks
        at what to do, so nothing set since is missed."""
        if not room:
            self.wake.wait()
            return
        self._waiting = True
        try:
            if timeout is not None or not (self._items or self._ended):
                self.wake.wait(timeout)
        finally:
            self._waiting = False

    def poke(self, _future=None):
        """Wakes the map (a future's done callback)."""
        self.wake.set()

    def close(self):
        """The map is over: the thread stops before its next read."""
        self._closed = True
        with self._room:
            self._room.notify()

    def raise_error(self):
        """Raises the input's exception, if it ended with one (once)."""
        e, self.error = self.error, None
        if e is not None:
            raise e


def check_owner(pid):
    """Raises ParmapperError when called in another process than `pid`, the
    one that started the map: a fork of it has none of its threads, so a
    thread-pool map (or an executor's) would wait for ever there, where
    the worker-process path says the map belongs to another process."""
    if os.getpid() != pid:
        from ._errors import ParmapperError
        raise ParmapperError("parmap: the map belongs to another process "
                             "(it was started before a fork)")


def read_ahead(chunksize, ahead):
    """Items an :class:`InputThread` reads ahead of what the map took, for
    `ahead` chunks of `chunksize` in flight: as many again, at least 64 (a
    thread hand-over per chunk of two items cost more than the items)."""
    return max(64, chunksize * ahead)


def indexable(seq):
    """Whether workers can read items from their inherited copy of `seq`
    (index dispatch): sequences whose items do not depend on being iterated
    (and whose reading never blocks)."""
    t = type(seq)
    if t in (list, tuple, range):
        return True
    return t.__name__ == "ndarray" and t.__module__ == "numpy"


def open_input(seq, input_thread, limit):
    """The reader of a Python-level path's input: an :class:`InputThread`
    for an iterator when `input_thread`, else a :class:`ChunkReader` (an
    indexable input never blocks)."""
    if not input_thread or indexable(seq):
        return ChunkReader(seq)
    return InputThread(seq, limit)


def start_reader(run):
    """Starts the thread that reads a map's input for its worker processes
    (the binding's InputReader; `run` is its body).

    A daemon thread: a ``next()`` of the input that never returns must not
    keep the interpreter from exiting.  It runs in a copy of the caller's
    context, so context variables (``decimal``'s context...) read by the
    input are the caller's.
    """
    t = threading.Thread(target=contextvars.copy_context().run, args=(run,),
                         name="parmapper-input", daemon=True)
    t.start()
    return None


def note_input_thread(exc):
    """Says in what the user reads of `exc`, raised by the input, that the
    input's thread read it (an iterator bound to the thread that made it
    fails there).  Never raises."""
    note = ("parmap: raised by the input, which parmapper reads in a thread "
            "of its own; input_thread=False reads it in the caller's thread")
    try:
        add_note(exc, note)
    except Exception:
        pass
