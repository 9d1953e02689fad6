"""Progress reporting for parmap: tqdm, a built-in text bar, or your own hook.

``progress=`` accepts:

- ``True`` or a string (the label): a ``tqdm.auto`` bar when tqdm is
  installed (a widget in notebooks, text elsewhere), else :class:`TextBar`
  on stderr;
- a tqdm class (or any class taking ``total=`` and ``desc=`` with
  ``update``/``close``): it is instantiated with the right total;
- a tqdm instance (anything with ``update``): it is updated, its ``total``
  filled in when it has none, and closed at the end;
- any other callable: called with the number of completed items after each
  item, so rich, logging or a web UI can hook in.

Every form counts items, never chunks, as the results are delivered, and the
bar is closed however the map ends (exhausted, error, ``break``, Ctrl+C).
"""
import math
import sys
import time

from ._worker import hide_ours



def __getattr__(name):
    """``tqdm`` (the ``tqdm.auto`` class, or None when tqdm is not installed)
    is imported on first use, not with parmapper: importing it pulls in
    asyncio and more, tens of milliseconds a user without progress bars
    should not pay."""
    if name != "tqdm":
        raise AttributeError(name)
    try:  # tqdm.auto renders as a widget in notebooks and as text elsewhere
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - depends on the environment
        tqdm = None
    globals()["tqdm"] = tqdm
    return tqdm

__all__ = ["progress_iter", "make_bar", "check_progress", "wants_progress",
           "TextBar"]


