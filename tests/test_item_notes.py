"""The printed error names the item (issue 15, item 2): its index and, when
short, its repr are in what the user reads (a note on Python 3.11+; the
worker's traceback text, the RemoteTraceback, on every version), on every
path."""
import sys
import traceback
from concurrent.futures import ThreadPoolExecutor

import pytest

import parmapper
from parmapper import Pool, parmap


def printed(e):
    """What Python prints for `e` (its cause chain included)."""
    return "".join(traceback.format_exception(type(e), e, e.__traceback__))


def inv(x):
    return 10 / x


PATHS = {
    "processes": dict(N=2),
    "processes-chunk4": dict(N=2, chunksize=4),
    "processes-unordered-threads": dict(N=2, Nt=2, ordered=False),
    "processes-iterator": dict(N=2, iterator=True),
    "serial": dict(N=1, exception="raise"),
    "serial-proc": dict(N=1),
    "threads": dict(N=1, Nt=2),
    "executor": dict(N=2, executor="threads"),
    "executor-proc": dict(N=2, executor="threads", exception="proc"),
}


@pytest.mark.parametrize("path", list(PATHS))
def test_raised_error_names_item(path):
    kw = dict(PATHS[path])
    seq = [1, 2, 0, 4]
    if kw.pop("iterator", False):
        seq = iter(seq)
    ex = None
    if kw.get("executor") == "threads":
        ex = kw["executor"] = ThreadPoolExecutor(2)
    try:
        with pytest.raises(ZeroDivisionError) as ei:
            list(parmap(lambda x: 10 / x, seq, **kw))
    finally:
        if ex is not None:
            ex.shutdown()
    text = printed(ei.value)
    assert "parmap: raised by item 2: 0" in text, text
    assert ei.value.seq_index == 2


@pytest.mark.parametrize("N", [1, 2])
def test_returned_error_names_item(N):
    out = list(parmap(inv, [1, 0, "ab"], N=N, exception="return"))
    assert isinstance(out[1], ZeroDivisionError)
    assert "parmap: raised by item 1: 0" in printed(out[1])
    assert "parmap: raised by item 2: 'ab'" in printed(out[2])


def test_long_repr_left_out():
    big = "x" * 1000
    with pytest.raises(TypeError) as ei:
        list(parmap(inv, [1, big], N=2))
    text = printed(ei.value)
    assert "parmap: raised by item 1" in text
    assert "x" * 100 not in text


def test_pool_names_item():
    with Pool(2) as p:
        with pytest.raises(ZeroDivisionError) as ei:
            p.map(inv, [1, 0, 3])
        assert "parmap: raised by item 1: 0" in printed(ei.value)
        with pytest.raises(ZeroDivisionError) as ei:
            p.apply_async(inv, (0,)).get(timeout=60)
        # apply has no item: its index only, never a made-up repr.
        text = printed(ei.value)
        assert "parmap: raised by item 0" in text
        assert "item 0:" not in text


def test_proc_mode_worker_prints_item(capfd):
    with pytest.raises(parmapper.WorkerDiedError):
        list(parmap(inv, [1, 0, 3], N=2, exception="proc", chunksize=1))
    err = capfd.readouterr().err
    assert "ZeroDivisionError" in err
    assert "parmap: raised by item 1: 0" in err


def test_remote_traceback_text_names_item():
    """The worker's traceback text (what Python < 3.11 prints, with no
    notes) holds the note too."""
    with pytest.raises(ZeroDivisionError) as ei:
        list(parmap(inv, [0], N=2))
    cause = ei.value.__cause__
    assert isinstance(cause, parmapper.RemoteTraceback)
    assert "parmap: raised by item 0: 0" in cause.tb


@pytest.mark.skipif(sys.version_info < (3, 11), reason="add_note: 3.11+")
def test_note_is_a_real_note():
    with pytest.raises(ZeroDivisionError) as ei:
        list(parmap(inv, [5, 0], N=2))
    assert ei.value.__notes__ == ["parmap: raised by item 1: 0"]
