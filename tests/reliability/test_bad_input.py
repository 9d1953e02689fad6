"""Bad options and badly shaped items.

Bad options raise at the ``parmap()`` call itself, before any process starts
(the child counts forks with ``os.register_at_fork``).  Items of the wrong
shape for star/kwstar raise ``ItemShapeError`` naming the index, in every
mode.  All cases of a kind run in one child interpreter (module-scoped
fixtures); the tests assert on its report, one case each.
"""
import re

import pytest

# (case id, the call's keyword arguments as Python source, expected
# exception type, a distinctive word of the message)
BAD_OPTIONS = [
    ("N=0", "N=0", "ValueError", ">= 1"),
    ("N=-3", "N=-3", "ValueError", ">= 1"),
    ("Nt=0", "Nt=0", "ValueError", ">= 1"),
    ("Nt=-1", "Nt=-1", "ValueError", ">= 1"),
    ("chunksize=0", "chunksize=0", "ValueError", "chunksize"),
    ("chunksize=-2", "chunksize=-2", "ValueError", "chunksize"),
    ("exception=bogus", "exception='bogus'", "ValueError", "'return'"),
    ("retries=-1", "retries=-1", "ValueError", "retries"),
    ("timeout=0", "timeout=0", "ValueError", "timeout"),
    ("timeout=-1.5", "timeout=-1.5", "ValueError", "timeout"),
    ("timeout=x", "timeout='x'", "TypeError", "timeout"),
    ("N=2.5", "N=2.5", "TypeError", "whole number"),
    ("args=str", "args='ab'", "TypeError", "tuple or a list"),
    ("args=int", "args=3", "TypeError", "tuple or a list"),
    ("kwargs=list", "kwargs=[('a', 1)]", "TypeError", "mapping"),
    ("seq=int", "seq=42", "TypeError", "iterable"),
    ("seq=None", "seq=None", "TypeError", "iterable"),
    ("fun=int-value", "fun=3", "TypeError", "callable"),
    ("fun=None", "fun=None", "TypeError", "callable"),
]

BAD_OPTIONS_CHILD = r'''
import parmapper

def call(spec):
    kw = eval("dict(" + spec + ")")
    fun = kw.pop("fun", abs)
    seq = kw.pop("seq", range(10))
    kw.setdefault("N", 2)
    return parmapper.parmap(fun, seq, **kw)

report = {}
for case_id, spec in P:
    forks0 = FORKS[0]
    try:
        call(spec)
    except Exception as e:
        report[case_id] = dict(type=type(e).__name__, str=str(e),
                               forks=FORKS[0] - forks0,
                               children=my_children())
    else:
        report[case_id] = dict(type=None, forks=FORKS[0] - forks0,
                               children=my_children())
# Control: the fork counter does see the forks of a real map.
forks0 = FORKS[0]
control = list(parmapper.parmap(abs, range(-5, 5), N=2))
emit(report=report, control=control, control_forks=FORKS[0] - forks0)
'''


@pytest.fixture(scope="module")
def bad_options_facts(run_facts_shared):
    return run_facts_shared(BAD_OPTIONS_CHILD,
                            params=[[c[0], c[1]] for c in BAD_OPTIONS])


@pytest.fixture(scope="module")
def bad_options_report(bad_options_facts):
    return bad_options_facts["report"]


def test_fork_counter_sees_a_real_map(bad_options_facts):
    """The control for "no process started": a valid map is counted."""
    assert bad_options_facts["control"] == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    assert bad_options_facts["control_forks"] >= 2


@pytest.mark.parametrize("case_id,spec,exc_type,word", BAD_OPTIONS,
                         ids=[c[0] for c in BAD_OPTIONS])
def test_bad_option_raises_at_the_call(bad_options_report, case_id, spec,
                                       exc_type, word):
    r = bad_options_report[case_id]
    assert r["type"] == exc_type, r
    assert word in r["str"], r
    assert r["forks"] == 0 and r["children"] == [], r


