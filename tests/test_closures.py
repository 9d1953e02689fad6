"""Functions are inherited by the forked workers, never pickled."""
import threading

import pytest

import parmapper

NS = [(1, 1), (1, 3), (2, 1), (2, 3)]

GLOBAL_LIST = [1, 2, 3]
GLOBAL_DICT = {"count": 0}


@pytest.mark.parametrize("N,Nt", NS)
def test_lambda(N, Nt):
    out = parmapper.parmap(lambda x: x * 2 + 1, range(30), N=N, Nt=Nt)
    assert list(out) == [x * 2 + 1 for x in range(30)]


@pytest.mark.parametrize("N,Nt", NS)
def test_closure(N, Nt):
    offset = 17
    table = {i: chr(65 + i) for i in range(26)}

    def f(x):
        return table[x % 26] + str(x + offset)

    out = parmapper.parmap(f, range(40), N=N, Nt=Nt)
    assert list(out) == [table[x % 26] + str(x + offset) for x in range(40)]


@pytest.mark.parametrize("N,Nt", NS)
def test_closure_over_unpicklable_objects(N, Nt):
    lock = threading.Lock()
    gen = (i for i in range(3))  # generators cannot be pickled

    def f(x):
        with lock:
            return (x, type(gen).__name__)

    out = parmapper.parmap(f, range(10), N=N, Nt=Nt)
    assert list(out) == [(x, "generator") for x in range(10)]


@pytest.mark.parametrize("N,Nt", NS)
def test_bound_method_of_local_class(N, Nt):
    class Scaler:
        def __init__(self, k):
            self.k = k

        def apply(self, x, plus=0):
            return x * self.k + plus

    s = Scaler(3)
    out = parmapper.parmap(s.apply, range(20), N=N, Nt=Nt, kwargs={"plus": 1})
    assert list(out) == [s.apply(x, plus=1) for x in range(20)]


@pytest.mark.parametrize("N,Nt", NS)
def test_callable_instance_of_local_class(N, Nt):
    class Adder:
        def __call__(self, a, b):
            return a + b

    out = parmapper.parmap(Adder(), [(i, -2 * i) for i in range(15)], N=N,
                           Nt=Nt, star=True)
    assert list(out) == [-i for i in range(15)]


@pytest.mark.parametrize("N,Nt", NS)
def test_staticmethod_and_classmethod_of_local_class(N, Nt):
    class K:
        base = 1000

        @classmethod
        def cm(cls, x):
            return cls.base + x

        @staticmethod
        def sm(x):
            return -x

    assert list(parmapper.parmap(K.cm, range(5), N=N, Nt=Nt)) == [
        1000, 1001, 1002, 1003, 1004
    ]
    assert list(parmapper.parmap(K.sm, range(5), N=N, Nt=Nt)) == [0, -1, -2, -3, -4]


@pytest.mark.parametrize("N,Nt", NS)
def test_builtin_functions(N, Nt):
    assert list(parmapper.parmap(str, range(5), N=N, Nt=Nt)) == ["0", "1", "2", "3", "4"]
    assert list(parmapper.parmap(max, [(1, 5), (7, 2)], N=N, Nt=Nt, star=True)) == [5, 7]


@pytest.mark.parametrize("N,Nt", NS)
def test_functools_partial(N, Nt):
    import functools

    def f(a, b, c):
        return a * 100 + b * 10 + c

    g = functools.partial(f, 1, c=3)
    assert list(parmapper.parmap(g, range(5), N=N, Nt=Nt)) == [f(1, b, 3) for b in range(5)]


@pytest.mark.parametrize("Nt", [1, 3])
def test_globals_are_read_only_copies_in_workers(Nt):
    before = list(GLOBAL_LIST)

    def f(x):
        GLOBAL_LIST.append(x)
        GLOBAL_DICT["count"] += 1
        return len(GLOBAL_LIST) >= 4

    out = list(parmapper.parmap(f, range(10), N=2, Nt=Nt))
    assert all(out)  # the workers saw their own appends
    assert GLOBAL_LIST == before
    assert GLOBAL_DICT == {"count": 0}


def test_local_state_read_only_copy_in_workers():
    seen = []

    class Counter:
        n = 0

        def bump(self, x):
            self.n += 1
            seen.append(x)
            return x

    c = Counter()
    out = list(parmapper.parmap(c.bump, range(10), N=3))
    assert out == list(range(10))
    assert c.n == 0
    assert seen == []


def test_workers_see_state_at_iteration_time_or_call_time():
    # a value set before parmap() is visible in the workers
    box = {"v": 5}

    def f(x):
        return x + box["v"]

    out = list(parmapper.parmap(f, range(4), N=2))
    assert out == [5, 6, 7, 8]


def test_serial_N1_runs_in_process():
    # with N == 1 there is no process: side effects are visible
    seen = []
    out = list(parmapper.parmap(lambda x: seen.append(x) or x, range(5), N=1))
    assert out == list(range(5))
    assert seen == list(range(5))


def test_results_of_local_class_types_not_needed_for_items():
    # items may be instances of module-level picklable types
    items = [complex(i, -i) for i in range(6)]
    out = parmapper.parmap(lambda z: z.conjugate(), items, N=2)
    assert list(out) == [z.conjugate() for z in items]
