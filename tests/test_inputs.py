"""Input kinds, laziness, infinite inputs and generator chains."""
import gc
import itertools
import platform
import resource

import pytest

import parmapper


def sq(x):
    return x * x


INPUT_KINDS = {
    "list": lambda n: list(range(n)),
    "tuple": lambda n: tuple(range(n)),
    "range": lambda n: range(n),
    "generator": lambda n: (i for i in range(n)),
    "iterator": lambda n: iter(list(range(n))),
    "map": lambda n: map(int, range(n)),
}


@pytest.mark.parametrize("kind", sorted(INPUT_KINDS))
@pytest.mark.parametrize("N,Nt", [(1, 1), (1, 3), (2, 1), (2, 2)])
def test_input_kinds(kind, N, Nt):
    seq = INPUT_KINDS[kind](37)
    assert list(parmapper.parmap(sq, seq, N=N, Nt=Nt)) == [i * i for i in range(37)]


@pytest.mark.parametrize("kind", ["list", "generator", "tuple", "range"])
@pytest.mark.parametrize("N,Nt", [(1, 1), (1, 3), (2, 1), (3, 2)])
def test_empty_input(kind, N, Nt):
    seq = INPUT_KINDS[kind](0)
    assert list(parmapper.parmap(sq, seq, N=N, Nt=Nt)) == []


@pytest.mark.parametrize("N", [1, 2])
def test_single_item(N):
    assert list(parmapper.parmap(sq, [9], N=N)) == [81]


@pytest.mark.parametrize("N", [1, 2])
def test_string_input_iterates_characters(N):
    assert list(parmapper.parmap(str.upper, "abc", N=N)) == ["A", "B", "C"]


@pytest.mark.parametrize("N", [1, 2])
def test_dict_input_iterates_keys(N):
    d = {"x": 1, "y": 2, "z": 3}
    assert list(parmapper.parmap(str.upper, d, N=N)) == ["X", "Y", "Z"]


@pytest.mark.parametrize("N,Nt", [(1, 1), (1, 2), (2, 1), (2, 3)])
def test_lazy_start_does_not_consume_input(N, Nt):
    consumed = []

    def gen():
        for i in range(10):
            consumed.append(i)
            yield i

    it = parmapper.parmap(sq, gen(), N=N, Nt=Nt)
    assert consumed == []
    assert next(it) == 0
    assert consumed and consumed[0] == 0
    assert list(it) == [i * i for i in range(1, 10)]
    assert consumed == list(range(10))


