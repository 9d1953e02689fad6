/*
 * dispatch.c -- dispatch, the parent's side: asks the source for tasks and
 * writes each to the least busy slot's task ring, keeping what did not fit
 * for later; sends again what a respawned worker's slot held.
 */
/* GNU and POSIX interfaces under any -std (builds may -D it too). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "slot.h"

/* Pushes what remains of a slot's pending task message.  Returns 1 when
 * bytes moved. */
static int flush_pending(pm_map *m, pm_slot *s)
{
    int moved = 0;
    if (s->pend_off < s->pend_len) {
        size_t k = pm__tx_write(&s->tx, s->pend + s->pend_off,
                                s->pend_len - s->pend_off);
        s->pend_off += k;
        moved = k > 0;
    }
    while (s->pend_off == s->pend_len && s->pend_i < s->pend_niov) {
        const pm_iov *v = &s->pend_iov[s->pend_i];
        size_t left = v->len - s->pend_ioff;
        size_t k = left ? pm__tx_write(&s->tx,
                                       (const unsigned char *)v->base +
                                           s->pend_ioff, left)
                        : 0;
        s->pend_ioff += k;
        moved |= k > 0;
        if (k < left)
            break;
        s->pend_i++;
        s->pend_ioff = 0;
    }
    if (s->pend_off == s->pend_len && s->pend_i == s->pend_niov) {
        pm__pend_release(m, s);
        if (pm__tx_end(&s->tx) == 0) {
            s->pend_active = 0;
            moved = 1;
        }
    }
    if (moved)
        pm__bell_ring(&s->ctl->bell);
    return moved;
}

/* Copies the pieces iov[0..niov) from offset off of the first to dst;
 * returns the bytes copied.  With dst NULL, only counts them. */
static size_t copy_pieces(unsigned char *dst, const pm_iov *iov, int niov,
                          size_t off)
{
    size_t n = 0;
    for (int i = 0; i < niov; i++) {
        size_t skip = i == 0 ? off : 0;
        size_t k = iov[i].len > skip ? iov[i].len - skip : 0;
        if (dst && k)
            memcpy(dst + n, (const unsigned char *)iov[i].base + skip, k);
        n += k;
    }
    return n;
}

/*
 * Keeps what did not fit of a task message for later: the bytes a[0..na)
 * are copied, then the pieces iov[0..niov) from offset off of the first:
 * referenced when owner holds them, else copied too.
 */
static int save_pending(pm_map *m, pm_slot *s, const unsigned char *a,
                        size_t na, const pm_iov *iov, int niov, size_t off,
                        void *owner)
{
    m->unsent = 1;
    size_t need = na + (owner ? 0 : copy_pieces(NULL, iov, niov, off));
    if (need > s->pend_cap) {
        unsigned char *p = realloc(s->pend, need);
        if (!p)
            return -ENOMEM;
        s->pend = p;
        s->pend_cap = need;
    }
    if (na)
        memcpy(s->pend, a, na);
    s->pend_len = na;
    s->pend_off = 0;
    s->pend_iov = NULL;
    s->pend_niov = s->pend_i = 0;
    s->pend_ioff = 0;
    if (owner) {
        s->pend_iov = iov;
        s->pend_niov = niov;
        s->pend_ioff = off;
        s->pend_owner = owner;
    } else if (niov) {
        s->pend_len += copy_pieces(s->pend + na, iov, niov, off);
    }
    s->pend_active = 1;
    return 0;
}

/* The live slot with the fewest tasks in flight and room for one more. */
static pm_slot *choose_slot(pm_map *m)
{
    pm_slot *best = NULL;
    for (int i = 0; i < m->nslots; i++) {
        pm_slot *s = &m->slots[i];
        if (s->pend_active || s->resend < s->fifo_n ||
            s->fifo_n >= (uint32_t)m->opt.window ||
            !pm__worker_alive(m, s->worker) || m->workers[s->worker].finishing)
            continue;
        if (!best || s->fifo_n < best->fifo_n)
            best = s;
        if (s->fifo_n == 0)
            break;
    }
    return best;
}

