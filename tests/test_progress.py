"""Progress: tqdm with the right total counting items, user bars, callables,
the built-in text bar on terminals and in logs, and closing on every end."""
import io
import itertools

import pytest

import parmapper
import parmapper._progress as P


def sq(x):
    return x * x


def boom_at_5(x):
    if x == 5:
        raise ValueError("five")
    return x


class RecordingBar:
    """A bar class as parmap would instantiate a tqdm class."""

    made = []

    def __init__(self, total=None, desc=None):
        self.total = total
        self.desc = desc
        self.n = 0
        self.updates = []
        self.closed = 0
        RecordingBar.made.append(self)

    def update(self, k=1):
        self.n += k
        self.updates.append(k)

    def close(self):
        self.closed += 1


@pytest.fixture(autouse=True)
def _reset():
    RecordingBar.made.clear()


# ----------------------------------------------------------------- tqdm

@pytest.mark.parametrize("N,chunksize", [(1, 1), (2, 1), (2, 7)])
def test_tqdm_counts_items_not_chunks(monkeypatch, N, chunksize):
    tqdm = pytest.importorskip("tqdm")
    made = []

    class Spy(tqdm.tqdm):
        def __init__(self, *a, **k):
            made.append(self)
            k["file"] = io.StringIO()
            super().__init__(*a, **k)

    monkeypatch.setattr(P, "tqdm", Spy)
    counts = []
    out = []
    for r in parmapper.parmap(sq, range(30), N=N, chunksize=chunksize,
                              progress=True):
        counts.append(made[0].n)
        out.append(r)
    assert out == [i * i for i in range(30)]
    assert len(made) == 1
    assert made[0].total == 30
    # updated as results arrive, one per item: n is i+1 at the i-th result
    assert counts == list(range(1, 31))


def test_tqdm_total_from_total_option(monkeypatch):
    pytest.importorskip("tqdm")
    seen = {}
    real = P.tqdm

    def spy(*a, **k):
        seen.update(k)
        k["file"] = io.StringIO()
        return real(*a, **k)

    monkeypatch.setattr(P, "tqdm", spy)
    out = list(parmapper.parmap(sq, (i for i in range(12)), N=2,
                                progress="lbl", total=12))
    assert out == [i * i for i in range(12)]
    assert seen["total"] == 12 and seen["desc"] == "lbl"


def test_tqdm_auto_is_the_default_bar():
    tqdm = pytest.importorskip("tqdm")
    import tqdm.auto
    assert P.tqdm is tqdm.auto.tqdm


# ------------------------------------------- classes, instances, callables

@pytest.mark.parametrize("N", [1, 2])
def test_progress_bar_class(N):
    out = list(parmapper.parmap(sq, range(9), N=N, progress=RecordingBar))
    assert out == [i * i for i in range(9)]
    (bar,) = RecordingBar.made
    assert bar.total == 9
    assert bar.n == 9 and set(bar.updates) == {1}
    assert bar.closed == 1


def test_progress_tqdm_class_and_instance(capfd):
    tqdm = pytest.importorskip("tqdm")
    out = list(parmapper.parmap(sq, range(8), N=2, progress=tqdm.tqdm))
    assert out == [i * i for i in range(8)]
    assert "8/8" in capfd.readouterr().err

    bar = tqdm.tqdm(desc="mine-xyz")          # no total: parmap fills it in
    out = list(parmapper.parmap(sq, range(6), N=2, progress=bar))
    assert out == [i * i for i in range(6)]
    assert bar.n == 6 and bar.total == 6
    err = capfd.readouterr().err
    assert "mine-xyz" in err and "6/6" in err


