/*
 * test_never_stuck.c -- what the timeout measures, stalled workers, orphans
 * of maps started in a thread, resource errors that name their cause, and
 * the work function's stdio flushed at the worker's exit.
 */
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "task.h"

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Runs the map to its end; returns the items delivered TIMEDOUT.  Every
 * other result is checked; the consumer naps nap_ms every nap_every. */
static int drain(pm_map *m, tgen *g, twork *w, int nap_every, unsigned nap_ms)
{
    pm_result res;
    int rc, timed = 0;
    uint64_t count = 0;
    while ((rc = pm_map_next(m, &res)) == 1) {
        if (res.status == PM_RESULT_TIMEDOUT)
            timed++;
        else
            CHECK_RESULT(g, w, &res);
        if (nap_every && ++count % (uint64_t)nap_every == 0)
            sleep_ms(nap_ms);
    }
    ASSERT_MSG(rc == 0, "pm_map_next returned %s", pm_errname(rc));
    return timed;
}

/* Results larger than half the ring, read slowly: the workers wait for
 * room far longer than the timeout, but their work takes microseconds. */
TEST_IMPL(map_timeout_not_ring_room)
{
    for (int nt = 1; nt <= 2; nt++) {
        pm_options opt;
        pm_options_init(&opt);
        opt.nproc = 2;
        opt.nthreads = nt;
        /* Both scaled (valgrind): the naps must stay longer than the
         * timeout, and a slow tool must not time out the work itself. */
        opt.timeout_ms = (int64_t)LIMIT_MS(200);
        opt.ring_bytes = 1u << 16;
        tgen g = {.nitems = N_(24, 12), .max_count = 1};
        twork w = {.result_pad = 40000, .chunk = 4096};
        pm_map *m;
        ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g, twork_work, &w,
                                NULL));
        ASSERT_EQ(drain(m, &g, &w, 4, (unsigned)LIMIT_MS(400)), 0);
        ASSERT_OK(pm_map_destroy(m));
        ASSERT_NO_CHILDREN();
        tgen_free(&g);
    }
}

/* A produce function that, after two tasks, waits for the workers to be
 * idle and SIGSTOPs worker 0. */
typedef struct stopper {
    tgen g;
    pm_map *m;
    pid_t stopped;
} stopper;

static int stopper_produce(void *ctx, pm_task *task, const void **data,
                           size_t *len)
{
    stopper *s = ctx;
    if (s->g.next == 2 && !s->stopped) {
        sleep_ms(200);
        int n;
        s->stopped = pm_map_pids(s->m, &n)[0];
        kill(s->stopped, SIGSTOP);
    }
    return tgen_produce(&s->g, task, data, len);
}

/* Tasks sent to a stopped idle worker never start: with a timeout, the
 * worker is noticed, replaced, and the tasks are run elsewhere, none
 * reported timed out. */
TEST_IMPL(map_stalled_worker)
{
    for (int ordered = 0; ordered < 2; ordered++) {
        pm_options opt;
        pm_options_init(&opt);
        opt.nproc = 2;
        opt.ordered = ordered;
        opt.timeout_ms = 300;
        stopper s;
        memset(&s, 0, sizeof s);
        s.g.nitems = 40;
        s.g.max_count = 1;
        twork w = {.sleep_ms = 5};
        ASSERT_OK(pm_map_create(&s.m, &opt, stopper_produce, &s, twork_work,
                                &w, NULL));
        ASSERT_EQ(drain(s.m, &s.g, &w, 0, 0), 0);
        ASSERT(s.stopped > 0);
        ASSERT_OK(pm_map_destroy(s.m));
        ASSERT_NO_CHILDREN();
        ASSERT(kill(s.stopped, 0) < 0 && errno == ESRCH);
        tgen_free(&s.g);
    }
}

/* --- orphans ------------------------------------------------------------ */

typedef struct orphan_run {
    int fd; /* where the thread writes the workers' pids */
    int nproc;
} orphan_run;

static void *orphan_thread(void *arg)
{
    orphan_run *r = arg;
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = r->nproc;
    tgen g = {.nitems = 40, .max_count = 1};
    twork w = {.sleep_ms = 2000};
    pm_map *m;
    if (pm_map_create(&m, &opt, tgen_produce, &g, twork_work, &w, NULL) < 0 ||
        pm_map_start(m) < 0)
        _exit(2);
    int n;
    const pid_t *pp = pm_map_pids(m, &n);
    if (write(r->fd, pp, (size_t)n * sizeof *pp) < 0)
        _exit(2);
    pm_result res;
    while (pm_map_next(m, &res) == 1)
        ;
    _exit(0);
}

