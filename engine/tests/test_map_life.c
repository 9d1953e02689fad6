/*
 * test_map_life.c -- creating, starting and destroying maps; hooks; the
 * owner check; no process left behind.
 */
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>

#include "task.h"

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static void assert_gone(const pid_t *pids, int n)
{
    ASSERT_NO_CHILDREN();
    for (int i = 0; i < n; i++)
        ASSERT_MSG(pids[i] == 0 || (kill(pids[i], 0) < 0 && errno == ESRCH),
                   "worker %d (pid %d) still exists", i, (int)pids[i]);
}

static int copy_pids(pm_map *m, pid_t *out, int max)
{
    int n;
    const pid_t *pp = pm_map_pids(m, &n);
    ASSERT_LE(n, max);
    memcpy(out, pp, (size_t)n * sizeof *out);
    return n;
}

static _Atomic int *shared_counter(void)
{
    _Atomic int *c = mmap(NULL, sizeof *c, PROT_READ | PROT_WRITE,
                          MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT(c != MAP_FAILED);
    return c;
}

TEST_IMPL(map_options_and_einval)
{
    pm_options o;
    memset(&o, 0x5a, sizeof o);
    pm_options_init(&o);
    ASSERT_EQ(o.nproc, 1);
    ASSERT_EQ(o.nthreads, 1);
    ASSERT_EQ(o.ordered, 1);
    ASSERT_EQ(o.window, 0);
    ASSERT_UEQ(o.ring_bytes, 0);
    ASSERT_EQ(o.retries, 0);
    ASSERT_EQ(o.timeout_ms, 0);

    tgen g = {.nitems = 10, .max_count = 1};
    twork w = {0};
    pm_map *m = (pm_map *)&o; /* must be reset to NULL on failure */
    ASSERT_RC(pm_map_create(&m, NULL, tgen_produce, &g, twork_work, &w, NULL),
              -EINVAL);
    ASSERT(m == NULL);
    struct {
        int nproc, nthreads, window;
        size_t ring;
        int retries;
        int64_t timeout_ms;
    } bad[] = {{0, 1, 0, 0, 0, 0},    {-1, 1, 0, 0, 0, 0},
               {1, 0, 0, 0, 0, 0},    {1, -2, 0, 0, 0, 0},
               {1, 1, -1, 0, 0, 0},   {1, 1, 0, 1000, 0, 0},
               {1, 1, 0, 2048, 0, 0}, {1, 1, 0, 5000, 0, 0},
               {1, 1, 0, 4096 * 3, 0, 0},
               {1, 1, 0, 0, -1, 0},   {1, 1, 0, 0, 0, -1}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pm_options_init(&o);
        o.nproc = bad[i].nproc;
        o.nthreads = bad[i].nthreads;
        o.window = bad[i].window;
        o.ring_bytes = bad[i].ring;
        o.retries = bad[i].retries;
        o.timeout_ms = bad[i].timeout_ms;
        m = (pm_map *)&o;
        ASSERT_MSG(pm_map_create(&m, &o, tgen_produce, &g, twork_work, &w,
                                 NULL) == -EINVAL,
                   "bad options #%zu accepted", i);
        ASSERT(m == NULL);
    }
    pm_options_init(&o);
    ASSERT_RC(pm_map_create(&m, &o, NULL, &g, twork_work, &w, NULL), -EINVAL);
    ASSERT_RC(pm_map_create(&m, &o, tgen_produce, &g, NULL, &w, NULL),
              -EINVAL);
    /* The smallest ring and a big window are fine. */
    o.ring_bytes = 4096;
    o.window = 1000;
    ASSERT_OK(pm_map_create(&m, &o, tgen_produce, &g, twork_work, &w, NULL));
    ASSERT(m != NULL);
    int n;
    const pid_t *pp = pm_map_pids(m, &n);
    ASSERT_EQ(n, 1);
    ASSERT_EQ(pp[0], 0); /* not started */
    ASSERT(pm_map_death(m) == NULL);
    ASSERT_OK(pm_map_destroy(m));
    ASSERT_OK(pm_map_destroy(NULL));
    ASSERT_UEQ(g.ntasks, 0);
    ASSERT_NO_CHILDREN();
}

/* --- hooks ----------------------------------------------------------------- */

typedef struct hook_ctx {
    int before, after_parent, in_fork;
    int begins, ends, depth, checks;
    _Atomic int *exits; /* shared with the workers */
} hook_ctx;

static hook_ctx *g_hc;

static void h_before_fork(void *ctx)
{
    hook_ctx *c = ctx;
    ASSERT(c == g_hc);
    ASSERT_EQ(c->in_fork, 0);
    c->in_fork = 1;
    c->before++;
}

static void h_after_fork_parent(void *ctx)
{
    hook_ctx *c = ctx;
    ASSERT_EQ(c->in_fork, 1);
    c->in_fork = 0;
    c->after_parent++;
}

static void h_after_fork_child(void *ctx, int worker)
{
    hook_ctx *c = ctx;
    ASSERT(c == g_hc);
    ASSERT_EQ(c->in_fork, 1); /* the child's copy of the parent's state */
    twork_after_fork_child(NULL, worker);
}

static void h_worker_exit(void *ctx)
{
    hook_ctx *c = ctx;
    atomic_fetch_add(c->exits, 1);
}

static void h_wait_begin(void *ctx)
{
    hook_ctx *c = ctx;
    ASSERT_EQ(c->depth, 0);
    c->depth++;
    c->begins++;
}

static void h_wait_end(void *ctx)
{
    hook_ctx *c = ctx;
    ASSERT_EQ(c->depth, 1);
    c->depth--;
    c->ends++;
}

static int h_check(void *ctx)
{
    hook_ctx *c = ctx;
    ASSERT_EQ(c->depth, 0);
    c->checks++;
    return 0;
}

TEST_IMPL(map_hooks)
{
    enum { NPROC = 3 };
    hook_ctx hc = {.exits = shared_counter()};
    g_hc = &hc;
    pm_hooks hooks = {.ctx = &hc,
                      .before_fork = h_before_fork,
                      .after_fork_parent = h_after_fork_parent,
                      .after_fork_child = h_after_fork_child,
                      .worker_exit = h_worker_exit,
                      .wait_begin = h_wait_begin,
                      .wait_end = h_wait_end,
                      .check = h_check};
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = NPROC;
    tgen g = {.nitems = 60, .max_count = 1};
    twork w = {.tag_pid = 1, .sleep_ms = 30}; /* slow: the parent waits */
    pm_map *m;
    ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g, twork_work, &w,
                            &hooks));
    ASSERT_EQ(hc.before, 0); /* no fork before start */
    ASSERT_OK(pm_map_start(m));
    ASSERT_EQ(hc.before, NPROC);
    ASSERT_EQ(hc.after_parent, NPROC);
    pid_t pids[NPROC];
    ASSERT_EQ(copy_pids(m, pids, NPROC), NPROC);
    int used[NPROC] = {0};
    pm_result res;
    int rc, count = 0;
    while ((rc = pm_map_next(m, &res)) == 1) {
        CHECK_RESULT(&g, &w, &res);
        ASSERT_EQ(res.task.first, count);
        uint64_t tag[2];
        memcpy(tag, res.data, sizeof tag);
        ASSERT_MSG(tag[1] < NPROC, "after_fork_child gave index %lld",
                   (long long)tag[1]);
        ASSERT_MSG((pid_t)tag[0] == pids[tag[1]],
                   "worker index %d ran in pid %d, pm_map_pids says %d",
                   (int)tag[1], (int)tag[0], (int)pids[tag[1]]);
        used[tag[1]]++;
        count++;
    }
    ASSERT_RC(rc, 0);
    ASSERT_EQ(count, 60);
    for (int i = 0; i < NPROC; i++)
        ASSERT_MSG(used[i] > 0, "worker %d got no task", i);
    ASSERT_EQ(hc.begins, hc.ends);
    ASSERT_EQ(hc.depth, 0);
    ASSERT_GT(hc.begins, 0);
    ASSERT_GT(hc.checks, 0);
    /* Workers told to finish when the input ran out may have exited. */
    ASSERT_LE(atomic_load(hc.exits), NPROC);
    ASSERT_OK(pm_map_destroy(m));
    assert_gone(pids, NPROC);
    /* Idle workers leave politely: each ran worker_exit. */
    ASSERT_EQ(atomic_load(hc.exits), NPROC);
    ASSERT_EQ(hc.before, NPROC);
    ASSERT_EQ(hc.begins, hc.ends);
    munmap(hc.exits, sizeof *hc.exits);
    tgen_free(&g);
}