/*
 * Records task in slot s's FIFO (with a copy of its message when it may
 * have to be sent again) and writes the header and the pieces iov[0..niov)
 * into the slot's task ring; what does not fit waits as the slot's pending
 * state.  The owner's pieces are released once written, or kept pending.
 * Returns 0 or -ENOMEM.
 */
static int send_task(pm_map *m, pm_slot *s, const pm_task *task,
                     const pm_iov *iov, int niov, void *owner)
{
    pm_msg_hdr hdr = {task->first, task->count, PM_MSG_MAGIC};
    pm_inflight *e = pm__fifo_at(m, s, s->fifo_n);
    *e = (pm_inflight){.task = *task};
    if (m->keep) {
        /* It may have to be sent again to a fresh worker. */
        size_t len = copy_pieces(NULL, iov, niov, 0);
        if (len) {
            e->copy = malloc(sizeof hdr + len);
            if (!e->copy) {
                pm__release_owner(m, owner);
                return -ENOMEM;
            }
            memcpy(e->copy, &hdr, sizeof hdr);
            e->copy_len = sizeof hdr + copy_pieces(e->copy + sizeof hdr, iov,
                                                   niov, 0);
        }
    }
    s->fifo_n++;
    s->resend = s->fifo_n;
    m->slot_of[m->next_seq & (m->win - 1)] = (int32_t)(s - m->slots);
    m->next_seq++;
    m->outstanding++;
    if (m->opt.max_items_per_worker) {
        /* This task is its last: it is told to finish once the task is
         * whole in its ring (retire_idle), and replaced when it exits. */
        pm_worker *wk = &m->workers[s->worker];
        wk->items_sent += task->count;
        if (wk->items_sent >= m->opt.max_items_per_worker) {
            wk->finishing = 1;
            wk->retiring = 1;
            m->retire_scan = 1;
        }
    }

    int rc = 0;
    size_t k = 0;
    if (niov <= 1 && pm__tx_put(&s->tx, &hdr, sizeof hdr,
                                niov ? iov[0].base : NULL,
                                niov ? iov[0].len : 0)) {
        /* the whole message in one fragment: the common small task */
    } else if ((k = pm__tx_write(&s->tx, &hdr, sizeof hdr)) < sizeof hdr) {
        rc = save_pending(m, s, (const unsigned char *)&hdr + k, sizeof hdr - k,
                          iov, niov, 0, owner);
    } else {
        int i = 0;
        size_t d = 0;
        for (; i < niov; i++) {
            d = iov[i].len ? pm__tx_write(&s->tx, iov[i].base, iov[i].len) : 0;
            if (d < iov[i].len)
                break;
        }
        if (i < niov)
            rc = save_pending(m, s, NULL, 0, iov + i, niov - i, d, owner);
        else if (pm__tx_end(&s->tx) == -EAGAIN)
            rc = save_pending(m, s, NULL, 0, NULL, 0, 0, NULL);
    }
    /* Pieces not kept pending are written (or failed): give them back. */
    if (owner && s->pend_owner != owner)
        pm__release_owner(m, owner);
    pm__bell_ring(&s->ctl->bell);
    return rc;
}

