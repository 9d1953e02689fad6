"""parmapper in a real Jupyter kernel (ipykernel, driven by jupyter_client):
what a notebook user sees (issue 15, item 3).

One kernel runs every cell in order, as a user would: functions, lambdas and
classes defined in cells, progress bars, each exception mode (with
exception='proc' the worker's traceback reaches the cell and the
WorkerDiedError carries it), and an interrupt during a map (the kernel
survives and no worker is left).
"""
import os
import time

import pytest

import parmapper

jupyter_client = pytest.importorskip("jupyter_client")
pytest.importorskip("ipykernel")

HERE = os.path.dirname(os.path.abspath(__file__))
# Where the parmapper under test lives (the tree, or an installed copy).
PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(parmapper.__file__)))


@pytest.fixture(scope="module")
def kernel():
    from jupyter_client.manager import start_new_kernel
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [PYTHON_DIR] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    env.pop("PYTEST_CURRENT_TEST", None)
    km, kc = start_new_kernel(kernel_name="python3", env=env,
                              startup_timeout=60)
    try:
        yield km, kc
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)


def run(kc, code, timeout=30):
    """Runs a cell; returns (status, stdout, stderr, error text, values)."""
    out = {"stdout": "", "stderr": "", "error": "", "values": []}

    def hook(msg):
        t, c = msg["msg_type"], msg["content"]
        if t == "stream":
            out[c["name"]] += c["text"]
        elif t == "error":
            out["error"] += "\n".join(c["traceback"])
        elif t in ("execute_result", "display_data"):
            out["values"].append(c["data"])

    reply = kc.execute_interactive(code, output_hook=hook, timeout=timeout)
    return reply["content"]["status"], out


def children(pid):
    """The pids of the live children of `pid` (Linux /proc)."""
    kids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/{}/stat".format(d)) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(d))
    return kids


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_notebook_session(kernel):
    km, kc = kernel
    st, o = run(kc, "import os, parmapper\nprint(os.getpid())", timeout=60)
    assert st == "ok", o
    kpid = int(o["stdout"].split()[-1])

    # Functions, lambdas and classes defined in cells.
    st, o = run(kc, "def sq(x):\n    return x * x\n"
                    "class Box:\n    def __init__(self, v):\n        self.v = v\n"
                    "    def get(self):\n        return self.v + 1\n")
    assert st == "ok", o
    st, o = run(kc, "print(list(parmapper.parmap(sq, range(5), N=2)),"
                    " list(parmapper.parmap(lambda x: Box(x).get(), range(3), N=2)),"
                    " [b.v for b in parmapper.parmap(Box, range(3), N=2)])")
    assert st == "ok", o
    assert o["stdout"].strip() == "[0, 1, 4, 9, 16] [1, 2, 3] [0, 1, 2]"

    # Progress bars: tqdm's, and the text bar.
    st, o = run(kc, "r = list(parmapper.parmap(sq, range(50), N=2, progress=True))\n"
                    "from parmapper._progress import TextBar\n"
                    "r2 = list(parmapper.parmap(sq, range(50), N=2, progress=TextBar))\n"
                    "print(sum(r), sum(r2))")
    assert st == "ok", o
    assert o["stdout"].strip() == "40425 40425"
    assert "50/50" in o["stderr"] or any("50/50" in str(v) for v in o["values"])

    # exception='raise': the cell shows the item and the worker's traceback.
    st, o = run(kc, "list(parmapper.parmap(lambda x: 10 / x, [1, 2, 0, 4], N=2))")
    assert st == "error"
    assert "ZeroDivisionError" in o["error"]
    assert "parmap: raised by item 2: 0" in o["error"]
    # exception='return'.
    st, o = run(kc, "print(repr(list(parmapper.parmap(lambda x: 10 / x, [2, 0], N=2,"
                    " exception='return'))[1]))")
    assert st == "ok" and "ZeroDivisionError" in o["stdout"], o
    # exception='proc': the worker's own traceback reaches the cell, and the
    # WorkerDiedError carries it.
    st, o = run(kc, "def bad(x):\n    if x == 3:\n        raise ValueError('bad three')\n"
                    "    return x\n"
                    "list(parmapper.parmap(bad, range(6), N=2, exception='proc',"
                    " chunksize=1))")
    assert st == "error"
    assert "WorkerDiedError" in o["error"]
    assert "ValueError: bad three" in o["stderr"], o       # from the worker
    assert "bad three" in o["error"] and "raise ValueError" in o["error"], o
    st, o = run(kc, "try:\n    list(parmapper.parmap(bad, range(6), N=2,"
                    " exception='proc', chunksize=1))\n"
                    "except parmapper.WorkerDiedError as e:\n"
                    "    print('TB', 'bad three' in e.remote_traceback, e.seq_index)")
    assert st == "ok" and "TB True 3" in o["stdout"], o

    # An interrupt during a map: the kernel survives, no worker is left.
    msg_id = kc.execute("import time\n"
                        "list(parmapper.parmap(lambda x: time.sleep(30), range(4), N=2))")
    deadline = time.monotonic() + 20
    while len(children(kpid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(children(kpid)) >= 2, "the map's workers did not start"
    km.interrupt_kernel()
    reply = kc.get_shell_msg(timeout=20)
    assert reply["parent_header"]["msg_id"] == msg_id
    assert reply["content"]["status"] == "error"
    assert reply["content"]["ename"] == "KeyboardInterrupt"
    deadline = time.monotonic() + 10
    while children(kpid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert children(kpid) == []
    st, o = run(kc, "print(sum(parmapper.parmap(sq, range(10), N=2)))")
    assert st == "ok" and o["stdout"].strip() == "285", o
    assert km.is_alive()
    os.kill(kpid, 0)
