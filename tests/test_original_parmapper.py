"""What the original parmapper's own ``tests.py`` checks, as our tests.

The original (github.com/Jwink3101/parmapper, ``tests.py``) is a script: it
calls ``set_start_method()``, then maps a sleeping function with ``N`` of 1,
2 and 4 through every way of passing arguments (``args``, ``kwargs``,
``star``, ``kwstar``, per-item keywords overriding ``kwargs``), with
threads (``Nt``), and with lambdas, asserting the results of the ``star``
and lambda cases and printing from the workers under a
``multiprocessing.Lock``.  Each of its assertions is covered here, and
each of its unasserted runs is given an asserted value (written for this
project: nothing is copied).  Sleeps are kept to milliseconds: the
original printed its timings, and timings are not asserted.
"""
import multiprocessing
import time

import pytest

import parmapper

NS = [1, 2, 4]
PAIRS_SUM = [2 * i for i in range(10)]   # i + i for i in range(10)
LOCK = multiprocessing.Lock()


def napping(i, t=0.001):
    """The item back, after a nap of `t` seconds; prints under a lock that
    every worker inherited, as the original's function did."""
    time.sleep(t)
    with LOCK:
        print("napped", i, t, flush=True)
    return i


def add_napping(i, j, t=0.001):
    time.sleep(t)
    return i + j


def add_reporting_t(i, j, t=0.001):
    """``(i + j, t)``: tells which `t` the call was given."""
    return i + j, t


def test_set_start_method_and_cpu_count():
    assert parmapper.set_start_method() is None
    assert isinstance(parmapper.CPU_COUNT, int) and parmapper.CPU_COUNT >= 1


@pytest.mark.parametrize("N", [2, 4])
def test_plain_map(N, capfd):
    assert list(parmapper.parmap(napping, range(10), N=N)) == list(range(10))
    # the workers printed, each line whole (the lock was shared)
    out = capfd.readouterr().out.splitlines()
    assert sorted(out) == sorted("napped {} 0.001".format(i) for i in range(10))


@pytest.mark.parametrize("N", NS)
def test_fixed_keyword_and_positional_extras(N):
    assert list(parmapper.parmap(napping, range(10), N=N,
                                 kwargs={"t": 0.0005})) == list(range(10))
    assert list(parmapper.parmap(napping, range(10), N=N,
                                 args=(0.0005,))) == list(range(10))


@pytest.mark.parametrize("N", NS)
def test_per_item_keywords_and_per_item_positionals(N):
    kw_items = ((i, {"t": i / 4000.0}) for i in range(10))
    assert list(parmapper.parmap(napping, kw_items, N=N,
                                 kwstar=True)) == list(range(10))
    star_items = ((i, i / 4000.0) for i in range(10))
    assert list(parmapper.parmap(napping, star_items, N=N,
                                 star=True)) == list(range(10))


@pytest.mark.parametrize("N", NS)
def test_star(N):
    pairs = zip(range(10), range(10))
    assert list(parmapper.parmap(add_napping, pairs, N=N, star=True)) == PAIRS_SUM


@pytest.mark.parametrize("N", NS)
def test_star_with_fixed_keyword_or_positional(N):
    assert list(parmapper.parmap(add_napping, zip(range(10), range(10)), N=N,
                                 star=True, kwargs={"t": 0.0005})) == PAIRS_SUM
    assert list(parmapper.parmap(add_napping, zip(range(10), range(10)), N=N,
                                 star=True, args=(0.0005,))) == PAIRS_SUM


@pytest.mark.parametrize("N", NS)
def test_star_and_kwstar(N):
    items = zip(zip(range(10), range(10)), [{"t": i / 4000.0} for i in range(10)])
    assert list(parmapper.parmap(add_napping, items, N=N, star=True,
                                 kwstar=True)) == PAIRS_SUM


@pytest.mark.parametrize("N", NS)
def test_star_with_the_keyword_given_positionally(N):
    triples = zip(range(10), range(10), [i / 4000.0 for i in range(10)])
    assert list(parmapper.parmap(add_napping, triples, N=N, star=True)) == PAIRS_SUM


@pytest.mark.parametrize("N", NS)
def test_per_item_keywords_override_kwargs(N):
    # The original ran this with kwargs={'t': 1}: per-item t wins, so it
    # did not take a second per item.  Here the function reports its t.
    items = zip(zip(range(10), range(10)), [{"t": i / 40.0} for i in range(10)])
    out = list(parmapper.parmap(add_reporting_t, items, N=N, star=True,
                                kwstar=True, kwargs={"t": 1}))
    assert out == [(2 * i, i / 40.0) for i in range(10)]


@pytest.mark.parametrize("Nt", NS)
def test_threads(Nt):
    assert list(parmapper.parmap(napping, range(10), N=1, Nt=Nt,
                                 kwargs={"t": 0.0005})) == list(range(10))


def test_lambdas():
    assert list(parmapper.parmap(lambda a: a, range(10), N=2)) == list(range(10))
    assert list(parmapper.parmap(lambda a, b: a + b, zip(range(10), range(10)),
                                 star=True, N=2)) == PAIRS_SUM
    assert list(parmapper.parmap(lambda a, b=2: a + b, range(10),
                                 N=2)) == [a + 2 for a in range(10)]
    assert list(parmapper.parmap(lambda a, b=2: a + b, range(10), N=2,
                                 kwargs={"b": 3})) == [a + 3 for a in range(10)]
    assert list(parmapper.parmap(lambda a, b=2: a + b,
                                 zip(range(10), [{"b": i} for i in range(10)]),
                                 N=2, kwstar=True)) == PAIRS_SUM
    assert list(parmapper.parmap(lambda a, b, c=2: a + b + c,
                                 zip(zip(range(10), range(10)),
                                     [{"c": i} for i in range(10)]),
                                 N=2, kwstar=True, star=True)) == [3 * a for a in range(10)]
