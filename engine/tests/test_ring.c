/* test_ring.c -- the SPSC fragment ring, through its internal API. */
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>

#include "ring.h"
#include "task.h"

#define CAP 4096u

static pm_ring *ring_new(size_t cap)
{
    void *p = mmap(NULL, pm__ring_size(cap), PROT_READ | PROT_WRITE,
                   MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT_MSG(p != MAP_FAILED, "mmap: %s", strerror(errno));
    pm__ring_init(p, cap);
    return p;
}

/* A ring of CAP bytes with both its ends, in this process. */
static pm_ring *ring_open(pm_ring_tx *tx, pm_ring_rx *rx)
{
    pm_ring *r = ring_new(CAP);
    pm__tx_init(tx, r, CAP);
    pm__rx_init(rx, r, CAP);
    return r;
}

static void ring_free(pm_ring *r)
{
    munmap(r, pm__ring_size(r->cap));
}

/* Waiting for the other side, with a limit so that a lost message fails the
 * test instead of hanging it. */
typedef struct stall {
    double deadline;
    unsigned n;
} stall;

static void stall_init(stall *s)
{
    s->deadline = pm_test_now_ms() + LIMIT_MS(10000);
    s->n = 0;
}

static void backoff(stall *s, const char *what)
{
    if ((++s->n & 255) == 0)
        ASSERT_MSG(pm_test_now_ms() < s->deadline, "stalled: %s", what);
    sched_yield();
}

/* Writes a whole message, waiting for room. */
static void ring_send(pm_ring_tx *tx, const void *p, size_t n)
{
    stall s;
    stall_init(&s);
    size_t off = 0;
    while (off < n) {
        off += pm__tx_write(tx, (const unsigned char *)p + off, n - off);
        if (off < n)
            backoff(&s, "producer waits for room");
    }
    while (pm__tx_end(tx) == -EAGAIN)
        backoff(&s, "producer waits for room for the end");
}

typedef struct rbuf {
    unsigned char *p;
    size_t len, cap;
    int nfrags;
} rbuf;

static void rbuf_append(rbuf *b, const void *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        ASSERT(b->p != NULL);
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
}

/* Checks the invariants of a fragment the consumer sees. */
static void check_frag(const pm_ring_rx *rx, const pm_frag *f)
{
    const pm_ring *r = rx->r;
    ASSERT_ULE(f->len, r->max_frag);
    ASSERT_UEQ(f->n1 + f->n2, f->len);
    ASSERT(f->p1 >= r->data && f->p1 + f->n1 <= r->data + r->cap);
    ASSERT(f->n2 == 0 || f->p2 == r->data);
    ASSERT_UEQ(f->end % 8, 0);
    ASSERT_UEQ(f->end - rx->tail, (PM_FRAG_HDR + f->len + 7) / 8 * 8);
    ASSERT_EQ(f->flags & ~(PM_FRAG_FIRST | PM_FRAG_LAST), 0);
}

/* Reads a whole message into b (replacing its content), waiting for it. */
static void ring_recv(pm_ring_rx *rx, rbuf *b)
{
    stall s;
    stall_init(&s);
    b->len = 0;
    b->nfrags = 0;
    for (;;) {
        pm_frag f;
        int rc = pm__rx_peek(rx, &f);
        ASSERT_MSG(rc >= 0, "pm__rx_peek: %s", pm_errname(rc));
        if (rc == 0) {
            backoff(&s, "consumer waits for a fragment");
            continue;
        }
        check_frag(rx, &f);
        ASSERT_EQ((f.flags & PM_FRAG_FIRST) != 0, b->nfrags == 0);
        rbuf_append(b, f.p1, f.n1);
        if (f.n2)
            rbuf_append(b, f.p2, f.n2);
        b->nfrags++;
        pm__rx_consume(rx, &f);
        if (f.flags & PM_FRAG_LAST)
            return;
    }
}

TEST_IMPL(ring_small_roundtrip)
{
    pm_ring_tx tx;
    pm_ring_rx rx;
    pm_ring *r = ring_open(&tx, &rx);
    ASSERT_UEQ(r->cap, CAP);
    ASSERT_UEQ(pm__tx_room(&tx, CAP), CAP);
    ASSERT_EQ(pm__rx_ready(&rx), 0);
    pm_frag f;
    ASSERT_RC(pm__rx_peek(&rx, &f), 0);

    static const char msg[] = "hello, ring";
    ASSERT_UEQ(pm__tx_write(&tx, msg, sizeof msg), sizeof msg);
    /* Not published before the end of the message. */
    ASSERT_EQ(pm__rx_ready(&rx), 0);
    ASSERT_OK(pm__tx_end(&tx));
    ASSERT_EQ(pm__rx_ready(&rx), 1);
    ASSERT_RC(pm__rx_peek(&rx, &f), 1);
    check_frag(&rx, &f);
    ASSERT_UEQ(f.len, sizeof msg);
    ASSERT_UEQ(f.flags, PM_FRAG_FIRST | PM_FRAG_LAST);
    ASSERT(f.p2 == NULL);
    ASSERT_MEM_EQ(f.p1, msg, sizeof msg);
    /* Peeking again sees the same fragment. */
    pm_frag g;
    ASSERT_RC(pm__rx_peek(&rx, &g), 1);
    ASSERT(g.p1 == f.p1 && g.len == f.len && g.end == f.end);
    pm__rx_consume(&rx, &f);
    ASSERT_EQ(pm__rx_ready(&rx), 0);
    ASSERT_RC(pm__rx_peek(&rx, &f), 0);
    ASSERT_UEQ(atomic_load(&r->head), atomic_load(&r->tail));
    ASSERT_UEQ(pm__tx_room(&tx, CAP), CAP);
    ring_free(r);
}

TEST_IMPL(ring_empty_message)
{
    pm_ring_tx tx;
    pm_ring_rx rx;
    pm_ring *r = ring_open(&tx, &rx);
    rbuf b = {0};
    for (int i = 0; i < 3; i++) {
        /* An empty message, then a one-byte one: both come out intact. */
        ASSERT_OK(pm__tx_end(&tx));
        pm_frag f;
        ASSERT_RC(pm__rx_peek(&rx, &f), 1);
        ASSERT_UEQ(f.len, 0);
        ASSERT_UEQ(f.flags, PM_FRAG_FIRST | PM_FRAG_LAST);
        ASSERT_UEQ(f.n1 + f.n2, 0);
        pm__rx_consume(&rx, &f);
        ASSERT_UEQ(pm__tx_write(&tx, "x", 0), 0); /* a zero-byte write */
        ASSERT_OK(pm__tx_end(&tx));
        ring_recv(&rx, &b);
        ASSERT_UEQ(b.len, 0);
        ring_send(&tx, "y", 1);
        ring_recv(&rx, &b);
        ASSERT_UEQ(b.len, 1);
        ASSERT_EQ(b.p[0], 'y');
    }
    free(b.p);
    ring_free(r);
}

/* pm__tx_put: a whole small message in one fragment, or nothing at all
 * (an open message, no room, a payload that would wrap, larger than a
 * fragment); the bytes read back are the two parts, in order, whichever
 * way the message went. */
TEST_IMPL(ring_put_whole_messages)
{
    pm_ring_tx tx;
    pm_ring_rx rx;
    pm_ring *r = ring_open(&tx, &rx);
    rbuf b = {0};
    unsigned char a[16], p[CAP];
    for (size_t i = 0; i < sizeof p; i++)
        p[i] = (unsigned char)(i * 7 + 3);
    unsigned seed = 12345, put = 0, streamed = 0;
    for (int k = 0; k < 3000; k++) {
        seed = seed * 1103515245u + 12345u;
        size_t na = (seed >> 8) % 17, nb = (seed >> 16) % 300;
        if (k % 500 == 499)
            nb = CAP / 4; /* more than a fragment holds with the header */
        for (size_t i = 0; i < na; i++)
            a[i] = (unsigned char)(k + i);
        uint64_t head = atomic_load(&r->head), pos = tx.pos;
        if (pm__tx_put(&tx, a, na, p + k % 64, nb)) {
            put++;
            ASSERT_UEQ(tx.pos - head, (PM_FRAG_HDR + na + nb + 7) / 8 * 8);
            ASSERT_UEQ(atomic_load(&r->head), tx.pos);
        } else {
            /* Nothing written: then streamed as usual. */
            ASSERT_UEQ(atomic_load(&r->head), head);
            ASSERT_UEQ(tx.pos, pos);
            ASSERT_EQ(tx.open, 0);
            streamed++;
            ASSERT_UEQ(pm__tx_write(&tx, a, na), na);
            stall s;
            stall_init(&s);
            size_t off = 0;
            while (off < nb) {
                off += pm__tx_write(&tx, p + k % 64 + off, nb - off);
                if (off < nb) {
                    /* The consumer is this process: it reads below. */
                    pm_frag f;
                    int rc = pm__rx_peek(&rx, &f);
                    ASSERT_MSG(rc > 0, "stuck writing message %d", k);
                    ASSERT_EQ(f.flags & PM_FRAG_LAST, 0);
                    rbuf_append(&b, f.p1, f.n1);
                    if (f.n2)
                        rbuf_append(&b, f.p2, f.n2);
                    pm__rx_consume(&rx, &f);
                }
            }
            while (pm__tx_end(&tx) == -EAGAIN)
                backoff(&s, "producer waits for room for the end");
        }
        /* Read it back (what the streamed case already took is in b). */
        rbuf rest = {0};
        ring_recv(&rx, &rest);
        rbuf_append(&b, rest.p, rest.len);
        free(rest.p);
        ASSERT_UEQ(b.len, na + nb);
        ASSERT_MEM_EQ(b.p, a, na);
        ASSERT_MEM_EQ(b.p + na, p + k % 64, nb);
        b.len = 0;
    }
    /* Both ways were taken (wraps and too-large messages stream). */
    ASSERT(put > 1000 && streamed > 5);
    /* An open message: nothing is put in the middle of it. */
    ASSERT_UEQ(pm__tx_write(&tx, "ab", 2), 2);
    uint64_t head = atomic_load(&r->head);
    ASSERT_EQ(pm__tx_put(&tx, "x", 1, NULL, 0), 0);
    ASSERT_UEQ(atomic_load(&r->head), head);
    ASSERT_OK(pm__tx_end(&tx));
    ring_recv(&rx, &b);
    ASSERT_UEQ(b.len, 2);
    ASSERT_MEM_EQ(b.p, "ab", 2);
    /* A full ring: nothing put until the consumer frees room. */
    int n = 0;
    while (pm__tx_put(&tx, p, 100, NULL, 0))
        n++;
    ASSERT(n > 0 && pm__tx_room(&tx, CAP) < PM_FRAG_HDR + 100 + 8);
    for (int i = 0; i < n; i++) {
        ring_recv(&rx, &b);
        ASSERT_UEQ(b.len, 100);
        ASSERT_MEM_EQ(b.p, p, 100);
    }
    ASSERT(pm__tx_put(&tx, p, 100, NULL, 0));
    free(b.p);
    ring_free(r);
}

/* One process plays both sides, in random steps: the producer writes what
 * fits, the consumer then takes a random number of fragments. */
TEST_IMPL(ring_wraparound_prng)
{
    pm_ring_tx tx;
    pm_ring_rx rx;
    pm_ring *r = ring_open(&tx, &rx);
    const uint64_t N = N_(30000, 3000);
    const uint64_t seed = 77;
    uint64_t sent = 0, got = 0, step = 0;
    size_t off = 0;
    int in_msg = 0;
    rbuf b = {0};
    unsigned wrapped = 0, multi = 0, short_writes = 0;
    unsigned char *src = malloc(3000);
    ASSERT(src != NULL);
    size_t src_len = 0;

    while (got < N) {
        int progress = 0;
        /* Produce. */
        while (sent < N) {
            if (off == 0 && !in_msg) {
                src_len = 1 + mix64(seed + sent) % 3000;
                pat_fill(src, src_len, sent, 0);
                in_msg = 1;
            }
            if (off < src_len) {
                size_t k = pm__tx_write(&tx, src + off, src_len - off);
                off += k;
                progress |= k > 0;
                if (off < src_len) {
                    short_writes++;
                    break;
                }
            }
            if (pm__tx_end(&tx) == -EAGAIN)
                break;
            progress = 1;
            sent++;
            off = 0;
            in_msg = 0;
        }
        /* Consume 1..8 fragments (or all when the producer is done). */
        int want = sent == N ? 1 << 30 : 1 + (int)(mix64(step++) % 8);
        for (int i = 0; i < want; i++) {
            pm_frag f;
            int rc = pm__rx_peek(&rx, &f);
            ASSERT_MSG(rc >= 0, "pm__rx_peek: %s", pm_errname(rc));
            if (rc == 0)
                break;
            progress = 1;
            check_frag(&rx, &f);
            ASSERT_EQ((f.flags & PM_FRAG_FIRST) != 0, b.nfrags == 0);
            wrapped += f.n2 > 0;
            rbuf_append(&b, f.p1, f.n1);
            rbuf_append(&b, f.p2, f.n2);
            b.nfrags++;
            pm__rx_consume(&rx, &f);
            if (f.flags & PM_FRAG_LAST) {
                size_t want_len = 1 + mix64(seed + got) % 3000;
                ASSERT_UEQ(b.len, want_len);
                size_t bad = pat_check(b.p, b.len, got, 0);
                ASSERT_MSG(bad == b.len, "message %llu differs at byte %zu",
                           (unsigned long long)got, bad);
                multi += b.nfrags > 1;
                b.len = 0;
                b.nfrags = 0;
                got++;
            }
        }
        ASSERT_MSG(progress, "neither side can move (sent %llu, got %llu)",
                   (unsigned long long)sent, (unsigned long long)got);
    }
    ASSERT_EQ(pm__rx_ready(&rx), 0);
    ASSERT_UEQ(atomic_load(&r->head), atomic_load(&r->tail));
    ASSERT_UEQ(atomic_load(&r->head) % 8, 0);
    ASSERT_UEQ(pm__tx_room(&tx, CAP), CAP);
    /* The test did exercise what it is about. */
    ASSERT_GT(wrapped, 0);
    ASSERT_GT(multi, 0);
    ASSERT_GT(short_writes, 0);
    ASSERT_GT(atomic_load(&r->head), 100 * CAP);
    free(src);
    free(b.p);
    ring_free(r);
}

/* Messages larger than the ring, streamed by a producer process while the
 * consumer process reads them. */
TEST_IMPL(ring_large_message_procs)
{
    pm_ring *r = ring_new(CAP);
    const size_t sizes[] = {N_(1u << 20, 1u << 18), 0, 4097, 1016, 1017,
                            CAP - 8, CAP, 3 * CAP + 5, 1};
    const int n = (int)(sizeof sizes / sizeof sizes[0]);
    size_t maxlen = sizes[0];

    pid_t pid = pm_test_fork();
    if (pid == 0) {
        pm_ring_tx tx;
        pm__tx_init(&tx, r, CAP);
        unsigned char *p = malloc(maxlen);
        ASSERT(p != NULL);
        for (int i = 0; i < n; i++) {
            pat_fill(p, sizes[i], 1000 + (uint64_t)i, 0);
            ring_send(&tx, p, sizes[i]);
        }
        free(p);
        _exit(0);
    }
    pm_ring_rx rx;
    pm__rx_init(&rx, r, CAP);
    rbuf b = {0};
    for (int i = 0; i < n; i++) {
        ring_recv(&rx, &b);
        ASSERT_UEQ(b.len, sizes[i]);
        size_t bad = pat_check(b.p, b.len, 1000 + (uint64_t)i, 0);
        ASSERT_MSG(bad == b.len, "message %d (%zu bytes) differs at byte %zu",
                   i, b.len, bad);
        /* No fragment exceeds a quarter of the ring. */
        ASSERT_GE((size_t)b.nfrags, (sizes[i] + r->max_frag - 1) / r->max_frag);
    }
    WAIT_HELPER(pid);
    ASSERT_EQ(pm__rx_ready(&rx), 0);
    free(b.p);
    ring_free(r);
}

TEST_IMPL(ring_tx_end_eagain)
{
    pm_ring_tx tx;
    pm_ring_rx rx;
    pm_ring *r = ring_open(&tx, &rx);
    ASSERT_UEQ(r->max_frag, CAP / 4 - PM_FRAG_HDR);
    unsigned char src[5000];
    pat_fill(src, sizeof src, 5, 0);
    /* Four full fragments fill the ring exactly: 4 * (8 + 1016) = 4096. */
    size_t k = pm__tx_write(&tx, src, sizeof src);
    ASSERT_UEQ(k, 4 * r->max_frag);
    ASSERT_UEQ(pm__tx_room(&tx, 8), 0);
    ASSERT_UEQ(pm__tx_write(&tx, src + k, sizeof src - k), 0);
    ASSERT_RC(pm__tx_end(&tx), -EAGAIN);
    ASSERT_RC(pm__tx_end(&tx), -EAGAIN); /* still full: still EAGAIN */

    /* Free one fragment: the end fits now, as an empty LAST fragment. */
    pm_frag f;
    ASSERT_RC(pm__rx_peek(&rx, &f), 1);
    ASSERT_UEQ(f.len, r->max_frag);
    ASSERT_UEQ(f.flags, PM_FRAG_FIRST);
    rbuf b = {0};
    rbuf_append(&b, f.p1, f.n1);
    rbuf_append(&b, f.p2, f.n2);
    pm__rx_consume(&rx, &f);
    ASSERT_OK(pm__tx_end(&tx));
    for (int i = 0; i < 4; i++) {
        ASSERT_RC(pm__rx_peek(&rx, &f), 1);
        check_frag(&rx, &f);
        ASSERT_EQ((f.flags & PM_FRAG_FIRST) != 0, 0);
        ASSERT_EQ((f.flags & PM_FRAG_LAST) != 0, i == 3);
        ASSERT_UEQ(f.len, i == 3 ? 0 : r->max_frag);
        rbuf_append(&b, f.p1, f.n1);
        rbuf_append(&b, f.p2, f.n2);
        pm__rx_consume(&rx, &f);
    }
    ASSERT_UEQ(b.len, k);
    ASSERT_MEM_EQ(b.p, src, k);
    ASSERT_RC(pm__rx_peek(&rx, &f), 0);
    /* The next message starts cleanly. */
    ring_send(&tx, "z", 1);
    ring_recv(&rx, &b);
    ASSERT_UEQ(b.len, 1);
    ASSERT_EQ(b.nfrags, 1);
    free(b.p);
    ring_free(r);
}

TEST_IMPL(ring_corrupt_header)
{
    pm_ring_tx tx;
    pm_ring_rx rx;
    pm_ring *r = ring_open(&tx, &rx);
    ring_send(&tx, "abcdefghij", 10);
    uint32_t good[2], bad[2];
    memcpy(good, r->data, sizeof good);
    ASSERT_UEQ(good[0], 10);
    ASSERT_UEQ(good[1], PM_FRAG_MAGIC | PM_FRAG_FIRST | PM_FRAG_LAST);
    pm_frag f;

    /* Flags without the magic. */
    bad[0] = good[0];
    bad[1] = PM_FRAG_FIRST | PM_FRAG_LAST;
    memcpy(r->data, bad, sizeof bad);
    ASSERT_RC(pm__rx_peek(&rx, &f), PM_ECORRUPT);
    /* A length above the largest fragment. */
    bad[0] = (uint32_t)r->max_frag + 1;
    bad[1] = good[1];
    memcpy(r->data, bad, sizeof bad);
    ASSERT_RC(pm__rx_peek(&rx, &f), PM_ECORRUPT);
    bad[0] = 0xffffffffu;
    memcpy(r->data, bad, sizeof bad);
    ASSERT_RC(pm__rx_peek(&rx, &f), PM_ECORRUPT);
    /* A length that runs past what the producer published. */
    bad[0] = 100;
    memcpy(r->data, bad, sizeof bad);
    ASSERT_RC(pm__rx_peek(&rx, &f), PM_ECORRUPT);
    /* Restored, it reads fine. */
    memcpy(r->data, good, sizeof good);
    ASSERT_RC(pm__rx_peek(&rx, &f), 1);
    ASSERT_MEM_EQ(f.p1, "abcdefghij", 10);

    /* With more published behind it, a length just above the largest
     * fragment stays within what was published: only the size check can
     * catch it. */
    unsigned char big[1000];
    memset(big, 'b', sizeof big);
    ring_send(&tx, big, sizeof big);
    ring_send(&tx, big, sizeof big);
    ASSERT_UGE(atomic_load(&r->head), 24 + 2 * (8 + 1000));
    pm__rx_init(&rx, r, CAP); /* a consumer that has seen the whole head */
    bad[0] = (uint32_t)r->max_frag + 1;
    bad[1] = good[1];
    memcpy(r->data, bad, sizeof bad);
    ASSERT_RC(pm__rx_peek(&rx, &f), PM_ECORRUPT);
    ASSERT_UGE(rx.head_cache, 8 + (uint64_t)r->max_frag + 8);
    memcpy(r->data, good, sizeof good);
    ASSERT_RC(pm__rx_peek(&rx, &f), 1);
    pm__rx_consume(&rx, &f);
    rbuf b = {0};
    ring_recv(&rx, &b);
    ASSERT_UEQ(b.len, sizeof big);
    ring_recv(&rx, &b);
    ASSERT_MEM_EQ(b.p, big, sizeof big);
    free(b.p);
    ring_free(r);
}

/* --- producer and consumer on two sides ---------------------------------- */

/* Record i: {u64 i, u32 len, u32 ~len} then len bytes of pattern i. */
static size_t record_len(uint64_t i)
{
    return mix64(i * 7 + 3) % 201;
}

static void produce_records(pm_ring *r, uint64_t n)
{
    pm_ring_tx tx;
    pm__tx_init(&tx, r, CAP);
    unsigned char buf[16 + 256];
    for (uint64_t i = 0; i < n; i++) {
        uint32_t len = (uint32_t)record_len(i), nlen = ~len;
        memcpy(buf, &i, 8);
        memcpy(buf + 8, &len, 4);
        memcpy(buf + 12, &nlen, 4);
        pat_fill(buf + 16, len, i, 0);
        ring_send(&tx, buf, 16 + len);
    }
}

static void consume_records(pm_ring *r, uint64_t n)
{
    pm_ring_rx rx;
    pm__rx_init(&rx, r, CAP);
    rbuf b = {0};
    for (uint64_t i = 0; i < n; i++) {
        ring_recv(&rx, &b);
        ASSERT_UGE(b.len, 16);
        uint64_t seq;
        uint32_t len, nlen;
        memcpy(&seq, b.p, 8);
        memcpy(&len, b.p + 8, 4);
        memcpy(&nlen, b.p + 12, 4);
        ASSERT_UEQ(seq, i);
        ASSERT_UEQ(len, record_len(i));
        ASSERT_UEQ(nlen, ~len);
        ASSERT_UEQ(b.len, 16 + (size_t)len);
        size_t bad = pat_check(b.p + 16, len, i, 0);
        ASSERT_MSG(bad == len, "record %llu differs at byte %zu",
                   (unsigned long long)i, bad);
    }
    ASSERT_EQ(pm__rx_ready(&rx), 0);
    free(b.p);
}

TEST_IMPL(ring_spsc_procs)
{
    pm_ring *r = ring_new(CAP);
    const uint64_t n = N_(100000, 20000);
    pid_t pid = pm_test_fork();
    if (pid == 0) {
        produce_records(r, n);
        _exit(0);
    }
    consume_records(r, n);
    WAIT_HELPER(pid);
    ring_free(r);
}

typedef struct thread_arg {
    pm_ring *r;
    uint64_t n;
} thread_arg;

static void *producer_thread(void *p)
{
    thread_arg *a = p;
    produce_records(a->r, a->n);
    return NULL;
}

TEST_IMPL(ring_spsc_threads)
{
    pm_ring *r = ring_new(CAP);
    thread_arg a = {r, N_(100000, 20000)};
    pthread_t th;
    ASSERT_EQ(pthread_create(&th, NULL, producer_thread, &a), 0);
    consume_records(r, a.n);
    ASSERT_EQ(pthread_join(th, NULL), 0);
    ring_free(r);
}