/* --- ownership ------------------------------------------------------------- */

TEST_IMPL(map_not_owner)
{
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 2;
    tgen g = {.nitems = 3000, .max_count = 1};
    twork w = {0};
    pm_map *m;
    ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g, twork_work, &w, NULL));
    pm_result res;
    uint64_t next = 0;
    for (; next < 10; next++) {
        ASSERT_RC(pm_map_next(m, &res), 1);
        ASSERT_UEQ(res.task.first, next);
    }
    pid_t pids[2];
    ASSERT_EQ(copy_pids(m, pids, 2), 2);

    /* A forked child may not drive the map, and its destroy frees its own
     * copy only: the workers live on, and the parent's map goes on. */
    pid_t pid = pm_test_fork();
    if (pid == 0) {
        pm_result r2;
        ASSERT_RC(pm_map_next(m, &r2), PM_ENOTOWNER);
        ASSERT_RC(pm_map_start(m), PM_ENOTOWNER);
        ASSERT_RC(pm_map_next(m, &r2), PM_ENOTOWNER);
        ASSERT_OK(pm_map_destroy(m));
        tgen_free(&g);
        _exit(0);
    }
    WAIT_HELPER(pid);
    int n;
    const pid_t *pp = pm_map_pids(m, &n);
    for (int i = 0; i < 2; i++) {
        ASSERT_EQ(pp[i], pids[i]);
        ASSERT_MSG(kill(pids[i], 0) == 0, "worker %d was killed", i);
        ASSERT_EQ(waitpid(pids[i], NULL, WNOHANG), 0);
    }
    /* The result the parent holds is still intact. */
    CHECK_RESULT(&g, &w, &res);
    ASSERT_UEQ(res.task.first, 9);
    int rc;
    while ((rc = pm_map_next(m, &res)) == 1) {
        CHECK_RESULT(&g, &w, &res);
        ASSERT_UEQ(res.task.first, next);
        next++;
    }
    ASSERT_RC(rc, 0);
    ASSERT_UEQ(next, 3000);
    ASSERT_OK(pm_map_destroy(m));
    assert_gone(pids, 2);
    tgen_free(&g);
}

