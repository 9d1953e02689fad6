"""Pool.terminate() stops the work at once (issue 14 item 7).

multiprocessing documents ``terminate()`` as stopping the worker processes
immediately without completing outstanding work; leaving a ``with Pool()``
block calls it.  Each case starts calls of twelve one-second items (or one,
for ``apply_async``), terminates while they run, and checks that the
workers are gone, that ``join()`` returns, that the outstanding result
raises ``PoolTerminatedError`` rather than returning results, and that the
items not yet started never run.  In a child interpreter with a deadline:
the old code went on for about six seconds, and a hang must fail the test,
not stall the run.  The bounds are generous (seconds, for what takes
milliseconds): no timing goal here.
"""
import pytest

CHILD = r'''
import threading
import parmapper
import parmapper._pool as pool_mod

case = P
PTE = getattr(pool_mod, "PoolTerminatedError", None)

def slow(x, *rest):
    time.sleep(1.0)
    open(os.path.join(TMP, "done-%d" % x), "w").close()
    return x

def boom(x):
    raise ValueError("boom %d" % x)

def start(pool):
    """Starts the call under test; returns a function that waits for its
    outcome and returns it."""
    call = case["call"]
    if call == "map_async":
        r = pool.map_async(slow, range(12))
        return lambda: r.get(timeout=20)
    if call == "starmap_async":
        r = pool.starmap_async(slow, [(i, 0) for i in range(12)])
        return lambda: r.get(timeout=20)
    if call == "apply_async":
        r = pool.apply_async(slow, (0,))
        return lambda: r.get(timeout=20)
    box = {}
    def consume():
        try:
            if call == "imap_thread":
                box["value"] = list(pool.imap(slow, range(12)))
            elif call == "imap_unordered_thread":
                box["value"] = list(pool.imap_unordered(slow, range(12)))
            else:
                box["value"] = pool.map(slow, range(12))
        except BaseException as e:
            box["error"] = e
    t = threading.Thread(target=consume)
    t.start()
    def outcome():
        t.join(20)
        if t.is_alive():
            raise RuntimeError("the consuming thread is still waiting")
        if "error" in box:
            raise box["error"]
        return box["value"]
    return outcome

def done():
    return len([n for n in os.listdir(TMP) if n.startswith("done-")])

base = set(my_children())
pool = parmapper.Pool(case["N"], **case.get("opts", {}))
how = case["how"]
t_stop = None
if how == "with":
    with pool:
        outcome = start(pool)
        time.sleep(0.4)
        pids = sorted(set(my_children()) - base)
        t_stop = time.monotonic()
    stop_s = time.monotonic() - t_stop
elif how == "terminate":
    outcome = start(pool)
    time.sleep(0.4)
    pids = sorted(set(my_children()) - base)
    t_stop = time.monotonic()
    pool.terminate()
    stop_s = time.monotonic() - t_stop
else:  # from an error_callback of another call
    outcome = start(pool)
    time.sleep(0.4)
    pids = sorted(set(my_children()) - base)
    called = threading.Event()
    def on_error(e):
        pool.terminate()
        called.set()
    t_stop = time.monotonic()
    pool.map_async(boom, [0], error_callback=on_error)
    called.wait(20)
    stop_s = time.monotonic() - t_stop
gone, gone_s, left = gone_within(pids, 3.0)
t = time.monotonic()
pool.join()
join_s = time.monotonic() - t
try:
    value = outcome()
    got = ("value", len(value) if isinstance(value, list) else value)
except BaseException as e:
    got = ("error", type(e).__name__, str(e))
# an item still running somewhere (1 s each) would have finished by now
time.sleep(max(0.0, t_stop + 1.4 - time.monotonic()))
emit(pids=pids, gone=gone, gone_s=gone_s, left=left, stop_s=stop_s,
     join_s=join_s, got=got, done=done(),
     children_left=sorted(set(my_children()) - base))
'''

CALLS = ["map_async", "starmap_async", "apply_async", "imap_thread",
         "imap_unordered_thread", "map_thread"]


def check(facts, items=12):
    assert facts["pids"], facts               # the call was running
    assert facts["gone"], facts               # workers killed, at once
    assert facts["children_left"] == [], facts
    assert facts["stop_s"] < 5, facts         # terminate() itself returns
    assert facts["join_s"] < 5, facts         # join() does not wait for work
    assert facts["got"][:2] == ["error", "PoolTerminatedError"], facts
    # the outstanding work was not completed: not even the items that were
    # running (killed), let alone the ones not started
    assert facts["done"] == 0, facts


@pytest.mark.parametrize("call", CALLS)
def test_terminate_stops_running_calls(run_facts, call):
    facts = run_facts(CHILD, timeout=60,
                      params={"call": call, "how": "terminate", "N": 2})
    check(facts)


@pytest.mark.parametrize("call", ["map_async", "apply_async", "imap_thread"])
def test_leaving_with_block_stops_running_calls(run_facts, call):
    facts = run_facts(CHILD, timeout=60,
                      params={"call": call, "how": "with", "N": 2})
    check(facts)


@pytest.mark.parametrize("call", ["map_async", "apply_async", "map_thread"])
def test_terminate_from_an_error_callback(run_facts, call):
    facts = run_facts(CHILD, timeout=60,
                      params={"call": call, "how": "errcb", "N": 2})
    check(facts)


@pytest.mark.parametrize("N,opts", [
    (1, {}),                                   # a pool of one: a process too
    (2, {"Nt": 2}),                            # threads inside the workers
    (2, {"retries": 2}),                       # the engine replaces the dead
    (2, {"progress": "PROGRESS_CALLABLE"}),    # a bar over the results
    (2, {"chunksize": 1, "ordered": False}),
    (2, {"exception": "return"}),
], ids=["N1", "Nt2", "retries", "progress", "chunksize1-unordered", "return"])
def test_terminate_on_every_option_path(run_facts, N, opts):
    code = CHILD
    if opts.get("progress") == "PROGRESS_CALLABLE":
        code = CHILD.replace("pool = parmapper.Pool(case[\"N\"], **case.get(\"opts\", {}))",
                             "pool = parmapper.Pool(case[\"N\"], progress=lambda n: None)")
        opts = {}
    facts = run_facts(code, timeout=60,
                      params={"call": "map_async", "how": "terminate", "N": N,
                              "opts": opts})
    check(facts)


def test_calls_finished_before_terminate_keep_their_results(run_facts):
    facts = run_facts(r'''
import parmapper
pool = parmapper.Pool(2)
r = pool.map_async(lambda x: x * 2, range(10))
assert r.get(timeout=20) == [x * 2 for x in range(10)]
it = pool.imap(lambda x: x + 1, range(5))
first = list(it)
pool.terminate()
pool.join()
emit(map=r.get(timeout=1), imap=first, after=list(it))
''', timeout=60)
    assert facts["map"] == [x * 2 for x in range(10)]
    assert facts["imap"] == [1, 2, 3, 4, 5]
    assert facts["after"] == []
