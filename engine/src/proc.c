/* proc.c -- forking, stopping and reaping the worker processes. */
/* GNU and POSIX interfaces under any -std (builds may -D it too). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/prctl.h>
#include <sys/syscall.h>
#endif

#include "internal.h"

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

volatile int pm__forked = 0;

/* Runs in the child of every fork() of a process that has made a map, and
 * of its descendants (at-fork handlers are inherited): async-signal-safe,
 * two stores.  child_setup clears pm__forked_copy again in the engine's
 * own workers; pm__forked stays: a worker holds copies of its caller's
 * other maps, which it must not run. */
static void atfork_child(void)
{
    pm__forked_copy = 1;
    pm__forked = 1;
}

static void atfork_register(void)
{
    pthread_atfork(NULL, NULL, atfork_child);
}

/* Lets the mappings worker w needs into the next fork (or keeps them out
 * again), when the map keeps its mappings out of forks. */
static void let_fork(pm_map *m, int w, int let)
{
#ifdef MADV_DONTFORK
    int advice = let ? MADV_DOFORK : MADV_DONTFORK;
    if (!m->dontfork)
        return;
    madvise(m->ctl, ALIGN64(sizeof(pm_ctl)), advice);
    madvise(m->workers[w].shm, m->workers[w].shm_len, advice);
#else
    (void)m;
    (void)w;
    (void)let;
#endif
}

/* The worker's parent, for the signal handlers below (one map per worker
 * process: these are set once, in the child). */
static pid_t worker_parent, worker_pid;
static pm_map *worker_map;
static int worker_index;

#ifdef __linux__
/* Forked from a thread other than the main one, a worker is sent this signal
 * when that thread ends (PR_SET_PDEATHSIG is bound to the thread that
 * forked): then again when its new parent thread ends, and so on, and last
 * when the whole caller is gone and it is reparented to another process.
 * Only that last one ends it. */
#define PM_SIG_PDEATH (SIGRTMAX - 2)

static void on_parent_death(int sig)
{
    (void)sig;
    if (getppid() != worker_parent)
        _exit(0);
}
#endif

/*
 * Job control (Ctrl+Z, then fg): the whole process group gets SIGTSTP, then
 * SIGCONT (SIGTTIN and SIGTTOU are handled alike).  The worker stops itself
 * as the default action would (which the kernel skips in an orphaned
 * process group), and once continued moves the
 * start of its running tasks past the stop, so that a timeout counts only
 * the time the group ran.  stopped_at tells the parent, which was stopped
 * too, not to judge the worker's tasks meanwhile.  Async-signal-safe: the
 * clock, sigaction, raise and atomics on the worker's own shared memory.
 */
static void on_tstp(int sig)
{
    int saved = errno;
    pm_map *m = worker_map;
    /* A process the work function forked inherits the handler, not the
     * worker's shared words: it stops as by default. */
    pm_wctl *c = getpid() == worker_pid ? m->workers[worker_index].wctl
                                         : NULL;
    uint64_t t0 = pm__now_ns();
    if (c)
        atomic_store_explicit(&c->stopped_at, t0, memory_order_seq_cst);
    struct sigaction dfl, mine;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    sigemptyset(&dfl.sa_mask);
    sigaction(sig, &dfl, &mine);
    raise(sig); /* stops here until SIGCONT (not in an orphaned group) */
    sigaction(sig, &mine, NULL);
    if (!c) {
        errno = saved;
        return;
    }
    uint64_t stopped = pm__now_ns() - t0;
    for (int t = 0; t < m->opt.nthreads; t++) {
        _Atomic uint64_t *start = &pm__slot_ctl(m, worker_index, t)->run_start_ns;
        uint64_t s0 = atomic_load(start);
        while (s0 && s0 != PM_CLOCK_PAUSED &&
               !atomic_compare_exchange_weak(start, &s0, s0 + stopped))
            ;
    }
    atomic_fetch_add_explicit(&c->stops, 1, memory_order_seq_cst);
    atomic_store_explicit(&c->stopped_at, 0, memory_order_seq_cst);
    errno = saved;
}

