"""Options: ordering, chunksize, N, bad options, progress, aliases, module
attributes."""
import os
import warnings

import pytest

import parmapper


def sq(x):
    return x * x


def slow_first(x):
    # item 0 is slow so that completion order differs from input order
    if x == 0:
        import time
        time.sleep(0.3)
    return x * x


EXPECTED = [i * i for i in range(40)]


# ------------------------------------------------------------------ ordering

@pytest.mark.parametrize("N,Nt", [(1, 1), (1, 3), (2, 1), (2, 3), (3, 1)])
def test_ordered(N, Nt):
    assert list(parmapper.parmap(sq, range(40), N=N, Nt=Nt, ordered=True)) == EXPECTED


@pytest.mark.parametrize("N,Nt", [(1, 1), (1, 3), (2, 1), (2, 3), (3, 1)])
def test_unordered_same_multiset(N, Nt):
    out = list(parmapper.parmap(sq, range(40), N=N, Nt=Nt, ordered=False))
    assert sorted(out) == EXPECTED


def test_unordered_yields_in_completion_order():
    out = list(parmapper.parmap(slow_first, range(10), N=2, ordered=False))
    assert sorted(out) == [i * i for i in range(10)]
    assert out[0] != 0  # the slow item is not the first to complete


def test_ordered_waits_for_slow_first():
    out = list(parmapper.parmap(slow_first, range(10), N=2, ordered=True))
    assert out == [i * i for i in range(10)]


# ----------------------------------------------------------------- chunksize

@pytest.mark.parametrize("chunksize", [1, 2, 3, 7, 40, 100, -1])
@pytest.mark.parametrize("N,Nt", [(1, 2), (2, 1), (2, 3)])
def test_chunksize_does_not_change_results(chunksize, N, Nt):
    out = list(parmapper.parmap(sq, range(40), N=N, Nt=Nt, chunksize=chunksize))
    assert out == EXPECTED


@pytest.mark.parametrize("chunksize", [1, 5, -1])
def test_chunksize_unordered(chunksize):
    out = list(parmapper.parmap(sq, range(40), N=2, Nt=2, chunksize=chunksize,
                                ordered=False))
    assert sorted(out) == EXPECTED


@pytest.mark.parametrize("N,Nt", [(1, 1), (1, 3), (2, 1), (2, 3)])
def test_chunksize_minus_one_unknown_length_warns(N, Nt):
    with pytest.warns(UserWarning):
        out = list(parmapper.parmap(sq, (i for i in range(40)), N=N, Nt=Nt,
                                    chunksize=-1))
    assert out == EXPECTED


@pytest.mark.parametrize("seq", [list(range(40)), tuple(range(40)), range(40)],
                         ids=["list", "tuple", "range"])
def test_chunksize_minus_one_known_length_no_warning(seq):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = list(parmapper.parmap(sq, seq, N=2, Nt=2, chunksize=-1))
    assert out == EXPECTED


def test_default_options_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = list(parmapper.parmap(sq, (i for i in range(40)), N=2))
    assert out == EXPECTED


# ------------------------------------------------------------------------- N

@pytest.mark.parametrize("N", [7, 50])
def test_more_processes_than_items(N):
    assert list(parmapper.parmap(sq, range(5), N=N)) == [0, 1, 4, 9, 16]


def test_more_threads_than_items():
    assert list(parmapper.parmap(sq, range(3), N=2, Nt=8)) == [0, 1, 4]


def test_default_N():
    assert list(parmapper.parmap(lambda x: x + 1, range(20))) == list(range(1, 21))


def test_N_none_explicit():
    assert list(parmapper.parmap(sq, range(20), N=None)) == [i * i for i in range(20)]


def test_workers_are_other_processes():
    pids = set(parmapper.parmap(lambda _: os.getpid(), range(30), N=2))
    assert os.getpid() not in pids
    assert 1 <= len(pids) <= 2


def test_N1_runs_in_caller_process():
    pids = set(parmapper.parmap(lambda _: os.getpid(), range(10), N=1))
    assert pids == {os.getpid()}


def test_N1_threads_run_in_caller_process():
    pids = set(parmapper.parmap(lambda _: os.getpid(), range(10), N=1, Nt=3))
    assert pids == {os.getpid()}