@pytest.mark.parametrize("N,Nt", [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_progress_callable_gets_completed_counts(N, Nt):
    calls = []
    out = list(parmapper.parmap(sq, range(10), N=N, Nt=Nt, chunksize=3,
                                progress=calls.append))
    assert out == [i * i for i in range(10)]
    assert calls == list(range(1, 11))


@pytest.mark.parametrize("bad", [2.5, object(), b"bytes"])
def test_progress_bad_type_is_a_type_error_at_the_call(bad):
    with pytest.raises(TypeError, match="progress"):
        parmapper.parmap(sq, range(3), progress=bad)


@pytest.mark.parametrize("off", [False, None, 0, ""])
def test_progress_off_values(capfd, off):
    assert list(parmapper.parmap(sq, range(4), N=2, progress=off)) == [0, 1, 4, 9]
    assert capfd.readouterr().err == ""


# --------------------------------------------------- closed on every end

@pytest.mark.parametrize("N", [1, 2])
def test_bar_closed_on_error(N):
    with pytest.raises(ValueError, match="five"):
        list(parmapper.parmap(boom_at_5, range(20), N=N, exception="raise",
                              progress=RecordingBar))
    (bar,) = RecordingBar.made
    assert bar.closed == 1
    assert bar.n == 5


def test_bar_closed_and_workers_stopped_on_break(children):
    base = children.pids()
    it = parmapper.parmap(sq, itertools.count(), N=2, progress=RecordingBar)
    for r in it:
        if r >= 16:
            break
    it.close()
    (bar,) = RecordingBar.made
    assert bar.closed == 1 and bar.n == 5
    assert children.wait_back_to(base) == set()


def test_bar_closed_and_workers_stopped_on_ctrl_c(children):
    base = children.pids()

    class Interrupting(RecordingBar):
        def update(self, k=1):
            super().update(k)
            if self.n == 3:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        list(parmapper.parmap(sq, itertools.count(), N=2,
                              progress=Interrupting))
    (bar,) = RecordingBar.made
    assert bar.closed == 1
    assert children.wait_back_to(base) == set()


# ----------------------------------------------------- the built-in bar

class FakeTTY(io.StringIO):
    def isatty(self):
        return True


def test_textbar_terminal_redraws_in_place_and_rarely():
    s = FakeTTY()
    bar = P.TextBar(total=5000, desc="job", stream=s)
    for _ in range(5000):
        bar.update(1)
    bar.close()
    bar.close()  # idempotent
    out = s.getvalue()
    # at most ~10 redraws a second: a fast loop draws a handful of times
    assert 2 <= out.count("\r") <= 10
    assert out.endswith("\n") and out.count("\n") == 1
    last = out.split("\r")[-1]
    assert "job:" in last and "100%" in last and "5000/5000" in last
    assert "it/s" in last and "<" in last       # rate and ETA


def test_textbar_not_a_terminal_writes_a_few_plain_lines():
    s = io.StringIO()
    bar = P.TextBar(total=1000, stream=s)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    out = s.getvalue()
    assert "\r" not in out
    lines = out.splitlines()
    assert 1 <= len(lines) <= 5
    assert [ln.split("%")[0].strip() for ln in lines] == ["25", "50", "75", "100"]
    assert "1000/1000" in lines[-1]


def test_textbar_unknown_total_shows_count_and_rate():
    s = io.StringIO()
    bar = P.TextBar(stream=s)
    bar.update(7)
    bar.close()
    line = s.getvalue().strip()
    assert line.startswith("7 [") and "it/s" in line and "%" not in line


def test_builtin_bar_in_a_log_is_plain_lines(monkeypatch, capfd):
    monkeypatch.setattr(P, "tqdm", None)
    out = list(parmapper.parmap(sq, range(100), N=2, progress="crunch"))
    assert out == [i * i for i in range(100)]
    err = capfd.readouterr().err
    assert "\r" not in err                       # captured stderr is no tty
    assert err.splitlines()[-1].startswith("crunch: 100%")
    assert len(err.splitlines()) <= 5


@pytest.mark.parametrize("sec,text", [(5, "00:05"), (65, "01:05"),
                                      (3725, "1:02:05"), (None, "?"),
                                      (float("nan"), "?")])
def test_time_format(sec, text):
    assert P._fmt_time(sec) == text
