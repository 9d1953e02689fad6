"""Module-level functions mapped by every peer in the benchmarks.

They live in their own importable module so that every library can send
them to its workers (multiprocessing and mpire fork, loky spawns and imports
this module by name), and no peer is excluded for lack of lambda support.
"""
import time

MB = 1 << 20
LARGE = 8 * MB          # the "8 MB" of workload 5 (8 MiB)
MEDIUM = 1 * MB         # the 1 MB results of workload 6

_blocks = {}


def block(size):
    """A cached `size`-byte bytes object (cheap to build: no os.urandom)."""
    b = _blocks.get(size)
    if b is None:
        b = _blocks[size] = bytes(range(256)) * (size // 256)
    return b


def inc(x):
    return x + 1


def inc_i(d):
    return d["i"] + 1


def busy(n):
    """Pure-Python busy loop of `n` iterations (calibrated to a duration)."""
    s = 0
    for i in range(n):
        s += i
    return s


def sleep_1ms(x):
    time.sleep(0.001)   # releases the GIL
    return x


def length(b):
    """An 8 MB bytes item in, a small result out."""
    return len(b)


def array_nbytes(a):
    """An 8 MB numpy array in, a small result out."""
    return int(a.nbytes) + int(a[0] * 0)


def make_bytes_8mb(i):
    """A small item in, a fresh 8 MB bytes result out."""
    return i.to_bytes(8, "little") + block(LARGE)[8:]


def make_array_8mb(i):
    """A small item in, a fresh 8 MB float64 array out."""
    import numpy as np
    return np.full(LARGE // 8, float(i))


def make_bytes_1mb(i):
    """A small item in, a fresh 1 MB bytes result out (slow consumer)."""
    return i.to_bytes(8, "little") + block(MEDIUM)[8:]
