/*
 * test_map_retry.c -- opt.retries and opt.timeout_ms: tasks lost to a dying
 * worker run again on a fresh one, results it had completed are kept, tasks
 * past the timeout come back as PM_RESULT_TIMEDOUT.
 */
#include <signal.h>
#include <sys/mman.h>
#include <time.h>

#include "task.h"

/* The work of twork_work, counting the runs of each item in shared memory,
 * dying on the first die_times runs of die_item and hanging on the first
 * hang_times runs of hang_item. */
typedef struct rwork {
    twork base;
    _Atomic uint32_t *runs; /* per item; tasks of one item each */
    size_t nruns;
    uint64_t die_item;
    uint32_t die_times;
    unsigned die_delay_ms; /* sleep this long before dying */
    uint64_t hang_item;
    uint32_t hang_times;
    unsigned hang_ms;
} rwork;

static int rwork_work(void *ctx, const pm_task *task, const void *in,
                      size_t len, pm_writer *out)
{
    rwork *w = ctx;
    ASSERT_ULT(task->first, w->nruns);
    uint32_t before = atomic_fetch_add(&w->runs[task->first], 1);
    if (task->first == w->die_item && before < w->die_times) {
        if (w->die_delay_ms) {
            struct timespec ts = {w->die_delay_ms / 1000,
                                  (long)(w->die_delay_ms % 1000) * 1000000L};
            nanosleep(&ts, NULL);
        }
        _exit(3);
    }
    if (task->first == w->hang_item && before < w->hang_times) {
        struct timespec ts = {w->hang_ms / 1000,
                              (long)(w->hang_ms % 1000) * 1000000L};
        nanosleep(&ts, NULL);
    }
    return twork_work(&w->base, task, in, len, out);
}

