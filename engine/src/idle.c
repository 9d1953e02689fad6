/*
 * idle.c -- the parent's wait when a round of pm_map_next() made no
 * progress: spin, then sleep on its bell (or in poll() with the workers'
 * exit descriptors) until a result, a death or a deadline, and the verdict
 * when no worker is left to finish the work.
 */
/* GNU and POSIX interfaces under any -std (builds may -D it too). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <poll.h>
#include <unistd.h>

#include "slot.h"

#define PARENT_SLEEP_MS 50
#define PM_FUTEX_FIRST_MS 1 /* futex sleep before the poll on deaths too */

/* Would another round of dispatch/deliver make progress? */
static int parent_ready(pm_map *m)
{
    if (m->outstanding) {
        if (m->opt.ordered) {
            pm_slot *s = &m->slots[m->slot_of[m->next_deliver & (m->win - 1)]];
            if (pm__rx_ready(&s->rx) || pm__fifo_at(m, s, 0)->state != PM_T_SENT)
                return 1;
        } else {
            for (int i = 0; i < m->nslots; i++) {
                pm_slot *s = &m->slots[i];
                if (s->fifo_n && (pm__rx_ready(&s->rx) ||
                                  pm__fifo_at(m, s, 0)->state != PM_T_SENT))
                    return 1;
            }
        }
    }
    for (int i = 0; i < m->nslots; i++) {
        pm_slot *s = &m->slots[i];
        if (s->pend_active &&
            pm__tx_room(&s->tx, PM_FRAG_HDR * 2) >= PM_FRAG_HDR * 2)
            return 1;
    }
    /* The source has a task again (pm_map_wake); dispatch takes the flag,
     * so this holds for one round only. */
    if (m->input_later && !m->input_done && !m->draining &&
        m->outstanding < m->win && m->volatile_slot < 0 &&
        atomic_load_explicit(&m->input_woken, memory_order_relaxed))
        return 1;
    return 0;
}

/* Is any worker running? */
static int any_alive(pm_map *m)
{
    for (int w = 0; w < m->opt.nproc; w++)
        if (pm__worker_alive(m, w))
            return 1;
    return 0;
}

/* The dead worker whose missing result delivery waits for, or -1. */
static int lost_worker(pm_map *m)
{
    for (int i = 0; i < m->nslots && m->outstanding; i++) {
        int si = m->opt.ordered ? m->slot_of[m->next_deliver & (m->win - 1)]
                                : i;
        pm_slot *s = &m->slots[si];
        if (s->fifo_n && !pm__worker_alive(m, s->worker) &&
            pm__fifo_at(m, s, 0)->state == PM_T_SENT && !pm__rx_ready(&s->rx))
            return s->worker;
        if (m->opt.ordered)
            break;
    }
    return -1;
}

/* Could dispatch start a finished worker again? */
static int restartable(pm_map *m)
{
    if (m->input_done || m->draining)
        return 0;
    for (int w = 0; w < m->opt.nproc; w++)
        if (m->workers[w].state == PM_W_DONE)
            return 1;
    return 0;
}

/* parent_ready() for pm__spin_until(). */
static int parent_ready_cb(void *m)
{
    return parent_ready(m);
}

/* Milliseconds until the next timeout or stall could be due (at least 1),
 * or -1 when none can be. */
static int next_due_ms(pm_map *m)
{
    if (!m->opt.timeout_ms)
        return -1;
    uint64_t limit = (uint64_t)m->opt.timeout_ms * 1000000u;
    uint64_t now = pm__now_ns(), due = UINT64_MAX;
    for (int i = 0; i < m->nslots; i++) {
        pm_slot *s = &m->slots[i];
        if (!pm__worker_alive(m, s->worker))
            continue;
        uint64_t t = atomic_load_explicit(&s->ctl->run_start_ns,
                                          memory_order_acquire);
        if (t == PM_CLOCK_PAUSED)
            continue;
        uint64_t lim = limit;
        if (!t) {
            t = s->stall_ns;
            lim = pm__stall_limit(m);
        }
        if (t && t + lim < due)
            due = t + lim;
    }
    if (due == UINT64_MAX)
        return -1;
    return due <= now ? 1 : (int)((due - now + 999999u) / 1000000u);
}

