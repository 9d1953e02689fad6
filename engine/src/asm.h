/*
 * asm.h -- assembling a message that came in several fragments (or wrapped
 * around the ring's end), with routing.
 *
 * The bytes go to a growing buffer of the engine's, except the ranges the
 * route hook names once the message's first bytes are in: those go straight
 * to memory of the caller's, so a large payload is copied once, from the
 * ring to where it ends up.  The assembled message is the rest, in order
 * (routed ranges left out).  The parent assembles results with it, a worker
 * its tasks.
 */
#ifndef PM_ASM_H
#define PM_ASM_H

#include <stddef.h>

#include "pm.h"
#include "ring.h"

typedef struct pm_asm {
    unsigned char *buf; /* the message bytes not routed */
    size_t len, cap;
    size_t pos;         /* bytes of the message received so far */
    int active;         /* between a FIRST and a LAST fragment */
    int asked;          /* the route hook had its say for this message */
    int nspans, k;      /* routed ranges, and the next one to fill */
    pm_span spans[PM_ROUTE_MAX];
    void *owner;        /* the hook's, for the routed ranges */
} pm_asm;

/*
 * Appends fragment f (FIRST starts a message: the previous one must be
 * complete).  The engine's header (pm_msg_hdr) at the start of every
 * message is never routed; the hook does not see it and span offsets do not
 * count it.  Returns 1 when f was the LAST fragment (the message is complete:
 * buf/len, and owner when ranges were routed), 0 when more must come, or a
 * negative code: PM_ECORRUPT for fragments out of order or a message that
 * ended before a routed range was filled, the hook's own negative value,
 * -EINVAL for spans the hook got wrong, -ENOMEM.  After an error the
 * message is abandoned (its owner released).
 */
int pm__asm_add(pm_asm *a, const pm_hooks *h, const pm_frag *f);

/* Whether fragment f is a whole message readable in place in the ring
 * (one fragment, not wrapped), so that nothing need be assembled. */
static inline int pm__asm_whole(const pm_asm *a, const pm_frag *f)
{
    return !a->active && (f->flags & PM_FRAG_FIRST) &&
           (f->flags & PM_FRAG_LAST) && f->p2 == NULL;
}

/* Hands the buffer the last message was assembled in over to the caller
 * (who frees it); the next message gets a new one. */
unsigned char *pm__asm_take_buf(pm_asm *a);

/* Takes the owner of the message just completed (NULL when nothing was
 * routed): the caller now releases it.  Must be called once a message is
 * complete, before the next one starts. */
void *pm__asm_take_owner(pm_asm *a);

/* Drops any message in progress (a worker died mid-message): its owner is
 * released through the hooks.  The buffer is kept for reuse. */
void pm__asm_reset(pm_asm *a, const pm_hooks *h);

/* pm__asm_reset, and the buffer freed. */
void pm__asm_free(pm_asm *a, const pm_hooks *h);

#endif
