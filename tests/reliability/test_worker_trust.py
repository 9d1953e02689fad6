"""What a worker can do to the caller, and what a map's memory reaches.

``fun`` here writes over its own ring headers in shared memory with ctypes:
the wild write of a C extension, simulated.  It finds them through the
engine's internal layout (engine/src/internal.h and ring.h), read from
/proc/self/maps: TEST-ONLY knowledge, no user API.  The caller must never
crash: a ring geometry value (capacity, largest fragment) is never read back
from shared memory, and an impossible head or tail is the malformed-record
error naming the worker and its items (or, with ``retries``, a fresh worker
that finishes the map).
"""
import pytest

# The engine's layout of one worker's mapping, with one thread per worker:
# pm_wctl (64 bytes), pm_slot_ctl (128), the task ring, the result ring;
# a ring is pm_ring (head @0, tail @64, cap @128, max_frag @136; 192 bytes)
# then cap bytes of data, rounded up to 64.
LAYOUT = r'''
import ctypes
HEAD, TAIL, CAP, MAXFRAG = 0, 64, 128, 136

def get(addr):
    return ctypes.c_uint64.from_address(addr).value

def put(addr, value):
    ctypes.c_uint64.from_address(addr).value = value & (2**64 - 1)

def my_rings():
    """(task ring, result ring, capacity) of this worker's slot: its mapping
    is the largest shared anonymous one (the other is the caller's bell)."""
    best = None
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 6 and parts[1] == "rw-s" and "/dev/zero" in line:
                a, b = (int(x, 16) for x in parts[0].split("-"))
                if best is None or b - a > best[1] - best[0]:
                    best = (a, b)
    task_ring = best[0] + 64 + 128
    cap = get(task_ring + CAP)
    # The layout is what this test thinks it is.
    assert cap >= 4096 and cap & (cap - 1) == 0, cap
    assert get(task_ring + MAXFRAG) == cap // 4 - 8
    result_ring = task_ring + ((192 + cap + 63) & ~63)
    assert get(result_ring + CAP) == cap
    return task_ring, result_ring, cap

def first_time(name):
    """True once per name across all processes (a marker file)."""
    try:
        os.close(os.open(os.path.join(TMP, name), os.O_CREAT | os.O_EXCL))
        return True
    except FileExistsError:
        return False

def note_pid():
    with open(os.path.join(TMP, "pid"), "w") as fh:
        fh.write(str(os.getpid()))

def noted_pid():
    with open(os.path.join(TMP, "pid")) as fh:
        return int(fh.read())
'''

BAD = 40


def scribble_program(mode, api, N, Nt, ordered, retries, gen):
    """The child program: maps fun over 200 items (a generator: tasks carry
    the items' bytes through the task ring), fun(BAD) scribbles once."""
    return LAYOUT + r'''
import parmapper
BAD = %d
MODE = %r

def fun(x):
    if isinstance(x, bytes):
        x = int(x[:8])
    if x == BAD and first_time("scribbled"):
        note_pid()
        tr, rr, cap = my_rings()
        if MODE == "geometry":
            for r in (tr, rr):
                put(r + CAP, 1 << 44)
                put(r + MAXFRAG, 1 << 40)
        elif MODE == "result_head":
            put(rr + HEAD, get(rr + TAIL) + 3 * cap)
            time.sleep(60)      # the caller kills it
        elif MODE == "task_tail":
            put(tr + TAIL, get(tr + HEAD) + cap + 64)
            time.sleep(60)
    return x * x

def items():
    if %r:
        return (b"%%08d" %% i + bytes(100000) for i in range(200))
    return list(range(200))

t0 = time.monotonic()
err, got = None, []
try:
    if %r == "Pool":
        with parmapper.Pool(%d, Nt=%d) as pool:
            meth = pool.imap if %r else pool.imap_unordered
            for r in meth(fun, items(), chunksize=1, retries=%d):
                got.append(r)
    else:
        for r in parmapper.parmap(fun, items(), N=%d, Nt=%d, ordered=%r,
                                  chunksize=1, retries=%d):
            got.append(r)
except BaseException as e:
    err = e
pid = noted_pid() if os.path.exists(os.path.join(TMP, "pid")) else None
again = list(parmapper.parmap(lambda x: x + 1, range(20), N=2))
emit(err=exc_facts(err), got=got, pid=pid, again=again,
     scribbled=os.path.exists(os.path.join(TMP, "scribbled")),
     elapsed=time.monotonic() - t0, children=my_children())
''' % (BAD, mode, gen, api, N, Nt, ordered, retries, N, Nt, ordered, retries)


CASES = [
    # mode, api, N, Nt, ordered, gen
    ("result_head", "parmap", 2, 1, True, False),
    ("result_head", "parmap", 2, 1, False, True),
    ("result_head", "Pool", 2, 1, True, False),
    ("task_tail", "parmap", 2, 1, True, True),
    ("task_tail", "Pool", 3, 1, False, True),
]


