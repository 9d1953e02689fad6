/* worker.c -- the worker process: serve tasks from its rings, write results. */
/* GNU and POSIX interfaces under any -std (builds may -D it too). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define WORKER_SLEEP_MS 100

volatile int pm__forked_copy = 0; /* set and cleared by proc.c */

/*
 * One worker thread's whole context: the worker ends of one slot's rings,
 * the task being assembled, its place at the gate, what pm_write() has
 * counted.  pm.h calls it pm_writer, for the work function sees it only as
 * where its result goes (pm_write(), pm_writer_item()...); here it is a
 * pm_wthread, and the public calls take it under the public name.
 */
typedef struct pm_writer pm_wthread;

struct pm_writer {
    pm_map *m;
    pm_slot_ctl *ctl;
    pm_wctl *wctl;
    pm_ring_rx rx; /* tasks */
    pm_ring_tx tx; /* results */
    pm_spin spin;
    pm_asm assembly;    /* a large or wrapped task, being assembled */
    int in_buf;         /* the running task's input is in assembly.buf */
    void *routed;       /* the running task's routed ranges' owner */
    uint64_t written; /* bytes passed to pm_write() so far */
    uint64_t item;    /* pm_writer_item() */
    _Atomic int busy; /* nthreads > 1: a task of this thread is running */
    int gate_held;    /* GATE_* */
};

enum { GATE_NONE, GATE_BUSY, GATE_SOLO };

/*
 * With several threads, a task the parent suspects (it was running when a
 * worker died with other threads running too: PM_MSG_MAGIC_SOLO) runs
 * alone in the process, so that a crash during it is its own: it raises
 * gate.solo and waits until no other thread runs a task, and the others
 * wait for it before they start one.  While waiting, a thread is not
 * running its task (run_start_ns is 0), so the parent charges a death then
 * to the one task that was running.  A thread that waits for room in its
 * result ring lets the gate go (the parent may be waiting, in order, for
 * the result of the thread that waits for it): exclusivity is then lost for
 * the rest of that task, which costs precision (a death during it is
 * nobody's again, see handle_dead), never progress.  A Dekker pair (busy, solo), seq_cst:
 * an ordinary task costs one store and one load.  Process-local: each
 * worker has its own copy.
 */
static struct {
    _Atomic int solo;
    pm_wthread *ws;
    int nt;
} gate;

/* Waits a little for the gate.  The first time, lets the caller release
 * what the other threads may need to finish (hooks.worker_idle: the GIL). */
static void gate_nap(pm_wthread *w, int *idle)
{
    if (!*idle && w->m->hooks.worker_idle)
        w->m->hooks.worker_idle(w->m->hooks.ctx);
    *idle = 1;
    struct timespec ts = {0, 200000};
    nanosleep(&ts, NULL);
}

/* Returns 1 when the task may run, 0 when the worker is told to stop. */
static int gate_enter(pm_wthread *w, int solo)
{
    int idle = 0;
    if (solo) {
        int zero = 0;
        while (!atomic_compare_exchange_weak(&gate.solo, &zero, 1)) {
            zero = 0;
            if (atomic_load_explicit(&w->wctl->stop, memory_order_relaxed))
                return 0;
            gate_nap(w, &idle);
        }
        for (int t = 0; t < gate.nt; t++)
            while (&gate.ws[t] != w && atomic_load(&gate.ws[t].busy)) {
                if (atomic_load_explicit(&w->wctl->stop,
                                         memory_order_relaxed)) {
                    atomic_store(&gate.solo, 0);
                    return 0;
                }
                gate_nap(w, &idle);
            }
        w->gate_held = GATE_SOLO;
        return 1;
    }
    for (;;) {
        atomic_store(&w->busy, 1);
        if (!atomic_load(&gate.solo)) {
            w->gate_held = GATE_BUSY;
            return 1;
        }
        atomic_store(&w->busy, 0);
        while (atomic_load_explicit(&gate.solo, memory_order_relaxed)) {
            if (atomic_load_explicit(&w->wctl->stop, memory_order_relaxed))
                return 0;
            gate_nap(w, &idle);
        }
    }
}

static void gate_leave(pm_wthread *w)
{
    if (w->gate_held == GATE_SOLO)
        atomic_store_explicit(&gate.solo, 0, memory_order_release);
    else if (w->gate_held == GATE_BUSY)
        atomic_store_explicit(&w->busy, 0, memory_order_release);
    w->gate_held = GATE_NONE;
}

