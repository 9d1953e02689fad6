"""Never stuck, never late: inherited stdio locks, what the timeout measures,
stopped workers, job control, orphans, resource errors.

Each case runs in a child interpreter (``run_facts``) with a generous
deadline; a hang fails the test on that deadline.  No timing goal is
asserted: the figures live in benchmarks.md.
"""
import pytest


# ------------------------------------------- stdio locks inherited at fork

@pytest.mark.parametrize("stream", ["stdout", "stderr"])
def test_worker_prints_while_a_caller_thread_holds_the_stream(run_facts, stream):
    # A thread of the caller keeps writing large strings to the stream (a
    # pipe drained slowly): it sits in write() holding the stream's buffer
    # lock most of the time, so the workers are forked with it held.  Each
    # worker prints with flush=True: on an inherited stream it would wait
    # for that lock for ever.
    f = run_facts(r'''
import re, threading, parmapper

fd = 1 if P["stream"] == "stdout" else 2
saved = os.dup(fd)
r, w = os.pipe()
os.dup2(w, fd)
os.close(w)
got = []
def drain():
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        got.append(b)
        time.sleep(0.001)
reader = threading.Thread(target=drain, daemon=True)
reader.start()

out = getattr(sys, P["stream"])
stop = threading.Event()
def chatter():
    line = "b" * 63 + "\n"
    while not stop.is_set():
        out.write(line * 16384)   # 1 MiB per write: long in write()
chat = threading.Thread(target=chatter, daemon=True)
chat.start()
time.sleep(0.05)

def fun(x):
    print("item %d" % x, file=getattr(sys, P["stream"]), flush=True)
    return x * 2

ok = True
for k in range(20):
    res = list(parmapper.parmap(fun, range(k * 10, k * 10 + 10), N=2,
                                Nt=1 + k % 2))
    ok &= res == [x * 2 for x in range(k * 10, k * 10 + 10)]
stop.set()
chat.join()
out.flush()
os.dup2(saved, fd)
time.sleep(0.2)
data = b"".join(got).decode()
# print writes the text and the end apart when unbuffered (python -u)
items = sorted(set(int(m) for m in re.findall(r"item (\d+)", data)))
emit(ok=ok, items=items, waited=waitpid_any())
''', params={"stream": stream}, timeout=120,
        env={"PYTHONUNBUFFERED": ""})   # buffered streams: they have a lock
    assert f["ok"]
    assert f["items"] == list(range(200))
    assert f["waited"] == "ChildProcessError"


# ------------------------------------------------ what the timeout measures

@pytest.mark.parametrize("exception", ["return", "raise"])
def test_timeout_does_not_count_waiting_for_ring_room(run_facts, exception):
    # Results of 600 kB fill the 1 MiB result rings at once; the consumer
    # reads slowly, so the workers wait for room far longer than the
    # timeout.  fun itself takes microseconds: no item may time out.
    f = run_facts(r'''
import parmapper
it = parmapper.parmap(lambda x: bytes(600_000), range(30), N=2, timeout=1,
                      exception=P)
out = []
err = None
try:
    for i, r in enumerate(it):
        out.append(r if isinstance(r, bytes) else repr(r))
        if i % 5 == 4:
            time.sleep(1.3)
except Exception as e:
    err = exc_facts(e)
emit(n=len(out), bad=[i for i, r in enumerate(out) if isinstance(r, str)],
     lens=sorted(set(len(r) for r in out if not isinstance(r, str))),
     err=err, waited=waitpid_any())
''', params=exception, timeout=90)
    assert f["err"] is None, f
    assert f["bad"] == [], f
    assert f["n"] == 30
    assert f["lens"] == [600000]
    assert f["waited"] == "ChildProcessError"


# ------------------------------------------------------- a stopped worker