/*
 * OOM ordering: a worker makes itself the kernel's first choice when memory
 * runs out (oom_score_adj 1000, the most; any process may raise its own), so
 * that the OOM killer takes a worker -- whose item is then reported, or run
 * again -- and not the caller, which holds every result so far and would
 * take every worker with it.  Best effort: without /proc nothing changes.
 */
static void oom_first(void)
{
#ifdef __linux__
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (write(fd, "1000", 4) < 0) {
            /* e.g. a sandbox without it: the kernel's own choice stands */
        }
        close(fd);
    }
#endif
}

/* Runs in the child right after fork(): nothing here may return into the
 * caller's frames. */
static void child_setup(pm_map *m, int w, const sigset_t *oldmask,
                        int from_main_thread)
{
    pm__forked_copy = 0; /* this one is a worker, not a copy */
    oom_first();
    /* Isolation: a worker keeps only its own rings (and the parent's bell),
     * so a wild write can damage nothing but its own slots.  With dontfork
     * the others were not inherited at all; unmapping their (empty) ranges
     * anyway, before anything can map memory there, tells tools that track
     * mappings (valgrind, whose leak scan would fault on every page). */
    for (int i = 0; i < m->opt.nproc; i++) {
        if (i != w && m->workers[i].shm) {
            munmap(m->workers[i].shm, m->workers[i].shm_len);
            m->workers[i].shm = NULL;
        }
    }
    /* Its own mappings are its alone: not inherited by its children (a
     * fork() in the work function, the workers of a map it starts). */
    let_fork(m, w, 0);
    if (m->hooks.after_fork_child)
        m->hooks.after_fork_child(m->hooks.ctx, w);
    worker_parent = m->creator;
    worker_pid = getpid();
    worker_map = m;
    worker_index = w;
    sigset_t mask = *oldmask;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
#ifdef __linux__
    /* Die with the parent.  PDEATHSIG fires when the *thread* that forked
     * exits.  From the main thread (whose end is the process's) it is
     * SIGKILL; from another thread, a signal whose handler ends the worker
     * only once the parent process is gone (see on_parent_death), so that
     * the workers of a map started in any thread -- a thread of the caller,
     * a worker thread of an outer map -- die with their caller.  If the
     * parent is already gone, PDEATHSIG came too late: check. */
    if (from_main_thread) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
    } else {
        sa.sa_handler = on_parent_death;
        sa.sa_flags = SA_RESTART;
        sigaction(PM_SIG_PDEATH, &sa, NULL);
        sigdelset(&mask, PM_SIG_PDEATH);
        prctl(PR_SET_PDEATHSIG, PM_SIG_PDEATH);
    }
#else
    (void)from_main_thread;
#endif
    if (getppid() != m->creator)
        _exit(0);
    /* Job control; SIGTTIN and SIGTTOU stop a background job that uses the
     * terminal.  Only where the caller left the default: a caller that
     * ignores them (to write to the terminal from the background) or
     * handles them keeps its choice. */
    static const int stops[] = {SIGTSTP, SIGTTIN, SIGTTOU};
    sa.sa_handler = on_tstp;
    sa.sa_flags = SA_RESTART | SA_NODEFER;
    for (int i = 0; i < 3; i++) {
        struct sigaction cur;
        if (sigaction(stops[i], NULL, &cur) == 0 && cur.sa_handler == SIG_DFL)
            sigaction(stops[i], &sa, NULL);
    }
    /* Ctrl+C goes to the whole process group: the parent handles it and
     * stops the workers; they must not print tracebacks of their own. */
    sa.sa_handler = SIG_IGN;
    sa.sa_flags = 0;
    sigaction(SIGINT, &sa, NULL);
    pthread_sigmask(SIG_SETMASK, &mask, NULL);
    pm__worker_main(m, w);
}

/* Held from letting a worker's mappings into a fork until they are kept
 * out again: another map's spawn in another thread would otherwise fork
 * with them. */
static pthread_mutex_t spawn_lock = PTHREAD_MUTEX_INITIALIZER;