@pytest.mark.parametrize("mode,api,N,Nt,ordered,gen", CASES)
def test_worker_that_breaks_its_ring_is_named(run_facts, mode, api, N, Nt,
                                               ordered, gen):
    f = run_facts(scribble_program(mode, api, N, Nt, ordered, 0, gen),
                  timeout=40)
    assert f["scribbled"], f
    err = f["err"]
    assert err is not None, "the map finished with a broken ring"
    assert err["type"] == "ParmapperError", err
    assert "malformed record" in err["str"], err["str"]
    # The worker that did it, and the item it was running.
    assert err["pid"] == f["pid"] and str(f["pid"]) in err["str"], (err, f)
    assert BAD in err["seq_indices"], err
    assert err["seq_index"] == min(err["seq_indices"])
    # What was yielded is right.
    lost = set(err["seq_indices"])
    assert all(r in {x * x for x in range(200)} for r in f["got"])
    assert not lost & {int(r ** 0.5) for r in f["got"]}
    # The caller lives on and maps again; nothing is left behind.
    assert f["again"] == list(range(1, 21))
    assert f["children"] == []
    assert f["elapsed"] < 30, f


@pytest.mark.parametrize("mode,api,N,Nt,ordered,gen", [
    ("result_head", "parmap", 2, 1, True, False),
    ("result_head", "Pool", 2, 1, False, False),
    ("task_tail", "parmap", 2, 1, True, True),
])
def test_worker_that_breaks_its_ring_is_replaced_with_retries(
        run_facts, mode, api, N, Nt, ordered, gen):
    f = run_facts(scribble_program(mode, api, N, Nt, ordered, 1, gen),
                  timeout=40)
    assert f["scribbled"], f
    assert f["err"] is None, f["err"]
    got = f["got"] if ordered else sorted(f["got"])
    assert got == [x * x for x in range(200)]
    assert f["children"] == []


@pytest.mark.parametrize("N,Nt,ordered,gen", [
    (2, 1, True, True), (2, 2, False, True),
])
def test_worker_that_overwrites_its_ring_geometry_changes_nothing(
        run_facts, N, Nt, ordered, gen):
    """Capacity and largest fragment are never read back from shared
    memory: overwriting them has no effect at all (before, the caller died
    with SIGSEGV or the worker wrote past its rings).  The items' bytes go
    through the rings (a generator): more than a ring's worth after the
    scribble."""
    f = run_facts(scribble_program("geometry", "parmap", N, Nt, ordered, 0,
                                   gen), timeout=40)
    assert f["scribbled"], f
    assert f["err"] is None, f["err"]
    got = f["got"] if ordered else sorted(f["got"])
    assert got == [x * x for x in range(200)]


def test_rings_reach_only_their_own_workers(run_facts):
    """A map's shared memory is in its own workers only: not in a plain
    fork of the caller, not in the workers of another map running at the
    same time, not in a fork() done inside fun (and a replaced worker gets
    its own again: the retries cases above)."""
    f = run_facts(r'''
import parmapper

def shared():
    return sorted(l.split()[0] for l in shared_maps() if "/dev/zero" in l)

it = parmapper.parmap(lambda x: x, range(10**6), N=2, chunksize=1)
next(it)
mine = shared()          # map A's: the bell and one mapping per worker
pid = os.fork()
if pid == 0:
    os._exit(0 if not set(shared()) & set(mine) else 1)
_, st = os.waitpid(pid, 0)

def in_worker(x):
    # A fork() inside fun: the copy of the worker has no ring at all.
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, repr(shared()).encode())
        os._exit(0)
    os.close(w)
    child = eval(os.read(r, 65536).decode())
    os.close(r)
    os.waitpid(pid, 0)
    return shared(), child

inner = list(parmapper.parmap(in_worker, range(4), N=2, chunksize=1))
it.close()
emit(mine=mine, fork_status=st, inner=inner)
''')
    assert len(f["mine"]) == 3, f["mine"]
    assert f["fork_status"] == 0, "a plain fork inherited the map's rings"
    for maps, forked in f["inner"]:
        # Its own map's bell and its own rings, none of map A's.
        assert len(maps) == 2 and not set(maps) & set(f["mine"]), (maps, f["mine"])
        # A fork() inside fun gets none of them.
        assert forked == [], forked


def test_worker_reaped_elsewhere_is_status_unknown(run_facts):
    """With SIGCHLD ignored the kernel reaps a dead worker before the
    engine can read its status: the error says so, never a made-up
    'exited with code 127'."""
    f = run_facts(r'''
import signal
import parmapper
signal.signal(signal.SIGCHLD, signal.SIG_IGN)

def die(x):
    if x == 5:
        os.kill(os.getpid(), signal.SIGKILL)
    return x

errs = []
for kw in (dict(N=2), dict(N=2, Nt=2, ordered=False), dict(N=3, retries=1)):
    try:
        list(parmapper.parmap(die, range(10), chunksize=1, **kw))
        errs.append(None)
    except parmapper.WorkerDiedError as e:
        errs.append(exc_facts(e))
try:
    with parmapper.Pool(2) as pool:
        pool.map(die, range(10), chunksize=1)
    errs.append(None)
except parmapper.WorkerDiedError as e:
    errs.append(exc_facts(e))
emit(errs=errs)
''')
    for err in f["errs"]:
        assert err is not None
        assert "status unknown (reaped elsewhere" in err["str"], err["str"]
        assert "127" not in err["str"] and "code" not in err["str"], err["str"]
        assert err["exitcode"] is None and err["signal"] is None, err
        assert 5 in err["seq_indices"], err