# --------------------------------------------------------------- bad options

class _Gen:
    """An iterator that records whether it was touched."""

    def __init__(self):
        self.touched = False

    def __iter__(self):
        return self

    def __next__(self):
        self.touched = True
        raise StopIteration


BAD_OPTIONS = [
    (dict(N=0), ValueError),
    (dict(N=-2), ValueError),
    (dict(Nt=0), ValueError),
    (dict(Nt=-1), ValueError),
    (dict(chunksize=0), ValueError),
    (dict(chunksize=-2), ValueError),
    (dict(chunksize=-10), ValueError),
    (dict(exception="bogus"), ValueError),
    (dict(exception="RAISE_"), ValueError),
    (dict(args=5), TypeError),
    (dict(args="ab"), TypeError),
    (dict(args={"a": 1}), TypeError),
    (dict(kwargs=[("a", 1)]), TypeError),
    (dict(kwargs=5), TypeError),
]


@pytest.mark.parametrize("opts,exc", BAD_OPTIONS,
                         ids=[repr(o) for o, _ in BAD_OPTIONS])
def test_bad_options_raise_at_call(opts, exc, children):
    before = children.pids()
    seq = _Gen()
    with pytest.raises(exc):
        parmapper.parmap(sq, seq, **opts)  # no iteration
    assert not seq.touched
    assert children.pids() <= before


@pytest.mark.parametrize("seq", [5, None, 3.5, object()],
                         ids=["int", "None", "float", "object"])
def test_non_iterable_seq(seq):
    with pytest.raises(TypeError):
        parmapper.parmap(sq, seq)


@pytest.mark.parametrize("fun", [5, None, "sq"], ids=["int", "None", "str"])
def test_non_callable_fun(fun):
    with pytest.raises(TypeError):
        parmapper.parmap(fun, [1, 2])


def test_valid_boundary_options():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = list(parmapper.parmap(sq, list(range(10)), N=1, Nt=1,
                                    chunksize=-1, args=[], kwargs={}))
    assert out == [i * i for i in range(10)]


@pytest.mark.parametrize("mode", ["raise", "return", "proc", None])
def test_valid_exception_modes_accepted(mode):
    assert list(parmapper.parmap(sq, range(6), N=2, exception=mode)) == [
        0, 1, 4, 9, 16, 25
    ]


def test_kwargs_any_mapping_accepted():
    import types

    def f(x, k=None):
        return (x, k)

    kw = types.MappingProxyType({"k": "v"})
    assert list(parmapper.parmap(f, range(3), N=2, kwargs=kw)) == [
        (0, "v"), (1, "v"), (2, "v")
    ]


# ------------------------------------------------------------------ progress

def _no_tqdm(monkeypatch):
    import parmapper._progress
    monkeypatch.setattr(parmapper._progress, "tqdm", None)


def test_progress_module_attribute():
    import parmapper._progress
    assert hasattr(parmapper._progress, "tqdm")
    try:
        import tqdm  # noqa: F401
    except ImportError:
        assert parmapper._progress.tqdm is None
    else:
        assert callable(parmapper._progress.tqdm)