static int exit_fd(pm_map *m, int w);

static void close_pidfd(pm_worker *wk)
{
    if (wk->pidfd >= 0) {
        close(wk->pidfd);
        wk->pidfd = -1;
    }
}

void pm__watch_forks(void)
{
    pthread_once(&atfork_once, atfork_register);
}

int pm__spawn(pm_map *m, int w)
{
    pm__watch_forks();
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    if (m->hooks.before_fork)
        m->hooks.before_fork(m->hooks.ctx);
    /* Output the caller has buffered in stdio would otherwise be written
     * again by any worker that calls exit(). */
    fflush(NULL);
#ifdef __linux__
    int from_main_thread = getpid() == (pid_t)syscall(SYS_gettid);
#else
    int from_main_thread = 0;
#endif
    pthread_mutex_lock(&spawn_lock);
    let_fork(m, w, 1);
    pid_t pid = fork();
    int err = pid < 0 ? -errno : 0;
    if (pid == 0) {
        /* The child is the thread that locked it (a worker may start maps
         * of its own). */
        pthread_mutex_unlock(&spawn_lock);
        child_setup(m, w, &old, from_main_thread); /* never returns */
    }
    let_fork(m, w, 0);
    pthread_mutex_unlock(&spawn_lock);
    if (err)
        pm__explain(m->why, sizeof m->why, "fork", err, w, m->opt.nproc, 0);
    if (m->hooks.after_fork_parent)
        m->hooks.after_fork_parent(m->hooks.ctx);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (err)
        return err;
    m->workers[w].pid = pid;
    m->workers[w].state = PM_W_RUNNING;
    m->workers[w].pidfd = exit_fd(m, w); /* -1: the parent naps instead */
    m->workers[w].finishing = 0;
    m->workers[w].retiring = 0;
    m->workers[w].items_sent = 0;
    /* The fork copied the caller's page tables: what the worker holds at
     * birth is the caller's, not its own. */
    if (m->opt.max_rss_bytes)
        m->workers[w].rss_base = pm__rss_bytes(pid);
    m->pids[w] = pid;
    return 0;
}

int pm__try_reap(pm_map *m, int w)
{
    pm_worker *wk = &m->workers[w];
    if (wk->state != PM_W_RUNNING)
        return 0;
    int status = 0;
    pid_t r = waitpid(wk->pid, &status, WNOHANG);
    if (r == 0)
        return 0;
    if (r < 0) {
        if (errno == EINTR)
            return 0;
        /* ECHILD: someone else reaped it (SIGCHLD ignored, or the caller
         * waits for any child): how it ended is unknown. */
        status = PM_WAIT_UNKNOWN;
    }
    wk->status = status;
    wk->state = PM_W_REAPED;
    m->pids[w] = 0;
    close_pidfd(wk);
    return 1;
}

void pm__decode_status(int st, int *signal, int *exit_code)
{
    if (st == PM_WAIT_UNKNOWN) {
        *signal = 0;
        *exit_code = PM_EXIT_UNKNOWN;
    } else if (WIFSIGNALED(st)) {
        *signal = WTERMSIG(st);
        *exit_code = -1;
    } else {
        *signal = 0;
        *exit_code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    }
}

static void sleep_us(long us)
{
    struct timespec ts = {us / 1000000, (us % 1000000) * 1000L};
    nanosleep(&ts, NULL);
}