/* A map started in a thread other than the main one: when its process is
 * SIGKILLed, the workers end at once (here they come to this process, a
 * subreaper), though each has seconds of work queued. */
TEST_IMPL(map_orphans_of_a_thread)
{
    ASSERT_OK(prctl(PR_SET_CHILD_SUBREAPER, 1));
    int p[2];
    ASSERT_OK(pipe(p));
    pid_t caller = fork();
    ASSERT(caller >= 0);
    if (caller == 0) {
        close(p[0]);
        orphan_run r = {p[1], 2};
        pthread_t th;
        if (pthread_create(&th, NULL, orphan_thread, &r) != 0)
            _exit(2);
        pthread_join(th, NULL);
        _exit(0);
    }
    close(p[1]);
    pid_t pids[2];
    ASSERT_EQ(read(p[0], pids, sizeof pids), (long long)sizeof pids);
    close(p[0]);
    sleep_ms(100);
    kill(caller, SIGKILL);
    ASSERT_EQ(waitpid(caller, NULL, 0), caller);
    double t0 = pm_test_now_ms();
    int left = 2;
    while (left && pm_test_now_ms() - t0 < LIMIT_MS(3000)) {
        for (int i = 0; i < 2; i++)
            if (pids[i] && waitpid(pids[i], NULL, WNOHANG) == pids[i]) {
                pids[i] = 0;
                left--;
            }
        sleep_ms(5);
    }
    for (int i = 0; i < 2; i++)
        if (pids[i])
            kill(pids[i], SIGKILL);
    ASSERT_MSG(left == 0, "%d worker(s) outlived their caller by 3 s", left);
}

/* --- resource errors ----------------------------------------------------- */

TEST_IMPL(map_mmap_failure_why)
{
    /* Rings of 64 TiB: more than the address space of a process (a low
     * RLIMIT_AS would do too, but not under the sanitizers or valgrind). */
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 2;
    opt.ring_bytes = (size_t)1 << 46;
    tgen g = {.nitems = 10, .max_count = 1};
    twork w = {0};
    pm_map *m;
    int rc = pm_map_create(&m, &opt, tgen_produce, &g, twork_work, &w, NULL);
    const char *why = pm_map_why(NULL);
    /* valgrind refuses such a length with EINVAL before the kernel sees it:
     * then only the call and the worker are named. */
    ASSERT_MSG(rc == -ENOMEM || rc == -EINVAL, "rc %s", pm_errname(rc));
    ASSERT_MSG(strstr(why, "mmap()") && strstr(why, "for worker ") &&
                   (rc == -EINVAL || (strstr(why, "vm.max_map_count") &&
                                      strstr(why, "memory"))),
               "why: %s", why);
    /* The next create clears it. */
    opt.nproc = 1;
    opt.ring_bytes = 0;
    ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g, twork_work, &w, NULL));
    ASSERT_STREQ(pm_map_why(NULL), "");
    ASSERT_STREQ(pm_map_why(m), "");
    ASSERT_OK(pm_map_destroy(m));
    tgen_free(&g);
}

TEST_IMPL(map_fork_failure_why)
{
    if (getuid() == 0) {
        /* Root is exempt from RLIMIT_NPROC. */
        ASSERT_OK(setgid(65534));
        ASSERT_OK(setuid(65534));
    }
    struct rlimit rl = {3, 3};
    ASSERT_OK(setrlimit(RLIMIT_NPROC, &rl));
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 8;
    tgen g = {.nitems = 10, .max_count = 1};
    twork w = {0};
    pm_map *m;
    ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g, twork_work, &w, NULL));
    ASSERT_RC(pm_map_start(m), -EAGAIN);
    const char *why = pm_map_why(m);
    ASSERT_MSG(strstr(why, "fork()") && strstr(why, "for worker ") &&
                   strstr(why, "of 8") && strstr(why, "RLIMIT_NPROC"),
               "why: %s", why);
    ASSERT_OK(pm_map_destroy(m));
    ASSERT_NO_CHILDREN();
    tgen_free(&g);
}

/* --- the work function's stdio ------------------------------------------- */

static int printf_work(void *ctx, const pm_task *task, const void *in,
                       size_t len, pm_writer *out)
{
    for (uint32_t i = 0; i < task->count; i++)
        printf("line %llu\n", (unsigned long long)(task->first + i));
    return twork_work(ctx, task, in, len, out);
}

