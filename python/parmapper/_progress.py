"""Progress bars: tqdm when it is installed, otherwise a small text bar."""
import sys
import time

try:  # tqdm.auto renders as a widget in notebooks and as text elsewhere
    from tqdm.auto import tqdm
except ImportError:  # pragma: no cover - depends on the environment
    tqdm = None

__all__ = ["progress_iter"]


class TextBar:
    """A text progress bar on stderr: count, percent, rate and ETA.

    Redrawn at most ten times a second; on a stream that is not a terminal
    it writes a plain line at most every few seconds instead of ``\\r``
    redraws.
    """

    def __init__(self, total=None, desc=None, stream=None):
        self.total = total
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.n = 0
        self.t0 = time.monotonic()
        self.last = 0.0
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self.interval = 0.1 if self.tty else 5.0
        self.closed = False

    def _line(self):
        el = time.monotonic() - self.t0
        rate = self.n / el if el > 0 else 0.0
        head = (self.desc + ": ") if self.desc else ""
        if self.total:
            frac = min(1.0, self.n / self.total)
            width = 30
            fill = int(round(frac * width))
            eta = (self.total - self.n) / rate if rate > 0 else float("nan")
            return "{}{:3d}%|{}{}| {}/{} [{:.1f}s, {:.1f} it/s, eta {:.1f}s]".format(
                head, int(frac * 100), "#" * fill, "-" * (width - fill),
                self.n, self.total, el, rate, eta)
        return "{}{} [{:.1f}s, {:.1f} it/s]".format(head, self.n, el, rate)

    def _draw(self, final=False):
        line = self._line()
        if self.tty:
            self.stream.write("\r" + line + ("\n" if final else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def update(self, k=1):
        self.n += k
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            self._draw()

    def close(self):
        if not self.closed:
            self.closed = True
            self._draw(final=True)


def make_bar(progress, total):
    """A bar object with update(k) and close() for parmap's `progress`."""
    desc = progress if isinstance(progress, str) else None
    if tqdm is not None:
        return tqdm(total=total, desc=desc)
    return TextBar(total=total, desc=desc)


def progress_iter(results, progress, total):
    """Yields from results, counting each item on a progress bar."""
    bar = make_bar(progress, total)
    try:
        for r in results:
            bar.update(1)
            yield r
    finally:
        bar.close()
        close = getattr(results, "close", None)
        if close is not None:
            close()