/*
 * The parent's sleep.  First on the futex, at most PM_FUTEX_FIRST_MS (or
 * until the next timeout is due): the usual wait while work flows, which
 * costs the workers a futex wake and the parent nothing more.  Then, with
 * the eventfd bell and a pidfd for every running worker, in poll() on all
 * of them: woken by a result (the workers see sleeping == 2 and write the
 * eventfd), by a worker's death itself, or when the next timeout is due.
 * Without them (old kernels, descriptors short) on the futex, at most
 * PARENT_SLEEP_MS, noticing deaths on the next look.  A signal ends either
 * sleep (EINTR), for the check hook.
 */
static void parent_sleep(pm_map *m, uint32_t v)
{
    pm_bell *b = &m->ctl->parent;
    /* Bounded all the same: the check hook is promised a call about every
     * PARENT_SLEEP_MS while blocked, and a job-control stop moves the due
     * time without telling the parent. */
    int cap = m->hooks.check ? PARENT_SLEEP_MS : 1000;
    /* The memory limit is sampled on the health schedule while asleep too. */
    if (m->opt.max_rss_bytes && cap > (int)(HEALTH_EVERY_NS / 1000000u))
        cap = (int)(HEALTH_EVERY_NS / 1000000u);
    int due = next_due_ms(m);
    if (due >= 0 && due < cap)
        cap = due;
    int n = 0, all = m->efd >= 0;
    if (!all || cap <= PM_FUTEX_FIRST_MS) {
        pm__bell_sleep(b, v, all ? cap : PARENT_SLEEP_MS);
        return;
    }
    if (pm__bell_sleep(b, v, PM_FUTEX_FIRST_MS) != -ETIMEDOUT)
        return;
    m->pfds[n].fd = m->efd;
    m->pfds[n++].events = POLLIN;
    for (int w = 0; w < m->opt.nproc && all; w++) {
        if (!pm__worker_alive(m, w))
            continue;
        all = m->workers[w].pidfd >= 0;
        m->pfds[n].fd = m->workers[w].pidfd;
        m->pfds[n++].events = POLLIN;
    }
    if (!all) {
        pm__bell_sleep(b, v, PARENT_SLEEP_MS);
        return;
    }
    /* From now on a worker that publishes writes the eventfd.  A worker
     * that saw sleeping == 1 published before this store: the recheck after
     * the fence sees it (the same argument as the bell's). */
    atomic_store_explicit(&b->sleeping, 2, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    if (parent_ready(m))
        return;
    if (poll(m->pfds, (nfds_t)n, cap - PM_FUTEX_FIRST_MS) > 0 &&
        (m->pfds[0].revents & POLLIN)) {
        uint64_t x;
        if (read(m->efd, &x, sizeof x) < 0) {
            /* EAGAIN: drained already. */
        }
    }
}

/*
 * When a round of dispatch and delivery made no progress: spins a little
 * for the workers, then sleeps (parent_sleep) after a look at their health.
 * Returns 0 to go round again, PM_EWORKERDIED when no worker is left to
 * finish the work (m->death says which died), or another negative code
 * (the check hook's among them).
 */
int pm__idle_wait(pm_map *m)
{
    if (pm__spin_until(&m->spin, parent_ready_cb, m))
        return 0;

    pm_bell *b = &m->ctl->parent;
    uint32_t v = pm__bell_prepare(b);
    int rc = pm__poll_health(m);
    if (rc == 0 && !parent_ready(m)) {
        if (m->hooks.wait_begin)
            m->hooks.wait_begin(m->hooks.ctx);
        parent_sleep(m, v);
        if (m->hooks.wait_end)
            m->hooks.wait_end(m->hooks.ctx);
        rc = pm__poll_health(m);
        if (rc >= 0 && m->hooks.check) {
            int c = m->hooks.check(m->hooks.ctx);
            if (c != 0)
                rc = c;
        }
    }
    pm__bell_done(b);
    if (rc > 0)
        rc = 0;
    /* Nothing can finish the remaining work: no worker is left (one that
     * finished is started again for re-opened input, by dispatch). */
    if (rc == 0 && !any_alive(m) && !parent_ready(m) &&
        (m->outstanding || !m->input_done) && !restartable(m)) {
        int dead = lost_worker(m);
        for (int w = 0; w < m->opt.nproc && dead < 0; w++)
            if (m->workers[w].state == PM_W_REAPED)
                dead = w;
        for (int w = 0; w < m->opt.nproc && dead < 0; w++)
            if (m->workers[w].state == PM_W_DONE)
                dead = w;
        if (dead >= 0)
            pm__record_death(m, dead);
        rc = PM_EWORKERDIED;
    }
    return rc;
}
