/*
 * test_route.c -- hooks.route: ranges of a large message written straight
 * into the caller's memory, in the parent (results) and in a worker
 * (tasks).  The message is whole once the routed ranges are put back,
 * however the fragments fall; ranges may start inside the head the hook
 * sees; every owner is released exactly once (taken and released by the
 * caller, or by the engine when not taken, at a death, at destroy); a
 * range the message does not reach is PM_ECORRUPT, bad spans -EINVAL.
 */
#include <signal.h>
#include <stdatomic.h>

#include "task.h"

/* A routable message: u32 nspans, u32 seed, nspans x {u64 off, u64 len},
 * then pattern bytes (pattern seed at their own offset) up to its length.
 * The ranges to route are those of the table. */
#define RHDR 8u
#define RTABLE(n) (RHDR + 16u * (size_t)(n))

typedef struct rshape {
    size_t len;
    uint32_t nspans;
    uint64_t off[PM_ROUTE_MAX], rlen[PM_ROUTE_MAX];
    size_t routed; /* total of the range lengths */
} rshape;

/* The message of task k: small ones (read in place, never routed), big
 * ones with 0 to 4 ranges, the first one sometimes inside the head. */
static void rshape_of(uint64_t k, rshape *s)
{
    memset(s, 0, sizeof *s);
    if (k % 4 == 0) {
        s->len = 200;
        return;
    }
    s->len = 20000 + mix64(k) % 50000;
    s->nspans = (uint32_t)(k % 5);
    size_t start = RTABLE(s->nspans);
    size_t seg = (s->len - start) / (s->nspans + 1);
    for (uint32_t i = 0; i < s->nspans; i++) {
        uint64_t r = mix64(k * 31 + i);
        s->off[i] = start + i * seg + (i == 0 && k % 7 == 1 ? 0 : r % (seg / 4));
        s->rlen[i] = 1 + (r >> 20) % (seg / 2);
        s->routed += s->rlen[i];
    }
}

static unsigned char *rmsg_make(uint64_t k, const rshape *s)
{
    unsigned char *p = malloc(s->len);
    ASSERT(p != NULL);
    uint32_t seed = (uint32_t)k;
    memcpy(p, &s->nspans, 4);
    memcpy(p + 4, &seed, 4);
    for (uint32_t i = 0; i < s->nspans; i++) {
        memcpy(p + RHDR + 16 * i, &s->off[i], 8);
        memcpy(p + RHDR + 16 * i + 8, &s->rlen[i], 8);
    }
    size_t t = RTABLE(s->nspans);
    pat_fill(p + t, s->len - t, seed, t);
    return p;
}

/* The hook's state: counters shared by the threads of a process. */
typedef struct rctx {
    _Atomic long live, made, released;
    int bad; /* 1: a range past the end; 2: overlapping ranges */
} rctx;

typedef struct rowner {
    rctx *c;
    int n;
    pm_span sp[PM_ROUTE_MAX];
} rowner;

static int rroute(void *ctx, const void *head, size_t n, pm_span *spans,
                  void **owner)
{
    rctx *c = ctx;
    const unsigned char *h = head;
    ASSERT_UEQ(n, PM_ROUTE_HEAD);
    uint32_t ns;
    memcpy(&ns, h, 4);
    ASSERT(ns <= PM_ROUTE_MAX && RTABLE(ns) <= n);
    if (ns == 0)
        return 0;
    rowner *o = calloc(1, sizeof *o);
    ASSERT(o != NULL);
    o->c = c;
    o->n = (int)ns;
    for (uint32_t i = 0; i < ns; i++) {
        uint64_t off, len;
        memcpy(&off, h + RHDR + 16 * i, 8);
        memcpy(&len, h + RHDR + 16 * i + 8, 8);
        if (c->bad == 1 && i == ns - 1)
            len += 1u << 20;
        if (c->bad == 2 && i == 1)
            off = o->sp[0].off;
        o->sp[i] = (pm_span){off, len, malloc(len)};
        ASSERT(o->sp[i].dst != NULL);
        spans[i] = o->sp[i];
    }
    *owner = o;
    c->live++;
    c->made++;
    return (int)ns;
}

static void rrelease(void *ctx, void *owner)
{
    rctx *c = ctx;
    rowner *o = owner;
    ASSERT(o != NULL && o->c == c);
    for (int i = 0; i < o->n; i++)
        free(o->sp[i].dst);
    free(o);
    c->live--;
    c->released++;
}