@pytest.mark.parametrize("N,Nt", [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_builtin_progress_bar(monkeypatch, capfd, N, Nt):
    _no_tqdm(monkeypatch)
    out = list(parmapper.parmap(sq, range(10), N=N, Nt=Nt, progress=True))
    assert out == [i * i for i in range(10)]
    err = capfd.readouterr().err
    assert err
    assert "10/10" in err or "100%" in err


@pytest.mark.parametrize("N", [1, 2])
def test_builtin_progress_bar_label(monkeypatch, capfd, N):
    _no_tqdm(monkeypatch)
    out = list(parmapper.parmap(sq, range(10), N=N, progress="crunching-xyz"))
    assert out == [i * i for i in range(10)]
    err = capfd.readouterr().err
    assert "crunching-xyz" in err
    assert "10/10" in err or "100%" in err


@pytest.mark.parametrize("N", [1, 2])
def test_builtin_progress_bar_total(monkeypatch, capfd, N):
    _no_tqdm(monkeypatch)
    out = list(parmapper.parmap(sq, (i for i in range(20)), N=N,
                                progress=True, total=20))
    assert out == [i * i for i in range(20)]
    err = capfd.readouterr().err
    assert "20/20" in err or "100%" in err


def test_builtin_progress_bar_chunked_counts_items(monkeypatch, capfd):
    _no_tqdm(monkeypatch)
    out = list(parmapper.parmap(sq, range(30), N=2, chunksize=7, progress=True))
    assert out == [i * i for i in range(30)]
    err = capfd.readouterr().err
    assert "30/30" in err or "100%" in err


def test_builtin_progress_bar_empty(monkeypatch, capfd):
    _no_tqdm(monkeypatch)
    assert list(parmapper.parmap(sq, [], N=2, progress=True)) == []


@pytest.mark.parametrize("N", [1, 2])
def test_no_progress_writes_nothing(capfd, N):
    out = list(parmapper.parmap(sq, range(10), N=N))
    assert out == [i * i for i in range(10)]
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("N", [1, 2])
def test_tqdm_progress_bar(capfd, N):
    pytest.importorskip("tqdm")
    out = list(parmapper.parmap(sq, range(10), N=N, progress=True))
    assert out == [i * i for i in range(10)]
    err = capfd.readouterr().err
    assert "10/10" in err


def test_tqdm_progress_bar_label(capfd):
    pytest.importorskip("tqdm")
    out = list(parmapper.parmap(sq, range(10), N=2, progress="crunching-xyz"))
    assert out == [i * i for i in range(10)]
    err = capfd.readouterr().err
    assert "10/10" in err
    assert "crunching-xyz" in err


def test_tqdm_progress_bar_total(capfd):
    pytest.importorskip("tqdm")
    out = list(parmapper.parmap(sq, (i for i in range(20)), N=2,
                                progress=True, total=20))
    assert out == [i * i for i in range(20)]
    assert "20/20" in capfd.readouterr().err


def test_tqdm_is_used_when_available(monkeypatch):
    pytest.importorskip("tqdm")
    import parmapper._progress
    calls = []
    real = parmapper._progress.tqdm

    def spy(*a, **k):
        calls.append(k)
        return real(*a, **k)

    monkeypatch.setattr(parmapper._progress, "tqdm", spy)
    out = list(parmapper.parmap(sq, range(5), N=2, progress=True))
    assert out == [0, 1, 4, 9, 16]
    assert calls


# -------------------------------------------------- aliases and module attrs

def test_parmapper_alias():
    assert parmapper.parmapper is parmapper.parmap


@pytest.mark.parametrize("name", ["map", "imap"])
@pytest.mark.parametrize("obj", ["parmap", "parmapper"])
def test_map_and_imap(obj, name):
    fn = getattr(getattr(parmapper, obj), name)
    out = fn(sq, range(10), N=2, Nt=2)
    assert list(out) == [i * i for i in range(10)]
    out = fn(lambda a, b, c=0: a + b + c, [(1, 2), (3, 4)], N=2, star=True,
             kwargs={"c": 10})
    assert list(out) == [13, 17]


def test_close_does_nothing():
    assert parmapper.parmap.close() is None
    assert parmapper.parmapper.close() is None
    assert list(parmapper.parmap(sq, range(4), N=2)) == [0, 1, 4, 9]


def test_cpu_count():
    assert isinstance(parmapper.CPU_COUNT, int)
    assert not isinstance(parmapper.CPU_COUNT, bool)
    assert parmapper.CPU_COUNT >= 1


def test_version():
    assert isinstance(parmapper.__version__, str)
    assert parmapper.__version__.strip()
    assert parmapper.__version__[0].isdigit()


@pytest.mark.parametrize("a,k", [(("spawn",), {}), (("fork",), {"force": True}),
                                 ((), {})])
def test_set_start_method_is_noop(a, k):
    assert parmapper.set_start_method(*a, **k) is None
    # lambdas still work: nothing is pickled, workers are forked
    out = list(parmapper.parmap(lambda x: x * 3, range(6), N=2))
    assert out == [0, 3, 6, 9, 12, 15]

