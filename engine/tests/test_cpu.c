/*
 * test_cpu.c -- the CPUs this process may use (cpu.c): the cgroup quota
 * read from a fake tree, and the default number of workers of a job
 * (nproc 0) under a real affinity mask.
 */
#include <ftw.h>
#include <sched.h>
#include <sys/stat.h>
#include <time.h>

#include "cpu.h"
#include "task.h"

/* --- a fake cgroup tree -------------------------------------------------- */

/* Writes text to dir/rel, making the directories on the way. */
static void put(const char *dir, const char *rel, const char *text)
{
    char path[512];
    ASSERT((size_t)snprintf(path, sizeof path, "%s/%s", dir, rel) < sizeof path);
    for (char *p = path + strlen(dir) + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        ASSERT(mkdir(path, 0700) == 0 || errno == EEXIST);
        *p = '/';
    }
    FILE *f = fopen(path, "w");
    ASSERT(f);
    ASSERT(fputs(text, f) >= 0);
    ASSERT(fclose(f) == 0);
}

static int rm_one(const char *path, const struct stat *st, int flag,
                  struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* No shell: under valgrind --trace-children one would be traced too. */
static void rm_tree(const char *dir)
{
    ASSERT(nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS) == 0);
}

/* A fresh tree: returns the cgroup root; *proc is the fake
 * /proc/self/cgroup holding proc_text. */
static const char *fresh(char *base, size_t size, char *proc, size_t psize,
                         const char *proc_text)
{
    ASSERT((size_t)snprintf(base, size, "/tmp/pm_cpu_XXXXXX") < size);
    ASSERT(mkdtemp(base));
    put(base, "proc_cgroup", proc_text);
    ASSERT((size_t)snprintf(proc, psize, "%s/proc_cgroup", base) < psize);
    return base;
}

static int limit_v2(const char *cpu_max)
{
    char base[64], proc[128], root[128];
    fresh(base, sizeof base, proc, sizeof proc, "0::/\n");
    put(base, "cg/cpu.max", cpu_max);
    snprintf(root, sizeof root, "%s/cg", base);
    int n = pm__cgroup_cpu_limit(root, proc);
    rm_tree(base);
    return n;
}

static int limit_v1(const char *quota, const char *period)
{
    char base[64], proc[128], root[128];
    fresh(base, sizeof base, proc, sizeof proc,
          "4:memory:/x\n2:cpu,cpuacct:/job\n0::/\n");
    put(base, "cg/cpu/job/cpu.cfs_quota_us", quota);
    put(base, "cg/cpu/job/cpu.cfs_period_us", period);
    snprintf(root, sizeof root, "%s/cg", base);
    int n = pm__cgroup_cpu_limit(root, proc);
    rm_tree(base);
    return n;
}

TEST_IMPL(cpu_cgroup_quota)
{
    /* cgroup v2 cpu.max: rounded up, at least 1; "max" and junk: none. */
    ASSERT_EQ(limit_v2("200000 100000\n"), 2);
    ASSERT_EQ(limit_v2("150000 100000\n"), 2);
    ASSERT_EQ(limit_v2("1000 100000\n"), 1);
    ASSERT_EQ(limit_v2("max 100000\n"), 0);
    ASSERT_EQ(limit_v2("garbage\n"), 0);
    ASSERT_EQ(limit_v2("-5 100000\n"), 0);
    ASSERT_EQ(limit_v2(""), 0);
    /* cgroup v1, in the cpu controller's own path. */
    ASSERT_EQ(limit_v1("250000\n", "100000\n"), 3);
    ASSERT_EQ(limit_v1("50000\n", "100000\n"), 1);
    ASSERT_EQ(limit_v1("-1\n", "100000\n"), 0);
    ASSERT_EQ(limit_v1("100000\n", "0\n"), 0);

    /* v2: this process's cgroup and its ancestors, the smallest wins; a
     * sibling does not count. */
    char base[64], proc[128], root[128];
    fresh(base, sizeof base, proc, sizeof proc, "0::/a/b/c\n");
    put(base, "cg/cpu.max", "max 100000\n");
    put(base, "cg/a/cpu.max", "300000 100000\n");
    put(base, "cg/a/b/cpu.max", "max 100000\n");
    put(base, "cg/a/b/c/cpu.max", "500000 100000\n");
    put(base, "cg/other/cpu.max", "100000 100000\n");
    snprintf(root, sizeof root, "%s/cg", base);
    ASSERT_EQ(pm__cgroup_cpu_limit(root, proc), 3);
    /* No /proc/self/cgroup: the root only, as loky reads it. */
    ASSERT_EQ(pm__cgroup_cpu_limit(root, "/nonexistent/cgroup"), 0);
    put(base, "cg/cpu.max", "100000 100000\n");
    ASSERT_EQ(pm__cgroup_cpu_limit(root, "/nonexistent/cgroup"), 1);
    /* A path that climbs out (a cgroup namespace) is the root too. */
    put(base, "proc_cgroup", "0::/../../a/b/c\n");
    ASSERT_EQ(pm__cgroup_cpu_limit(root, proc), 1);
    rm_tree(base);

    /* No tree at all. */
    ASSERT_EQ(pm__cgroup_cpu_limit("/nonexistent/cgroup", "/nonexistent"), 0);
}

