/*
 * runner.c -- a tiny test runner in the style of libuv's test/runner.c.
 *
 *   runner                  run every test, each in a forked child with a
 *                           deadline; one line per test, then "N passed, M
 *                           failed"; exit status 1 when any failed
 *   runner NAME...          run the named tests in this process (no fork, no
 *                           deadline): for gdb (break on pm_test_fail)
 *   runner --list           list the tests
 *   runner --match SUBSTR   run only tests whose name contains SUBSTR
 *                           (repeatable; forked as usual)
 *   runner --no-fork        run the selected tests in this process, one after
 *                           the other (also PM_TEST_NOFORK=1)
 *   runner --timeout SEC    per-test deadline (also PM_TEST_TIMEOUT; 30 s)
 *   runner -v               print each test's time
 *
 * Environment: PM_TEST_QUICK=1 shrinks iteration counts (valgrind);
 * PM_TEST_TIME_SCALE=X stretches the tests' own time limits.
 *
 * Each forked test runs in a process group of its own, and the runner is a
 * child subreaper: when the test ends, any process still in its group (a
 * worker the engine forgot to reap, an orphan) makes the test fail and is
 * killed, so that nothing leaks into the next test.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "task.h"

#define TESTS(X)                                                               \
    X(errors_every_code)                                                       \
    X(errors_int_min)                                                          \
    X(cpu_cgroup_quota)                                                        \
    X(cpu_affinity_default_workers)                                            \
    X(errors_names_and_callback_range)                                         \
    X(errors_version)                                                          \
    X(ring_small_roundtrip)                                                    \
    X(ring_empty_message)                                                      \
    X(ring_put_whole_messages)                                                 \
    X(ring_wraparound_prng)                                                    \
    X(ring_large_message_procs)                                                \
    X(ring_tx_end_eagain)                                                      \
    X(ring_corrupt_header)                                                     \
    X(ring_spsc_procs)                                                         \
    X(ring_spsc_threads)                                                       \
    X(ring_geometry_stays_private)                                             \
    X(ring_bad_counters)                                                       \
    X(map_worker_scribbles_geometry)                                           \
    X(map_worker_scribbles_geometry_threads_unordered)                         \
    X(map_worker_scribbles_result_head)                                        \
    X(map_worker_scribbles_result_head_unordered)                              \
    X(map_worker_scribbles_result_head_retries)                                \
    X(map_worker_scribbles_task_tail)                                          \
    X(map_worker_scribbles_task_tail_behind)                                   \
    X(map_worker_scribbles_task_tail_retries)                                  \
    X(map_rings_reach_only_own_workers)                                        \
    X(map_worker_reaped_elsewhere)                                             \
    X(job_worker_reaped_elsewhere)                                             \
    X(bell_futex_timeout)                                                      \
    X(bell_pingpong_threads)                                                   \
    X(bell_pingpong_procs)                                                     \
    X(map_options_and_einval)                                                  \
    X(map_ordered_p1)                                                          \
    X(map_ordered_p2)                                                          \
    X(map_ordered_p3)                                                          \
    X(map_ordered_p8)                                                          \
    X(map_ordered_p1_threads3)                                                 \
    X(map_ordered_p2_threads3)                                                 \
    X(map_ordered_p3_threads3)                                                 \
    X(map_ordered_p8_threads3)                                                 \
    X(map_ordered_window1)                                                     \
    X(map_odd_windows_sweep)                                                   \
    X(job_odd_windows_sweep)                                                   \
    X(job_slow_feed_odd_windows)                                               \
    X(map_unordered_p1)                                                        \
    X(map_unordered_p3)                                                        \
    X(map_unordered_p8_threads3)                                               \
    X(map_unordered_not_blocked_by_slow_task)                                  \
    X(map_empty_results_and_tasks)                                             \
    X(map_big_results)                                                         \
    X(map_take_result)                                                         \
    X(map_big_results_unordered_threads2)                                      \
    X(map_gather_pieces_threads)                                               \
    X(map_gather_released_on_destroy)                                          \
    X(map_gather_retry)                                                        \
    X(map_gather_einval)                                                       \
    X(map_gather_volatile)                                                     \
    X(map_input_thread)                                                         \
    X(map_input_thread_unordered)                                              \
    X(map_take_input)                                                          \
    X(map_big_tasks)                                                           \
    X(map_big_tasks_and_results)                                               \
    X(map_many_workers)                                                        \
    X(map_zero_tasks)                                                          \
    X(map_produce_error)                                                       \
    X(map_worker_exit3)                                                        \
    X(map_worker_exit3_threads3)                                               \
    X(map_worker_sigkill)                                                      \
    X(map_worker_sigkill_unordered)                                            \
    X(map_work_returns_negative)                                               \
    X(map_last_worker_death_keeps_done_results)                                \
    X(map_check_hook_aborts)                                                   \
    X(map_hooks)                                                               \
    X(map_not_owner)                                                           \
    X(map_not_owner_in_a_worker)                                               \
    X(map_destroy_before_start)                                                \
    X(map_destroy_after_start)                                                 \
    X(map_destroy_early_break)                                                 \
    X(map_destroy_while_workers_slow)                                          \
    X(map_started_in_exited_thread)                                            \
    X(map_retry_recovers)                                                      \
    X(map_respawn_options)                                                     \
    X(map_retry_recovers_p3_threads2)                                          \
    X(map_retry_exhausted)                                                     \
    X(map_timeout)                                                             \
    X(map_retry_timeout_unused)                                                \
    X(map_finish_early)                                                        \
    X(map_finish_then_crash)                                                   \
    X(map_route_results_threads)                                                       \
    X(map_route_tasks_threads)                                                         \
    X(map_route_failures)                                                      \
    X(job_every_way)                                                           \
    X(job_every_way_threads)                                                   \
    X(job_feed_error)                                                          \
    X(job_feed_from_a_thread)                                                  \
    X(job_big_records)                                                         \
    X(job_empty_input)                                                         \
    X(job_crashes)                                                             \
    X(job_crash_after_finish)                                                  \
    X(job_crash_status)                                                        \
    X(job_retries)                                                             \
    X(job_threads_crash_blame)                                                 \
    X(job_threads_crash_big_results)                                           \
    X(job_threads_share_one_job)                                               \
    X(job_threads_hand_over)                                                   \
    X(job_callbacks_reenter)                                                   \
    X(job_refusals_keep_the_job)                                               \
    X(job_options_size)                                                        \
    X(job_take_result)                                                         \
    X(job_corrupt_worker_named)                                                \
    X(job_bad_trailer_worker_named)                                            \
    X(job_failed_items)                                                        \
    X(job_timeout)                                                             \
    X(job_progress)                                                            \
    X(job_run_callback)                                                        \
    X(job_misuse)                                                              \
    X(job_fn_forks)                                                             \
    X(job_oom_score)                                                            \
    X(job_max_items_per_worker)                                                 \
    X(job_max_rss)                                                              \
    X(map_timeout_not_ring_room)                                               \
    X(map_stalled_worker)                                                      \
    X(map_orphans_of_a_thread)                                                 \
    X(map_mmap_failure_why)                                                    \
    X(map_fork_failure_why)                                                    \
    X(map_worker_printf_flushed)                                              \
    X(map_death_wakes_parent)                                                 \
    X(map_timeout_wakes_parent)

#define DECLARE(name) TEST_IMPL(name);
TESTS(DECLARE)
#undef DECLARE

typedef struct test_entry {
    const char *name;
    void (*fn)(void);
} test_entry;

static const test_entry tests[] = {
#define ENTRY(name) {#name, test_##name},
    TESTS(ENTRY)
#undef ENTRY
};
#define NTESTS ((int)(sizeof tests / sizeof tests[0]))

/* --- state shared by the runner, its test child and their helpers -------- */