static void rwork_init(rwork *w, size_t nitems)
{
    memset(w, 0, sizeof *w);
    w->nruns = nitems;
    w->runs = mmap(NULL, nitems * sizeof *w->runs, PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT(w->runs != MAP_FAILED);
    w->die_item = w->hang_item = UINT64_MAX;
}

static void rwork_free(rwork *w)
{
    munmap(w->runs, w->nruns * sizeof *w->runs);
}

/* after_fork_parent hook: counts the workers forked (ctx: an int). */
static void count_fork(void *ctx)
{
    (*(int *)ctx)++;
}

static int copy_pids(pm_map *m, pid_t *out)
{
    int n;
    const pid_t *pp = pm_map_pids(m, &n);
    memcpy(out, pp, (size_t)n * sizeof *out);
    return n;
}

static void assert_gone(const pid_t *pids, int n)
{
    ASSERT_NO_CHILDREN();
    for (int i = 0; i < n; i++)
        ASSERT_MSG(pids[i] == 0 || (kill(pids[i], 0) < 0 && errno == ESRCH),
                   "worker %d (pid %d) still exists", i, (int)pids[i]);
}

/*
 * Runs every item; returns through *timedout the items delivered as
 * PM_RESULT_TIMEDOUT (at most max).  Checks order when ordered, every other
 * result's bytes, and that each item comes out exactly once.
 */
static int run_all(pm_map *m, const pm_options *opt, tgen *g, const rwork *w,
                   uint64_t *timedout, int max)
{
    unsigned char *seen = calloc(g->nitems, 1);
    ASSERT(seen != NULL);
    pm_result res;
    int rc, ntimed = 0;
    uint64_t next = 0, count = 0;
    while ((rc = pm_map_next(m, &res)) == 1) {
        if (opt->ordered)
            ASSERT_UEQ(res.task.first, next);
        ASSERT_ULT(res.task.first, g->nitems);
        ASSERT_MSG(!seen[res.task.first], "item %llu delivered twice",
                   (unsigned long long)res.task.first);
        seen[res.task.first] = 1;
        if (res.status == PM_RESULT_TIMEDOUT) {
            /* The engine kept the task: its input comes back with it. */
            uint64_t v;
            ASSERT_UEQ(res.task.count, 1);
            ASSERT_UEQ(res.len, 8 + g->task_pad);
            memcpy(&v, res.data, 8);
            ASSERT_UEQ(v, item_value(res.task.first));
            ASSERT_LT(ntimed, max);
            timedout[ntimed++] = res.task.first;
        } else {
            CHECK_RESULT(g, &w->base, &res);
        }
        next = res.task.first + 1;
        count++;
    }
    ASSERT_MSG(rc == 0, "pm_map_next returned %s after %llu results",
               pm_errname(rc), (unsigned long long)count);
    ASSERT_UEQ(count, g->nitems);
    free(seen);
    return ntimed;
}

static void check_runs(const rwork *w, uint64_t special, uint32_t want)
{
    for (size_t i = 0; i < w->nruns; i++) {
        uint32_t r = atomic_load(&w->runs[i]);
        ASSERT_MSG(r == (i == special ? want : 1),
                   "item %zu ran %u times, expected %u", i, (unsigned)r,
                   (unsigned)(i == special ? want : 1));
    }
}

/* One worker, one thread: the fatal task runs twice, every other task once
 * (those done before the death are kept, those queued behind it are sent
 * again without having run), and everything comes out in order. */
TEST_IMPL(map_retry_recovers)
{
    const uint64_t n = 400;
    pm_options opt;
    pm_options_init(&opt);
    opt.retries = 1;
    tgen g = {.nitems = n, .max_count = 1};
    rwork w;
    rwork_init(&w, n);
    w.die_item = 37;
    w.die_times = 1;
    int forks = 0;
    pm_hooks hooks = {.ctx = &forks, .after_fork_parent = count_fork};
    pm_map *m;
    ASSERT_OK(
        pm_map_create(&m, &opt, tgen_produce, &g, rwork_work, &w, &hooks));
    ASSERT_OK(pm_map_start(m));
    pid_t before[1], after[1];
    copy_pids(m, before);
    run_all(m, &opt, &g, &w, NULL, 0);
    ASSERT(pm_map_death(m) == NULL);
    check_runs(&w, 37, 2);
    ASSERT_EQ(forks, 2); /* a fresh worker */
    copy_pids(m, after);   /* 0 if it finished and exited already */
    ASSERT_NE(after[0], before[0]);
    ASSERT_OK(pm_map_destroy(m));
    assert_gone(before, 1);
    assert_gone(after, 1);
    rwork_free(&w);
    tgen_free(&g);
}

/* pm_options_respawn names exactly the options under which a worker can be
 * forked after pm_map_start (the binding copies an indexed input only
 * then): without them a death forks nothing, with max_items_per_worker
 * alone fresh workers are forked. */
TEST_IMPL(map_respawn_options)
{
    pm_options opt;
    pm_options_init(&opt);
    ASSERT_EQ(pm_options_respawn(&opt), 0);
    for (int k = 0; k < 5; k++) {
        pm_options o;
        pm_options_init(&o);
        if (k == 0) o.retries = 1;
        if (k == 1) o.timeout_ms = 1000;
        if (k == 2) o.deliver_lost = 1;
        if (k == 3) o.max_items_per_worker = 10;
        if (k == 4) o.max_rss_bytes = 1 << 30;
        ASSERT_MSG(pm_options_respawn(&o) == 1, "option %d", k);
    }
    for (int k = 0; k < 2; k++) {
        const uint64_t n = 200;
        pm_options_init(&opt);
        opt.nproc = 2;
        if (k == 1)
            opt.max_items_per_worker = 30;
        tgen g = {.nitems = n, .max_count = 1};
        rwork w;
        rwork_init(&w, n);
        if (k == 0) {
            w.die_item = 37;
            w.die_times = 1;
        }
        int forks = 0;
        pm_hooks hooks = {.ctx = &forks, .after_fork_parent = count_fork};
        pm_map *m;
        ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g, rwork_work, &w,
                                &hooks));
        pm_result res;
        int rc;
        while ((rc = pm_map_next(m, &res)) == 1)
            ;
        if (k == 0) {
            ASSERT_RC(rc, PM_EWORKERDIED);
            ASSERT_EQ(forks, 2); /* none after the start */
        } else {
            ASSERT_OK(rc);
            ASSERT_MSG(forks > 2, "%d forks with max_items_per_worker", forks);
        }
        ASSERT_OK(pm_map_destroy(m));
        ASSERT_NO_CHILDREN();
        rwork_free(&w);
        tgen_free(&g);
    }
}

TEST_IMPL(map_retry_recovers_p3_threads2)
{
    const uint64_t n = 2000;
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 3;
    opt.nthreads = 2;
    opt.ordered = 0;
    opt.retries = 1;
    tgen g = {.nitems = n, .max_count = 1};
    rwork w;
    rwork_init(&w, n);
    w.die_item = 137;
    w.die_times = 1;
    int forks = 0;
    pm_hooks hooks = {.ctx = &forks, .after_fork_parent = count_fork};
    pm_map *m;
    ASSERT_OK(
        pm_map_create(&m, &opt, tgen_produce, &g, rwork_work, &w, &hooks));
    ASSERT_OK(pm_map_start(m));
    pid_t before[3], after[3];
    copy_pids(m, before);
    run_all(m, &opt, &g, &w, NULL, 0);
    ASSERT(pm_map_death(m) == NULL);
    /* A sibling thread's running task may have run twice as well. */
    int twice = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t r = atomic_load(&w.runs[i]);
        ASSERT_MSG(r >= 1 && r <= 2, "item %zu ran %u times", i, (unsigned)r);
        twice += r == 2;
    }
    ASSERT_EQ(atomic_load(&w.runs[137]), 2);
    ASSERT_LE(twice, 2);
    /* One worker replaced; those that finished and exited were not. */
    ASSERT_EQ(forks, 3 + 1);
    copy_pids(m, after);
    ASSERT_OK(pm_map_destroy(m));
    assert_gone(before, 3);
    assert_gone(after, 3);
    rwork_free(&w);
    tgen_free(&g);
}

