"""Helpers for the reliability suite: every case runs in a child interpreter.

A fault under test (a dead worker, a hang, Ctrl+C, a killed parent) must fail
the test, never stall the run, so each case is a small Python program run by
``run_py`` in its own session (process group) with a deadline.  On the
deadline the whole group is SIGKILLed and the test fails with the captured
output.  The child prints its observations as one JSON line (``emit``), which
the test asserts on.

Every child program starts with ``PRELUDE``: ``emit``, and probes of the
things a map must not leak (children, worker pids, shared mappings, fds).
"""
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

# Code prepended to every child program.
PRELUDE = r'''
import gc, json, os, signal, sys, time
import faulthandler
# On the deadline the runner sends SIGUSR1 first: the stacks of a hang.
faulthandler.register(signal.SIGUSR1, all_threads=True)
# The case's parameters (run_py(..., params=...)) and a scratch directory.
P = json.loads(os.environ.get("RELIABILITY_PARAMS", "null"))
TMP = os.environ.get("RELIABILITY_TMP", "")

def emit(**facts):
    """The child's observations: one JSON line on stdout, the last one."""
    sys.stdout.write("@@FACTS " + json.dumps(facts, default=repr) + "\n")
    sys.stdout.flush()

def pid_state(pid):
    """'gone', or the one-letter state of /proc/<pid> ('R', 'S', 'Z', ...)."""
    try:
        with open("/proc/%d/stat" % pid) as fh:
            data = fh.read()
    except (FileNotFoundError, ProcessLookupError):
        return "gone"
    return data[data.rindex(")") + 2]

def gone_within(pids, seconds):
    """Polls until every pid is gone (or a zombie when reparented away:
    a zombie of another parent is dead, waiting for that parent);
    returns (all_gone, elapsed, {pid: state} of the survivors)."""
    t0 = time.monotonic()
    while True:
        left = {}
        for p in pids:
            st = pid_state(p)
            if st == "gone":
                continue
            if st == "Z" and not is_my_child(p):
                continue
            left[p] = st
        el = time.monotonic() - t0
        if not left or el > seconds:
            return (not left), el, left
        time.sleep(0.01)

def is_my_child(pid):
    try:
        with open("/proc/%d/stat" % pid) as fh:
            data = fh.read()
    except OSError:
        return False
    ppid = int(data[data.rindex(")") + 2:].split()[1])
    return ppid == os.getpid()

def my_children():
    """The pids of this process's children (any state, zombies included)."""
    out = set()
    for tid in os.listdir("/proc/self/task"):
        try:
            with open("/proc/self/task/%s/children" % tid) as fh:
                out.update(int(p) for p in fh.read().split())
        except OSError:
            pass
    return sorted(out)

def waitpid_any():
    """'ChildProcessError' when this process has no child at all (nothing
    left running, nothing left to reap), else what waitpid returned."""
    try:
        r = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return "ChildProcessError"
    return list(r)

FORKS = [0]
os.register_at_fork(before=lambda: FORKS.__setitem__(0, FORKS[0] + 1))

def shared_maps():
    """The shared mappings of this process (perms contain 's')."""
    out = []
    with open("/proc/self/maps") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) > 1 and "s" in parts[1]:
                out.append(line.rstrip("\n"))
    return out

def nfds():
    return len(os.listdir("/proc/self/fd"))

def rss_kb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1

def exc_facts(e):
    """What a test wants to know about an exception object."""
    if e is None:
        return None
    return {
        "type": type(e).__name__,
        "mro": [c.__name__ for c in type(e).__mro__],
        "str": str(e),
        "seq_index": getattr(e, "seq_index", None),
        "seq_indices": list(getattr(e, "seq_indices", None) or []),
        "pid": getattr(e, "pid", None),
        "exitcode": getattr(e, "exitcode", "missing"),
        "signal": getattr(e, "signal", "missing"),
        "cause_type": type(e.__cause__).__name__ if e.__cause__ is not None else None,
        "cause_str": str(e.__cause__) if e.__cause__ is not None else None,
    }
'''

FACTS_TAG = "@@FACTS "


class ChildResult:
    """What a child run produced."""

    def __init__(self, returncode, stdout, stderr, elapsed):
        self.returncode = returncode
        self.stdout = stdout
        self.stderr = stderr
        self.elapsed = elapsed

    def __iter__(self):  # rc, out, err = run_py(...)
        return iter((self.returncode, self.stdout, self.stderr))

    @property
    def facts(self):
        """The last JSON line the child emitted."""
        lines = [l for l in self.stdout.splitlines() if l.startswith(FACTS_TAG)]
        if not lines:
            pytest.fail("child printed no facts\n" + self.describe())
        return json.loads(lines[-1][len(FACTS_TAG):])

    def describe(self, limit=20000):
        def tail(text):
            if len(text) <= limit:
                return text
            return "[... {} characters ...]\n".format(len(text) - limit) + text[-limit:]
        return ("returncode: {}\nelapsed: {:.2f}s\n--- stdout ---\n{}\n"
                "--- stderr ---\n{}".format(self.returncode, self.elapsed,
                                           tail(self.stdout), tail(self.stderr)))


