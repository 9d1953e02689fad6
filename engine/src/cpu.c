/*
 * cpu.c -- the CPUs this process may use, the default number of workers of
 * a job (pm_job_options.nproc = 0).
 *
 * Not the host's CPUs: the affinity mask (taskset, a batch system's CPU
 * binding, a cgroup cpuset) and a cgroup CPU quota (a container's --cpus, a
 * systemd CPUQuota=) both make fewer usable, and one worker per host CPU
 * would then oversubscribe them.  The rule is the same as the Python
 * package's CPU_COUNT (python/parmapper/_cpu.py): the affinity mask, capped
 * by the quota rounded up, at least 1.
 */
/* GNU and POSIX interfaces under any -std (builds may -D it too). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <limits.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cpu.h"
#include "pm.h"

/* Reads a small file into buf (NUL-terminated); returns its length, or -1
 * when it cannot be read. */
static int read_small(const char *path, char *buf, size_t size)
{
    FILE *f = fopen(path, "re");
    if (!f)
        return -1;
    size_t n = fread(buf, 1, size - 1, f);
    int err = ferror(f);
    fclose(f);
    if (err)
        return -1;
    buf[n] = '\0';
    return (int)n;
}

/* ceil(quota / period) for a positive quota and period, else 0. */
static int quota_cpus(long long quota, long long period)
{
    if (quota <= 0 || period <= 0)
        return 0;
    long long n = (quota + period - 1) / period;
    return n > INT_MAX ? INT_MAX : (int)n;
}

/* Parses one whole decimal number (surrounding white space allowed). */
static int parse_ll(const char *s, long long *out)
{
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s)
        return -1;
    while (*end == ' ' || *end == '\n' || *end == '\t')
        end++;
    if (*end)
        return -1;
    *out = v;
    return 0;
}

/* v2: "QUOTA PERIOD" or "max PERIOD". */
static int limit_v2(const char *dir)
{
    char path[PATH_MAX], buf[128], q[64];
    long long quota, period;
    if (snprintf(path, sizeof path, "%s/cpu.max", dir) >= (int)sizeof path ||
        read_small(path, buf, sizeof buf) < 0)
        return 0;
    char *sp = strchr(buf, ' ');
    if (!sp || (size_t)(sp - buf) >= sizeof q)
        return 0;
    memcpy(q, buf, (size_t)(sp - buf));
    q[sp - buf] = '\0';
    if (parse_ll(q, &quota) < 0 || parse_ll(sp + 1, &period) < 0)
        return 0; /* "max" included */
    return quota_cpus(quota, period);
}

/* v1: cpu.cfs_quota_us (-1: none) over cpu.cfs_period_us. */
static int limit_v1(const char *dir)
{
    char path[PATH_MAX], buf[64];
    long long quota, period;
    if (snprintf(path, sizeof path, "%s/cpu.cfs_quota_us", dir) >= (int)sizeof path ||
        read_small(path, buf, sizeof buf) < 0 || parse_ll(buf, &quota) < 0)
        return 0;
    if (snprintf(path, sizeof path, "%s/cpu.cfs_period_us", dir) >= (int)sizeof path ||
        read_small(path, buf, sizeof buf) < 0 || parse_ll(buf, &period) < 0)
        return 0;
    return quota_cpus(quota, period);
}

/* The smallest limit found at base/path and each parent up to base. */
static int walk(const char *base, const char *path, int (*limit)(const char *))
{
    char dir[PATH_MAX];
    int best = 0;
    if (snprintf(dir, sizeof dir, "%s%s%s", base, *path == '/' ? "" : "/",
                 path) >= (int)sizeof dir)
        return 0;
    size_t top = strlen(base);
    for (;;) {
        size_t n = strlen(dir);
        while (n > top && dir[n - 1] == '/') /* trailing slashes */
            dir[--n] = '\0';
        int l = limit(dir);
        if (l > 0 && (best == 0 || l < best))
            best = l;
        if (n <= top)
            break;
        char *slash = strrchr(dir + top, '/');
        if (!slash)
            break;
        *slash = '\0';
    }
    return best;
}

/* Copies this process's v2 path (line "0::PATH") and the v1 path of the cpu
 * controller (a line whose controller list holds "cpu") out of the file;
 * both stay "/" when missing. */
static void own_paths(const char *proc_cgroup, char *v2, char *v1, size_t size)
{
    strcpy(v2, "/");
    strcpy(v1, "/");
    FILE *f = fopen(proc_cgroup, "re");
    if (!f)
        return;
    char line[PATH_MAX + 256];
    while (fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        char *c1 = strchr(line, ':');
        char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2 || strlen(c2 + 1) >= size)
            continue;
        *c1 = *c2 = '\0';
        const char *id = line, *ctl = c1 + 1, *path = c2 + 1;
        if (strstr(path, "/..")) /* climbs out (a cgroup namespace): the root */
            path = "/";
        if (!strcmp(id, "0") && !*ctl) {
            strcpy(v2, path);
            continue;
        }
        for (const char *p = ctl; *p;) { /* "cpu" in "cpu,cpuacct" */
            size_t len = strcspn(p, ",");
            if (len == 3 && !memcmp(p, "cpu", 3)) {
                strcpy(v1, path);
                break;
            }
            p += len + (p[len] == ',');
        }
    }
    fclose(f);
}

int pm__cgroup_cpu_limit(const char *root, const char *proc_cgroup)
{
    char v2[PATH_MAX], v1[PATH_MAX], cpu[PATH_MAX];
    own_paths(proc_cgroup, v2, v1, sizeof v2);
    int best = walk(root, v2, limit_v2);
    if (snprintf(cpu, sizeof cpu, "%s/cpu", root) < (int)sizeof cpu) {
        int l = walk(cpu, v1, limit_v1);
        if (l > 0 && (best == 0 || l < best))
            best = l;
    }
    return best;
}

int pm__affinity_count(void)
{
#if defined(__linux__) && defined(CPU_ALLOC)
    /* The set grows until it holds the kernel's mask (EINVAL: too small). */
    for (int ncpu = 1024; ncpu <= (1 << 20); ncpu *= 2) {
        cpu_set_t *set = CPU_ALLOC(ncpu);
        if (!set)
            break;
        size_t size = CPU_ALLOC_SIZE(ncpu);
        int rc = sched_getaffinity(0, size, set);
        int n = rc == 0 ? CPU_COUNT_S(size, set) : 0;
        CPU_FREE(set);
        if (rc == 0 && n > 0)
            return n;
        if (rc != 0 && errno != EINVAL)
            break;
    }
#endif
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (n > INT_MAX ? INT_MAX : (int)n) : 1;
}

int pm_cpu_count(void)
{
    int n = pm__affinity_count();
    int l = pm__cgroup_cpu_limit("/sys/fs/cgroup", "/proc/self/cgroup");
    return l > 0 && l < n ? l : n;
}
