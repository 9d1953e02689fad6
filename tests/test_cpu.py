"""CPU_COUNT, the default N: the CPUs this process may use (its affinity
mask, capped by a cgroup CPU quota), not the host's CPUs."""
import os
import subprocess
import sys
import textwrap

import pytest

import parmapper
from parmapper import _cpu

needs_affinity = pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
    reason="needs os.sched_setaffinity and at least 2 usable CPUs")


def tree(tmp_path, files, proc="0::/\n"):
    """A fake cgroup tree under tmp_path/cg and a fake /proc/self/cgroup."""
    root = tmp_path / "cg"
    root.mkdir()
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    pc = tmp_path / "proc_cgroup"
    pc.write_text(proc)
    return str(root), str(pc)


@pytest.mark.parametrize("text, want", [
    ("200000 100000\n", 2),
    ("150000 100000\n", 2),     # 1.5 CPUs: rounded up
    ("1000 100000\n", 1),       # a sliver: at least 1
    ("max 100000\n", None),     # no quota
    ("garbage\n", None),
    ("-5 100000\n", None),
    ("", None),
])
def test_cgroup_v2_cpu_max(tmp_path, text, want):
    root, pc = tree(tmp_path, {"cpu.max": text})
    assert _cpu.cgroup_cpu_limit(root, pc) == want


def test_cgroup_v2_own_cgroup_and_ancestors_smallest_wins(tmp_path):
    root, pc = tree(tmp_path, {
        "cpu.max": "max 100000\n",
        "a/cpu.max": "300000 100000\n",
        "a/b/cpu.max": "max 100000\n",
        "a/b/c/cpu.max": "500000 100000\n",
        "other/cpu.max": "100000 100000\n",  # not ours: ignored
    }, proc="0::/a/b/c\n")
    assert _cpu.cgroup_cpu_limit(root, pc) == 3


@pytest.mark.parametrize("quota, period, want", [
    ("250000\n", "100000\n", 3),
    ("50000\n", "100000\n", 1),
    ("-1\n", "100000\n", None),   # -1: no quota
    ("100000\n", "0\n", None),
])
def test_cgroup_v1_cfs_quota(tmp_path, quota, period, want):
    root, pc = tree(tmp_path, {"cpu/job/cpu.cfs_quota_us": quota,
                               "cpu/job/cpu.cfs_period_us": period},
                    proc="4:memory:/x\n2:cpu,cpuacct:/job\n0::/\n")
    assert _cpu.cgroup_cpu_limit(root, pc) == want


def test_cgroup_v1_root_level_as_loky_reads_it(tmp_path):
    # A container sees its own cgroup as the root; no /proc/self/cgroup
    # entry for it is needed.
    root, pc = tree(tmp_path, {"cpu/cpu.cfs_quota_us": "400000",
                               "cpu/cpu.cfs_period_us": "100000"}, proc="")
    assert _cpu.cgroup_cpu_limit(root, pc + ".missing") == 4


def test_no_cgroup_files(tmp_path):
    root, pc = tree(tmp_path, {})
    assert _cpu.cgroup_cpu_limit(root, pc) is None
    assert _cpu.cgroup_cpu_limit(str(tmp_path / "nope"), pc) is None


def test_cpu_count_is_capped_by_the_quota(tmp_path):
    root, pc = tree(tmp_path, {"cpu.max": "100000 100000\n"})
    assert _cpu.cpu_count(root, pc) == 1
    big = tmp_path / "big"
    big.mkdir()
    root, pc = tree(big, {"cpu.max": "6400000 100000\n"})  # 64 CPUs
    assert _cpu.cpu_count(root, pc) == _cpu.affinity_count()


def test_cpu_count_constant():
    assert parmapper.CPU_COUNT == _cpu.cpu_count()
    assert 1 <= parmapper.CPU_COUNT <= (os.cpu_count() or 1)


def run_pinned(code):
    """Runs code in a child interpreter pinned to one CPU (the first of
    ours) before parmapper is imported."""
    cpu = min(os.sched_getaffinity(0))
    pre = "import os\nos.sched_setaffinity(0, {%d})\n" % cpu
    r = subprocess.run([sys.executable, "-c", pre + textwrap.dedent(code)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout


@needs_affinity
def test_affinity_one_cpu_one_worker():
    # The issue: under `taskset -c 0` the default N started 2 workers.
    out = run_pinned("""
        import time, parmapper
        def pid(x):
            time.sleep(0.002)
            return os.getpid()
        print(parmapper.CPU_COUNT)
        print(len(set(parmapper.parmap(pid, range(200), chunksize=1))))
        with parmapper.Pool() as p:
            print(len(set(p.map(pid, range(200), chunksize=1))))
    """)
    assert out.split() == ["1", "1", "1"]


@needs_affinity
def test_affinity_two_cpus_counted():
    two = sorted(os.sched_getaffinity(0))[:2]
    code = ("import os\nos.sched_setaffinity(0, {%d, %d})\n"
            "import parmapper\nprint(parmapper.CPU_COUNT)\n" % tuple(two))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["2"]


@needs_affinity
def test_demo_under_affinity_reports_the_usable_cpus():
    out = run_pinned("""
        import sys
        from parmapper.__main__ import main
        sys.exit(main(["--items", "40", "--size", "10",
                       "--overhead-items", "0", "--no-progress"]))
    """)
    assert "1 usable by this process" in out
    assert "N=1 processes" in out
    assert "(ideal x1)" in out
