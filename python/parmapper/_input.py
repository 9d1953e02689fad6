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
import contextvars
import itertools
import threading
import time

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

    def take(self, n):
        """Returns a list of at most `n` (>= 1) items; ``[]`` once the input
        is finished (`done`).  Fewer than `n` items when the input finished or
        reading took longer than ``SLOW_INPUT_S``."""
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
        if hasattr(exc, "add_note"):
            exc.add_note(note)
        else:
            notes = getattr(exc, "__notes__", None)
            exc.__notes__ = (notes if isinstance(notes, list) else []) + [note]
    except Exception:
        pass
