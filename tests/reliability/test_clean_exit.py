"""A finished map's workers exit by themselves, promptly, after flushing what
they printed (design: "idle workers _exit(0) after flushing their own
stdout/stderr"), rather than being SIGKILLed at the end of the stop grace.
"""
import pytest


@pytest.mark.parametrize("Nt", [1, 2])
def test_what_workers_print_is_not_lost(run_py, Nt):
    """stdout is a pipe (block-buffered without PYTHONUNBUFFERED)."""
    res = run_py(r'''
import parmapper

def f(x):
    print("worker line %d" % x)
    return x

r = list(parmapper.parmap(f, range(40), N=2, Nt=P["Nt"]))
emit(ok=r == list(range(40)))
''', params={"Nt": Nt}, env={"PYTHONUNBUFFERED": ""})
    assert res.returncode == 0, res.describe()
    assert res.facts["ok"]
    lines = sorted(l for l in res.stdout.splitlines() if l.startswith("worker"))
    assert lines == sorted("worker line %d" % x for x in range(40)), res.describe()


@pytest.mark.parametrize("Nt", [1, 2])
def test_small_maps_end_promptly(run_facts, Nt):
    f = run_facts(r'''
import parmapper

times = []
for k in range(10):
    t0 = time.monotonic()
    assert list(parmapper.parmap(abs, range(-2, 2), N=2, Nt=P["Nt"])) == [2, 1, 0, 1]
    times.append(time.monotonic() - t0)
emit(times=times)
''', params={"Nt": Nt})
    times = sorted(f["times"])
    # The median small map takes a few ms; the stop grace is 200 ms.
    assert times[len(times) // 2] < 0.1, times