typedef struct shared_state {
    _Atomic int failed;
    char msg[2048];
} shared_state;

int pm_test_quick;
double pm_test_time_scale = 1.0;

static shared_state *sh;
static pid_t main_pid;      /* the process running the test function */
static pthread_t main_thread;
static int in_process;      /* tests run in the runner itself */
static jmp_buf fail_jump;   /* in-process: back to the runner on failure */
static int fail_jump_armed;

double pm_test_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

void pm_test_fail(const char *file, int line, const char *fmt, ...)
{
    char buf[sizeof sh->msg];
    int n = snprintf(buf, sizeof buf, "%s:%d: ", file, line);
    if (n < 0)
        n = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
    va_end(ap);
    if (getpid() != main_pid) {
        /* A helper or a worker: say who, for the report. */
        size_t l = strlen(buf);
        snprintf(buf + l, sizeof buf - l, " [in child process %d]",
                 (int)getpid());
    }
    int expect = 0;
    if (atomic_compare_exchange_strong(&sh->failed, &expect, 1))
        memcpy(sh->msg, buf, sizeof buf);
    fprintf(stderr, "%s\n", buf);
    fflush(stderr);
    if (in_process && getpid() == main_pid && fail_jump_armed &&
        pthread_equal(pthread_self(), main_thread))
        longjmp(fail_jump, 1); /* only from the test's own thread */
    _exit(1);
}

pid_t pm_test_fork(void)
{
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    ASSERT_MSG(pid >= 0, "fork: %s", strerror(errno));
    return pid;
}