@pytest.mark.parametrize("chunksize", [1, 16, 200])
def test_read_ahead_is_bounded(chunksize):
    """An infinite input is read at most N × Nt × window tasks ahead of the
    results, the window being 4096 / chunksize tasks between 32 and 256,
    plus the input thread's tasks (docs/api.md)."""
    consumed = itertools.count()
    pulled = [0]

    def gen():
        for i in consumed:
            pulled[0] = i + 1
            yield i

    N, Nt = 2, 2
    it = parmapper.parmap(sq, gen(), N=N, Nt=Nt, chunksize=chunksize)
    chunksize = max(chunksize, Nt)  # as the original parmapper does
    window = min(256, max(32, 4096 // chunksize))
    assert [next(it) for _ in range(5)] == [0, 1, 4, 9, 16]
    # ahead of the 5 results handed out (a task refills each freed place),
    # and the tasks the input's thread made ahead, with the one it fills
    from parmapper import _core
    ahead = _core.READ_AHEAD_TASKS * chunksize
    assert pulled[0] - 5 <= N * Nt * window * chunksize + chunksize + ahead
    assert next(it) == 25
    it.close()


@pytest.mark.parametrize("N", [2, 3])
def test_lazy_start_forks_nothing(N, children):
    before = children.pids()
    it = parmapper.parmap(sq, range(10), N=N)
    after = children.pids()
    assert after <= before, "parmap() started processes before iteration"
    assert list(it) == [i * i for i in range(10)]


@pytest.mark.parametrize("N,Nt", [(1, 1), (2, 1), (2, 2)])
def test_returns_iterator(N, Nt):
    it = parmapper.parmap(sq, [1, 2, 3], N=N, Nt=Nt)
    assert iter(it) is it
    assert next(it) == 1
    assert next(it) == 4
    assert next(it) == 9
    with pytest.raises(StopIteration):
        next(it)
    with pytest.raises(StopIteration):
        next(it)


def _close(it):
    close = getattr(it, "close", None)
    if close is not None:
        close()


@pytest.mark.parametrize("N,Nt", [(1, 1), (1, 2), (2, 1), (2, 2)])
def test_infinite_input_islice(N, Nt):
    it = parmapper.parmap(sq, itertools.count(), N=N, Nt=Nt)
    first = list(itertools.islice(it, 15))
    _close(it)
    del it
    gc.collect()
    assert first == [i * i for i in range(15)]
    # the engine is usable afterwards
    assert list(parmapper.parmap(sq, range(6), N=2)) == [0, 1, 4, 9, 16, 25]


@pytest.mark.parametrize("close", [True, False], ids=["closed", "dropped"])
def test_infinite_input_workers_are_cleaned_up(children, close):
    before = children.pids()
    it = parmapper.parmap(sq, itertools.count(), N=2, chunksize=3)
    first = list(itertools.islice(it, 10))
    assert first == [i * i for i in range(10)]
    if close:
        _close(it)
    del it
    gc.collect()
    leftover = children.wait_back_to(before)
    assert not leftover, "worker processes left behind: %r" % (leftover,)


@pytest.mark.parametrize("N,Nt", [(2, 1), (3, 2)])
def test_no_children_left_after_full_consumption(children, N, Nt):
    before = children.pids()
    assert list(parmapper.parmap(sq, range(50), N=N, Nt=Nt)) == [
        i * i for i in range(50)
    ]
    leftover = children.wait_back_to(before)
    assert not leftover, "worker processes left behind: %r" % (leftover,)


@pytest.mark.parametrize("N,Nt", [(1, 1), (2, 1), (2, 3)])
def test_generator_chain(N, Nt):
    log = []

    def gen():
        for i in range(25):
            log.append(("gen", i))
            yield i

    def pre(x):
        return x + 1

    def post(x):
        return -x

    data = map(post, parmapper.parmap(sq, map(pre, gen()), N=N, Nt=Nt))
    assert log == []  # nothing consumed before iteration
    assert list(data) == [-((i + 1) ** 2) for i in range(25)]
    assert log == [("gen", i) for i in range(25)]


@pytest.mark.parametrize("N", [1, 2])
def test_chain_of_two_parmaps(N):
    inner = parmapper.parmap(sq, range(20), N=N)
    outer = parmapper.parmap(lambda x: x + 1, inner, N=N)
    assert list(outer) == [i * i + 1 for i in range(20)]


@pytest.mark.parametrize("N", [1, 2])
def test_two_maps_interleaved(N):
    a = parmapper.parmap(sq, range(20), N=N)
    b = parmapper.parmap(lambda x: -x, range(20), N=N)
    out = [(x, y) for x, y in zip(a, b)]
    assert out == [(i * i, -i) for i in range(20)]


@pytest.mark.parametrize("N", [1, 2])
def test_items_and_results_of_various_types(N):
    items = [None, 1, 2.5, "s", b"b", (1, 2), [3, 4], {"k": [1]}, {1, 2},
             10 ** 30, "é" * 1000, b"\0" * 100000]

    def ident(x):
        return x

    assert list(parmapper.parmap(ident, items, N=N)) == items


@pytest.mark.parametrize("N,Nt", [(2, 1), (2, 2)])
def test_large_results(N, Nt):
    def big(i):
        return bytes([i % 256]) * (300000 + i)

    out = list(parmapper.parmap(big, range(12), N=N, Nt=Nt))
    assert out == [bytes([i % 256]) * (300000 + i) for i in range(12)]


@pytest.mark.parametrize("N,Nt,chunksize", [(1, 1, 1), (2, 1, None), (2, 2, 3)])
def test_large_buffers_out_of_band(N, Nt, chunksize):
    """Large contiguous buffers (numpy arrays, bytearray, PickleBuffer) come
    back out of band (pickle protocol 5), built on the memory the result was
    received in: equal, writable, independent of each other, and freed."""
    np = pytest.importorskip("numpy")
    import pickle
    import weakref

    def make(i):
        return (
            np.arange(100000 + i, dtype=np.float64) * i,     # 800 KB: out of band
            np.full((300, 300), i, dtype=np.int32),          # 360 KB 2-D
            np.arange(10),                                   # small: in band
            bytearray([i % 256]) * 70000,                    # out of band too
            pickle.PickleBuffer(bytearray(b"%d" % i) * 40000),
            np.arange(200000)[::2],                          # not contiguous
            i,
        )

    out = list(parmapper.parmap(make, range(9), N=N, Nt=Nt, chunksize=chunksize))
    for i, r in enumerate(out):
        a, b, c, d, e, f, k = r
        assert k == i
        np.testing.assert_array_equal(a, np.arange(100000 + i, dtype=np.float64) * i)
        assert a.dtype == np.float64 and a.flags.writeable and a.flags.aligned
        np.testing.assert_array_equal(b, np.full((300, 300), i, dtype=np.int32))
        assert b.shape == (300, 300) and b.flags.c_contiguous
        np.testing.assert_array_equal(c, np.arange(10))
        assert d == bytearray([i % 256]) * 70000
        assert bytes(e) == (b"%d" % i) * 40000
        np.testing.assert_array_equal(f, np.arange(200000)[::2])
    # Writing into one result changes nothing else.
    out[0][0][:] = -1
    out[1][1][:] = -1
    np.testing.assert_array_equal(out[2][0], np.arange(100002, dtype=np.float64) * 2)
    assert (out[0][1] == 0).all() and (out[2][1] == 2).all()
    # The received memory lives as long as the arrays, no longer.
    base = out[4][0]
    while getattr(base, "base", None) is not None:
        base = base.base
    ref = weakref.ref(base.obj if isinstance(base, memoryview) else base)
    del out, base, r, a, b, c, d, e, f
    gc.collect()
    assert ref() is None


def test_large_buffers_out_of_band_with_errors():
    """A chunk with both errors and large buffers (exception='return')."""
    np = pytest.importorskip("numpy")

    def f(i):
        if i % 3 == 0:
            raise ValueError(i)
        return np.full(50000, i, dtype=np.int64)

    out = list(parmapper.parmap(f, range(12), N=2, chunksize=4, exception="return"))
    for i, r in enumerate(out):
        if i % 3 == 0:
            assert isinstance(r, ValueError) and r.seq_index == i
        else:
            assert (r == i).all() and r.shape == (50000,)


@pytest.mark.parametrize("size", [100_000, 3_000_000])
@pytest.mark.parametrize("N,Nt,chunksize", [(1, 1, 1), (2, 1, None), (2, 2, 2)])
def test_large_items_out_of_band_from_a_generator(size, N, Nt, chunksize):
    """Arrays sent from a generator travel out of band: the worker's arrays
    are built on the memory the task arrived in (taken over when the task
    was assembled, a copy when it was read in the ring), so an array the
    function keeps is not overwritten by later tasks; and the parent lets go
    of every item once it is sent."""
    np = pytest.importorskip("numpy")
    import threading
    import weakref

    refs = []

    def gen():
        for i in range(12):
            a = np.full(size // 8, i, dtype=np.float64)
            refs.append(weakref.ref(a))
            yield a

    kept = []
    lock = threading.Lock()

    def f(a):
        assert a.flags.writeable and a.flags.aligned
        a += 0.5  # writable: the worker's own memory
        with lock:
            kept.append(a)
            # Every array kept in this worker still holds its values.
            return sorted({float(x[0]) == float(x[-1]) == float(x.mean()) for x in kept}), float(a[0])

    out = list(parmapper.parmap(f, gen(), N=N, Nt=Nt, chunksize=chunksize))
    assert [r[1] for r in out] == [i + 0.5 for i in range(12)]
    assert all(r[0] == [True] for r in out)
    kept.clear()  # N=1 runs in this process
    gc.collect()
    assert all(r() is None for r in refs)


def test_large_bytes_items_and_results_spliced():
    """Large bytes items and results go from the objects' memory into the
    ring (spliced into the compact encoding), mixed with small values."""
    items = [(bytes([i]) * (70_000 + 1000 * i), i, b"x" * i, "s%d" % i) for i in range(10)]

    def f(big, i, small, s):
        assert big == bytes([i]) * (70_000 + 1000 * i) and small == b"x" * i
        return [s, bytes([255 - i]) * (2_000_000 if i % 3 == 0 else 90_000), i, b"tail"]

    def gen():
        yield from items

    for src in (items, gen()):
        out = list(parmapper.parmap(f, src, N=2, star=True))
        for i, r in enumerate(out):
            assert r[0] == "s%d" % i and r[2] == i and r[3] == b"tail"
            assert r[1] == bytes([255 - i]) * (2_000_000 if i % 3 == 0 else 90_000)


@pytest.mark.parametrize("N,Nt,chunksize", [(2, 1, 3), (1, 2, 40), (2, 2, None)])
def test_many_large_bytes_per_task_routed(N, Nt, chunksize):
    """Tasks and results holding more large bytes than one message routes
    (16): the first ones are written straight into their objects, the others
    assembled, and every value comes back whole and in its place."""
    def item(i):
        return (i, bytes([i % 251]) * (65_536 + 7 * i), [b"s" * (i % 5), bytes([i % 13]) * 100_000])

    def f(i, big, rest):
        assert big == bytes([i % 251]) * (65_536 + 7 * i)
        assert rest == [b"s" * (i % 5), bytes([i % 13]) * 100_000]
        return (big[:3], bytes([(i + 1) % 251]) * (70_000 + i), i, rest[1])

    n = 45
    out = list(parmapper.parmap(f, (item(i) for i in range(n)), N=N, Nt=Nt,
                                chunksize=chunksize, star=True))
    assert len(out) == n
    for i, r in enumerate(out):
        assert r[0] == bytes([i % 251]) * 3 and r[2] == i
        assert r[1] == bytes([(i + 1) % 251]) * (70_000 + i)
        assert r[3] == bytes([i % 13]) * 100_000


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_workers_reuse_freed_large_blocks():
    """A worker keeps large freed blocks for reuse (glibc would unmap them at
    free and fault in fresh zeroed pages for the next one): ten pairs of 8 MB
    objects made and dropped in a row fault in about two blocks' pages,
    not twenty."""
    block = 8 << 20
    page = resource.getpagesize()

    def churn(_):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for i in range(10):
            b = bytes([i]) * block
            c = b[1:]  # two live at once: what frees them at the heap's top
            del b, c   # exceeds glibc's own adaptive trimming threshold
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    faults = list(parmapper.parmap(churn, range(2), N=2, chunksize=1))
    assert all(f < 4 * block // page for f in faults), faults


@pytest.mark.parametrize("N", [2])
def test_large_items(N):
    items = [bytes([i]) * (250000 + i) for i in range(10)]
    out = list(parmapper.parmap(len, items, N=N, chunksize=2))
    assert out == [250000 + i for i in range(10)]


@pytest.mark.parametrize("N,Nt", [(1, 2), (2, 1), (2, 2)])
def test_more_items(N, Nt):
    out = list(parmapper.parmap(sq, range(200), N=N, Nt=Nt))
    assert out == [i * i for i in range(200)]


def test_partially_consumed_then_next_call_works():
    it = parmapper.parmap(sq, range(100), N=2)
    assert [next(it) for _ in range(5)] == [0, 1, 4, 9, 16]
    _close(it)
    del it
    gc.collect()
    assert list(parmapper.parmap(sq, range(10), N=2)) == [i * i for i in range(10)]


@pytest.mark.parametrize("r", [
    range(0), range(7), range(-5, 100, 7), range(100, -50, -3),
    range(2**62, 2**62 + 9), range(2**63 - 5, 2**63 + 5),  # past a long long
    range(-2**63, -2**63 + 4), range(-2**63 + 3, -2**63 - 3, -1),
    range(0, 2**63, 2**61), range(5, 5), range(10, 0),
])
@pytest.mark.parametrize("opts", [dict(N=2), dict(N=2, chunksize=1),
                                  dict(N=2, retries=1)])
def test_range_items_are_exact(r, opts):
    """Workers compute a range's items themselves when they fit a long long
    (and fall back to the range's own indexing when they do not)."""
    got = list(parmapper.parmap(lambda x: (type(x), x), r, **opts))
    assert got == [(int, x) for x in r]
