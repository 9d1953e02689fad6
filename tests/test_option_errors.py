"""Every option of parmap and Pool is checked at the call: a bad value is an
error naming the option, what was given and what is expected (issue 15,
item 7), never a bare builtin message nor a silent reading by truth value."""
import pytest

import parmapper
from parmapper import Pool, parmap

BAD = [
    # option, value, exception type, words the message must hold
    ("total", "x", TypeError, ["total", "'x'", "whole number >= 0"]),
    ("total", -3, ValueError, ["total", "-3", ">= 0"]),
    ("total", 2.5, TypeError, ["total", "2.5"]),
    ("total", True, TypeError, ["total", "True"]),
    ("progress", 5, TypeError, ["progress", "5", "bool"]),
    ("progress", 2, TypeError, ["progress", "2", "bool"]),
    ("ordered", "no", TypeError, ["ordered", "'no'", "True or False"]),
    ("ordered", 0, TypeError, ["ordered", "0", "True or False"]),
    ("daemon", "yes", TypeError, ["daemon", "'yes'", "True or False"]),
    ("star", "x", TypeError, ["star", "'x'", "None"]),
    ("kwstar", 1, TypeError, ["kwstar", "1", "True or False"]),
    ("N", True, TypeError, ["N", "True", "whole number >= 1"]),
    ("Nt", False, TypeError, ["Nt", "False", "whole number >= 1"]),
    ("chunksize", True, TypeError, ["chunksize", "True"]),
    ("retries", True, TypeError, ["retries", "True"]),
]


@pytest.mark.parametrize("name,value,exc,words", BAD,
                         ids=["{}={!r}".format(b[0], b[1]) for b in BAD])
def test_parmap_option_named(name, value, exc, words):
    with pytest.raises(exc) as ei:
        parmap(abs, [1, 2], **{name: value})
    msg = str(ei.value)
    assert msg.startswith("parmap: ")
    for w in words:
        assert w in msg, (w, msg)


POOL_BAD = [b for b in BAD if b[0] != "N"]


@pytest.mark.parametrize("name,value,exc,words", POOL_BAD,
                         ids=["{}={!r}".format(b[0], b[1]) for b in POOL_BAD])
def test_pool_default_option_named(name, value, exc, words):
    """Pool's default options are checked when the pool is made."""
    with pytest.raises(exc) as ei:
        Pool(2, **{name: value})
    for w in words:
        assert w in str(ei.value), (w, str(ei.value))


@pytest.mark.parametrize("kw,exc,words", [
    ({"N": "x"}, TypeError, ["processes (N)", "'x'", "whole number >= 1"]),
    ({"N": True}, TypeError, ["processes (N)", "True"]),
    ({"processes": 0}, ValueError, ["processes (processes)", "0", "at least 1"]),
    ({"Nt": 0}, ValueError, ["Pool: Nt", ">= 1"]),
    ({"Nt": True}, TypeError, ["Pool: Nt", "True"]),
    ({"maxtasksperchild": 0}, ValueError, ["maxtasksperchild", "0"]),
    ({"initializer": 3}, TypeError, ["initializer", "3"]),
    ({"initargs": 3}, TypeError, ["initargs", "3"]),
])
def test_pool_option_named(kw, exc, words):
    with pytest.raises(exc) as ei:
        Pool(**kw)
    for w in words:
        assert w in str(ei.value), (w, str(ei.value))


def test_good_values_still_accepted():
    import numpy as np
    assert list(parmap(abs, [-1, 2], N=2, ordered=np.bool_(False),
                       total=0, star=False)) in ([1, 2], [2, 1])
    assert list(parmap(lambda: 7, [(), ()], N=1, star=None)) == [7, 7]
    with Pool(2, ordered=True, progress=False, total=2) as p:
        assert p.map(abs, [-1, -2]) == [1, 2]
    assert parmapper.parmap(abs, [], total=0) is not None