/* A task that always kills its worker: run 1 + retries times, then
 * PM_EWORKERDIED naming it. */
TEST_IMPL(map_retry_exhausted)
{
    const uint64_t n = 400;
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 2;
    opt.retries = 2;
    tgen g = {.nitems = n, .max_count = 1};
    rwork w;
    rwork_init(&w, n);
    w.die_item = 37;
    w.die_times = 1000;
    pm_map *m;
    ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g, rwork_work, &w, NULL));
    ASSERT_OK(pm_map_start(m));
    pid_t before[2];
    copy_pids(m, before);
    pm_result res;
    int rc;
    uint64_t next = 0;
    while ((rc = pm_map_next(m, &res)) == 1) {
        CHECK_RESULT(&g, &w.base, &res);
        ASSERT_UEQ(res.task.first, next);
        next++;
    }
    ASSERT_RC(rc, PM_EWORKERDIED);
    ASSERT_UEQ(next, 37);
    ASSERT_EQ(atomic_load(&w.runs[37]), 3);
    const pm_death *d = pm_map_death(m);
    ASSERT(d != NULL);
    ASSERT_EQ(d->exit_code, 3);
    ASSERT_EQ(d->signal, 0);
    ASSERT(d->worker == 0 || d->worker == 1);
    ASSERT_NE(d->pid, before[0]); /* the last of three incarnations */
    ASSERT_NE(d->pid, before[1]);
    ASSERT_GE(d->nlost, 1);
    ASSERT_UEQ(d->lost[0].first, 37);
    pid_t dead = d->pid; /* d lives in the map */
    ASSERT_OK(pm_map_destroy(m));
    assert_gone(before, 2);
    ASSERT_MSG(kill(dead, 0) < 0 && errno == ESRCH, "pid %d still exists",
               (int)dead);
    rwork_free(&w);
    tgen_free(&g);
}

/* A task that hangs is abandoned after timeout_ms: it comes back as
 * PM_RESULT_TIMEDOUT, its worker is replaced, nothing else is lost. */
TEST_IMPL(map_timeout)
{
    const uint64_t n = 60;
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 2;
    opt.timeout_ms = 300;
    tgen g = {.nitems = n, .max_count = 1};
    rwork w;
    rwork_init(&w, n);
    w.hang_item = 5;
    w.hang_times = 1000;
    w.hang_ms = 30000;
    int forks = 0;
    pm_hooks hooks = {.ctx = &forks, .after_fork_parent = count_fork};
    pm_map *m;
    ASSERT_OK(
        pm_map_create(&m, &opt, tgen_produce, &g, rwork_work, &w, &hooks));
    ASSERT_OK(pm_map_start(m));
    pid_t before[2], after[2];
    copy_pids(m, before);
    double t0 = pm_test_now_ms();
    uint64_t timed[4];
    int nt = run_all(m, &opt, &g, &w, timed, 4);
    double dt = pm_test_now_ms() - t0;
    ASSERT_EQ(nt, 1);
    ASSERT_UEQ(timed[0], 5);
    ASSERT_MSG(dt >= 250, "the timeout fired after %.0f ms", dt);
    ASSERT_DBL_LT(dt, LIMIT_MS(5000));
    check_runs(&w, UINT64_MAX, 1); /* a timed-out task is not run again */
    /* The stuck worker was replaced once; the others were not (they may
     * have finished and exited: pid 0). */
    ASSERT_EQ(forks, 2 + 1);
    copy_pids(m, after);
    int replaced = 0;
    for (int i = 0; i < 2; i++)
        replaced += after[i] != 0 && after[i] != before[i];
    ASSERT_LE(replaced, 1);
    ASSERT_OK(pm_map_destroy(m));
    assert_gone(before, 2);
    assert_gone(after, 2);
    rwork_free(&w);
    tgen_free(&g);
}

/* With retries and a timeout set but never needed, the map behaves as
 * without them (tasks are kept in copies on the way). */