/* Before waiting for room in the result ring: lets the gate go.  A busy
 * thread takes busy back after the wait (without waiting for a solo task:
 * that one may be what the parent waits for); a solo one stays ordinary. */
static void gate_yield(pm_wthread *w)
{
    gate_leave(w);
}

static void gate_resume(pm_wthread *w, int was)
{
    if (was == GATE_BUSY) {
        atomic_store(&w->busy, 1);
        w->gate_held = GATE_BUSY;
    }
}

uint64_t pm_writer_item(const pm_writer *w)
{
    return w->item;
}

void *pm_writer_take_input(pm_writer *w)
{
    if (!w->in_buf)
        return NULL;
    w->in_buf = 0;
    return pm__asm_take_buf(&w->assembly);
}

void *pm_writer_take_routed(pm_writer *w)
{
    void *o = w->routed;
    w->routed = NULL;
    return o;
}

void pm__writer_set_item(pm_writer *w, uint64_t item)
{
    w->item = item;
}

uint64_t pm__writer_written(const pm_writer *w)
{
    return w->written;
}

typedef int (*ready_fn)(void *w);

static int task_ready(void *arg)
{
    pm_wthread *w = arg;
    return pm__rx_ready(&w->rx) ||
           atomic_load_explicit(&w->wctl->stop, memory_order_relaxed) ||
           atomic_load_explicit(&w->wctl->finish, memory_order_relaxed);
}

/* The ring is empty and the parent said no task will come any more (or
 * asked to stop).  The parent publishes its last task before it sets
 * finish, so after seeing finish (acquire) the ring is looked at again. */
static int nothing_more(pm_wthread *w)
{
    if (atomic_load_explicit(&w->wctl->stop, memory_order_relaxed))
        return 1;
    if (!atomic_load_explicit(&w->wctl->finish, memory_order_acquire))
        return 0;
    return !pm__rx_ready(&w->rx);
}

static int room_ready(void *arg)
{
    pm_wthread *w = arg;
    return pm__tx_room(&w->tx, PM_FRAG_HDR * 2) >= PM_FRAG_HDR * 2 ||
           atomic_load_explicit(&w->wctl->stop, memory_order_relaxed);
}

/*
 * Waits until ready(w): spins for the adaptive budget, then sleeps on the
 * slot's bell.  Returns 0, or -EPIPE when the parent is gone.
 */
static int worker_wait_inner(pm_wthread *w, ready_fn ready);

static int worker_wait(pm_wthread *w, ready_fn ready)
{
    const pm_hooks *h = &w->m->hooks;
    if (h->worker_idle)
        h->worker_idle(h->ctx);
    return worker_wait_inner(w, ready);
}

static int worker_wait_inner(pm_wthread *w, ready_fn ready)
{
    if (pm__spin_until(&w->spin, ready, w))
        return 0;
    for (;;) {
        uint32_t v = pm__bell_prepare(&w->ctl->bell);
        if (ready(w)) {
            pm__bell_done(&w->ctl->bell);
            return 0;
        }
        int rc = pm__bell_sleep(&w->ctl->bell, v, WORKER_SLEEP_MS);
        pm__bell_done(&w->ctl->bell);
        if (rc == -ETIMEDOUT && getppid() != w->m->creator)
            return -EPIPE;
        if (ready(w))
            return 0;
    }
}

static void worker_exit(pm_map *m, int code) __attribute__((noreturn));
static void worker_exit(pm_map *m, int code)
{
    if (m->hooks.worker_exit)
        m->hooks.worker_exit(m->hooks.ctx);
    /* What the work function printf'd is still in this process's stdio
     * buffers (a pipe or file is fully buffered): _exit would drop it.  The
     * caller flushed its own before the fork, so nothing is written twice.
     * Only if the stream's lock is free: a thread of the caller may have
     * held it at the fork, and an exit must never wait on it. */
    FILE *streams[2] = {stdout, stderr};
    for (int i = 0; i < 2; i++) {
        if (ftrylockfile(streams[i]) == 0) {
            fflush_unlocked(streams[i]);
            funlockfile(streams[i]);
        }
    }
    _exit(code);
}

