"""The star/kwstar/args/kwargs table, for several N, Nt and chunksize.

| star  | kwstar | item          | positional | keywords        |
| False | False  | val           | (val,)+args| kwargs          |
| True  | False  | vals          | vals+args  | kwargs          |
| None  | False  | ignored       | args       | kwargs          |
| None  | True   | kwvals        | args       | kwargs | kwvals |
| False | True   | (val,kwvals)  | (val,)+args| kwargs | kwvals |
| True  | True   | (vals,kwvals) | vals+args  | kwargs | kwvals |

Every expected value is computed with a plain Python call.
"""
import pytest

import parmapper

ARGS = (100, "two")
KWARGS = {"a": -1, "k": "kw"}

ROWS = [
    (False, False),
    (True, False),
    (None, False),
    (None, True),
    (False, True),
    (True, True),
]
ROW_IDS = ["star=%s-kwstar=%s" % r for r in ROWS]


def record(*a, **k):
    return (a, tuple(sorted(k.items())))


def build(star, kwstar, n=20):
    """Returns (items, expected) for one row of the table."""
    items, expected = [], []
    for i in range(n):
        val = i
        vals = tuple(range(i, i + (i % 4)))  # lengths 0..3
        kwvals = {"a": i, "b%d" % (i % 3): i * 2}  # 'a' overrides KWARGS
        if star is False and not kwstar:
            item, pos, kw = val, (val,) + ARGS, dict(KWARGS)
        elif star is True and not kwstar:
            item, pos, kw = vals, vals + ARGS, dict(KWARGS)
        elif star is None and not kwstar:
            item, pos, kw = ("ignored", i), ARGS, dict(KWARGS)
        elif star is None and kwstar:
            item, pos, kw = kwvals, ARGS, dict(KWARGS, **kwvals)
        elif star is False and kwstar:
            item, pos, kw = (val, kwvals), (val,) + ARGS, dict(KWARGS, **kwvals)
        else:
            item, pos, kw = (vals, kwvals), vals + ARGS, dict(KWARGS, **kwvals)
        items.append(item)
        expected.append(record(*pos, **kw))
    return items, expected


def test_build_reference_sanity():
    # kwvals win over kwargs in the reference itself
    items, expected = build(None, True, n=3)
    assert expected[2] == (ARGS, (("a", 2), ("b2", 4), ("k", "kw")))


@pytest.mark.parametrize("N", [1, 2, 3, 50])
@pytest.mark.parametrize("star,kwstar", ROWS, ids=ROW_IDS)
def test_table_N(star, kwstar, N):
    items, expected = build(star, kwstar)
    out = parmapper.parmap(record, items, N=N, star=star, kwstar=kwstar,
                           args=ARGS, kwargs=KWARGS)
    assert list(out) == expected


@pytest.mark.parametrize("chunksize", [1, 4, -1])
@pytest.mark.parametrize("N,Nt", [(1, 3), (2, 3)])
@pytest.mark.parametrize("star,kwstar", ROWS, ids=ROW_IDS)
def test_table_threads_chunks(star, kwstar, N, Nt, chunksize):
    items, expected = build(star, kwstar)
    out = parmapper.parmap(record, items, N=N, Nt=Nt, chunksize=chunksize,
                           star=star, kwstar=kwstar, args=ARGS, kwargs=KWARGS)
    assert list(out) == expected


@pytest.mark.parametrize("star,kwstar", ROWS, ids=ROW_IDS)
def test_table_unordered(star, kwstar):
    items, expected = build(star, kwstar, n=30)
    out = parmapper.parmap(record, items, N=3, Nt=2, chunksize=4,
                           ordered=False, star=star, kwstar=kwstar,
                           args=ARGS, kwargs=KWARGS)
    assert sorted(map(repr, out)) == sorted(map(repr, expected))


@pytest.mark.parametrize("N", [1, 2])
@pytest.mark.parametrize("star,kwstar", ROWS, ids=ROW_IDS)
def test_table_generator_input(star, kwstar, N):
    items, expected = build(star, kwstar)
    out = parmapper.parmap(record, (x for x in items), N=N, star=star,
                           kwstar=kwstar, args=ARGS, kwargs=KWARGS)
    assert list(out) == expected


@pytest.mark.parametrize("N", [1, 2])
@pytest.mark.parametrize("star,kwstar", ROWS, ids=ROW_IDS)
def test_table_no_args_no_kwargs(star, kwstar, N):
    items, _ = build(star, kwstar, n=12)
    expected = []
    for i, item in enumerate(items):
        if star is False and not kwstar:
            expected.append(record(item))
        elif star is True and not kwstar:
            expected.append(record(*item))
        elif star is None and not kwstar:
            expected.append(record())
        elif star is None and kwstar:
            expected.append(record(**item))
        elif star is False and kwstar:
            expected.append(record(item[0], **item[1]))
        else:
            expected.append(record(*item[0], **item[1]))
    out = parmapper.parmap(record, items, N=N, star=star, kwstar=kwstar)
    assert list(out) == expected


@pytest.mark.parametrize("N", [1, 2])
def test_args_as_list(N):
    out = parmapper.parmap(record, range(5), N=N, args=[7, 8])
    assert list(out) == [record(i, 7, 8) for i in range(5)]


@pytest.mark.parametrize("N", [1, 2])
def test_kwargs_does_not_leak_between_items(N):
    # kwvals of one item must not remain in the keywords of the next one
    items = [(i, {"x%d" % i: i}) for i in range(8)]
    out = parmapper.parmap(record, items, N=N, Nt=2, chunksize=4, kwstar=True,
                           kwargs={"base": 0})
    assert list(out) == [record(i, base=0, **{"x%d" % i: i}) for i in range(8)]


@pytest.mark.parametrize("N", [1, 2])
def test_caller_kwargs_not_mutated(N):
    kwargs = {"a": 1}
    items = [(i, {"a": i, "z": 0}) for i in range(5)]
    out = list(parmapper.parmap(record, items, N=N, kwstar=True,
                                kwargs=kwargs))
    assert out == [record(i, a=i, z=0) for i in range(5)]
    assert kwargs == {"a": 1}