/* With stdout a pipe (fully buffered), every line a work function printed
 * arrives: each worker flushes its stdio before it exits. */
TEST_IMPL(map_worker_printf_flushed)
{
    const uint64_t n = 1000;
    fflush(stdout);
    int p[2];
    ASSERT_OK(pipe(p));
    fcntl(p[0], F_SETPIPE_SZ, 1 << 20);
    int saved = dup(1);
    ASSERT(saved >= 0);
    ASSERT(dup2(p[1], 1) == 1);
    close(p[1]);
    /* As for a program whose stdout is a pipe (the runner makes it line
     * buffered for its own reports). */
    static char buf[BUFSIZ];
    setvbuf(stdout, buf, _IOFBF, sizeof buf);
    /* One worker process (two threads): the flushes of two processes'
     * buffers, larger than PIPE_BUF, could interleave inside a line. */
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 1;
    opt.nthreads = 2;
    tgen g = {.nitems = n, .max_count = 4};
    twork w = {0};
    pm_map *m;
    ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g, printf_work, &w, NULL));
    ASSERT_EQ(drain(m, &g, &w, 0, 0), 0);
    ASSERT_OK(pm_map_destroy(m));
    fflush(stdout);
    setvbuf(stdout, NULL, _IOLBF, 0);
    dup2(saved, 1);
    close(saved);
    char *seen = calloc(n, 1);
    ASSERT(seen != NULL);
    FILE *f = fdopen(p[0], "r");
    ASSERT(f != NULL);
    char line[64];
    uint64_t lines = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long long k;
        if (sscanf(line, "line %llu", &k) == 1 && k < n && !seen[k]) {
            seen[k] = 1;
            lines++;
        }
    }
    fclose(f);
    free(seen);
    ASSERT_UEQ(lines, n);
    tgen_free(&g);
}

/* --- a death wakes the parent -------------------------------------------- */

static int dying_work(void *ctx, const pm_task *task, const void *in,
                      size_t len, pm_writer *out)
{
    if (task->first % 2 == 1)
        kill(getpid(), SIGKILL);
    return twork_work(ctx, task, in, len, out);
}

/* One worker, every other task kills it: each death is noticed when it
 * happens (the parent sleeps on the workers' pidfds), not on the next nap
 * of the parent (50 ms each: 10 s for these 200 deaths). */
TEST_IMPL(map_death_wakes_parent)
{
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 1;
    opt.deliver_lost = 1;
    tgen g = {.nitems = 400, .max_count = 1};
    twork w = {0};
    pm_map *m;
    ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g, dying_work, &w, NULL));
    double t0 = pm_test_now_ms();
    pm_result res;
    int rc, lost = 0;
    uint64_t next = 0;
    while ((rc = pm_map_next(m, &res)) == 1) {
        ASSERT_UEQ(res.task.first, next);
        next++;
        if (res.status == PM_RESULT_DIED) {
            ASSERT_EQ(res.signal, SIGKILL);
            ASSERT_UEQ(res.task.first % 2, 1);
            lost++;
        } else {
            CHECK_RESULT(&g, &w, &res);
        }
    }
    double dt = pm_test_now_ms() - t0;
    ASSERT_OK(rc);
    ASSERT_EQ(lost, 200);
    ASSERT_DBL_LT(dt, LIMIT_MS(5000));
    ASSERT_OK(pm_map_destroy(m));
    ASSERT_NO_CHILDREN();
    tgen_free(&g);
}

static int hanging_work(void *ctx, const pm_task *task, const void *in,
                        size_t len, pm_writer *out)
{
    if (task->first % 2 == 0)
        sleep_ms(10000);
    return twork_work(ctx, task, in, len, out);
}

/* A 1 ms timeout fires when due, not on the parent's next nap (50 ms each:
 * 2 s for these 40 timeouts). */
TEST_IMPL(map_timeout_wakes_parent)
{
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 1;
    opt.timeout_ms = 1;
    tgen g = {.nitems = 80, .max_count = 1};
    twork w = {0};
    pm_map *m;
    ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g, hanging_work, &w,
                            NULL));
    double t0 = pm_test_now_ms();
    int timed = drain(m, &g, &w, 0, 0);
    double dt = pm_test_now_ms() - t0;
    ASSERT_GE(timed, 40);
    ASSERT_DBL_LT(dt, LIMIT_MS(1000));
    ASSERT_OK(pm_map_destroy(m));
    ASSERT_NO_CHILDREN();
    tgen_free(&g);
}