/* 1 when msg[0..len) with the owner's ranges put back is message k whole. */
static int rmsg_ok(uint64_t k, const unsigned char *msg, size_t len,
                   const rowner *o)
{
    rshape s;
    rshape_of(k, &s);
    int routed = o != NULL;
    if (len != s.len - (routed ? s.routed : 0))
        return 0;
    unsigned char *want = rmsg_make(k, &s);
    size_t at = 0; /* in msg */
    int ok = 1;
    for (uint32_t i = 0; routed && i < s.nspans && ok; i++) {
        ok = o->n == (int)s.nspans && o->sp[i].off == s.off[i] &&
             o->sp[i].len == s.rlen[i] &&
             memcmp(o->sp[i].dst, want + s.off[i], s.rlen[i]) == 0;
    }
    for (size_t pos = 0, i = 0; ok && pos < s.len;) {
        if (routed && i < s.nspans && pos == s.off[i]) {
            pos += s.rlen[i++];
            continue;
        }
        size_t end = routed && i < s.nspans ? s.off[i] : s.len;
        ok = memcmp(msg + at, want + pos, end - pos) == 0;
        at += end - pos;
        pos = end;
    }
    free(want);
    return ok;
}

/* --- results: routed in the parent ---------------------------------------- */

typedef struct kgen {
    uint64_t next, n;
} kgen;

static int kgen_produce(void *ctx, pm_task *task, const void **data,
                        size_t *len)
{
    kgen *g = ctx;
    if (g->next == g->n)
        return 0;
    task->first = g->next++;
    task->count = 1;
    *data = NULL;
    *len = 0;
    return 1;
}

/* Writes message task->first in pieces of pseudo-random sizes. */
static int rmsg_work(void *ctx, const pm_task *task, const void *in,
                     size_t len, pm_writer *out)
{
    (void)ctx;
    (void)in;
    (void)len;
    rshape s;
    rshape_of(task->first, &s);
    unsigned char *p = rmsg_make(task->first, &s);
    int rc = 0;
    for (size_t off = 0, i = 0; off < s.len && rc == 0; i++) {
        size_t k = 1 + mix64(task->first + i) % 9000;
        if (k > s.len - off)
            k = s.len - off;
        rc = pm_write(out, p + off, k);
        off += k;
    }
    free(p);
    return rc;
}

TEST_IMPL(map_route_results_threads)
{
    static const struct {
        int nproc, nthreads, ordered;
    } cases[] = {{1, 1, 1}, {2, 1, 0}, {2, 2, 1}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        pm_options opt;
        pm_options_init(&opt);
        opt.nproc = cases[c].nproc;
        opt.nthreads = cases[c].nthreads;
        opt.ordered = cases[c].ordered;
        opt.ring_bytes = 4096;
        rctx rc = {0};
        pm_hooks h = {.ctx = &rc, .route = rroute, .route_release = rrelease};
        kgen g = {0, N_(300, 60)};
        pm_map *m;
        ASSERT_OK(pm_map_create(&m, &opt, kgen_produce, &g, rmsg_work, NULL,
                                &h));
        pm_result res;
        int r;
        uint64_t seen = 0;
        long untaken = 0;
        while ((r = pm_map_next(m, &res)) == 1) {
            uint64_t k = res.task.first;
            rshape s;
            rshape_of(k, &s);
            int routes = s.len > 4096 && s.nspans > 0;
            if (k % 3 == 2) { /* left to the engine */
                ASSERT_UEQ(res.len, s.len - (routes ? s.routed : 0));
                untaken += routes;
            } else {
                rowner *o = pm_map_take_routed(m);
                ASSERT(pm_map_take_routed(m) == NULL); /* only once */
                ASSERT_EQ(o != NULL, routes);
                ASSERT_MSG(rmsg_ok(k, res.data, res.len, o),
                           "message %llu wrong", (unsigned long long)k);
                if (o)
                    rrelease(&rc, o);
            }
            seen++;
        }
        ASSERT_RC(r, 0);
        ASSERT_UEQ(seen, g.n);
        ASSERT_OK(pm_map_destroy(m));
        ASSERT_EQ(rc.live, 0);
        ASSERT_EQ(rc.released, rc.made);
        ASSERT_GT(rc.made, untaken);
        ASSERT_NO_CHILDREN();
    }
}

/* --- tasks: routed in the worker ------------------------------------------- */

typedef struct tmgen {
    uint64_t next, n;
    unsigned char *cur;
} tmgen;

static int tmgen_produce(void *ctx, pm_task *task, const void **data,
                         size_t *len)
{
    tmgen *g = ctx;
    free(g->cur);
    g->cur = NULL;
    if (g->next == g->n)
        return 0;
    rshape s;
    rshape_of(g->next, &s);
    g->cur = rmsg_make(g->next, &s);
    task->first = g->next++;
    task->count = 1;
    *data = g->cur;
    *len = s.len;
    return 1;
}

