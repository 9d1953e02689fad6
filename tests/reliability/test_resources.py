"""Bounded resources: infinite input, a slow consumer of large results, and
many consecutive maps (no fd, process or memory leak)."""
import pytest


@pytest.mark.parametrize("N,Nt,ordered", [(2, 1, True), (2, 2, False),
                                          (1, 2, True)])
def test_infinite_iterator(run_facts, N, Nt, ordered):
    f = run_facts(r'''
import itertools, parmapper

results = []
for r in parmapper.parmap(lambda x: x * 2, itertools.count(), N=P["N"],
                          Nt=P["Nt"], ordered=P["ordered"]):
    results.append(r)
    if len(results) == 500:
        break
# And through a chain of generators.
chained = itertools.islice(
    parmapper.parmap(lambda x: -x, (i for i in itertools.count(5))), 7)
emit(results=results, chained=list(chained), waited=waitpid_any(),
     children=my_children())
''', params={"N": N, "Nt": Nt, "ordered": ordered})
    if ordered:
        assert f["results"] == [2 * i for i in range(500)]
    else:
        assert len(set(f["results"])) == 500
        assert all(r % 2 == 0 for r in f["results"])
    assert f["chained"] == [-i for i in range(5, 12)]
    assert f["children"] == []


def test_slow_consumer_of_large_results_keeps_memory_bounded(run_facts):
    f = run_facts(r'''
import resource, parmapper

MB = 1 << 20
COUNT = 3000

def big(i):
    b = bytearray(MB)
    b[0] = i % 256
    b[-1] = (i * 7) % 256
    return bytes(b)

base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.monotonic()
n = bad = 0
for i, r in enumerate(parmapper.parmap(big, range(COUNT), N=2)):
    if len(r) != MB or r[0] != i % 256 or r[-1] != (i * 7) % 256:
        bad += 1
    n += 1
    time.sleep(0.001)
    del r
elapsed = time.monotonic() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
emit(n=n, bad=bad, base_kb=base, peak_kb=peak, elapsed=elapsed,
     waited=waitpid_any())
''', timeout=60)
    assert f["n"] == 3000 and f["bad"] == 0
    # 3 GB went through; the caller's peak RSS stays far below.
    assert f["peak_kb"] < 600 * 1024, "peak RSS %d MB" % (f["peak_kb"] // 1024)
    assert f["elapsed"] < 30, f["elapsed"]
    assert f["waited"] == "ChildProcessError"


def test_many_consecutive_maps_leak_nothing(run_facts):
    f = run_facts(r'''
import parmapper

def one_map(k):
    return list(parmapper.parmap(lambda x: x + k, range(4), N=2))

bad = 0
for k in range(100):
    bad += one_map(k) != [k, k + 1, k + 2, k + 3]
gc.collect()
fds_100, rss_100, kids_100 = nfds(), rss_kb(), my_children()
maps_100 = len(shared_maps())
t0 = time.monotonic()
for k in range(100, 1000):
    bad += one_map(k) != [k, k + 1, k + 2, k + 3]
gc.collect()
emit(bad=bad, fds_100=fds_100, fds_1000=nfds(), rss_100=rss_100,
     rss_1000=rss_kb(), kids_100=kids_100, kids_1000=my_children(),
     maps_100=maps_100, maps_1000=len(shared_maps()),
     elapsed=time.monotonic() - t0, waited=waitpid_any())
''', timeout=60)
    assert f["bad"] == 0
    assert f["fds_1000"] == f["fds_100"]
    assert f["kids_100"] == [] and f["kids_1000"] == []
    assert f["waited"] == "ChildProcessError"
    assert f["maps_1000"] == f["maps_100"]
    growth_mb = (f["rss_1000"] - f["rss_100"]) / 1024
    assert growth_mb < 20, "RSS grew by %.1f MB over 900 maps" % growth_mb
