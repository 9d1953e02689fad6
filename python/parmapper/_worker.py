"""What a freshly forked worker does to itself before it serves any task.

The caller's other threads keep running until the fork, and a thread that
was writing to ``sys.stdout`` (or reading ``sys.stdin``) held the stream's
buffer lock at that instant.  Only the forking thread exists in the worker,
so that lock stays held for ever there: the first ``print`` of ``fun`` on the
inherited stream would wait on it for ever.  The worker therefore gets
standard streams of its own, over the same file descriptors 0, 1 and 2 and
with the same settings; the caller flushed its own before the fork.
"""
import io
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