@pytest.mark.parametrize("ordered", [True, False], ids=["ordered", "unordered"])
def test_idle_worker_stopped_with_timeout(run_facts, ordered):
    # After the first two items both workers are idle; the input (read in
    # the caller) then SIGSTOPs worker 0 and goes on.  Tasks sent to the
    # stopped worker never start: they must not wait for ever.
    f = run_facts(r'''
import parmapper
state = {}
def gen():
    yield 0
    yield 1
    time.sleep(0.5)              # both workers idle by now
    pid = it._pids()[0]
    state["stopped"] = pid
    os.kill(pid, signal.SIGSTOP)
    for x in range(2, 40):
        yield x

def fun(x):
    time.sleep(0.01)
    return x * 3

it = parmapper.parmap(fun, gen(), N=2, timeout=1, exception="return",
                      ordered=P)
res = list(it)
pid = state.get("stopped")
vals = sorted(r for r in res if isinstance(r, int))
errs = [repr(r) for r in res if not isinstance(r, int)]
emit(vals=vals, errs=errs, stopped=pid, state=pid_state(pid) if pid else None,
     waited=waitpid_any())
''', params=ordered, timeout=60)
    assert f["stopped"]
    assert f["errs"] == [], f
    assert f["vals"] == [x * 3 for x in range(40)]
    assert f["state"] == "gone"
    assert f["waited"] == "ChildProcessError"


def test_job_control_stop_does_not_count_against_items(run_facts):
    # Ctrl+Z then fg: the map's process group gets SIGTSTP, is stopped 4 s,
    # then SIGCONT.  Each item needs 0.3 s of CPU; timeout=2.  The map runs
    # in a process group of its own (a job, not orphaned, as under a shell)
    # and the stop is sent to the whole group.
    f = run_facts(r'''
import subprocess
prog = r"""
import json, sys, time, parmapper
def burn(x):
    t = time.process_time()
    while time.process_time() - t < 0.3:
        pass
    return x + 1
it = parmapper.parmap(burn, range(16), N=2, timeout=2, exception="return")
out = []
for i, r in enumerate(it):
    if i == 0:
        print("started " + json.dumps(it._pids()), flush=True)
    out.append(r if isinstance(r, int) else repr(r))
print("result " + json.dumps(out), flush=True)
"""
path = os.path.join(TMP, "job.py")
with open(path, "w") as fh:
    fh.write(prog)
proc = subprocess.Popen([sys.executable, path], stdout=subprocess.PIPE,
                        text=True, preexec_fn=os.setpgrp)
line = proc.stdout.readline()
pids = json.loads(line.split(" ", 1)[1])
time.sleep(0.2)
os.killpg(proc.pid, signal.SIGTSTP)
time.sleep(0.5)
states = [pid_state(p) for p in [proc.pid] + pids]
time.sleep(3.5)
os.killpg(proc.pid, signal.SIGCONT)
rest = proc.stdout.read()
proc.wait()
res = None
for l in rest.splitlines():
    if l.startswith("result "):
        res = json.loads(l[7:])
emit(states=states, res=res, rc=proc.returncode)
''', timeout=90)
    assert f["states"][0] == "T", f     # the caller was stopped
    assert f["rc"] == 0, f
    assert f["res"] == [x + 1 for x in range(16)], f


# ---------------------------------------------------------------- orphans

ORPHAN = r'''
import subprocess
path = os.path.join(TMP, "grandchild.py")
with open(path, "w") as fh:
    fh.write(GRANDCHILD)
proc = subprocess.Popen([sys.executable, path], stdout=subprocess.PIPE,
                        text=True, env=dict(os.environ, RELIABILITY_TMP=TMP))
line = proc.stdout.readline()
pids = json.loads(line)
alive_before = [pid_state(p) for p in pids]
proc.kill()                      # SIGKILL: no chance to clean up
proc.wait()
proc.stdout.close()
ok, el, left = gone_within(pids, 5.0)
emit(pids=pids, alive_before=alive_before, gone=ok, elapsed=el, left=left)
'''


def test_workers_of_a_map_started_in_a_thread_die_with_the_caller(run_facts):
    f = run_facts(r'''
GRANDCHILD = r"""
import json, os, threading, time
import parmapper

def slow(x):
    time.sleep(2)
    return x

def run():
    it = parmapper.parmap(slow, range(20), N=2)
    next(it)
    print(json.dumps(it._pids()), flush=True)
    for r in it:
        pass

t = threading.Thread(target=run)
t.start()
t.join()
"""
''' + ORPHAN, timeout=60)
    assert len(f["pids"]) == 2
    assert all(s not in ("gone", "Z") for s in f["alive_before"]), f
    assert f["gone"], f


