/*
 * test_map_fail.c -- failures: the produce function's errors, workers that
 * die, work functions that fail, and the check hook.
 */
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>

#include "task.h"

TEST_IMPL(map_produce_error)
{
    for (int ordered = 0; ordered < 2; ordered++) {
        pm_options opt;
        pm_options_init(&opt);
        opt.nproc = 2;
        opt.ordered = ordered;
        /* Fails at once on the first call. */
        tgen g0 = {.nitems = 100, .max_count = 1, .fail_at = 0,
                   .fail_rc = -77};
        twork w = {0};
        pm_map *m;
        pm_result res;
        ASSERT_OK(
            pm_map_create(&m, &opt, tgen_produce, &g0, twork_work, &w, NULL));
        ASSERT_RC(pm_map_next(m, &res), -77);
        ASSERT_UEQ(g0.calls, 1);
        ASSERT_RC(pm_map_next(m, &res), -77);
        ASSERT_UEQ(g0.calls, 1); /* the error sticks: produce not called */
        ASSERT_OK(pm_map_destroy(m));
        ASSERT_NO_CHILDREN();

        /* Fails after 500 tasks: the results before it may come first, all
         * correct; then the error, for good. */
        tgen g = {.nitems = 1000, .max_count = 1, .fail_at = 500,
                  .fail_rc = PM_ECALLBACK};
        ASSERT_OK(
            pm_map_create(&m, &opt, tgen_produce, &g, twork_work, &w, NULL));
        int rc, n = 0;
        while ((rc = pm_map_next(m, &res)) == 1) {
            CHECK_RESULT(&g, &w, &res);
            if (ordered)
                ASSERT_EQ(res.task.first, n);
            n++;
        }
        ASSERT_RC(rc, PM_ECALLBACK);
        ASSERT_LT(n, 500);
        ASSERT_UEQ(g.next, 500);
        uint64_t calls = g.calls;
        ASSERT_RC(pm_map_next(m, &res), PM_ECALLBACK);
        ASSERT_UEQ(g.calls, calls); /* not called again after the error */
        ASSERT(pm_map_death(m) == NULL);
        ASSERT_OK(pm_map_destroy(m));
        ASSERT_NO_CHILDREN();
        tgen_free(&g0);
        tgen_free(&g);
    }
}

/* --- workers that die ---------------------------------------------------- */

typedef struct death_case {
    int nproc, nthreads, ordered;
    int die_mode;
    uint64_t die_item;
    int exit_code, signal; /* expected */
    int check_exit_hook;
} death_case;

static _Atomic int *exit_hook_count; /* shared with the workers */

static void count_exit(void *ctx)
{
    (void)ctx;
    atomic_fetch_add(exit_hook_count, 1);
}