int pm_forked_copy(void)
{
    return pm__forked_copy;
}

/* The work function forked and the child came back into the worker's code.
 * It is not the worker: its rings are the worker's, and it must never touch
 * them.  It ends as a program whose work is done (worker_exit hook, exit
 * status 0), without running the worker loop. */
static void copy_exit(pm_map *m) __attribute__((noreturn, noinline, cold));
static void copy_exit(pm_map *m)
{
    worker_exit(m, 0);
}

/*
 * Waits for room in the result ring while a task runs.  That time is the
 * reader's, not the task's: the timeout's clock (run_start_ns) is paused
 * meanwhile and moved on by the time waited.  Off the per-item path: only
 * a result that does not fit in the ring waits.
 */
static int wait_room(pm_wthread *w)
{
    _Atomic uint64_t *start = &w->ctl->run_start_ns;
    uint64_t s0 = atomic_load_explicit(start, memory_order_relaxed);
    uint64_t t0 = 0;
    if (s0 && s0 != PM_CLOCK_PAUSED) {
        t0 = pm__now_ns();
        /* A job-control stop may move s0 meanwhile (proc.c, on_tstp): the
         * exchange fails then, and the clock is simply not paused. */
        if (!atomic_compare_exchange_strong(start, &s0, PM_CLOCK_PAUSED))
            t0 = 0;
    }
    int rc = worker_wait(w, room_ready);
    if (t0)
        atomic_store_explicit(start, s0 + (pm__now_ns() - t0),
                              memory_order_release);
    return rc;
}

int pm_write(pm_writer *w, const void *data, size_t len)
{
    if (pm__forked_copy)
        copy_exit(w->m);
    const unsigned char *p = data;
    w->written += len;
    while (len > 0) {
        uint64_t before = atomic_load_explicit(&w->tx.r->head,
                                               memory_order_relaxed);
        size_t k = pm__tx_write(&w->tx, p, len);
        if (atomic_load_explicit(&w->tx.r->head, memory_order_relaxed) != before)
            pm__ring_parent(w->m);
        p += k;
        len -= k;
        if (len == 0)
            break;
        int was = w->gate_held;
        if (was)
            gate_yield(w);
        int rc = wait_room(w);
        if (was)
            gate_resume(w, was);
        if (rc < 0)
            return rc;
        if (atomic_load_explicit(&w->wctl->stop, memory_order_relaxed))
            return -ECANCELED;
    }
    return 0;
}

/*
 * Reads the next task message.  Returns 1 with msg and len set (*held is the
 * fragment to consume after the work when the message is read in place), 0
 * when asked to stop, or told to finish and the ring is empty, or a negative
 * code.
 */
static int read_task(pm_wthread *w, const unsigned char **msg,
                     size_t *len, pm_frag *held, int *in_place)
{
    for (;;) {
        pm_frag f;
        int rc = pm__rx_peek(&w->rx, &f);
        if (rc < 0)
            return rc;
        if (rc == 0) {
            if (!w->assembly.active && nothing_more(w))
                return 0;
            rc = worker_wait(w, task_ready);
            if (rc < 0)
                return rc;
            if (w->assembly.active &&
                atomic_load_explicit(&w->wctl->stop, memory_order_relaxed) &&
                !pm__rx_ready(&w->rx))
                return 0;
            continue;
        }
        if (pm__asm_whole(&w->assembly, &f)) {
            *msg = f.p1;
            *len = f.len;
            *held = f;
            *in_place = 1;
            return 1;
        }
        rc = pm__asm_add(&w->assembly, &w->m->hooks, &f);
        if (rc < 0)
            return rc;
        pm__rx_consume(&w->rx, &f);
        pm__ring_parent(w->m);
        if (rc == 1) {
            w->routed = pm__asm_take_owner(&w->assembly);
            *msg = w->assembly.buf;
            *len = w->assembly.len;
            *in_place = 0;
            return 1;
        }
    }
}