/* Checks the task with its routed ranges (taken for two tasks in three,
 * released here), reports {task, ok, taken, releases before this one}. */
static int tm_work(void *ctx, const pm_task *task, const void *in,
                   size_t len, pm_writer *out)
{
    rctx *c = ctx;
    uint64_t k = task->first;
    rowner *o = k % 3 == 2 ? NULL : pm_writer_take_routed(out);
    uint64_t r[4] = {k, 0, o != NULL, (uint64_t)c->released};
    if (k % 3 == 2) {
        rshape s;
        rshape_of(k, &s);
        r[1] = len == s.len - (s.len > 4096 && s.nspans ? s.routed : 0);
    } else {
        r[1] = (uint64_t)rmsg_ok(k, in, len, o);
    }
    int rc = pm_write(out, r, sizeof r);
    if (o)
        rrelease(c, o);
    return rc;
}

TEST_IMPL(map_route_tasks_threads)
{
    for (int nthreads = 1; nthreads <= 2; nthreads++) {
        pm_options opt;
        pm_options_init(&opt);
        opt.nproc = 1;
        opt.nthreads = nthreads;
        opt.ring_bytes = 4096;
        rctx wc = {0};
        pm_hooks h = {.ctx = &wc, .route = rroute, .route_release = rrelease};
        tmgen g = {0, N_(200, 50), NULL};
        pm_map *m;
        ASSERT_OK(pm_map_create(&m, &opt, tmgen_produce, &g, tm_work, &wc,
                                &h));
        pm_result res;
        int r;
        uint64_t routed_before = 0;
        while ((r = pm_map_next(m, &res)) == 1) {
            uint64_t v[4];
            ASSERT_UEQ(res.len, sizeof v);
            memcpy(v, res.data, sizeof v);
            uint64_t k = v[0];
            rshape s;
            rshape_of(k, &s);
            int routes = s.len > 4096 && s.nspans > 0;
            ASSERT_MSG(v[1] == 1, "task %llu arrived wrong",
                       (unsigned long long)k);
            ASSERT_UEQ(v[2], k % 3 != 2 && routes);
            /* One thread: every earlier routed task was released, taken or
             * not, before this one ran. */
            if (nthreads == 1)
                ASSERT_UEQ(v[3], routed_before);
            routed_before += routes;
        }
        ASSERT_RC(r, 0);
        ASSERT_OK(pm_map_destroy(m));
        ASSERT_EQ(wc.made, 0); /* the parent routed nothing */
        free(g.cur);
        ASSERT_NO_CHILDREN();
    }
}

/* --- failures --------------------------------------------------------------- */

/* A range past the message's end, overlapping ranges, and a worker that
 * dies in the middle of a routed result: the map fails with the right code
 * and the owner is released. */
static int die_midway_work(void *ctx, const pm_task *task, const void *in,
                           size_t len, pm_writer *out)
{
    rshape s;
    rshape_of(task->first, &s);
    unsigned char *p = rmsg_make(task->first, &s);
    int rc = pm_write(out, p, s.len / 2);
    free(p);
    if (rc == 0 && s.nspans)
        raise(SIGKILL);
    return rc == 0 ? rmsg_work(ctx, task, in, len, out) : rc;
}

TEST_IMPL(map_route_failures)
{
    static const struct {
        int bad;
        pm_work_fn work;
        int expect;
    } cases[] = {
        {1, rmsg_work, PM_ECORRUPT},
        {2, rmsg_work, -EINVAL},
        {0, die_midway_work, PM_EWORKERDIED},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        pm_options opt;
        pm_options_init(&opt);
        opt.nproc = 1;
        opt.ring_bytes = 4096;
        rctx rc = {.bad = cases[c].bad};
        pm_hooks h = {.ctx = &rc, .route = rroute, .route_release = rrelease};
        /* from task 1 (big, one range) or 2 (two: they can overlap) */
        kgen g = {cases[c].bad == 2 ? 2 : 1, 12};
        pm_map *m;
        ASSERT_OK(pm_map_create(&m, &opt, kgen_produce, &g, cases[c].work,
                                NULL, &h));
        pm_result res;
        int r;
        while ((r = pm_map_next(m, &res)) == 1)
            ;
        ASSERT_RC(r, cases[c].expect);
        ASSERT_OK(pm_map_destroy(m));
        ASSERT_GT(rc.made, 0);
        ASSERT_EQ(rc.live, 0);
        ASSERT_EQ(rc.released, rc.made);
        ASSERT_NO_CHILDREN();
    }
}
