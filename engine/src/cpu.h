/*
 * cpu.h -- the CPUs this process may use (cpu.c): the engine's default
 * number of workers.
 */
#ifndef PM_CPU_H
#define PM_CPU_H

/*
 * The CPU quota of this process's cgroups, in CPUs rounded up (at least 1),
 * or 0 when there is none: no cgroup files, a quota of "max" or -1, or files
 * that cannot be read or parsed.  Reads, from this process's own cgroup (as
 * named in the file proc_cgroup, normally "/proc/self/cgroup"; "/" when it
 * names none) up to root (normally "/sys/fs/cgroup"), cgroup v2
 * ROOT/PATH/cpu.max and cgroup v1 ROOT/cpu/PATH/cpu.cfs_quota_us over
 * cpu.cfs_period_us; the smallest quota wins.  Both paths are parameters so
 * that tests can point them at a fake tree.  Allocates nothing that outlives
 * the call; never fails otherwise.
 */
int pm__cgroup_cpu_limit(const char *root, const char *proc_cgroup);

/* The CPUs in this process's affinity mask (Linux sched_getaffinity; else
 * the online CPUs), at least 1. */
int pm__affinity_count(void);

#endif
