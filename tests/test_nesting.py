"""Nesting: daemon=False allows a worker to run its own parmap."""
import pytest

import parmapper

pytestmark = pytest.mark.timeout(60)


def inner_sum(k):
    return sum(parmapper.parmap(lambda x: x * x, range(k), N=2))


def inner_list(k):
    return list(parmapper.parmap(lambda x: (k, x), range(k % 4), N=2, Nt=2))


def ref_inner_sum(k):
    return sum(x * x for x in range(k))


def test_nested_daemon_false():
    out = list(parmapper.parmap(inner_sum, range(6), N=2, daemon=False))
    assert out == [ref_inner_sum(k) for k in range(6)]


def test_nested_daemon_false_threads_unordered():
    out = list(parmapper.parmap(inner_list, range(8), N=2, Nt=2,
                                daemon=False, ordered=False))
    assert sorted(out) == sorted([(k, x) for x in range(k % 4)] for k in range(8))


def test_nested_daemon_true_raises():
    with pytest.raises(RuntimeError) as info:
        list(parmapper.parmap(inner_sum, range(6), N=2))
    assert "daemon" in str(info.value)
    assert isinstance(info.value.seq_index, int)
    assert 0 <= info.value.seq_index < 6


def test_nested_daemon_true_explicit_raises():
    with pytest.raises(RuntimeError) as info:
        list(parmapper.parmap(inner_sum, [3], N=2, daemon=True))
    assert "daemon" in str(info.value)
    assert info.value.seq_index == 0


def test_nested_daemon_true_return_mode():
    out = list(parmapper.parmap(inner_sum, range(4), N=2, exception="return"))
    assert len(out) == 4
    for i, x in enumerate(out):
        assert isinstance(x, RuntimeError)
        assert "daemon" in str(x)
        assert x.seq_index == i


def test_nested_serial_inner_allowed_in_daemon_worker():
    def inner(k):
        return sum(parmapper.parmap(lambda x: x * x, range(k), N=1))

    out = list(parmapper.parmap(inner, range(6), N=2))
    assert out == [ref_inner_sum(k) for k in range(6)]


def test_nested_inner_threads_allowed_in_daemon_worker():
    def inner(k):
        return sum(parmapper.parmap(lambda x: x * x, range(k), N=1, Nt=2))

    out = list(parmapper.parmap(inner, range(6), N=2))
    assert out == [ref_inner_sum(k) for k in range(6)]


def test_nested_in_serial_outer():
    # N == 1 outer: the inner map runs in the caller's process, no daemon issue
    out = list(parmapper.parmap(inner_sum, range(5), N=1))
    assert out == [ref_inner_sum(k) for k in range(5)]


def test_parent_still_works_after_nesting():
    list(parmapper.parmap(inner_sum, range(3), N=2, daemon=False))
    assert list(parmapper.parmap(abs, [-1, -2, 3], N=2)) == [1, 2, 3]
