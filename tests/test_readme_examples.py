"""The seed README's examples, verbatim apart from the definitions of the
inputs and of simple function bodies.  References are plain Python."""
import parmapper
from parmapper import parmap

items = list(range(10))
itemsA = list(range(10))
itemsB = [10 * i for i in range(10)]
itemC = 1000


def do_something(*args, **kwargs):
    return (args, sorted(kwargs.items()))


def proc(item):
    return item ** 2 - 1


def test_basic_parmapper():
    results = list(parmapper.parmapper(do_something,items))
    assert results == [do_something(i) for i in items]


def test_basic_parmap():
    results = list(parmapper.parmap(proc,items))
    assert results == [proc(i) for i in items]


def test_star():
    results = list(parmapper.parmap(do_something,zip(itemsA,itemsB),star=True))
    assert results == [do_something(a, b) for a, b in zip(itemsA, itemsB)]


def test_kwstar():
    results = list(parmapper.parmap(do_something, zip(items,[{'opt':(i%2==0)} for i in range(10)]), kwstar=True))
    assert results == [do_something(item, opt=(i % 2 == 0))
                       for i, item in enumerate(items)]


def test_star_kwstar():
    itemsAB = zip(itemsA,itemsB); kws = [{'opt':(i%2==0)} for i in range(10)]
    results = list(parmapper.parmap(do_something,zip(itemsAB,kws), star=True,kwstar=True))
    assert results == [do_something(a, b, opt=(i % 2 == 0))
                       for i, (a, b) in enumerate(zip(itemsA, itemsB))]


def test_star_kwstar_args_kwargs():
    itemsAB = zip(itemsA,itemsB); kws = [{'opt':(i%2==0)} for i in range(10)]
    results = list(parmapper.parmap(do_something,zip(itemsAB,kws), star=True,kwstar=True, args=(itemC,),kwargs={'opt2':False}))
    assert results == [do_something(a, b, itemC, opt=(i % 2 == 0), opt2=False)
                       for i, (a, b) in enumerate(zip(itemsA, itemsB))]


def data_load_generator():
    for i in range(30):
        yield {"id": i, "value": i * 3}


def preprocess(d):
    return d["value"] + 1


def expensive_computation(x):
    return sum(range(x))


def postprocess(x):
    return ("done", x)


def test_concurrency_chain():
    data = data_load_generator()
    data = map(preprocess,data)
    data = parmap(expensive_computation,data)
    data = map(postprocess,data)
    data = list(data)

    ref = [postprocess(expensive_computation(preprocess(d)))
           for d in data_load_generator()]
    assert data == ref