uint64_t pm__rss_bytes(pid_t pid)
{
#ifdef __linux__
    char path[64], buf[128];
    snprintf(path, sizeof path, "/proc/%d/statm", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    unsigned long long size = 0, resident = 0;
    if (sscanf(buf, "%llu %llu", &size, &resident) != 2)
        return 0;
    return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
#else
    (void)pid;
    return 0;
#endif
}

void pm__kill_reap(pm_map *m, int w)
{
    pm_worker *wk = &m->workers[w];
    if (wk->state != PM_W_RUNNING)
        return;
    kill(wk->pid, SIGKILL);
    int status = 0;
    pid_t r;
    while ((r = waitpid(wk->pid, &status, 0)) < 0 && errno == EINTR)
        ;
    wk->status = r < 0 ? PM_WAIT_UNKNOWN : status; /* reaped elsewhere */
    wk->state = PM_W_REAPED;
    m->pids[w] = 0;
    close_pidfd(wk);
}

#ifdef __linux__
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#endif

/* A descriptor that becomes readable when worker w exits (Linux 5.3+), or
 * -1. */
static int exit_fd(pm_map *m, int w)
{
#ifdef __linux__
    if (m->workers[w].state == PM_W_RUNNING)
        return (int)syscall(SYS_pidfd_open, m->workers[w].pid, 0);
#else
    (void)m;
    (void)w;
#endif
    return -1;
}

/*
 * Exit descriptors of the running workers, one per worker (-1 for the
 * others): in stack when nproc fits, else allocated.  Returns NULL when
 * the kernel has no such descriptors (or memory is short): the caller then
 * naps between polls.
 */
static struct pollfd *exit_fds_open(pm_map *m, struct pollfd *stack, int n)
{
    int nproc = m->opt.nproc;
    struct pollfd *fds = nproc <= n ? stack : malloc((size_t)nproc * sizeof *fds);
    int ok = fds != NULL;
    for (int w = 0; ok && w < nproc; w++) {
        fds[w].fd = exit_fd(m, w);
        fds[w].events = POLLIN;
        ok = fds[w].fd >= 0 || m->workers[w].state != PM_W_RUNNING;
        if (!ok)
            nproc = w; /* close what was opened */
    }
    if (ok || !fds)
        return fds;
    for (int w = 0; w < nproc; w++)
        if (fds[w].fd >= 0)
            close(fds[w].fd);
    if (fds != stack)
        free(fds);
    return NULL;
}

static void exit_fd_close(struct pollfd *fds, int w)
{
    if (fds && fds[w].fd >= 0) {
        close(fds[w].fd);
        fds[w].fd = -1; /* poll skips it */
    }
}

void pm__stop_all(pm_map *m, int grace_ms)
{
    int running = 0;
    for (int w = 0; w < m->opt.nproc; w++) {
        pm_worker *wk = &m->workers[w];
        if (wk->state != PM_W_RUNNING)
            continue;
        running++;
        atomic_store_explicit(&wk->wctl->stop, 1, memory_order_seq_cst);
        for (int t = 0; t < m->opt.nthreads; t++)
            pm__bell_ring(&pm__slot_ctl(m, w, t)->bell);
    }
    if (!running)
        return;
    if (m->hooks.wait_begin)
        m->hooks.wait_begin(m->hooks.ctx);
    /* Wake at the exits themselves where the kernel can say when they
     * happen: an exiting Python worker takes milliseconds to tear down its
     * address space, and a nap would overshoot by up to its own length. */
    struct pollfd stack_fds[16];
    struct pollfd *fds = exit_fds_open(m, stack_fds, 16);
    uint64_t deadline = pm__now_ns() + (uint64_t)grace_ms * 1000000u;
    long nap_us = 20; /* idle workers exit within tens of microseconds */
    for (;;) {
        running = 0;
        for (int w = 0; w < m->opt.nproc; w++) {
            pm__try_reap(m, w);
            if (m->workers[w].state == PM_W_RUNNING)
                running++;
            else
                exit_fd_close(fds, w);
        }
        uint64_t now = pm__now_ns();
        if (!running || now >= deadline)
            break;
        if (fds) {
            poll(fds, (nfds_t)m->opt.nproc,
                 (int)((deadline - now + 999999u) / 1000000u));
        } else {
            sleep_us(nap_us);
            if (nap_us < 1000)
                nap_us *= 2;
        }
    }
    for (int w = 0; w < m->opt.nproc; w++) {
        exit_fd_close(fds, w);
        pm__kill_reap(m, w);
    }
    if (fds != stack_fds)
        free(fds);
    if (m->hooks.wait_end)
        m->hooks.wait_end(m->hooks.ctx);
}
