"""Property-based: parmap agrees with the serial map, failures included.

The whole hypothesis run happens inside ONE child interpreter (with a
deadline), so a hang in any example fails the test instead of stalling the
run.  A falsifying example is printed by hypothesis in the child's output,
which the failure message shows.
"""

PROPERTY_CHILD = r'''
os.chdir(TMP)  # hypothesis keeps a cache in ./.hypothesis: not in the repo
import hypothesis
from hypothesis import given, settings, HealthCheck, strategies as st
import parmapper


def call_args(shape, x):
    """The item for value x in this shape, and the call it must become."""
    if shape == "plain":
        return x, (x,), {}
    if shape == "star":
        return (x, x % 7), (x, x % 7), {}
    if shape == "kwstar":
        return (x, {"k": x % 5}), (x,), {"k": x % 5}
    if shape == "star_kwstar":
        return ((x, 1), {"k": x % 3}), (x, 1), {"k": x % 3}
    # star=None, kwstar=True: the item is the mapping of keywords
    return {"a": x, "k": 2}, (), {"a": x, "k": 2}

SHAPES = {"plain": (False, False), "star": (True, False),
          "kwstar": (False, True), "star_kwstar": (True, True),
          "kw_only": (None, True)}


@st.composite
def cases(draw):
    # Unique values: the value of a failing item identifies its index.
    xs = draw(st.lists(st.integers(-10**6, 10**6), min_size=0, max_size=60,
                       unique=True))
    failing = draw(st.sets(st.integers(0, len(xs) - 1), max_size=5)
                   if xs else st.just(set()))
    return dict(
        xs=xs, failing=sorted(failing),
        N=draw(st.integers(1, 4)), Nt=draw(st.integers(1, 3)),
        chunksize=draw(st.sampled_from([-1, 1, 2, 5, None])),
        ordered=draw(st.booleans()),
        shape=draw(st.sampled_from(sorted(SHAPES))))


def run_case(c, mode):
    """The map for case c, and what the serial map gives for each index."""
    xs, failing = c["xs"], set(c["failing"])
    star, kwstar = SHAPES[c["shape"]]
    bad = {xs[i] for i in failing}

    def fun(*a, **kw):
        x = a[0] if a else kw["a"]
        if x in bad:
            raise ValueError(f"bad {x}")
        return (a, tuple(sorted(kw.items())))

    items, expected = [], []
    for i, x in enumerate(xs):
        item, a, kw = call_args(c["shape"], x)
        items.append(item)
        expected.append(ValueError(f"bad {x}") if i in failing
                        else (a, tuple(sorted(kw.items()))))
    it = parmapper.parmap(fun, items, N=c["N"], Nt=c["Nt"],
                          chunksize=c["chunksize"], ordered=c["ordered"],
                          star=star, kwstar=kwstar, exception=mode)
    return it, expected, failing


def norm(r):
    if isinstance(r, BaseException):
        return "EXC %s %s seq_index=%r" % (type(r).__name__, r,
                                          getattr(r, "seq_index", None))
    return repr(r)


def norm_expected(i, e):
    if isinstance(e, BaseException):
        return "EXC %s %s seq_index=%r" % (type(e).__name__, e, i)
    return repr(e)


@settings(max_examples=P["examples"], deadline=None, database=None,
          suppress_health_check=list(HealthCheck), print_blob=True)
@given(cases())
def test_return_mode_matches_serial(c):
    it, expected, failing = run_case(c, "return")
    got = [norm(r) for r in it]
    want = [norm_expected(i, e) for i, e in enumerate(expected)]
    if c["ordered"]:
        assert got == want, (got, want)
    else:
        assert sorted(got) == sorted(want), (got, want)


@settings(max_examples=P["examples"], deadline=None, database=None,
          suppress_health_check=list(HealthCheck), print_blob=True)
@given(cases())
def test_raise_mode_names_a_failing_item(c):
    it, expected, failing = run_case(c, "raise")
    got, err = [], None
    try:
        for r in it:
            got.append(repr(r))
    except ValueError as e:
        err = e
    if not failing:
        assert err is None
        want = [repr(e) for e in expected]
        assert (got if c["ordered"] else sorted(got)) == \
            (want if c["ordered"] else sorted(want))
        return
    assert err is not None, "no error raised"
    assert err.seq_index in failing
    assert str(err) == "bad %d" % c["xs"][err.seq_index]
    if c["ordered"]:
        first = min(failing)
        assert err.seq_index == first
        assert got == [repr(e) for e in expected[:first]]
    else:
        ok = {repr(e) for i, e in enumerate(expected) if i not in failing}
        assert set(got) <= ok


t0 = time.monotonic()
test_return_mode_matches_serial()
t1 = time.monotonic()
test_raise_mode_names_a_failing_item()
t2 = time.monotonic()
emit(ok=True, t_return=t1 - t0, t_raise=t2 - t1, waited=waitpid_any(),
     children=my_children())
'''


def test_parmap_matches_serial_map(run_py):
    res = run_py(PROPERTY_CHILD, timeout=60, params={"examples": 60})
    assert res.returncode == 0, res.describe()
    f = res.facts
    assert f["ok"]
    assert f["children"] == []