/* --- destroy ----------------------------------------------------------------- */

TEST_IMPL(map_destroy_before_start)
{
    hook_ctx hc = {.exits = NULL};
    g_hc = &hc;
    pm_hooks hooks = {.ctx = &hc, .before_fork = h_before_fork,
                      .after_fork_parent = h_after_fork_parent};
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 4;
    opt.nthreads = 2;
    tgen g = {.nitems = 1000, .max_count = 1};
    twork w = {0};
    pm_map *m;
    ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g, twork_work, &w,
                            &hooks));
    double t0 = pm_test_now_ms();
    ASSERT_OK(pm_map_destroy(m));
    ASSERT_DBL_LT(pm_test_now_ms() - t0, LIMIT_MS(500));
    ASSERT_EQ(hc.before, 0);
    ASSERT_UEQ(g.ntasks, 0);
    ASSERT_NO_CHILDREN();
}

TEST_IMPL(map_destroy_after_start)
{
    enum { NPROC = 4 };
    hook_ctx hc = {.exits = shared_counter()};
    pm_hooks hooks = {.ctx = &hc, .worker_exit = h_worker_exit};
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = NPROC;
    opt.nthreads = 2;
    tgen g = {.nitems = 1000, .max_count = 1};
    twork w = {0};
    pm_map *m;
    ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g, twork_work, &w,
                            &hooks));
    ASSERT_OK(pm_map_start(m));
    pid_t pids[NPROC];
    copy_pids(m, pids, NPROC);
    for (int i = 0; i < NPROC; i++) {
        ASSERT_GT(pids[i], 0);
        ASSERT_EQ(kill(pids[i], 0), 0);
    }
    sleep_ms((unsigned)LIMIT_MS(50)); /* let them settle into their sleep */
    /* Each worker must get to exit by itself (and run its hook) before the
     * grace ends in SIGKILL: under valgrind on a loaded machine 200 ms was
     * seen to be too short for 4 workers of 2 threads. */
    char grace[32];
    snprintf(grace, sizeof grace, "%d", (int)LIMIT_MS(500));
    setenv("PM_STOP_GRACE_MS", grace, 1);
    double t0 = pm_test_now_ms();
    ASSERT_OK(pm_map_destroy(m));
    ASSERT_DBL_LT(pm_test_now_ms() - t0, LIMIT_MS(2000));
    assert_gone(pids, NPROC);
    ASSERT_EQ(atomic_load(hc.exits), NPROC);
    ASSERT_UEQ(g.ntasks, 0);
    munmap(hc.exits, sizeof *hc.exits);
}

