"""Faults on the caller's side: Ctrl+C, early exit, a raising input, the
parent dying, threads running while the workers are forked.

Each case runs in a child interpreter with a deadline.
"""
import time

import pytest


# ------------------------------------------------------------------ Ctrl+C

@pytest.mark.parametrize("Nt,ordered", [(1, True), (2, False)])
def test_ctrl_c_interrupts_quickly_and_cleanly(run_py, Nt, ordered):
    res = run_py(r'''
import parmapper

# Python's own Ctrl+C handler, even when this test runs where SIGINT is
# ignored (a background job of a non-interactive shell passes SIG_IGN on).
signal.signal(signal.SIGINT, signal.default_int_handler)

def slow(x):
    time.sleep(0.2)
    return x

maps_before = len(shared_maps())
state = {"pids": None, "n": 0}

def consume():
    it = parmapper.parmap(slow, range(100), N=2, Nt=P["Nt"],
                          ordered=P["ordered"])
    try:
        for r in it:
            state["n"] += 1
            if state["pids"] is None:
                state["pids"] = it._pids()
                print("started", flush=True)
    except KeyboardInterrupt:
        state["t_int"] = time.time()
        # [] when next() raised it and stopped the map; the pids when the
        # signal happened to land in this loop body instead.
        state["pids_at_interrupt"] = it._pids()
        raise

interrupted = False
try:
    consume()
except KeyboardInterrupt:
    interrupted = True       # no traceback printed by this program
# Past the except block the iterator is released in any case.
if interrupted:
    ok, el, left = gone_within(state["pids"], 2.0)
    emit(interrupted=True, t_int=state["t_int"], n=state["n"],
         pids=state["pids"], pids_at_interrupt=state["pids_at_interrupt"],
         gone=ok, gone_after=time.time() - state["t_int"], left=left,
         waited=waitpid_any(), maps_before=maps_before,
         maps_after=len(shared_maps()),
         again=list(parmapper.parmap(abs, range(-2, 2), N=2)))
else:
    emit(interrupted=False, n=state["n"])
''', params={"Nt": Nt, "ordered": ordered}, send_sigint_after="started",
                 sigint_delay=0.25)
    assert res.returncode == 0, res.describe()
    f = res.facts
    assert f["interrupted"], res.describe()
    assert res.sigint_at is not None
    delay = f["t_int"] - res.sigint_at
    assert delay < 1.0, "KeyboardInterrupt %.2fs after SIGINT" % delay
    assert f["n"] < 100
    assert len(f["pids"]) == 2
    assert f["gone"], (f["left"], f["pids_at_interrupt"], res.stderr)
    assert f["gone_after"] < 1.5, f["gone_after"]
    assert f["waited"] == "ChildProcessError"
    assert f["maps_after"] <= f["maps_before"]
    assert f["again"] == [2, 1, 0, 1]
    # The workers ignored SIGINT: no traceback of theirs on stderr.
    assert "Traceback" not in res.stderr, res.stderr
    assert "KeyboardInterrupt" not in res.stderr, res.stderr


# --------------------------------------------------------------- early exit

