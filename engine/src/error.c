/* error.c -- messages and names for the engine's error codes, and the
 * sentence that explains a failed fork or mmap. */
/* GNU and POSIX interfaces under any -std (builds may -D it too). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>

#include "internal.h"

const char *pm_strerror(int err)
{
    switch (err) {
#define PM__MSG(name, code, msg)                                               \
    case PM_E##name:                                                           \
        return msg;
        PM_ERRNO_MAP(PM__MSG)
#undef PM__MSG
    case 0:
        return "success";
    default:
        if (err <= PM_EUSER)
            return "error returned by a callback";
        return err < 0 && err > -4096 ? strerror(-err) : "unknown error";
    }
}

const char *pm_errname(int err)
{
    switch (err) {
#define PM__NAME(name, code, msg)                                              \
    case PM_E##name:                                                           \
        return "PM_E" #name;
        PM_ERRNO_MAP(PM__NAME)
#undef PM__NAME
    case -ENOMEM:
        return "ENOMEM";
    case -EINVAL:
        return "EINVAL";
    case -EAGAIN:
        return "EAGAIN";
    case -EINTR:
        return "EINTR";
    case -ECHILD:
        return "ECHILD";
    case -ETIMEDOUT:
        return "ETIMEDOUT";
    default:
        if (err <= PM_EUSER)
            return "PM_EUSER";
#if defined(__GLIBC__) && (__GLIBC__ > 2 || __GLIBC_MINOR__ >= 32)
        if (err < 0 && err > -4096) {
            const char *n = strerrorname_np(-err);
            if (n)
                return n;
        }
#endif
        return "UNKNOWN";
    }
}

int pm_version(void)
{
    return PM_VERSION;
}

const char *pm_version_string(void)
{
    return PM_VERSION_STRING;
}

/* Reads a number from a file of /proc, or -1. */
static long proc_number(const char *path)
{
    FILE *f = fopen(path, "re");
    long v = -1;
    if (f) {
        if (fscanf(f, "%ld", &v) != 1)
            v = -1;
        fclose(f);
    }
    return v;
}

void pm__explain(char *why, size_t len, const char *call, int err, int w,
                 int nproc, size_t bytes)
{
    char who[96] = "";
    if (call[0] == 'm')
        snprintf(who, sizeof who, " of %zu bytes of shared memory", bytes);
    if (w >= 0)
        snprintf(who + strlen(who), sizeof who - strlen(who),
                 " for worker %d of %d", w, nproc);
    const char *msg = strerror(-err);
    char limit[224] = "";
    if (call[0] == 'f') { /* fork */
        struct rlimit rl;
        char cur[32] = "unlimited";
        if (getrlimit(RLIMIT_NPROC, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY)
            snprintf(cur, sizeof cur, "%llu", (unsigned long long)rl.rlim_cur);
        if (err == -EAGAIN)
            snprintf(limit, sizeof limit,
                     "the processes of this user reached RLIMIT_NPROC "
                     "(ulimit -u: %s), or the system's kernel.pid_max or "
                     "kernel.threads-max (or a cgroup's pids.max)", cur);
        else if (err == -ENOMEM)
            snprintf(limit, sizeof limit,
                     "memory is short: the kernel could not copy the "
                     "caller's page tables (free memory, swap, "
                     "vm.overcommit_memory)");
    } else { /* mmap */
        long maps = proc_number("/proc/sys/vm/max_map_count");
        if (err == -ENOMEM)
            snprintf(limit, sizeof limit,
                     "memory is short (free memory, RLIMIT_AS: ulimit -v, a "
                     "cgroup's memory.max), or the process has as many "
                     "mappings as vm.max_map_count allows (%ld)", maps);
    }
    snprintf(why, len, "%s()%s failed: %s (errno %d)%s%s", call, who, msg,
             -err, limit[0] ? "; likely cause: " : "", limit);
}