/* Stop reading after a few results with a million tasks to go. */
TEST_IMPL(map_destroy_early_break)
{
    for (int ordered = 0; ordered < 2; ordered++) {
        pm_options opt;
        pm_options_init(&opt);
        opt.nproc = 3;
        opt.nthreads = 2;
        opt.ordered = ordered;
        tgen g = {.nitems = 1000000, .max_count = 1};
        twork w = {0};
        pm_map *m;
        ASSERT_OK(
            pm_map_create(&m, &opt, tgen_produce, &g, twork_work, &w, NULL));
        pm_result res;
        for (int i = 0; i < 100; i++) {
            ASSERT_RC(pm_map_next(m, &res), 1);
            CHECK_RESULT(&g, &w, &res);
        }
        pid_t pids[3];
        copy_pids(m, pids, 3);
        double t0 = pm_test_now_ms();
        ASSERT_OK(pm_map_destroy(m));
        ASSERT_DBL_LT(pm_test_now_ms() - t0, LIMIT_MS(2000));
        assert_gone(pids, 3);
        ASSERT_LT(g.ntasks, 10000); /* destroy does not drain the input */
        tgen_free(&g);
    }
}

/* Destroy while one worker sleeps in its work function and the others are
 * blocked writing big results nobody reads. */
TEST_IMPL(map_destroy_while_workers_slow)
{
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 3;
    opt.ring_bytes = 4096;
    tgen g = {.nitems = 1000, .max_count = 1};
    twork w = {.slow_item = 5, .slow_ms = 30000, .result_pad = 64 * 1024};
    pm_map *m;
    ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g, twork_work, &w, NULL));
    pm_result res;
    for (int i = 0; i < 5; i++) {
        ASSERT_RC(pm_map_next(m, &res), 1);
        CHECK_RESULT(&g, &w, &res);
    }
    pid_t pids[3];
    copy_pids(m, pids, 3);
    sleep_ms(100);
    double t0 = pm_test_now_ms();
    ASSERT_OK(pm_map_destroy(m));
    ASSERT_DBL_LT(pm_test_now_ms() - t0, LIMIT_MS(2000));
    assert_gone(pids, 3);
    tgen_free(&g);
}

/* --- a map started by a thread that then ends -------------------------------- */

typedef struct starter {
    pm_options opt;
    tgen g;
    twork w;
    pm_map *m;
    int rc;
} starter;