static void run_death(const death_case *dc)
{
    const uint64_t nitems = 400;
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = dc->nproc;
    opt.nthreads = dc->nthreads;
    opt.ordered = dc->ordered;
    tgen g = {.nitems = nitems, .max_count = 1};
    twork w = {.die_mode = dc->die_mode, .die_item = dc->die_item};
    exit_hook_count = mmap(NULL, sizeof *exit_hook_count,
                           PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                           -1, 0);
    ASSERT(exit_hook_count != MAP_FAILED);
    pm_hooks hooks = {.worker_exit = count_exit};
    pm_map *m;
    ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g, twork_work, &w,
                            &hooks));
    ASSERT_OK(pm_map_start(m));
    int n;
    const pid_t *pp = pm_map_pids(m, &n);
    ASSERT_EQ(n, dc->nproc);
    pid_t pids[64];
    memcpy(pids, pp, (size_t)n * sizeof *pids);

    unsigned char delivered[400] = {0};
    pm_result res;
    int rc, count = 0;
    while ((rc = pm_map_next(m, &res)) == 1) {
        CHECK_RESULT(&g, &w, &res);
        ASSERT_MSG(res.task.first != dc->die_item,
                   "the task that killed its worker has a result");
        delivered[res.task.first] = 1;
        if (dc->ordered)
            ASSERT_EQ(res.task.first, count);
        count++;
    }
    ASSERT_RC(rc, PM_EWORKERDIED);
    /* Ordered, with one thread per worker, everything before the fatal task
     * came out (the tasks before it on its worker were done); with more
     * threads, a sibling thread's unfinished task may stop delivery
     * earlier. */
    if (dc->ordered && dc->nthreads == 1)
        ASSERT_EQ(count, (long long)dc->die_item);
    if (dc->ordered)
        ASSERT_LE(count, (long long)dc->die_item);
    const pm_death *d = pm_map_death(m);
    ASSERT(d != NULL);
    ASSERT_MSG(d->worker >= 0 && d->worker < n, "death names worker %d",
               d->worker);
    ASSERT_EQ(d->pid, pids[d->worker]);
    ASSERT_EQ(d->exit_code, dc->exit_code);
    ASSERT_EQ(d->signal, dc->signal);
    ASSERT_GE(d->nlost, 1);
    ASSERT(d->lost != NULL);
    int found = 0;
    for (size_t i = 0; i < d->nlost; i++) {
        uint64_t f = d->lost[i].first;
        ASSERT_UEQ(d->lost[i].count, 1);
        ASSERT_ULT(f, g.next); /* only tasks that were produced */
        ASSERT_MSG(!delivered[f], "lost task %llu was also delivered",
                   (unsigned long long)f);
        if (i > 0)
            ASSERT_MSG(d->lost[i - 1].first < f, "lost is not oldest first");
        found |= f == dc->die_item;
    }
    ASSERT_MSG(found, "the fatal task %llu is not in lost (nlost %zu)",
               (unsigned long long)dc->die_item, d->nlost);
    /* Ordered delivery stopped at the oldest lost task. */
    if (dc->ordered)
        ASSERT_UEQ(d->lost[0].first, count);
    /* The dead worker is reaped already; the others still run or, told to
     * finish when the input ran out (unordered delivery goes on past the
     * lost task), have exited and been reaped; none was replaced. */
    pp = pm_map_pids(m, &n);
    ASSERT_EQ(pp[d->worker], 0);
    for (int i = 0; i < n; i++)
        if (i != d->worker)
            ASSERT(pp[i] == pids[i] || (pp[i] == 0 && !dc->ordered));
    if (dc->check_exit_hook)
        ASSERT_EQ(atomic_load(exit_hook_count), 1);
    /* The error sticks, and so does the report. */
    ASSERT_RC(pm_map_next(m, &res), PM_EWORKERDIED);
    ASSERT(pm_map_death(m) == d);
    ASSERT_EQ(d->pid, pids[d->worker]);
    ASSERT_OK(pm_map_destroy(m));
    ASSERT_NO_CHILDREN();
    for (int i = 0; i < n; i++)
        ASSERT_MSG(kill(pids[i], 0) < 0 && errno == ESRCH,
                   "worker %d (pid %d) still exists", i, (int)pids[i]);
    munmap(exit_hook_count, sizeof *exit_hook_count);
    tgen_free(&g);
}

TEST_IMPL(map_worker_exit3)
{
    death_case dc = {.nproc = 2, .nthreads = 1, .ordered = 1,
                     .die_mode = DIE_EXIT3, .die_item = 37, .exit_code = 3};
    run_death(&dc);
}

TEST_IMPL(map_worker_exit3_threads3)
{
    death_case dc = {.nproc = 2, .nthreads = 3, .ordered = 1,
                     .die_mode = DIE_EXIT3, .die_item = 37, .exit_code = 3};
    run_death(&dc);
}

TEST_IMPL(map_worker_sigkill)
{
    death_case dc = {.nproc = 1, .nthreads = 1, .ordered = 1,
                     .die_mode = DIE_SIGKILL, .die_item = 37,
                     .exit_code = -1, .signal = SIGKILL};
    run_death(&dc);
}

TEST_IMPL(map_worker_sigkill_unordered)
{
    death_case dc = {.nproc = 3, .nthreads = 1, .ordered = 0,
                     .die_mode = DIE_SIGKILL, .die_item = 37,
                     .exit_code = -1, .signal = SIGKILL};
    run_death(&dc);
}

TEST_IMPL(map_work_returns_negative)
{
    death_case dc = {.nproc = 2, .nthreads = 1, .ordered = 1,
                     .die_mode = DIE_RETURN_NEG, .die_item = 37,
                     .exit_code = 70, .check_exit_hook = 1};
    run_death(&dc);
}

/* --- the check hook ------------------------------------------------------ */

