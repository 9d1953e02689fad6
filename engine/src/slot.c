/*
 * slot.c -- per-slot bookkeeping: what is left of a worker's tasks in
 * flight when it dies (results saved, tasks lost), and the reset of its
 * slots for a fresh process.
 */
/* GNU and POSIX interfaces under any -std (builds may -D it too). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdlib.h>
#include <string.h>

#include "slot.h"

/* Resets worker w's shared memory for a fresh process. */
void pm__reset_worker(pm_map *m, int w)
{
    pm__shm_reset_worker(m, w);
    m->workers[w].seen_stops = 0;
    m->unsent = 1; /* its slots' tasks are to be sent again */
    for (int t = 0; t < m->opt.nthreads; t++) {
        int si = w * m->opt.nthreads + t;
        pm_slot *s = &m->slots[si];
        s->pend_active = 0;
        s->pend_len = s->pend_off = 0;
        pm__pend_release(m, s);
        pm__asm_reset(&s->assembly, &m->hooks);
        s->resend = 0;
        s->stall_ns = 0;
        if (m->held_slot == si)
            m->held_slot = -1;
    }
}

/* Saves the complete results still in a dead worker's ring into the FIFO
 * entries they answer, so they are delivered and not run again. */
void pm__drain_dead(pm_map *m, pm_slot *s)
{
    uint32_t i = 0;
    int progress = 0;
    for (;;) {
        const unsigned char *msg;
        size_t len;
        pm_frag f;
        int in_ring = 0;
        if (pm__read_msg(m, s, &msg, &len, &f, &in_ring, &progress) != 1)
            return;
        void *routed = in_ring ? NULL : pm__asm_take_owner(&s->assembly);
        pm_inflight *e = NULL;
        for (; i < s->fifo_n; i++) {
            e = pm__fifo_at(m, s, i);
            if ((e->state == PM_T_SENT || e->state == PM_T_TIMEDOUT ||
                 e->state == PM_T_MEMORY) &&
                pm__msg_answers(msg, len, &e->task))
                break;
        }
        unsigned char *copy = i < s->fifo_n ? malloc(len) : NULL;
        if (!copy) { /* not asked for, or it will run again instead */
            pm__release_routed(m, &routed);
            return;
        }
        memcpy(copy, msg, len);
        e->result = copy;
        e->result_len = len;
        e->routed = routed;
        e->state = PM_T_DONE;
        if (in_ring)
            pm__rx_consume(&s->rx, &f);
        i++;
    }
}

/* Does a task sent to worker w still wait for its result? */
int pm__undone(pm_map *m, int w)
{
    for (int t = 0; t < m->opt.nthreads; t++) {
        pm_slot *s = &m->slots[w * m->opt.nthreads + t];
        for (uint32_t i = 0; i < s->fifo_n; i++)
            if (pm__fifo_at(m, s, i)->state == PM_T_SENT)
                return 1;
    }
    return 0;
}

/* Does a task of worker w still wait to be written (pending bytes, or
 * tasks to send again after a respawn)? */
int pm__tasks_unwritten(pm_map *m, int w)
{
    for (int t = 0; t < m->opt.nthreads; t++) {
        pm_slot *s = &m->slots[w * m->opt.nthreads + t];
        if (s->pend_active || s->resend < s->fifo_n)
            return 1;
    }
    return 0;
}

void pm__record_death(pm_map *m, int w)
{
    pm_worker *wk = &m->workers[w];
    pm_death *d = &m->death;
    d->pid = wk->pid;
    d->worker = w;
    pm__decode_status(wk->status, &d->signal, &d->exit_code);
    size_t n = 0;
    for (int t = 0; t < m->opt.nthreads; t++)
        n += m->slots[w * m->opt.nthreads + t].fifo_n;
    d->nlost = 0;
    d->lost = NULL;
    free(m->lost);
    m->lost = n ? malloc(n * sizeof *m->lost) : NULL;
    d->nlost = 0;
    if (!m->lost)
        return;
    /* Oldest first across the worker's slots: merge by item index. */
    for (int t = 0; t < m->opt.nthreads; t++) {
        pm_slot *s = &m->slots[w * m->opt.nthreads + t];
        for (uint32_t i = 0; i < s->fifo_n; i++) {
            pm_inflight *e = pm__fifo_at(m, s, i);
            if (e->state == PM_T_SENT)
                m->lost[d->nlost++] = e->task;
        }
    }
    for (size_t i = 1; i < d->nlost; i++) {
        pm_task key = m->lost[i];
        size_t j = i;
        while (j > 0 && m->lost[j - 1].first > key.first) {
            m->lost[j] = m->lost[j - 1];
            j--;
        }
        m->lost[j] = key;
    }
    d->lost = m->lost;
}