void pm_test_wait_helper(pid_t pid, const char *file, int line)
{
    int st = 0;
    pid_t r;
    while ((r = waitpid(pid, &st, 0)) < 0 && errno == EINTR)
        ;
    if (r != pid)
        pm_test_fail(file, line, "waitpid(%d): %s", (int)pid, strerror(errno));
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        if (atomic_load(&sh->failed))
            pm_test_fail(file, line, "helper %d failed: %s", (int)pid,
                         sh->msg);
        pm_test_fail(file, line, "helper %d ended with %s %d", (int)pid,
                     WIFEXITED(st) ? "status" : "signal",
                     WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
    }
}

void pm_test_assert_no_children(const char *file, int line)
{
    int st;
    errno = 0;
    pid_t r = waitpid(-1, &st, WNOHANG);
    if (r == 0)
        pm_test_fail(file, line, "a child process is still running");
    if (r > 0)
        pm_test_fail(file, line, "an unreaped child %d was left (status 0x%x)",
                     (int)r, st);
    if (errno != ECHILD)
        pm_test_fail(file, line, "waitpid(-1): %s", strerror(errno));
}

/* --- running ------------------------------------------------------------- */

static void reset_shared(void)
{
    atomic_store(&sh->failed, 0);
    sh->msg[0] = 0;
}

/* In-process runs: after a failed test, kill and reap the children it left
 * (its map was not destroyed), so that the next test starts clean. */
static void kill_my_children(void)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task/%d/children", (int)getpid(),
             (int)getpid());
    FILE *f = fopen(path, "r");
    if (f) {
        int pid;
        while (fscanf(f, "%d", &pid) == 1)
            kill(pid, SIGKILL);
        fclose(f);
    }
    double deadline = pm_test_now_ms() + 2000;
    for (;;) {
        pid_t r = waitpid(-1, NULL, WNOHANG);
        if (r < 0 || pm_test_now_ms() > deadline)
            break;
        if (r == 0) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        }
    }
}

/* Runs a test in this process.  Returns 1 when it passed. */
static int run_in_process(const test_entry *t, char *why, size_t whylen)
{
    reset_shared();
    main_pid = getpid();
    main_thread = pthread_self();
    fail_jump_armed = 1;
    if (setjmp(fail_jump) == 0)
        t->fn();
    fail_jump_armed = 0;
    if (atomic_load(&sh->failed)) {
        snprintf(why, whylen, "%s", sh->msg);
        kill_my_children();
        return 0;
    }
    return 1;
}

/* Kills what is left in the test's process group and reaps whatever got
 * reparented to the runner (it is a subreaper).  Returns how many processes
 * were left. */
static int clean_group(pid_t pgid)
{
    int existed = 0, reaped = 0;
    if (kill(-pgid, 0) == 0) {
        kill(-pgid, SIGKILL);
        existed = 1;
    }
    double deadline = pm_test_now_ms() + 2000;
    for (;;) {
        int st;
        pid_t r = waitpid(-1, &st, WNOHANG);
        if (r > 0) {
            reaped++;
            continue;
        }
        if (r < 0 && errno == ECHILD)
            break;
        if (kill(-pgid, 0) != 0 && errno == ESRCH)
            break;
        if (pm_test_now_ms() > deadline)
            break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return existed && !reaped ? 1 : reaped;
}

static int run_forked(const test_entry *t, double timeout_ms, char *why,
                      size_t whylen)
{
    reset_shared();
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(why, whylen, "fork: %s", strerror(errno));
        return 0;
    }
    if (pid == 0) {
        setpgid(0, 0);
        main_pid = getpid();
        main_thread = pthread_self();
        t->fn();
        fflush(stdout);
        exit(0); /* exit, not _exit: LeakSanitizer and valgrind look here */
    }
    setpgid(pid, pid);
    double deadline = pm_test_now_ms() + timeout_ms;
    int st = 0, timed_out = 0;
    for (;;) {
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR) {
            snprintf(why, whylen, "waitpid: %s", strerror(errno));
            return 0;
        }
        if (pm_test_now_ms() > deadline) {
            timed_out = 1;
            kill(-pid, SIGKILL);
            kill(pid, SIGKILL);
            while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
                ;
            break;
        }
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    int left = clean_group(pid);
    if (timed_out) {
        snprintf(why, whylen, "timed out after %.0f s%s%s", timeout_ms / 1000,
                 atomic_load(&sh->failed) ? "; " : "",
                 atomic_load(&sh->failed) ? sh->msg : "");
        return 0;
    }
    if (atomic_load(&sh->failed)) {
        snprintf(why, whylen, "%s", sh->msg);
        return 0;
    }
    if (WIFSIGNALED(st)) {
        snprintf(why, whylen, "killed by signal %d (%s)", WTERMSIG(st),
                 strsignal(WTERMSIG(st)));
        return 0;
    }
    if (WEXITSTATUS(st) != 0) {
        int code = WEXITSTATUS(st);
        snprintf(why, whylen, "exit status %d%s", code,
                 code == 99   ? " (valgrind found errors: see its report)"
                 : code == 23 ? " (LeakSanitizer found leaks: see its report)"
                 : code == 66 ? " (ThreadSanitizer report: see stderr)"
                              : " without a failed assertion (a sanitizer "
                                "report? see stderr)");
        return 0;
    }
    if (left) {
        snprintf(why, whylen, "left %d process(es) behind", left);
        return 0;
    }
    return 1;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: runner [--list] [--match SUBSTR]... [--no-fork] "
               "[--timeout SEC] [-v] [NAME...]\n");
}