typedef struct check_ctx {
    int checks, abort_after, rc;
    int begins, ends, depth, max_depth;
} check_ctx;

static int check_hook(void *ctx)
{
    check_ctx *c = ctx;
    ASSERT_MSG(c->depth == 0, "check called between wait_begin and wait_end");
    return ++c->checks >= c->abort_after ? c->rc : 0;
}

static void wait_begin(void *ctx)
{
    check_ctx *c = ctx;
    c->begins++;
    if (++c->depth > c->max_depth)
        c->max_depth = c->depth;
}

static void wait_end(void *ctx)
{
    check_ctx *c = ctx;
    c->ends++;
    c->depth--;
}

TEST_IMPL(map_check_hook_aborts)
{
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 2;
    tgen g = {.nitems = 100, .max_count = 1};
    twork w = {.sleep_ms = 20000}; /* far slower than the test may take */
    check_ctx c = {.abort_after = 3, .rc = -1234};
    pm_hooks hooks = {.ctx = &c, .check = check_hook,
                      .wait_begin = wait_begin, .wait_end = wait_end};
    pm_map *m;
    ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g, twork_work, &w,
                            &hooks));
    pm_result res;
    double t0 = pm_test_now_ms();
    ASSERT_RC(pm_map_next(m, &res), -1234);
    double dt = pm_test_now_ms() - t0;
    ASSERT_DBL_LT(dt, LIMIT_MS(2000));
    ASSERT_EQ(c.checks, 3);
    ASSERT_EQ(c.begins, c.ends);
    ASSERT_EQ(c.depth, 0);
    ASSERT_EQ(c.max_depth, 1);
    ASSERT_GE(c.begins, 3);
    /* Sticky, without calling check again. */
    ASSERT_RC(pm_map_next(m, &res), -1234);
    ASSERT_EQ(c.checks, 3);
    t0 = pm_test_now_ms();
    ASSERT_OK(pm_map_destroy(m));
    ASSERT_DBL_LT(pm_test_now_ms() - t0, LIMIT_MS(2000));
    ASSERT_EQ(c.depth, 0);
    ASSERT_NO_CHILDREN();
    tgen_free(&g);
}

/* --- results done by the last worker before it died ---------------------- */

static void slow_wait_end(void *ctx)
{
    (void)ctx;
    /* Taking the GIL back can take this long when another thread has it. */
    struct timespec ts = {0, 200 * 1000000L};
    nanosleep(&ts, NULL);
}

/*
 * The only worker completes tasks 0..19 and dies on task 20 while the parent
 * is slow to come back from its wait (task 0 takes 100 ms, so the parent
 * surely sleeps; wait_end then takes 200 ms).  The 20 results are in the
 * ring: they must be delivered, and only tasks from 20 on reported lost.
 */
TEST_IMPL(map_last_worker_death_keeps_done_results)
{
    for (int ordered = 1; ordered >= 0; ordered--) {
        pm_options opt;
        pm_options_init(&opt);
        opt.ordered = ordered;
        tgen g = {.nitems = 100, .max_count = 1};
        twork w = {.die_mode = DIE_EXIT3, .die_item = 20, .slow_item = 0,
                   .slow_ms = 100};
        pm_hooks hooks = {.wait_end = slow_wait_end};
        pm_map *m;
        ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g, twork_work, &w,
                                &hooks));
        pm_result res;
        int rc, count = 0;
        while ((rc = pm_map_next(m, &res)) == 1) {
            CHECK_RESULT(&g, &w, &res);
            ASSERT_EQ(res.task.first, count);
            count++;
        }
        ASSERT_RC(rc, PM_EWORKERDIED);
        const pm_death *d = pm_map_death(m);
        ASSERT(d != NULL);
        ASSERT_EQ(d->exit_code, 3);
        ASSERT_MSG(count == 20 && d->nlost >= 1 && d->lost[0].first == 20,
                   "%s: %d results delivered, then PM_EWORKERDIED with %zu "
                   "lost from task %lld: the results of tasks %d..19 were in "
                   "the ring but are reported lost",
                   ordered ? "ordered" : "unordered", count, d->nlost,
                   d->nlost ? (long long)d->lost[0].first : -1LL, count);
        ASSERT_OK(pm_map_destroy(m));
        ASSERT_NO_CHILDREN();
        tgen_free(&g);
    }
}