EARLY = r'''
import itertools, parmapper

def slow(x):
    time.sleep(0.05)
    return x

def source():
    return range(10 ** 6) if P["input"] == "range" else itertools.count()

case = P["case"]
maps_before = len(shared_maps())
fds_before = nfds()
pids = None
t_stop = None

if case == "break":
    # The iterator is referenced by the loop only: breaking frees it.
    def consume(results):
        global pids, t_stop
        for i, r in enumerate(results):
            if pids is None:
                pids = my_children()
            if i == 2:
                t_stop = time.monotonic()
                break
    consume(parmapper.parmap(slow, source(), N=2, Nt=P["Nt"]))
elif case == "close":
    it = parmapper.parmap(slow, source(), N=2, Nt=P["Nt"])
    for i, r in enumerate(it):
        if pids is None:
            pids = it._pids()
        if i == 2:
            break
    t_stop = time.monotonic()
    it.close()
    closed_next = list(it)            # iteration is over after close()
elif case == "del":
    it = parmapper.parmap(slow, source(), N=2, Nt=P["Nt"])
    for i, r in enumerate(it):
        if pids is None:
            pids = it._pids()
        if i == 2:
            break
    t_stop = time.monotonic()
    del it
    gc.collect()
elif case == "raise":
    try:
        for i, r in enumerate(parmapper.parmap(slow, source(), N=2, Nt=P["Nt"])):
            if pids is None:
                pids = my_children()
            if i == 2:
                t_stop = time.monotonic()
                raise RuntimeError("the consumer gives up")
    except RuntimeError:
        pass
ok, el, left = gone_within(pids, 2.0)
emit(pids=pids, gone=ok, since_stop=time.monotonic() - t_stop, left=left,
     waited=waitpid_any(), children=my_children(),
     maps_before=maps_before, maps_after=len(shared_maps()),
     fds_before=fds_before, fds_after=nfds(),
     closed_next=locals().get("closed_next"))
'''


@pytest.mark.parametrize("Nt", [1, 2])
@pytest.mark.parametrize("case,source", [
    ("break", "range"), ("break", "count"), ("close", "range"),
    ("close", "count"), ("del", "range"), ("raise", "count")])
def test_early_exit_stops_the_workers(run_facts, case, source, Nt):
    f = run_facts(EARLY, params={"case": case, "input": source, "Nt": Nt})
    assert f["pids"] and len(f["pids"]) == 2, f
    assert f["gone"], ("workers still there", f["left"])
    assert f["since_stop"] < 1.5, f["since_stop"]
    assert f["waited"] == "ChildProcessError"
    assert f["children"] == []
    assert f["maps_after"] <= f["maps_before"]
    assert f["fds_after"] <= f["fds_before"]
    if case == "close":
        assert f["closed_next"] == []


# ------------------------------------------------------ input that raises

@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
@pytest.mark.parametrize("Nt", [1, 2])
def test_input_iterator_raising_propagates(run_facts, Nt, ordered):
    f = run_facts(r'''
import parmapper

class InputBroke(ValueError):
    pass

def source():
    for i in range(5):
        yield i
    raise InputBroke("input broke after 5 items")

def f(x):
    time.sleep(0.01)
    return x * 7

it = parmapper.parmap(f, source(), N=2, Nt=P["Nt"], ordered=P["ordered"])
got, err, pids = [], None, []
try:
    for r in it:
        pids = pids or it._pids()
        got.append(r)
except Exception as e:
    err = e
emit(err=exc_facts(err), is_input_error=type(err).__name__ == "InputBroke",
     is_value_error=isinstance(err, ValueError), got=got, pids=pids,
     states=[pid_state(p) for p in pids], waited=waitpid_any(),
     children=my_children())
''', params={"Nt": Nt, "ordered": ordered})
    assert f["is_input_error"] and f["is_value_error"], f["err"]
    assert "input broke after 5 items" in f["err"]["str"]
    expected = [x * 7 for x in range(5)]
    if ordered:
        assert f["got"] == expected[:len(f["got"])]
    else:
        assert set(f["got"]) <= set(expected)
        assert len(set(f["got"])) == len(f["got"])
    assert all(s == "gone" for s in f["states"]), f["states"]
    assert f["waited"] == "ChildProcessError"
    assert f["children"] == []


def test_input_iterator_raising_before_anything(run_facts):
    f = run_facts(r'''
import parmapper

def source():
    raise ValueError("no items at all")
    yield

err = None
try:
    list(parmapper.parmap(abs, source(), N=2))
except Exception as e:
    err = e
emit(err=exc_facts(err), waited=waitpid_any(), children=my_children())
''')
    assert f["err"]["type"] == "ValueError"
    assert f["err"]["str"] == "no items at all"
    assert f["waited"] == "ChildProcessError" and f["children"] == []


# ------------------------------------------------------- the parent dies

