/*
 * shm.c -- the shared-memory layout: the parent's bell in a mapping of its
 * own, and for each worker one mapping with its control words (pm_wctl)
 * then, per slot, the slot's control words (pm_slot_ctl), its task ring and
 * its result ring, each 64-byte aligned.
 */
/* GNU and POSIX interfaces under any -std (builds may -D it too). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <sys/mman.h>

#include "internal.h"

static size_t ring_bytes(const pm_map *m)
{
    return ALIGN64(pm__ring_size(m->opt.ring_bytes));
}

pm_slot_ctl *pm__slot_ctl(pm_map *m, int w, int t)
{
    unsigned char *base = m->workers[w].shm;
    return (pm_slot_ctl *)(base + ALIGN64(sizeof(pm_wctl)) +
                           (size_t)t * m->slot_bytes);
}

static void *map_shared(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                   -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

/* Keeps mapping p out of every fork (pm__spawn lets it through for the
 * workers that need it).  Returns 1 when the kernel took it. */
static int no_fork(void *p, size_t len)
{
#ifdef MADV_DONTFORK
    return madvise(p, len, MADV_DONTFORK) == 0;
#else
    (void)p;
    (void)len;
    return 0;
#endif
}

int pm__shm_map(pm_map *m, char *why, size_t why_len)
{
    m->slot_bytes = ALIGN64(sizeof(pm_slot_ctl)) + 2 * ring_bytes(m);
    m->ctl = map_shared(ALIGN64(sizeof(pm_ctl)));
    if (!m->ctl) {
        int err = -errno;
        pm__explain(why, why_len, "mmap", err, -1, m->opt.nproc,
                    ALIGN64(sizeof(pm_ctl)));
        return err;
    }
    /* Isolation: the rings of this map reach its own workers only, not the
     * caller's other children nor the workers of its other maps. */
    m->dontfork = no_fork(m->ctl, ALIGN64(sizeof(pm_ctl)));
    for (int w = 0; w < m->opt.nproc; w++) {
        pm_worker *wk = &m->workers[w];
        wk->shm_len = ALIGN64(sizeof(pm_wctl)) +
                      (size_t)m->opt.nthreads * m->slot_bytes;
        wk->shm = map_shared(wk->shm_len);
        if (!wk->shm) {
            int err = -errno;
            pm__explain(why, why_len, "mmap", err, w, m->opt.nproc,
                        wk->shm_len);
            return err;
        }
        m->dontfork &= no_fork(wk->shm, wk->shm_len);
        wk->wctl = wk->shm;
        for (int t = 0; t < m->opt.nthreads; t++) {
            pm_slot *s = &m->slots[w * m->opt.nthreads + t];
            s->worker = w;
            s->ctl = pm__slot_ctl(m, w, t);
            s->task_ring = (pm_ring *)((unsigned char *)s->ctl +
                                       ALIGN64(sizeof(pm_slot_ctl)));
            s->result_ring =
                (pm_ring *)((unsigned char *)s->task_ring + ring_bytes(m));
            pm__ring_init(s->task_ring, m->opt.ring_bytes);
            pm__ring_init(s->result_ring, m->opt.ring_bytes);
            pm__tx_init(&s->tx, s->task_ring, m->opt.ring_bytes);
            pm__rx_init(&s->rx, s->result_ring, m->opt.ring_bytes);
        }
    }
    return 0;
}

void pm__shm_reset_worker(pm_map *m, int w)
{
    pm_wctl *c = m->workers[w].wctl;
    atomic_store(&c->stop, 0);
    atomic_store(&c->finish, 0);
    atomic_store(&c->stopped_at, 0);
    atomic_store(&c->stops, 0);
    atomic_store(&c->ready, 0);
    for (int t = 0; t < m->opt.nthreads; t++) {
        pm_slot *s = &m->slots[w * m->opt.nthreads + t];
        atomic_store(&s->ctl->bell.seq, 0);
        atomic_store(&s->ctl->bell.sleeping, 0);
        atomic_store(&s->ctl->run_first, 0);
        atomic_store(&s->ctl->run_start_ns, 0);
        pm__ring_init(s->task_ring, m->opt.ring_bytes);
        pm__ring_init(s->result_ring, m->opt.ring_bytes);
        pm__tx_init(&s->tx, s->task_ring, m->opt.ring_bytes);
        pm__rx_init(&s->rx, s->result_ring, m->opt.ring_bytes);
    }
}

void pm__shm_unmap(pm_map *m)
{
    for (int w = 0; m->workers && w < m->opt.nproc; w++)
        if (m->workers[w].shm)
            munmap(m->workers[w].shm, m->workers[w].shm_len);
    if (m->ctl)
        munmap(m->ctl, ALIGN64(sizeof(pm_ctl)));
}