/* --- the default number of workers under an affinity mask ---------------- */

static int pid_work(void *ctx, const void *in, size_t len, pm_writer *out)
{
    (void)ctx, (void)in, (void)len;
    struct timespec ts = {0, 2000000}; /* 2 ms: every worker gets items */
    nanosleep(&ts, NULL);
    pid_t pid = getpid();
    return pm_write(out, &pid, sizeof pid);
}

/* Workers that ran items of a job with nproc 0 (the default). */
static int default_job_workers(void)
{
    enum { N = 200, MAXW = 64 };
    static pm_record recs[N];
    for (int i = 0; i < N; i++)
        recs[i] = (pm_record){.data = "x", .len = 1};
    pm_job_options o;
    pm_job_options_init(&o);
    ASSERT_EQ(o.nproc, 0);
    o.chunk = 1;
    pm_job *job;
    ASSERT_OK(pm_job_create(&job, &o, pid_work, NULL));
    ASSERT_OK(pm_job_feed_array(job, recs, N));
    pid_t seen[MAXW];
    int nseen = 0, rc;
    pm_item it;
    while ((rc = pm_job_next(job, &it)) > 0) {
        ASSERT_EQ(it.status, PM_ITEM_OK);
        ASSERT_UEQ(it.len, sizeof(pid_t));
        pid_t pid;
        memcpy(&pid, it.data, sizeof pid);
        int k = 0;
        while (k < nseen && seen[k] != pid)
            k++;
        if (k == nseen) {
            ASSERT(nseen < MAXW);
            seen[nseen++] = pid;
        }
    }
    ASSERT_EQ(rc, 0);
    ASSERT_OK(pm_job_destroy(job));
    return nseen;
}

TEST_IMPL(cpu_affinity_default_workers)
{
    cpu_set_t saved, one, two;
    ASSERT(sched_getaffinity(0, sizeof saved, &saved) == 0);
    if (CPU_COUNT(&saved) < 2) {
        printf("    (skipped: needs 2 usable CPUs, has %d)\n", CPU_COUNT(&saved));
        return;
    }
    int first = -1, second = -1;
    for (int c = 0; c < CPU_SETSIZE && second < 0; c++)
        if (CPU_ISSET(c, &saved))
            *(first < 0 ? &first : &second) = c;
    CPU_ZERO(&one);
    CPU_SET(first, &one);
    CPU_ZERO(&two);
    CPU_SET(first, &two);
    CPU_SET(second, &two);

    /* The issue: under `taskset -c 0` nproc 0 started one worker per
     * online CPU. */
    ASSERT(sched_setaffinity(0, sizeof one, &one) == 0);
    ASSERT_EQ(pm__affinity_count(), 1);
    ASSERT_EQ(pm_cpu_count(), 1);
    ASSERT_EQ(default_job_workers(), 1);

    ASSERT(sched_setaffinity(0, sizeof two, &two) == 0);
    ASSERT_EQ(pm__affinity_count(), 2);
    int quota = pm__cgroup_cpu_limit("/sys/fs/cgroup", "/proc/self/cgroup");
    ASSERT_EQ(pm_cpu_count(), quota > 0 && quota < 2 ? quota : 2);

    ASSERT(sched_setaffinity(0, sizeof saved, &saved) == 0); /* --no-fork */
    ASSERT_NO_CHILDREN();
}
