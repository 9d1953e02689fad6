"""The CPUs this process may use: ``CPU_COUNT``, the default ``N``.

Not the host's CPUs (``os.cpu_count()``): the affinity mask (``taskset``,
Slurm's and other batch systems' CPU binding, a cgroup cpuset) and a cgroup
CPU quota (a container's ``--cpus``, a systemd ``CPUQuota=``) both make
fewer usable, and one worker per host CPU would then oversubscribe them.
The engine's C default (``pm_cpu_count()``, engine/src/cpu.c) applies the
same rule.
"""
import math
import os

__all__ = ["cpu_count", "cgroup_cpu_limit", "affinity_count"]


def affinity_count():
    """The CPUs in this process's affinity mask (``os.process_cpu_count()``
    where it exists, Python >= 3.13; else ``os.sched_getaffinity``; else
    the host's count), at least 1."""
    fn = getattr(os, "process_cpu_count", None)
    if fn is not None:
        n = fn()
    elif hasattr(os, "sched_getaffinity"):
        try:
            n = len(os.sched_getaffinity(0))
        except OSError:
            n = os.cpu_count()
    else:  # pragma: no cover - macOS
        n = os.cpu_count()
    return max(1, n or 1)


def _read(path):
    try:
        with open(path) as fh:
            return fh.read()
    except (OSError, UnicodeDecodeError):
        return None


def _own_paths(proc_cgroup):
    """This process's cgroup paths from ``/proc/self/cgroup``: the v2 one
    (line ``0::PATH``) and the v1 one of the ``cpu`` controller; "/" for a
    missing file or line (the root, which is what a container sees)."""
    v2 = v1 = "/"
    for line in (_read(proc_cgroup) or "").splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        elif "cpu" in parts[1].split(","):
            v1 = parts[2]
    return v2, v1


def _levels(base, path):
    """base/path, then each parent up to base itself.  A path that climbs
    out (".." components, as a cgroup namespace may show) is the root."""
    parts = [p for p in path.split("/") if p and p != "."]
    if ".." in parts:
        parts = []
    for k in range(len(parts), -1, -1):
        yield os.path.join(base, *parts[:k])


def _quota(quota, period):
    """ceil(quota / period) for a positive quota and period, else None."""
    try:
        q, p = int(quota), int(period)
    except (TypeError, ValueError):
        return None
    if q <= 0 or p <= 0:
        return None
    return max(1, math.ceil(q / p))


def cgroup_cpu_limit(root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """The CPU quota of this process's cgroups, in CPUs rounded up, or None
    when there is none (no cgroups, quota ``max`` or -1, unreadable files).

    Read as loky's ``cpu_count()`` reads it, and from this process's own
    cgroup up to the root, the smallest quota winning: cgroup v2
    ``ROOT/PATH/cpu.max`` (``"QUOTA PERIOD"`` or ``"max PERIOD"``) and
    cgroup v1 ``ROOT/cpu/PATH/cpu.cfs_quota_us`` over ``cpu.cfs_period_us``
    (a quota of -1: none).  ``root`` and ``proc_cgroup`` are parameters so
    that a test can point them at a fake tree.
    """
    v2, v1 = _own_paths(proc_cgroup)
    best = None
    for d in _levels(root, v2):
        text = _read(os.path.join(d, "cpu.max"))
        fields = text.split() if text else []
        if len(fields) == 2 and fields[0] != "max":
            n = _quota(fields[0], fields[1])
            if n is not None and (best is None or n < best):
                best = n
    for d in _levels(os.path.join(root, "cpu"), v1):
        n = _quota(_read(os.path.join(d, "cpu.cfs_quota_us")),
                   _read(os.path.join(d, "cpu.cfs_period_us")))
        if n is not None and (best is None or n < best):
            best = n
    return best


def cpu_count(root="/sys/fs/cgroup", proc_cgroup="/proc/self/cgroup"):
    """The CPUs this process may use: the affinity mask, capped by a cgroup
    CPU quota (rounded up; see ``cgroup_cpu_limit`` for the arguments), at
    least 1."""
    n = affinity_count()
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None and limit < n:
        n = limit
    return n