def _group_members(pgid):
    """Live (non-zombie) processes of process group ``pgid``: [(pid, state,
    command line)]."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name) as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rindex(")") + 2:].split()
        state, pgrp = fields[0], int(fields[2])
        if pgrp != pgid or state in ("Z", "X"):
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as fh:
                cmd = fh.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmd = "?"
        out.append((int(name), state, cmd.strip()))
    return out


def _survivors(pgid, grace=2.0):
    """Processes the child left behind in its group, after ``grace`` s."""
    t_end = time.monotonic() + grace
    while True:
        left = _group_members(pgid)
        if not left or time.monotonic() > t_end:
            return left
        time.sleep(0.02)


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _run(path, timeout, env, send_sigint_after, sigint_delay=0.0):
    full_env = dict(os.environ)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    full_env.pop("PYTHONWARNINGS", None)
    if env:
        full_env.update(env)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(path)],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env=full_env, start_new_session=True,
        text=True, errors="replace")
    out_lines, err_chunks = [], []
    marker = threading.Event()
    marker_text = send_sigint_after if isinstance(send_sigint_after, str) else None

    def read_out():
        for line in proc.stdout:
            out_lines.append(line)
            if marker_text is not None and line.strip() == marker_text:
                marker.set()

    def read_err():
        for chunk in iter(lambda: proc.stderr.read(4096), ""):
            err_chunks.append(chunk)

    readers = [threading.Thread(target=read_out, daemon=True),
               threading.Thread(target=read_err, daemon=True)]
    for t in readers:
        t.start()
    timed_out = False
    sigint_at = None
    try:
        if send_sigint_after is not None:
            if marker_text is not None:
                ok = marker.wait(timeout)
            else:
                time.sleep(float(send_sigint_after))
                ok = proc.poll() is None
            if ok and sigint_delay:
                time.sleep(sigint_delay)
            if ok and proc.poll() is None:
                sigint_at = time.time()  # wall clock: comparable in the child
                try:
                    os.killpg(proc.pid, signal.SIGINT)
                except ProcessLookupError:
                    pass
        remaining = max(0.1, timeout - (time.monotonic() - t0))
        try:
            proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            timed_out = True
    finally:
        if timed_out:
            # Ask for the child's stacks (faulthandler) before killing.
            try:
                os.kill(proc.pid, signal.SIGUSR1)
                proc.wait(timeout=1)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        # Whatever the child left running in its group (a worker that outlived
        # its parent: an orphan) fails the test; then it is killed.
        leftovers = [] if timed_out else _survivors(proc.pid)
        _kill_group(proc)
        proc.wait()
        for t in readers:
            t.join(5)
        proc.stdout.close()
        proc.stderr.close()
    res = ChildResult(proc.returncode, "".join(out_lines), "".join(err_chunks),
                      time.monotonic() - t0)
    res.sigint_at = sigint_at
    res.leftovers = leftovers
    if timed_out:
        pytest.fail("child interpreter missed its {}s deadline (hang); the "
                    "process group was killed\n{}".format(timeout,
                                                         res.describe()))
    if leftovers:
        pytest.fail("processes of the child's group outlived it by 2 s "
                    "(orphans): {}\n{}".format(leftovers, res.describe()))
    return res


@pytest.fixture
def run_py(tmp_path):
    """run_py(code, timeout=30, env=None, send_sigint_after=None,
    prelude=True, params=None, sigint_delay=0.0)

    Writes ``code`` (dedented, after ``PRELUDE``) to a temp file, runs it with
    ``sys.executable`` in a new session, kills the whole process group on the
    deadline (failing the test with the output), fails the test as well when
    a process of the child's group outlives it by 2 s, and returns a
    ``ChildResult``: unpack it as ``rc, out, err`` or use ``.facts`` (the
    JSON the child emitted).  ``send_sigint_after``: seconds, or a line the
    child prints on stdout, after which SIGINT is sent to the child's whole
    process group (``sigint_delay`` seconds after the line).  A fresh
    scratch directory for the child is passed in its environment as
    ``RELIABILITY_TMP`` (``TMP`` in the child) and ``params`` as JSON (``P``
    in the child).
    """
    counter = [0]

    def run(code, timeout=30, env=None, send_sigint_after=None, prelude=True,
            params=None, sigint_delay=0.0):
        counter[0] += 1
        path = tmp_path / "child_{}.py".format(counter[0])
        body = textwrap.dedent(code)
        path.write_text((PRELUDE if prelude else "") + "\n" + body)
        work = tmp_path / "work_{}".format(counter[0])
        work.mkdir()
        e = {"RELIABILITY_TMP": str(work),
             "RELIABILITY_PARAMS": json.dumps(params)}
        if env:
            e.update(env)
        return _run(path, timeout, e, send_sigint_after, sigint_delay)

    return run


@pytest.fixture
def run_facts(run_py):
    """Runs a child that must exit 0 and returns its facts (a dict)."""

    def run(code, **kw):
        res = run_py(code, **kw)
        if res.returncode != 0:
            pytest.fail("child failed\n" + res.describe())
        facts = res.facts
        facts["_stderr"] = res.stderr
        facts["_elapsed"] = res.elapsed
        return facts

    return run


@pytest.fixture(scope="session")
def run_facts_shared(tmp_path_factory):
    """run_facts for module- or session-scoped fixtures: one child reports
    on many cases at once (cheap checks that need no child each)."""

    def run(code, timeout=30, params=None):
        work = tmp_path_factory.mktemp("child")
        path = work / "child.py"
        path.write_text(PRELUDE + "\n" + textwrap.dedent(code))
        res = _run(path, timeout, {"RELIABILITY_TMP": str(work),
                                   "RELIABILITY_PARAMS": json.dumps(params)},
                   None)
        if res.returncode != 0:
            pytest.fail("child failed\n" + res.describe())
        return res.facts

    return run