/* After a respawn: sends the slot's tasks again, in FIFO order. */
static int resend_some(pm_map *m, pm_slot *s, int *progress)
{
    while (s->resend < s->fifo_n && !s->pend_active) {
        pm_inflight *e = pm__fifo_at(m, s, s->resend++);
        if (e->state != PM_T_SENT)
            continue;
        pm_msg_hdr hdr = {e->task.first, e->task.count,
                          e->suspect ? PM_MSG_MAGIC_SOLO : PM_MSG_MAGIC};
        const unsigned char *msg = e->copy ? e->copy : (unsigned char *)&hdr;
        size_t len = e->copy ? e->copy_len : sizeof hdr;
        size_t k = pm__tx_write(&s->tx, msg, len);
        int rc = 0;
        if (k < len)
            rc = save_pending(m, s, msg + k, len - k, NULL, 0, 0, NULL);
        else if (pm__tx_end(&s->tx) == -EAGAIN)
            rc = save_pending(m, s, NULL, 0, NULL, 0, 0, NULL);
        pm__bell_ring(&s->ctl->bell);
        *progress = 1;
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* Pushes what remains of each live slot's pending task message and sends
 * again what a respawn left to send; m->unsent stays set while any slot
 * still has some.  Returns 0 or a negative code. */
static int send_unsent(pm_map *m, int *progress)
{
    m->unsent = 0;
    for (int i = 0; i < m->nslots; i++) {
        pm_slot *s = &m->slots[i];
        int alive = pm__worker_alive(m, s->worker);
        if (alive && s->pend_active) {
            *progress |= flush_pending(m, s);
            if (s->tx.bad) { /* the worker published an impossible tail */
                m->unsent = 1;
                int rc = pm__corrupt(m, s, progress);
                if (rc < 0)
                    return rc;
                continue;
            }
        }
        if (alive && s->resend < s->fifo_n) {
            int rc = resend_some(m, s, progress);
            if (rc < 0)
                return rc;
        }
        if (s->pend_active || s->resend < s->fifo_n)
            m->unsent = 1;
    }
    return 0;
}

/*
 * One round of dispatch: what the slots have pending or to send again
 * (send_unsent, only while m->unsent says there may be some); then asks the
 * source for tasks (produce or gather) while the window has room, each to
 * the least busy slot.  Returns 0 (*progress set when anything moved) or a
 * negative code.
 */
int pm__dispatch(pm_map *m, int *progress)
{
    if (m->unsent) {
        int rc = send_unsent(m, progress);
        if (rc < 0)
            return rc;
    }
    if (m->volatile_slot >= 0 && !m->slots[m->volatile_slot].pend_active)
        m->volatile_slot = -1; /* written (or its worker died) */
    while (!m->input_done && !m->draining && m->outstanding < m->win &&
           m->volatile_slot < 0) {
        if (m->input_later) {
            /* Asked again once the source said it has a task (acquire:
             * what it made before pm_map_wake() is seen). */
            if (!atomic_exchange_explicit(&m->input_woken, 0,
                                          memory_order_acquire))
                break;
            m->input_later = 0;
        }
        pm_slot *s = choose_slot(m);
        if (!s) {
            int rc = pm__restart_done(m);
            if (rc < 0)
                return rc;
            if (rc == 0)
                break;
            continue;
        }
        pm_task task = {0, 0};
        pm_iov one = {NULL, 0};
        const pm_iov *iov = &one;
        int niov = 1;
        void *owner = NULL;
        int rc = m->gather
                     ? m->gather(m->produce_ctx, &task, &iov, &niov, &owner)
                     : m->produce(m->produce_ctx, &task, &one.base, &one.len);
        if (rc < 0) {
            pm__release_owner(m, owner);
            return rc;
        }
        if (rc == 0) {
            m->input_done = 1;
            m->finish_scan = 1;
            break;
        }
        if (rc == PM_NO_TASK_YET) {
            pm__release_owner(m, owner);
            m->input_later = 1;
            break;
        }
        if (niov < 0 || (niov > 0 && !iov)) {
            pm__release_owner(m, owner);
            return -EINVAL;
        }
        int flags = rc;
        rc = send_task(m, s, &task, iov, niov, owner);
        if (rc < 0)
            return rc;
        *progress = 1;
        if ((flags & PM_PRODUCED_VOLATILE) && owner && s->pend_active)
            m->volatile_slot = (int)(s - m->slots);
        if (flags & PM_PRODUCED_SLOW)
            break; /* deliver what is ready before waiting on the input */
    }
    return 0;
}