int main(int argc, char **argv)
{
    const char *matches[64];
    int nmatch = 0, list = 0, verbose = 0;
    const char *names[256];
    int nnames = 0;
    double timeout_s = 30;
    in_process = getenv("PM_TEST_NOFORK") && atoi(getenv("PM_TEST_NOFORK"));
    if (getenv("PM_TEST_TIMEOUT"))
        timeout_s = atof(getenv("PM_TEST_TIMEOUT"));
    pm_test_quick = getenv("PM_TEST_QUICK") && atoi(getenv("PM_TEST_QUICK"));
    if (getenv("PM_TEST_TIME_SCALE"))
        pm_test_time_scale = atof(getenv("PM_TEST_TIME_SCALE"));
    if (pm_test_time_scale < 1)
        pm_test_time_scale = 1;

    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--list")) {
            list = 1;
        } else if (!strcmp(argv[i], "--match") && i + 1 < argc) {
            if (nmatch < 64)
                matches[nmatch++] = argv[++i];
        } else if (!strcmp(argv[i], "--no-fork")) {
            in_process = 1;
        } else if (!strcmp(argv[i], "--timeout") && i + 1 < argc) {
            timeout_s = atof(argv[++i]);
        } else if (!strcmp(argv[i], "-v")) {
            verbose = 1;
        } else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
            usage(stdout);
            return 0;
        } else if (argv[i][0] == '-') {
            usage(stderr);
            return 2;
        } else if (nnames < 256) {
            names[nnames++] = argv[i];
        }
    }
    if (list) {
        for (int i = 0; i < NTESTS; i++)
            printf("%s\n", tests[i].name);
        return 0;
    }

    /* Select. */
    int selected[NTESTS];
    int nsel = 0;
    if (nnames) {
        in_process = 1; /* named tests: in this process, for the debugger */
        for (int j = 0; j < nnames; j++) {
            int found = 0;
            for (int i = 0; i < NTESTS; i++)
                if (!strcmp(tests[i].name, names[j])) {
                    selected[nsel++] = i;
                    found = 1;
                    break;
                }
            if (!found) {
                fprintf(stderr, "runner: no test named %s\n", names[j]);
                return 2;
            }
        }
    } else {
        for (int i = 0; i < NTESTS; i++) {
            int keep = nmatch == 0;
            for (int j = 0; j < nmatch && !keep; j++)
                keep = strstr(tests[i].name, matches[j]) != NULL;
            if (keep)
                selected[nsel++] = i;
        }
    }

    sh = mmap(NULL, sizeof *sh, PROT_READ | PROT_WRITE,
              MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    main_pid = getpid();
    if (!in_process)
        prctl(PR_SET_CHILD_SUBREAPER, 1);
    setvbuf(stdout, NULL, _IOLBF, 0);

    int passed = 0, failed = 0;
    double t_all = pm_test_now_ms();
    for (int k = 0; k < nsel; k++) {
        const test_entry *t = &tests[selected[k]];
        char why[sizeof sh->msg + 128];
        why[0] = 0;
        double t0 = pm_test_now_ms();
        int ok = in_process ? run_in_process(t, why, sizeof why)
                            : run_forked(t, timeout_s * 1000, why, sizeof why);
        double dt = pm_test_now_ms() - t0;
        if (ok) {
            passed++;
            if (verbose)
                printf("ok %s (%.2f s)\n", t->name, dt / 1000);
            else
                printf("ok %s\n", t->name);
        } else {
            failed++;
            printf("FAIL %s: %s\n", t->name, why);
        }
    }
    if (verbose)
        fprintf(stderr, "total %.2f s\n", (pm_test_now_ms() - t_all) / 1000);
    printf("%d passed, %d failed\n", passed, failed);
    munmap(sh, sizeof *sh);
    if (nsel == 0)
        return 2;
    return failed ? 1 : 0;
}
