/*
 * ring.h -- single-producer single-consumer byte ring in shared memory.
 *
 * A ring carries messages as a sequence of fragments.  A fragment is an
 * 8-byte header {u32 len; u32 flags} followed by len payload bytes, padded
 * to 8 bytes.  Headers sit at 8-aligned positions, so a header never
 * straddles the end of the buffer; payloads may wrap around it.  A message
 * larger than the ring is streamed as several fragments (FIRST ... LAST);
 * a small message is one fragment with both flags.
 *
 * head and tail are byte counts that only grow (64 bits never wrap).  The
 * producer alone writes head, the consumer alone writes tail; each side keeps
 * a private cached copy of the other's counter so that the shared cache
 * lines are read only when the cached value says the ring looks full/empty.
 *
 * Trust: the other side of a ring may be a worker whose memory is wild.  So
 * each side keeps the ring's geometry (capacity, mask, largest fragment, data
 * address) in its own private pm_ring_tx / pm_ring_rx, set from the caller's
 * own numbers, and never reads it back from shared memory; every value it
 * does read there (the other side's counter, a fragment header) is checked
 * against that private geometry before it is used, so a bad value is
 * PM_ECORRUPT (or, for a tail, the tx's bad flag), never an access outside
 * the ring.
 */
#ifndef PM_RING_H
#define PM_RING_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define PM_FRAG_FIRST 1u
#define PM_FRAG_LAST 2u
#define PM_FRAG_MAGIC 0x504d0000u /* "PM" in the high half of flags */
#define PM_FRAG_HDR 8u
/* Fragments start at 8-aligned positions. */
#define PM_ALIGN8(x) (((x) + 7u) & ~(uint64_t)7u)

typedef struct pm_ring {
    _Alignas(64) _Atomic uint64_t head; /* bytes published by the producer */
    _Alignas(64) _Atomic uint64_t tail; /* bytes released by the consumer */
    /* Written by pm__ring_init for anyone inspecting the memory (debuggers,
     * tests); the engine never reads them back: see "Trust" above. */
    _Alignas(64) uint64_t cap;          /* power of two, multiple of 64 */
    uint64_t max_frag;                  /* largest fragment payload */
    _Alignas(64) unsigned char data[];
} pm_ring;

/* Producer side, private to the process that writes. */
typedef struct pm_ring_tx {
    pm_ring *r;
    unsigned char *data; /* private copies of the geometry */
    uint64_t cap, max_frag;
    uint64_t pos;        /* write position: published head + open fragment */
    uint64_t tail_cache; /* last tail read from the ring */
    uint64_t frag_at;    /* position of the open fragment's header */
    uint32_t frag_len;   /* payload bytes in the open fragment */
    int open;            /* a fragment is being written */
    int first;           /* the next fragment starts a message */
    int bad;             /* the consumer published an impossible tail (past
                            the write position, or more than cap behind):
                            the ring is corrupt, it looks full */
} pm_ring_tx;

/* Consumer side, private to the process that reads. */
typedef struct pm_ring_rx {
    pm_ring *r;
    const unsigned char *data; /* private copies of the geometry */
    uint64_t cap, max_frag;
    uint64_t tail;       /* consumer position (published on consume) */
    uint64_t head_cache; /* last head read from the ring */
} pm_ring_rx;

/* A fragment seen by the consumer: payload in one or two pieces. */
typedef struct pm_frag {
    uint32_t len;
    uint32_t flags;
    const unsigned char *p1;
    size_t n1;
    const unsigned char *p2; /* the wrapped part, or NULL */
    size_t n2;
    uint64_t end;            /* tail position after this fragment */
} pm_frag;

/* Bytes a ring of capacity cap occupies in shared memory. */
size_t pm__ring_size(size_t cap);

/* Initializes a ring in zeroed memory of pm__ring_size(cap) bytes. cap must be
 * a power of two >= 4096. */
void pm__ring_init(pm_ring *r, size_t cap);

/* Largest fragment payload of a ring of capacity cap. */
static inline uint64_t pm__ring_max_frag(uint64_t cap)
{
    return cap / 4 - PM_FRAG_HDR;
}

/* The two ends of ring r of capacity cap: cap is the caller's own number
 * (the one r was initialized with), not read from r. */
void pm__tx_init(pm_ring_tx *tx, pm_ring *r, size_t cap);
void pm__rx_init(pm_ring_rx *rx, pm_ring *r, size_t cap);

/* pm__tx_write's general case: opens fragments, fills the ring up to its
 * tail, publishes full fragments as it goes (ring.c). */
size_t pm__tx_write_more(pm_ring_tx *tx, const void *p, size_t n);

/*
 * Appends up to n bytes to the message being written and returns how many it
 * took (fewer than n only when the ring is full).  Fragments that reach the
 * maximum size or fill the ring are published as it goes.  Never blocks.
 * Inline, the common case: the n bytes fit the open fragment (or a new one),
 * the room the cached tail gives and the buffer before its end.
 */