static void *start_map(void *p)
{
    starter *s = p;
    s->rc = pm_map_create(&s->m, &s->opt, tgen_produce, &s->g, twork_work,
                          &s->w, NULL);
    if (s->rc == 0)
        s->rc = pm_map_start(s->m);
    /* One result: the workers are set up and serving when the thread
     * ends. */
    pm_result res;
    if (s->rc == 0 && (s->rc = pm_map_next(s->m, &res)) == 1) {
        CHECK_RESULT(&s->g, &s->w, &res);
        ASSERT_UEQ(res.task.first, 0);
        s->rc = 0;
    }
    return NULL;
}

/*
 * The map belongs to the process ("a process other than the one that
 * created the map"), not to the thread that happened to start it: the
 * workers must survive the end of that thread.
 */
TEST_IMPL(map_started_in_exited_thread)
{
    starter s;
    memset(&s, 0, sizeof s);
    pm_options_init(&s.opt);
    s.opt.nproc = 2;
    s.g.nitems = 200;
    s.g.max_count = 1;
    pthread_t th;
    ASSERT_EQ(pthread_create(&th, NULL, start_map, &s), 0);
    ASSERT_EQ(pthread_join(th, NULL), 0);
    ASSERT_OK(s.rc);
    sleep_ms(100);
    pm_result res;
    int rc;
    uint64_t next = 1;
    while ((rc = pm_map_next(s.m, &res)) == 1) {
        CHECK_RESULT(&s.g, &s.w, &res);
        ASSERT_UEQ(res.task.first, next);
        next++;
    }
    const pm_death *d = pm_map_death(s.m);
    ASSERT_MSG(rc == 0,
               "pm_map_next returned %s after %llu results: worker %d (pid "
               "%d) died, exit code %d, signal %d",
               pm_errname(rc), (unsigned long long)next, d ? d->worker : -1,
               d ? (int)d->pid : 0, d ? d->exit_code : 0, d ? d->signal : 0);
    ASSERT_UEQ(next, 200);
    ASSERT_OK(pm_map_destroy(s.m));
    ASSERT_NO_CHILDREN();
    tgen_free(&s.g);
}

/* A worker of one map is a fork of the caller and holds copies of its other
 * maps: it may not drive them either (a worker clears the flag that marks
 * a copy, not the one that marks a fork). */
static pm_map *other_map;

static int drive_other(void *ctx, const pm_task *task, const void *in,
                       size_t len, pm_writer *out)
{
    (void)ctx;
    (void)task;
    (void)in;
    (void)len;
    pm_result r;
    int32_t rc = pm_map_next(other_map, &r);
    return pm_write(out, &rc, sizeof rc);
}

TEST_IMPL(map_not_owner_in_a_worker)
{
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 2;
    tgen g = {.nitems = 200, .max_count = 1};
    twork w = {0};
    ASSERT_OK(pm_map_create(&other_map, &opt, tgen_produce, &g, twork_work, &w,
                            NULL));
    pm_result res;
    ASSERT_RC(pm_map_next(other_map, &res), 1);
    tgen g2 = {.nitems = 4, .max_count = 1};
    pm_map *m;
    ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g2, drive_other, NULL,
                            NULL));
    int rc, n = 0;
    while ((rc = pm_map_next(m, &res)) == 1) {
        int32_t v;
        ASSERT_UEQ(res.len, sizeof v);
        memcpy(&v, res.data, sizeof v);
        ASSERT_RC(v, PM_ENOTOWNER);
        n++;
    }
    ASSERT_RC(rc, 0);
    ASSERT_EQ(n, 4);
    ASSERT_OK(pm_map_destroy(m));
    uint64_t got = 1;
    while ((rc = pm_map_next(other_map, &res)) == 1)
        got++;
    ASSERT_RC(rc, 0);
    ASSERT_UEQ(got, 200);
    ASSERT_OK(pm_map_destroy(other_map));
    tgen_free(&g);
    tgen_free(&g2);
    ASSERT_NO_CHILDREN();
}