def test_workers_exit_when_their_parent_is_killed(run_facts):
    f = run_facts(r'''
import subprocess

grandchild = r"""
import json, os, sys, time
import parmapper

def slow(x):
    time.sleep(0.2)
    return x

it = parmapper.parmap(slow, range(1000), N=2)
for i, r in enumerate(it):
    if i == 0:
        print(json.dumps(it._pids()), flush=True)
"""
path = os.path.join(TMP, "grandchild.py")
with open(path, "w") as fh:
    fh.write(grandchild)
proc = subprocess.Popen([sys.executable, path], stdout=subprocess.PIPE,
                        text=True)
line = proc.stdout.readline()
pids = json.loads(line)
alive_before = [pid_state(p) for p in pids]
proc.kill()                      # SIGKILL: no chance to clean up
proc.wait()
proc.stdout.close()
t0 = time.monotonic()
ok, el, left = gone_within(pids, 3.0)
emit(pids=pids, alive_before=alive_before, gone=ok, elapsed=el, left=left,
     final_states=[pid_state(p) for p in pids])
''')
    assert len(f["pids"]) == 2
    assert all(s not in ("gone", "Z") for s in f["alive_before"]), f
    # Gone, or a zombie of their new parent (init) for a moment.
    assert f["gone"], f
    assert f["elapsed"] < 2.0, f
    assert all(s in ("gone", "Z") for s in f["final_states"]), f


# ------------------------------------------- forking while threads run

@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_fork_while_other_threads_run(run_facts, stream):
    f = run_facts(r'''
import threading, parmapper

stop = threading.Event()
out = getattr(sys, P["stream"])
counter = [0]

def chatter():
    while not stop.is_set():
        out.write("bg%d\n" % (counter[0] % 10))
        counter[0] += 1

def busy():
    x = 0
    while not stop.is_set():
        x += 1

threads = [threading.Thread(target=chatter, daemon=True),
           threading.Thread(target=busy, daemon=True)]
for t in threads:
    t.start()
results = []
t0 = time.monotonic()
for k in range(12):
    results.append(list(parmapper.parmap(lambda x: x * k, range(50), N=2,
                                         Nt=1 + k % 2)))
elapsed = time.monotonic() - t0
stop.set()
for t in threads:
    t.join()
ok = all(r == [x * k for x in range(50)] for k, r in enumerate(results))
emit(ok=ok, elapsed=elapsed, lines=counter[0], waited=waitpid_any())
''', params={"stream": stream}, timeout=40)
    assert f["ok"]
    assert f["lines"] > 0
    assert f["waited"] == "ChildProcessError"


@pytest.mark.parametrize("how", ["parmap", "parmap, Nt=2, unordered",
                                 "Pool.map"])
def test_list_changed_by_another_thread_while_the_workers_fork(run_facts,
                                                              how):
    """The workers fork one after another, and the GIL goes between two
    forks (at-fork handlers run Python code; the import lock, the flush of
    the standard streams): another thread of the caller can change the
    input list then.  Read in place, each worker saw the list as it was at
    its own fork ([0, 0, 3, 3, 7, ...] for a list of zeros); the map must
    read it as it was at its start."""
    f = run_facts(r'''
import threading
import parmapper

n = 64
seq = [0] * n
forking = threading.Event()

def before():
    forking.set()
    time.sleep(0.01)               # lets the other thread run

os.register_at_fork(before=before)
stop = False

def change():
    forking.wait()
    k = 0
    while not stop:
        k += 1
        seq[:] = [k] * n
        time.sleep(0.001)

def f(x):
    return x

t = threading.Thread(target=change)
t.start()
try:
    if P == "Pool.map":
        with parmapper.Pool(4) as pool:
            got = pool.map(f, seq, chunksize=1)
    else:
        got = list(parmapper.parmap(f, seq, N=4, chunksize=1,
                                    Nt=2 if "Nt" in P else 1,
                                    ordered="unordered" not in P))
finally:
    stop = True
    forking.set()
    t.join()
emit(got=sorted(set(got)), n=len(got))
''', params=how)
    assert f["got"] == [0] and f["n"] == 64, f