# ----------------------------------------------------------- item shapes

# (id, star, kwstar, a good item for index i, the bad item 3)
SHAPES = [
    ("star-not-iterable", True, False, "(i, 1)", "7"),
    ("kwstar-not-a-pair", False, True, "(i, {'k': 1})", "7"),
    ("kwstar-kwvals-not-a-mapping", False, True, "(i, {'k': 1})", "(3, [1, 2])"),
    ("kwstar-three-elements", False, True, "(i, {'k': 1})", "(3, {}, 5)"),
    ("star-kwstar-vals-not-iterable", True, True, "((i, 1), {'k': 1})", "(5, {'k': 1})"),
    ("starnone-kwstar-not-a-mapping", None, True, "{'a': i, 'b': 1, 'k': 0}", "[1, 2]"),
]
CONFIGS = [(1, 1), (1, 2), (2, 1), (2, 2)]
MODES = ["raise", "return", "proc"]

SHAPES_CHILD = r'''
import parmapper

def f(a=0, b=0, k=0):
    return (a, b, k)

report = {}
for shape_id, star, kwstar, good, bad in P["shapes"]:
    items = [eval(good, {"i": i}) for i in range(8)]
    items[3] = eval(bad)
    for N, Nt in P["configs"]:
        for mode in P["modes"]:
            key = "%s/%d,%d/%s" % (shape_id, N, Nt, mode)
            got, err = [], None
            try:
                for r in parmapper.parmap(f, items, N=N, Nt=Nt, star=star,
                                          kwstar=kwstar, exception=mode,
                                          chunksize=1):
                    got.append(r)
            except Exception as e:
                err = e
            report[key] = dict(
                err=exc_facts(err), got=[list(g) if isinstance(g, tuple) else repr(g)
                                         for g in got],
                is_shape=isinstance(err, parmapper.ItemShapeError),
                is_type_error=isinstance(err, TypeError))
emit(report=report, waited=waitpid_any())
'''


@pytest.fixture(scope="module")
def shapes_report(run_facts_shared):
    return run_facts_shared(SHAPES_CHILD, timeout=60, params={
        "shapes": SHAPES, "configs": CONFIGS, "modes": MODES})["report"]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("N,Nt", CONFIGS)
@pytest.mark.parametrize("shape_id", [s[0] for s in SHAPES])
def test_item_of_the_wrong_shape(shapes_report, shape_id, N, Nt, mode):
    r = shapes_report["%s/%d,%d/%s" % (shape_id, N, Nt, mode)]
    assert r["err"] is not None, ("no error", r["got"])
    assert r["is_shape"] and r["is_type_error"], r["err"]
    assert "item 3" in r["err"]["str"], r["err"]
    assert r["err"]["seq_index"] == 3, r["err"]
    # Ordered: the items before it were yielded, nothing after it.
    assert len(r["got"]) == 3, r["got"]


@pytest.mark.parametrize("Nt", [1, 2])
def test_input_list_shortened_by_fun_in_a_worker_is_named(run_facts, Nt):
    """Without options that fork replacements (and without other threads)
    a worker reads the caller's list in its own copy of the caller's
    memory, which fun can change: one that shortens it made the worker's
    later reads fail with a bare "IndexError: list index out of range",
    named by nothing.  (A child interpreter: another thread left running
    by an earlier test would make the map copy the list.)"""
    f = run_facts(r'''
import parmapper

seq = list(range(40))

def f(x):
    seq.pop()
    return x

try:
    list(parmapper.parmap(f, seq, N=2, chunksize=2, Nt=P))
    emit(raised=None)
except IndexError as e:
    emit(raised=str(e))
''', params=Nt)
    assert f["raised"] and re.match(
        r"parmap: item \d+ of the input list is gone.*shortened",
        f["raised"]), f
