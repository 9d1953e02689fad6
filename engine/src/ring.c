/* ring.c -- the SPSC fragment ring: writing and peeking fragments. */
/* GNU and POSIX interfaces under any -std (builds may -D it too). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "ring.h"

#include <errno.h>
#include <string.h>

#include "pm.h"


size_t pm__ring_size(size_t cap)
{
    return sizeof(pm_ring) + cap;
}

void pm__ring_init(pm_ring *r, size_t cap)
{
    atomic_store_explicit(&r->head, 0, memory_order_relaxed);
    atomic_store_explicit(&r->tail, 0, memory_order_relaxed);
    r->cap = cap;
    /* A quarter of the ring per fragment lets the producer fill the next
     * fragment while the consumer still reads the previous ones. */
    r->max_frag = pm__ring_max_frag(cap);
}

void pm__tx_init(pm_ring_tx *tx, pm_ring *r, size_t cap)
{
    memset(tx, 0, sizeof *tx);
    tx->r = r;
    tx->data = r->data;
    tx->cap = cap;
    tx->max_frag = pm__ring_max_frag(cap);
    tx->pos = atomic_load_explicit(&r->head, memory_order_relaxed);
    tx->tail_cache = atomic_load_explicit(&r->tail, memory_order_acquire);
    if (tx->pos - tx->tail_cache > cap) { /* checked like any tail read */
        tx->bad = 1;
        tx->tail_cache = tx->pos - cap; /* no room */
    }
    tx->first = 1;
}

void pm__rx_init(pm_ring_rx *rx, pm_ring *r, size_t cap)
{
    rx->r = r;
    rx->data = r->data;
    rx->cap = cap;
    rx->max_frag = pm__ring_max_frag(cap);
    rx->tail = atomic_load_explicit(&r->tail, memory_order_relaxed);
    rx->head_cache = rx->tail;
}

/* Copies n bytes (n <= cap) to ring position pos, wrapping around the end. */
static void ring_copy_in(pm_ring_tx *tx, uint64_t pos, const void *p, size_t n)
{
    uint64_t mask = tx->cap - 1;
    size_t off = (size_t)(pos & mask);
    size_t first = tx->cap - off;
    if (n <= first) {
        memcpy(tx->data + off, p, n);
    } else {
        memcpy(tx->data + off, p, first);
        memcpy(tx->data, (const unsigned char *)p + first, n - first);
    }
}

/* Publishes the open fragment: header first, then the head with release
 * order so the consumer that sees the head sees the bytes. */
static void tx_publish(pm_ring_tx *tx, int last)
{
    uint32_t hdr[2];
    hdr[0] = tx->frag_len;
    hdr[1] = PM_FRAG_MAGIC | (tx->first ? PM_FRAG_FIRST : 0u) |
             (last ? PM_FRAG_LAST : 0u);
    memcpy(tx->data + (tx->frag_at & (tx->cap - 1)), hdr, sizeof hdr);
    tx->pos = tx->frag_at + PM_ALIGN8(PM_FRAG_HDR + (uint64_t)tx->frag_len);
    atomic_store_explicit(&tx->r->head, tx->pos, memory_order_release);
    tx->open = 0;
    tx->first = last;
}

size_t pm__tx_write_more(pm_ring_tx *tx, const void *p, size_t n)
{
    const unsigned char *src = p;
    size_t done = 0;

    while (done < n) {
        if (!tx->open) {
            /* Room for a header and at least 8 bytes of payload. */
            if (pm__tx_room(tx, PM_FRAG_HDR * 2) < PM_FRAG_HDR * 2)
                break;
            tx->open = 1;
            tx->frag_at = tx->pos;
            tx->frag_len = 0;
            tx->pos += PM_FRAG_HDR;
        }
        uint64_t cap_left = tx->max_frag - tx->frag_len;
        uint64_t take = n - done;
        if (take > cap_left)
            take = cap_left;
        /* The padding after the payload always fits: tail + cap is 8-aligned. */
        uint64_t room = pm__tx_room(tx, take);
        if (take > room)
            take = room;
        if (take > 0) {
            ring_copy_in(tx, tx->pos, src + done, (size_t)take);
            tx->pos += take;
            tx->frag_len += (uint32_t)take;
            done += (size_t)take;
        }
        if (done < n) {
            /* Full fragment or full ring: let the consumer have it. */
            tx_publish(tx, 0);
        }
    }
    return done;
}

int pm__tx_end(pm_ring_tx *tx)
{
    if (!tx->open) {
        if (pm__tx_room(tx, PM_FRAG_HDR) < PM_FRAG_HDR)
            return -EAGAIN;
        tx->open = 1;
        tx->frag_at = tx->pos;
        tx->frag_len = 0;
    }
    tx_publish(tx, 1);
    return 0;
}

int pm__rx_peek(pm_ring_rx *rx, pm_frag *f)
{
    if (!pm__rx_ready(rx))
        return 0;
    uint64_t mask = rx->cap - 1;
    uint32_t hdr[2];
    /* head_cache came from shared memory: at most cap ahead of the tail.
     * The header then lies inside the data (8-aligned, never straddling the
     * end), and a payload of at most max_frag < cap inside it too. */
    if (rx->head_cache - rx->tail > rx->cap)
        return PM_ECORRUPT;
    memcpy(hdr, rx->data + (rx->tail & mask), sizeof hdr);
    uint64_t end = rx->tail + PM_ALIGN8(PM_FRAG_HDR + (uint64_t)hdr[0]);
    if ((hdr[1] & 0xffff0000u) != PM_FRAG_MAGIC || hdr[0] > rx->max_frag ||
        end - rx->tail > rx->head_cache - rx->tail)
        return PM_ECORRUPT;
    f->len = hdr[0];
    f->flags = hdr[1] & 0xffffu;
    f->end = end;
    size_t off = (size_t)((rx->tail + PM_FRAG_HDR) & mask);
    size_t first = rx->cap - off;
    f->p1 = rx->data + off;
    if (f->len <= first) {
        f->n1 = f->len;
        f->p2 = NULL;
        f->n2 = 0;
    } else {
        f->n1 = first;
        f->p2 = rx->data;
        f->n2 = f->len - first;
    }
    return 1;
}