static int serve_one(pm_wthread *w)
{
    const unsigned char *msg;
    size_t len;
    pm_frag held;
    int in_place = 0;
    int rc = read_task(w, &msg, &len, &held, &in_place);
    if (rc <= 0)
        return rc;
    pm_msg_hdr hdr;
    if (len < sizeof hdr)
        return PM_ECORRUPT;
    memcpy(&hdr, msg, sizeof hdr);
    int solo = hdr.magic == PM_MSG_MAGIC_SOLO;
    if (hdr.magic != PM_MSG_MAGIC && !solo)
        return PM_ECORRUPT;
    hdr.magic = PM_MSG_MAGIC;
    pm_task task = {hdr.first, hdr.count};
    rc = pm_write(w, &hdr, sizeof hdr);
    if (rc < 0)
        return rc;
    int gated = gate.nt > 1;
    if (gated && !gate_enter(w, solo))
        return 0;
    w->item = task.first;
    w->in_buf = !in_place;
    atomic_store_explicit(&w->ctl->run_first, task.first, memory_order_relaxed);
    atomic_store_explicit(&w->ctl->run_start_ns, pm__now_ns(),
                          memory_order_release);
    /* With a timeout, a sleeping parent learns when this task is due (one
     * item per task then, and nothing rung while the parent is awake). */
    if (w->m->opt.timeout_ms)
        pm__ring_parent(w->m);
    rc = w->m->work(w->m->work_ctx, &task, msg + sizeof hdr, len - sizeof hdr,
                    w);
    if (pm__forked_copy)
        copy_exit(w->m);
    /* A failing task is still marked as running when the worker exits, so
     * the parent charges the death to it. */
    if (rc < 0)
        worker_exit(w->m, PM_WORKER_FATAL_EXIT);
    w->in_buf = 0;
    if (w->routed && w->m->hooks.route_release)
        w->m->hooks.route_release(w->m->hooks.ctx, w->routed);
    w->routed = NULL;
    atomic_store_explicit(&w->ctl->run_start_ns, 0, memory_order_release);
    if (gated)
        gate_leave(w);
    while ((rc = pm__tx_end(&w->tx)) == -EAGAIN) {
        rc = worker_wait(w, room_ready);
        if (rc < 0)
            return rc;
        if (atomic_load_explicit(&w->wctl->stop, memory_order_relaxed))
            return 0;
    }
    if (in_place)
        pm__rx_consume(&w->rx, &held);
    pm__ring_parent(w->m);
    return 1;
}

static void *slot_main(void *arg)
{
    pm_wthread *w = arg;
    int rc;
    while ((rc = serve_one(w)) > 0)
        ;
    if (w->m->hooks.worker_idle)
        w->m->hooks.worker_idle(w->m->hooks.ctx);
    if (rc == PM_ECORRUPT)
        worker_exit(w->m, PM_WORKER_CORRUPT_EXIT);
    return NULL;
}

void pm__worker_main(pm_map *m, int w)
{
    int nt = m->opt.nthreads;
    atomic_store_explicit(&m->workers[w].wctl->ready, 1, memory_order_release);
    pm_wthread *ws = calloc((size_t)nt, sizeof *ws);
    pthread_t *th = calloc((size_t)nt, sizeof *th);
    if (!ws || !th)
        worker_exit(m, PM_WORKER_FATAL_EXIT);
    for (int t = 0; t < nt; t++) {
        pm_slot *s = &m->slots[w * nt + t];
        ws[t].m = m;
        ws[t].ctl = s->ctl;
        ws[t].wctl = m->workers[w].wctl;
        ws[t].spin.budget_ns = PM_SPIN_MIN_NS * 8;
        pm__rx_init(&ws[t].rx, s->task_ring, m->opt.ring_bytes);
        pm__tx_init(&ws[t].tx, s->result_ring, m->opt.ring_bytes);
    }
    gate.ws = ws;
    gate.nt = nt;
    atomic_store(&gate.solo, 0);
    if (nt == 1) {
        slot_main(&ws[0]);
    } else {
        int started = 0, err = 0;
        for (int t = 0; t < nt; t++) {
            if ((err = pthread_create(&th[t], NULL, slot_main, &ws[t])) != 0)
                break;
            started++;
        }
        if (started < nt) {
            /* Threads already started wait on their rings: the exit ends
             * them.  The parent names the cause from the status. */
            fprintf(stderr, "parmapper: worker %d could not start thread %d "
                    "of %d: pthread_create: %s\n", w, started + 1, nt,
                    strerror(err));
            worker_exit(m, PM_EXIT_NO_THREADS);
        }
        for (int t = 0; t < started; t++)
            pthread_join(th[t], NULL);
    }
    worker_exit(m, 0);
}
