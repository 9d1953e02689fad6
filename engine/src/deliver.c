/*
 * deliver.c -- delivery, the parent's side: reads each result from its
 * slot's result ring (in place when whole, else assembled) and checks that
 * it answers the task it should, or hands out a task that was saved,
 * abandoned or lost; in order or as the results come.
 */
/* GNU and POSIX interfaces under any -std (builds may -D it too). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdlib.h>

#include "slot.h"

/* Removes slot s's oldest task from its FIFO: its result is delivered. */
static void pop_entry(pm_map *m, pm_slot *s)
{
    pm_inflight *e = pm__fifo_at(m, s, 0);
    if (e->copy) {
        free(e->copy);
        e->copy = NULL;
    }
    /* e->result is handed out through m->held_copy and freed next call. */
    e->result = NULL;
    s->fifo_head = (s->fifo_head + 1) & m->fifo_mask;
    s->fifo_n--;
    if (s->resend)
        s->resend--;
    m->outstanding--;
}

/* Delivers a task that never completed (timed out, or lost with
 * deliver_lost) with its input, which is freed at the next call. */
static int deliver_abandoned(pm_map *m, pm_slot *s, pm_inflight *e,
                             pm_result *res)
{
    res->status = e->state == PM_T_LOST     ? PM_RESULT_DIED
                  : e->state == PM_T_MEMORY ? PM_RESULT_MEMORY
                                            : PM_RESULT_TIMEDOUT;
    m->result_rss = e->state == PM_T_MEMORY ? e->rss : 0;
    res->signal = e->signal;
    res->exit_code = e->exit_code;
    res->data = e->copy ? e->copy + sizeof(pm_msg_hdr) : NULL;
    res->len = e->copy ? e->copy_len - sizeof(pm_msg_hdr) : 0;
    m->held_copy = e->copy;
    e->copy = NULL;
    pop_entry(m, s);
    return 1;
}

/*
 * Delivers the next result of slot si.  Returns 1 with *res filled (a
 * fragment read in place stays in the ring until the next call), 0 when it
 * is not complete yet, or a negative code.
 */
static int try_read(pm_map *m, int si, pm_result *res, int *progress)
{
    pm_slot *s = &m->slots[si];
    if (s->fifo_n == 0)
        return PM_ECORRUPT;
    pm_inflight *e = pm__fifo_at(m, s, 0);
    res->task = e->task;
    res->signal = 0;
    res->exit_code = 0;
    m->last_slot = si;
    m->last_pid = m->workers[s->worker].pid;
    if (e->state == PM_T_TIMEDOUT || e->state == PM_T_LOST ||
        e->state == PM_T_MEMORY) {
        return deliver_abandoned(m, s, e, res);
    }
    if (e->state == PM_T_DONE) {
        res->status = PM_RESULT_OK;
        res->data = e->result + sizeof(pm_msg_hdr);
        res->len = e->result_len - sizeof(pm_msg_hdr);
        m->held_copy = e->result;
        m->routed = e->routed;
        e->routed = NULL;
        pop_entry(m, s);
        return 1;
    }
    const unsigned char *msg;
    size_t len;
    pm_frag f;
    int in_ring = 0;
    int rc = pm__read_msg(m, s, &msg, &len, &f, &in_ring, progress);
    if (rc == PM_ECORRUPT)
        return pm__corrupt(m, s, progress);
    if (rc <= 0)
        return rc;
    if (!in_ring)
        m->routed = pm__asm_take_owner(&s->assembly);
    if (!pm__msg_answers(msg, len, &e->task)) {
        pm__release_routed(m, &m->routed);
        return pm__corrupt(m, s, progress);
    }
    if (in_ring) {
        m->held = f;
        m->held_slot = si;
    } else {
        m->assembly_slot = si;
    }
    m->workers[s->worker].uncharged = 0;
    res->status = PM_RESULT_OK;
    res->data = msg + sizeof(pm_msg_hdr);
    res->len = len - sizeof(pm_msg_hdr);
    pop_entry(m, s);
    return 1;
}

/* Releases what the result delivered last held (see internal.h). */
void pm__release_held(pm_map *m)
{
    if (m->held_copy) {
        free(m->held_copy);
        m->held_copy = NULL;
    }
    pm__release_routed(m, &m->routed);
    m->assembly_slot = -1;
    if (m->held_slot < 0)
        return;
    pm_slot *s = &m->slots[m->held_slot];
    pm__rx_consume(&s->rx, &m->held);
    pm__bell_ring(&s->ctl->bell);
    m->held_slot = -1;
}

/* A slot whose worker is gone and whose next result never came. */
static int lost(pm_map *m, int si)
{
    pm__record_death(m, m->slots[si].worker);
    return PM_EWORKERDIED;
}

/*
 * Delivers the next result: in order, the oldest task's; unordered, the
 * first complete one, looking at the slots round-robin.  Returns 1 with
 * *res filled, 0 when none is complete yet, PM_EWORKERDIED when the result
 * waited for can no longer come, or another negative code.
 */
int pm__deliver(pm_map *m, pm_result *res, int *progress)
{
    if (m->outstanding == 0)
        return 0;
    if (m->opt.ordered) {
        int si = m->slot_of[m->next_deliver & (m->win - 1)];
        int rc = try_read(m, si, res, progress);
        if (rc == 1)
            m->next_deliver++;
        if (rc == 0 && !pm__worker_alive(m, m->slots[si].worker))
            return lost(m, si);
        return rc;
    }
    for (int i = 0; i < m->nslots; i++) {
        int si = (m->rr + i) % m->nslots;
        if (m->slots[si].fifo_n == 0)
            continue;
        int rc = try_read(m, si, res, progress);
        if (rc == 1) {
            m->rr = (si + 1) % m->nslots;
            m->next_deliver++;
        }
        if (rc == 0 && !pm__worker_alive(m, m->slots[si].worker))
            return lost(m, si);
        if (rc != 0)
            return rc;
    }
    return 0;
}