TEST_IMPL(map_retry_timeout_unused)
{
    const uint64_t n = N_(5000, 500);
    for (int ordered = 0; ordered < 2; ordered++) {
        pm_options opt;
        pm_options_init(&opt);
        opt.nproc = 3;
        opt.ordered = ordered;
        opt.retries = 3;
        opt.timeout_ms = 60000;
        opt.ring_bytes = 4096;
        tgen g = {.nitems = n, .max_count = 1, .task_pad = 3000};
        rwork w;
        rwork_init(&w, n);
        w.base.result_pad = 5000;
        pm_map *m;
        ASSERT_OK(
            pm_map_create(&m, &opt, tgen_produce, &g, rwork_work, &w, NULL));
        run_all(m, &opt, &g, &w, NULL, 0);
        check_runs(&w, UINT64_MAX, 1);
        ASSERT_OK(pm_map_destroy(m));
        ASSERT_NO_CHILDREN();
        rwork_free(&w);
        tgen_free(&g);
    }
}

/*
 * The input is exhausted at once and the last task is slow: the worker that
 * does not hold it is told to finish, exits, and is reaped during the map
 * without being taken for dead (no error) or replaced (retries set or not,
 * one thread or two).
 */
TEST_IMPL(map_finish_early)
{
    for (int v = 0; v < 4; v++) {
        const uint64_t n = 40;
        pm_options opt;
        pm_options_init(&opt);
        opt.nproc = 2;
        opt.nthreads = v & 2 ? 2 : 1;
        opt.retries = v & 1;
        tgen g = {.nitems = n, .max_count = 1};
        rwork w;
        rwork_init(&w, n);
        w.hang_item = n - 1;
        w.hang_times = 1;
        w.hang_ms = (unsigned)LIMIT_MS(300);
        pm_map *m;
        ASSERT_OK(
            pm_map_create(&m, &opt, tgen_produce, &g, rwork_work, &w, NULL));
        ASSERT_OK(pm_map_start(m));
        pid_t before[2], after[2];
        copy_pids(m, before);
        uint64_t timedout[1];
        ASSERT_EQ(run_all(m, &opt, &g, &w, timedout, 1), 0);
        copy_pids(m, after);
        int reaped = 0;
        for (int i = 0; i < 2; i++) {
            ASSERT_MSG(after[i] == 0 || after[i] == before[i],
                       "worker %d was replaced (variant %d)", i, v);
            reaped += after[i] == 0;
        }
        ASSERT_MSG(reaped >= 1, "no worker exited before the end (variant %d)",
                   v);
        check_runs(&w, UINT64_MAX, 1);
        ASSERT_OK(pm_map_destroy(m));
        assert_gone(before, 2);
        rwork_free(&w);
        tgen_free(&g);
    }
}

/*
 * A worker dies in its last task after the other worker has finished and
 * exited: with retries the task runs again on a fresh worker and the map
 * completes; without, the death is reported with the lost item.
 */
TEST_IMPL(map_finish_then_crash)
{
    for (int v = 0; v < 4; v++) {
        const uint64_t n = 40;
        int retries = v & 1;
        pm_options opt;
        pm_options_init(&opt);
        opt.nproc = 2;
        opt.nthreads = v & 2 ? 2 : 1;
        opt.retries = retries;
        tgen g = {.nitems = n, .max_count = 1};
        rwork w;
        rwork_init(&w, n);
        w.die_item = n - 1;
        w.die_times = 1;
        w.die_delay_ms = (unsigned)LIMIT_MS(200);
        pm_map *m;
        ASSERT_OK(
            pm_map_create(&m, &opt, tgen_produce, &g, rwork_work, &w, NULL));
        ASSERT_OK(pm_map_start(m));
        pid_t before[2];
        copy_pids(m, before);
        if (retries) {
            uint64_t timedout[1];
            ASSERT_EQ(run_all(m, &opt, &g, &w, timedout, 1), 0);
            check_runs(&w, n - 1, 2);
        } else {
            pm_result res;
            int rc;
            uint64_t next = 0;
            while ((rc = pm_map_next(m, &res)) == 1) {
                CHECK_RESULT(&g, &w.base, &res);
                ASSERT_UEQ(res.task.first, next);
                next++;
            }
            ASSERT_RC(rc, PM_EWORKERDIED);
            ASSERT_UEQ(next, n - 1);
            const pm_death *d = pm_map_death(m);
            ASSERT(d != NULL);
            ASSERT_EQ(d->exit_code, 3);
            ASSERT_EQ(d->nlost, 1);
            ASSERT_UEQ(d->lost[0].first, n - 1);
            ASSERT(d->pid == before[0] || d->pid == before[1]);
        }
        ASSERT_OK(pm_map_destroy(m));
        assert_gone(before, 2);
        rwork_free(&w);
        tgen_free(&g);
    }
}