def _fmt_time(seconds):
    """``mm:ss`` or ``h:mm:ss`` of the whole seconds elapsed (truncated, as
    a clock and tqdm show them: 0.57 s is 00:00); ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(max(0.0, seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    if h:
        return "{:d}:{:02d}:{:02d}".format(h, m, s)
    return "{:02d}:{:02d}".format(m, s)


def _fmt_rate(rate):
    if rate <= 0:
        return "? it/s"
    if rate < 1:
        return "{:.2f} s/it".format(1.0 / rate)
    if rate < 100:
        return "{:.2f} it/s".format(rate)
    return "{:,.0f} it/s".format(rate)


class TextBar:
    """A progress bar on stderr with count, percent, rate and ETA.

    On a terminal it redraws one line in place (``\\r``) at most
    `max_rate` times a second.  On anything else (CI logs, files, pipes) it
    writes a few plain lines instead: one at each quarter of the total (or
    every `plain_every` seconds when the total is unknown or progress is
    slow), and a final one.

    Parameters
    ----------
    total : int, optional
        The number of items; without it the bar shows a count and a rate.
    desc : str, optional
        A label written before the bar.
    stream : file, optional
        Where to write; default ``sys.stderr`` (looked up when the bar is
        created, so pytest's capture and redirections apply).
    max_rate : float, default 10
        Most redraws per second on a terminal.
    plain_every : float, default 30
        Longest silence, in seconds, between two plain lines.
    """

    width = 30

    def __init__(self, total=None, desc=None, stream=None, max_rate=10.0,
                 plain_every=30.0):
        self.total = total
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.n = 0
        self.t0 = time.monotonic()
        self.last = self.t0
        try:
            self.tty = bool(self.stream.isatty())
        except (AttributeError, ValueError):
            self.tty = False
        self.interval = 1.0 / max_rate
        self.plain_every = plain_every
        self.quarter = 0        # the last quarter a plain line was written for
        self.width_drawn = 0    # length of the line on screen (terminal)
        self.closed = False
        if self.tty:
            self._draw()

    def format(self):
        """The bar's current line, without ``\\r`` or newline."""
        el = time.monotonic() - self.t0
        rate = self.n / el if el > 0 else 0.0
        head = (self.desc + ": ") if self.desc else ""
        if self.total:
            frac = min(1.0, self.n / self.total)
            fill = int(frac * self.width)
            eta = (self.total - self.n) / rate if rate > 0 else None
            return "{}{:3d}%|{}{}| {}/{} [{}<{}, {}]".format(
                head, int(frac * 100), "#" * fill, "-" * (self.width - fill),
                self.n, self.total, _fmt_time(el), _fmt_time(eta),
                _fmt_rate(rate))
        return "{}{} [{}, {}]".format(head, self.n, _fmt_time(el),
                                      _fmt_rate(rate))

    def _draw(self, final=False):
        line = self.format()
        if self.tty:
            pad = " " * max(0, self.width_drawn - len(line))
            self.width_drawn = len(line)
            self.stream.write("\r" + line + pad + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def update(self, k=1):
        """Counts `k` more completed items; redraws when it is time."""
        self.n += k
        now = time.monotonic()
        if self.tty:
            if now - self.last >= self.interval:
                self.last = now
                self._draw()
            return
        due = now - self.last >= self.plain_every
        if self.total:
            q = min(4, self.n * 4 // self.total)
            if q > self.quarter and q < 4:  # 100% is the final line's job
                self.quarter = q
                due = True
        if due:
            self.last = now
            self._draw()

    def close(self):
        """Writes the final state once; later calls do nothing."""
        if self.closed:
            return
        self.closed = True
        self._draw(final=True)


class _Callback:
    """Adapts a callable taking the number of completed items."""

    def __init__(self, fn):
        self.fn = fn
        self.n = 0

    def update(self, k=1):
        self.n += k
        self.fn(self.n)

    def close(self):
        pass


def _is_bar_class(p):
    return isinstance(p, type)


def make_bar(progress, total, desc=None):
    """A bar object with ``update(k)`` and ``close()`` for parmap's `progress`.

    Parameters
    ----------
    progress : bool, str, tqdm class, tqdm instance or callable
        See the module docstring.
    total : int or None
        The number of items, when known.
    desc : str, optional
        A label, used when `progress` is not itself a string.
    """
    if isinstance(progress, str):
        desc = progress
    if isinstance(progress, (bool, int, str)):
        bar = globals()["tqdm"] if "tqdm" in globals() else __getattr__("tqdm")
        if bar is not None:
            return bar(total=total, desc=desc)
        return TextBar(total=total, desc=desc)
    if _is_bar_class(progress):
        kw = {"total": total}
        if desc is not None:
            kw["desc"] = desc
        return progress(**kw)
    if hasattr(progress, "update") and hasattr(progress, "close"):
        if total is not None and getattr(progress, "total", 0) is None:
            try:
                progress.total = total
                progress.refresh()
            except Exception:  # a bar without refresh(): the total is set
                pass
        return progress
    if callable(progress):
        return _Callback(progress)
    raise TypeError(
        "parmap: progress must be a bool, a label (str), a tqdm class or "
        "instance, or a callable taking the number of completed items; got "
        "{!r}".format(type(progress).__name__))


def wants_progress(progress):
    """Whether `progress` asks for progress reporting.

    Not ``bool(progress)``: a tqdm instance without a total refuses
    ``bool()``.
    """
    if progress is None or isinstance(progress, (bool, int, str)):
        return bool(progress)
    return True


def check_progress(progress):
    """Raises TypeError now, at the call, for a `progress` that cannot work."""
    if progress is None or isinstance(progress, (bool, str)):
        return
    if isinstance(progress, int) and progress in (0, 1):  # as False, True
        return
    if isinstance(progress, int):  # 5 is not a bar: refused, not read as True
        pass
    elif (_is_bar_class(progress) or callable(progress)
            or (hasattr(progress, "update") and hasattr(progress, "close"))):
        return
    raise TypeError(
        "parmap: progress must be a bool, a label (str), a tqdm class or "
        "instance, or a callable taking the number of completed items; got "
        "{!r}".format(progress))


def progress_iter(results, progress, total):
    """Yields from `results`, counting each item on a progress bar.

    The bar is made when the first result is asked for (parmap is lazy) and
    closed however iteration ends; closing this generator (``break``,
    garbage collection) also closes `results`, which stops the workers.
    """
    bar = make_bar(progress, total)
    try:
        for r in results:
            bar.update(1)
            yield r
    except BaseException as e:
        # An item's error: parmapper's frames (this one included) are
        # dropped and a bare raise adds none, so the traceback shows the
        # caller's line and the worker's (one frame of this generator
        # stays before Python 3.11).
        hide_ours(e)
        raise
    finally:
        try:
            bar.close()
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()
