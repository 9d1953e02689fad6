"""Small real data and functions standing for the placeholders of the docs'
examples (``items``, ``work``, ``slow``...), for tests/test_doc_blocks.py.
A module, so that multiprocessing and ProcessPoolExecutor can pickle the
functions by name."""
import time

import numpy as np

items = list(range(10))
itemsA = list(range(10))
itemsB = [10 * i for i in range(10)]
itemC = 1000
xs, ys = list(range(5)), list(range(5, 10))
pairs = [(1, 2), (3, 4)]
a, b, c = 1, 2, 3
X = np.arange(20.0)
fun, seq = abs, [-1, 2]
target = abs
defaults = {}
parmap_options = {}


def square(x):
    return x * x


def add(x, y):
    return x + y


def work(x):
    return x + 1


def f(x):
    return x * 2


def handle(*r):
    pass


def fit(x, y, alpha=0.0):
    return x * y + alpha


def slow(x, kw=0):
    time.sleep(0.01)
    return x + kw


def slower(x):
    time.sleep(0.02)
    return x


def vectorized_fun(x):
    return x * 2


def data_load_generator():
    for i in range(30):
        yield {"id": i, "value": i * 3}


def preprocess(d):
    return d["value"] + 1


def expensive_computation(x):
    return sum(range(x))


def postprocess(x):
    return ("done", x)