static inline size_t pm__tx_write(pm_ring_tx *tx, const void *p, size_t n)
{
    uint64_t at = tx->open ? tx->pos : tx->pos + PM_FRAG_HDR;
    uint64_t len = (tx->open ? tx->frag_len : 0) + (uint64_t)n;
    uint64_t off = at & (tx->cap - 1);
    if (n == 0 || len > tx->max_frag || at + n - tx->tail_cache > tx->cap ||
        n > tx->cap - off)
        return pm__tx_write_more(tx, p, n);
    if (!tx->open) {
        tx->open = 1;
        tx->frag_at = tx->pos;
    }
    memcpy(tx->data + off, p, n);
    tx->pos = at + n;
    tx->frag_len = (uint32_t)len;
    return n;
}

/*
 * Ends the message: publishes its last fragment.  Returns 0, or -EAGAIN when
 * there was no open fragment and no room for an empty last one (call again
 * once the consumer has freed room).
 */
int pm__tx_end(pm_ring_tx *tx);

/* Free bytes after the write position.  Cheap: the shared tail is read only
 * when the cached value gives less than want.  An impossible tail sets
 * tx->bad and gives no room. */
static inline uint64_t pm__tx_room(pm_ring_tx *tx, uint64_t want)
{
    uint64_t room = tx->cap - (tx->pos - tx->tail_cache);
    if (room < want) {
        uint64_t t = atomic_load_explicit(&tx->r->tail, memory_order_acquire);
        if (tx->pos - t > tx->cap) { /* also catches t > pos */
            tx->bad = 1;
            return 0;
        }
        tx->tail_cache = t;
        room = tx->cap - (tx->pos - t);
    }
    return room;
}

/*
 * Writes a whole small message, the bytes a[0..na) then b[0..nb), as one
 * fragment, when no message is being written and it fits now (at most the
 * largest fragment, room in the ring, and before the end of the buffer):
 * returns 1, published.  Otherwise returns 0 with nothing written (the
 * caller streams it with pm__tx_write and pm__tx_end).
 */
static inline int pm__tx_put(pm_ring_tx *tx, const void *a, size_t na,
                             const void *b, size_t nb)
{
    uint64_t n = (uint64_t)na + nb;
    uint64_t off = (tx->pos + PM_FRAG_HDR) & (tx->cap - 1);
    if (tx->open || !tx->first || n > tx->max_frag || n > tx->cap - off ||
        pm__tx_room(tx, PM_FRAG_HDR + n) < PM_FRAG_HDR + n)
        return 0;
    uint32_t hdr[2] = {(uint32_t)n,
                       PM_FRAG_MAGIC | PM_FRAG_FIRST | PM_FRAG_LAST};
    memcpy(tx->data + off, a, na);
    if (nb)
        memcpy(tx->data + off + na, b, nb);
    memcpy(tx->data + (tx->pos & (tx->cap - 1)), hdr, sizeof hdr);
    /* Padded to 8: it fits, the room's end (tail + cap) is 8-aligned. */
    tx->pos += PM_ALIGN8(PM_FRAG_HDR + n);
    atomic_store_explicit(&tx->r->head, tx->pos, memory_order_release);
    return 1;
}

/* Reads the shared tail now and sets tx->bad when it is impossible (past
 * the write position, more than cap behind it, or gone backwards): for the
 * parent's health check, which thus notices a broken tail even when it has
 * nothing more to write to that ring.  Returns tx->bad. */
static inline int pm__tx_check(pm_ring_tx *tx)
{
    uint64_t t = atomic_load_explicit(&tx->r->tail, memory_order_acquire);
    if (tx->pos - t > tx->cap || t < tx->tail_cache)
        tx->bad = 1;
    return tx->bad;
}

/* Nonzero when the ring holds at least one published fragment not yet
 * consumed.  Cheap: the shared head is read only when the cache is stale. */
static inline int pm__rx_ready(pm_ring_rx *rx)
{
    if (rx->head_cache != rx->tail)
        return 1;
    rx->head_cache = atomic_load_explicit(&rx->r->head, memory_order_acquire);
    return rx->head_cache != rx->tail;
}

/*
 * Looks at the next fragment without consuming it.  Returns 1 and fills *f,
 * 0 when none is published, or PM_ECORRUPT when the header is malformed or
 * the published head is impossible (more than cap ahead of the tail, or a
 * fragment that ends past it).  *f always lies inside the ring's data.
 */
int pm__rx_peek(pm_ring_rx *rx, pm_frag *f);

/* Releases the fragment returned by the last pm__rx_peek (and every byte
 * before it) to the producer. */
static inline void pm__rx_consume(pm_ring_rx *rx, const pm_frag *f)
{
    rx->tail = f->end;
    atomic_store_explicit(&rx->r->tail, f->end, memory_order_release);
}

#endif
