/*
 * slot.h -- per-slot bookkeeping, the parent's side: the FIFO of a slot's
 * tasks in flight, the caller's pieces of a task still to write, and the
 * reading of whole result messages from the slot's result ring.  The
 * helpers here are on the path of every item (dispatch.c, deliver.c), hence
 * static inline; slot.c has the rest.
 */
#ifndef PM_SLOT_H
#define PM_SLOT_H

#include <string.h>

#include "internal.h"

/* The FIFO entry at position i (0 = oldest) of slot s. */
static inline pm_inflight *pm__fifo_at(const pm_map *m, pm_slot *s, uint32_t i)
{
    return &s->fifo[(s->fifo_head + i) & m->fifo_mask];
}

/* Gives a gathered task's pieces back to the caller. */
static inline void pm__release_owner(pm_map *m, void *owner)
{
    if (owner && m->release)
        m->release(m->produce_ctx, owner);
}

/* Gives the caller's pieces of a pending task back: they are written, or
 * no longer needed. */
static inline void pm__pend_release(pm_map *m, pm_slot *s)
{
    void *owner = s->pend_owner;
    s->pend_owner = NULL;
    s->pend_iov = NULL;
    s->pend_niov = s->pend_i = 0;
    s->pend_ioff = 0;
    pm__release_owner(m, owner);
}

/* Gives routed ranges back to their owner (the route hook's), unless
 * taken; *owner becomes NULL. */
static inline void pm__release_routed(pm_map *m, void **owner)
{
    if (*owner && m->hooks.route_release)
        m->hooks.route_release(m->hooks.ctx, *owner);
    *owner = NULL;
}

/* Checks that a result message answers task t. */
static inline int pm__msg_answers(const unsigned char *msg, size_t len, const pm_task *t)
{
    pm_msg_hdr hdr;
    if (len < sizeof hdr)
        return 0;
    memcpy(&hdr, msg, sizeof hdr);
    return hdr.magic == PM_MSG_MAGIC && hdr.first == t->first &&
           hdr.count == t->count;
}

/*
 * Reads the next complete message of slot s's result ring.  Returns 1 with
 * *msg and *len set (when *in_ring, *f is the fragment to consume once the
 * message is no longer needed; otherwise the message is in the slot's
 * assembly buffer), 0 when no complete message is there yet, or a negative
 * code.
 */
static inline int pm__read_msg(pm_map *m, pm_slot *s, const unsigned char **msg,
                    size_t *len, pm_frag *f, int *in_ring, int *progress)
{
    for (;;) {
        int rc = pm__rx_peek(&s->rx, f);
        if (rc <= 0)
            return rc;
        if (pm__asm_whole(&s->assembly, f)) {
            *msg = f->p1;
            *len = f->len;
            *in_ring = 1;
            return 1;
        }
        rc = pm__asm_add(&s->assembly, &m->hooks, f);
        if (rc < 0)
            return rc;
        pm__rx_consume(&s->rx, f);
        pm__bell_ring(&s->ctl->bell);
        *progress = 1;
        if (rc == 1) {
            *msg = s->assembly.buf;
            *len = s->assembly.len;
            *in_ring = 0;
            return 1;
        }
    }
}

/* slot.c */

/* Resets worker w's shared memory and its slots' bookkeeping (pending
 * bytes, assembly, what to send again, stall clock) for a fresh process:
 * the tasks in its FIFOs stay, to be sent again. */
void pm__reset_worker(pm_map *m, int w);

/* Saves the complete results still in a dead worker's ring s into the FIFO
 * entries they answer (PM_T_DONE), so they are delivered and not run
 * again. */
void pm__drain_dead(pm_map *m, pm_slot *s);

/* Does a task sent to worker w still wait for its result? */
int pm__undone(pm_map *m, int w);

/* Does a task of worker w still wait to be written (pending bytes, or
 * tasks to send again after a respawn)? */
int pm__tasks_unwritten(pm_map *m, int w);

/* Fills m->death for worker w from its wait status and the tasks of its
 * slots' FIFOs that were not completed (oldest first; m->lost holds them). */
void pm__record_death(pm_map *m, int w);

#endif