def test_inner_workers_of_a_nested_map_die_with_the_caller(run_facts):
    f = run_facts(r'''
GRANDCHILD = r"""
import json, os, time
import parmapper
TMP = os.environ["RELIABILITY_TMP"]

def slow(x):
    time.sleep(2)
    return x

def outer(k):
    it = parmapper.parmap(slow, range(10), N=2)
    first = next(it)
    pids = it._pids()
    with open(os.path.join(TMP, "inner%d" % k), "w") as fh:
        fh.write(json.dumps(pids))
    return first + sum(it)

def report():
    # The first outer item's inner map (the outer map's first task is a
    # lone item: the second item runs once it is done).
    want = [os.path.join(TMP, "inner0")]
    while not all(os.path.exists(p) for p in want):
        time.sleep(0.01)
    time.sleep(0.1)
    inner = []
    for p in want:
        with open(p) as fh:
            inner += json.load(fh)
    print(json.dumps(sorted(set(inner))), flush=True)

import threading
threading.Thread(target=report, daemon=True).start()
list(parmapper.parmap(outer, range(2), N=1, Nt=2, daemon=False))
"""
''' + ORPHAN, timeout=60)
    assert len(f["pids"]) == 2        # the inner map's workers
    assert all(s not in ("gone", "Z") for s in f["alive_before"]), f
    assert f["gone"], f


def test_map_outlives_the_thread_that_started_it(run_facts):
    # The workers die with their caller, not with the thread that forked
    # them: a map started in a thread that then ends goes on.
    f = run_facts(r'''
import threading, parmapper
box = {}
def start():
    it = parmapper.parmap(lambda x: (time.sleep(0.01), x * 5)[1], range(60), N=2)
    box["first"] = next(it)
    box["it"] = it
t = threading.Thread(target=start)
t.start()
t.join()
time.sleep(0.3)
res = [box["first"]] + list(box["it"])
emit(res=res, waited=waitpid_any())
''', timeout=60)
    assert f["res"] == [x * 5 for x in range(60)]
    assert f["waited"] == "ChildProcessError"


# -------------------------------------------------- resource errors' cause

def test_shared_memory_failure_names_the_call_and_the_limit(run_facts):
    f = run_facts(r'''
import resource, parmapper
with open("/proc/self/status") as fh:
    vm = [int(l.split()[1]) for l in fh if l.startswith("VmSize:")][0]
resource.setrlimit(resource.RLIMIT_AS, ((vm + 64 * 1024) * 1024, resource.RLIM_INFINITY))
err = None
try:
    list(parmapper.parmap(abs, range(1000), N=200))
except Exception as e:
    err = exc_facts(e)
resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
emit(err=err, waited=waitpid_any())
''', timeout=60)
    e = f["err"]
    assert e and "ParmapperError" in e["mro"], f
    assert "mmap" in e["str"] and "worker" in e["str"], e
    assert "vm.max_map_count" in e["str"] and "memory" in e["str"], e


def test_fork_failure_names_the_call_and_the_limit(run_facts):
    # As an unprivileged user with RLIMIT_NPROC just above what it runs,
    # the third fork fails.
    f = run_facts(r'''
import resource, parmapper
if os.getuid() == 0:
    os.setgid(65534)
    os.setuid(65534)
resource.setrlimit(resource.RLIMIT_NPROC, (3, 3))
err = None
try:
    list(parmapper.parmap(abs, range(100), N=8))
except Exception as e:
    err = exc_facts(e)
emit(err=err, waited=waitpid_any())
''', timeout=60)
    e = f["err"]
    assert e and "ParmapperError" in e["mro"], f
    assert "fork" in e["str"] and "worker" in e["str"], e
    assert "RLIMIT_NPROC" in e["str"], e
    assert f["waited"] == "ChildProcessError"
