"""Small things users notice (issue 15, item 9): the text bar's clock, and
tracebacks through progress bars or Pool showing parmapper's own frames."""
import io
import os
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor

import pytest

import parmapper
from parmapper import _progress as P

PKG = os.path.dirname(os.path.abspath(parmapper.__file__))


def test_text_bar_elapsed_is_whole_seconds_elapsed():
    assert P._fmt_time(0.57) == "00:00"
    assert P._fmt_time(1.99) == "00:01"
    assert P._fmt_time(61.5) == "01:01"
    assert P._fmt_time(3600.4) == "1:00:00"
    bar = P.TextBar(total=4, stream=io.StringIO())
    bar.t0 -= 0.57   # a run of 0.57 s
    bar.n = 4
    assert "[00:00<" in bar.format()


def inv(x):
    return 10 / x


def ours(e):
    """parmapper's frames in the traceback Python prints for `e`."""
    return [f for f in traceback.extract_tb(e.__traceback__)
            if f.filename.startswith(PKG)]


CASES = {
    "progress": lambda: list(parmapper.parmap(inv, [1, 0], N=2, progress=True)),
    "progress-textbar": lambda: list(parmapper.parmap(
        inv, [1, 0], N=2, progress=P.TextBar)),
    "serial": lambda: list(parmapper.parmap(inv, [1, 0], N=1, progress=True)),
    "threads": lambda: list(parmapper.parmap(inv, [1, 0], N=1, Nt=2)),
    "executor": lambda: list(parmapper.parmap(
        inv, [1, 0], executor=ThreadPoolExecutor(2), progress=True)),
    "pool-map": lambda: parmapper.Pool(2).map(inv, [1, 0]),
    "pool-map-serial": lambda: parmapper.Pool(1).map(inv, [1, 0]),
    "pool-starmap": lambda: parmapper.Pool(2).starmap(inv, [(1,), (0,)]),
    "pool-imap": lambda: list(parmapper.Pool(2).imap(inv, [1, 0])),
    "pool-apply": lambda: parmapper.Pool(2).apply(inv, (0,)),
    "pool-apply-async": lambda: parmapper.Pool(2).apply_async(
        inv, (0,)).get(timeout=60),
    "pool-map-async": lambda: parmapper.Pool(2).map_async(
        inv, [1, 0]).get(timeout=60),
}


@pytest.mark.parametrize("case", list(CASES))
def test_traceback_hides_our_frames(case, capfd):
    with pytest.raises(ZeroDivisionError) as ei:
        CASES[case]()
    if sys.version_info >= (3, 11):
        assert ours(ei.value) == [], ours(ei.value)
    else:
        # Before 3.11 the frame that re-raises stays in the traceback on the
        # Pool paths (docs/api.md says so): at most that one.
        assert len(ours(ei.value)) <= 1, ours(ei.value)
    names = [f.name for f in traceback.extract_tb(ei.value.__traceback__)]
    assert "test_traceback_hides_our_frames" in names
    # The user's function is still shown: here, or in the worker's
    # traceback (the cause) when it ran in another process.
    text = "".join(traceback.format_exception(type(ei.value), ei.value,
                                              ei.value.__traceback__))
    assert "in inv" in text and "return 10 / x" in text


def test_our_own_errors_keep_their_frames():
    """An error of parmapper itself (no item: not an item's error) keeps
    every frame, to be debugged."""
    with pytest.raises(TypeError) as ei:
        parmapper.Pool(2).map(inv, [1], ordered="no")
    assert ours(ei.value)


def test_progress_iterator_still_closes(capfd):
    it = parmapper.parmap(inv, [1, 2, 4, 5], N=2, progress=True)
    assert next(it) == 10.0
    it.close()
    assert list(it) == []


def test_length_hint_of_an_indexed_input():
    """list(parmap(...)) sizes its list once when the input's length is
    true (a range, a list, a tuple); an iterator's len() is only a hint
    (and may be huge): no hint then, nor once results were handed out."""
    import operator
    for seq in (range(7), list(range(7)), tuple(range(7))):
        it = parmapper.parmap(lambda x: x * 2, seq, N=2)
        assert operator.length_hint(it, -1) == 7
        assert list(it) == [x * 2 for x in range(7)]

    class Lying:
        def __iter__(self):
            return iter(range(3))

        def __len__(self):
            return 10 ** 15

    it = parmapper.parmap(lambda x: x, Lying(), N=2)
    assert operator.length_hint(it, -1) == -1
    assert list(it) == [0, 1, 2]
    it = parmapper.parmap(lambda x: x, range(5), N=2)
    next(it)
    assert operator.length_hint(it, -1) == -1
    assert list(it) == [1, 2, 3, 4]
