/*
 * test_job_api.c -- the job API as a C program uses it: one job and several
 * threads, callbacks calling back into their job, calls refused without
 * failing the job, the options' size, taking a large result, the worker
 * named after PM_ECORRUPT.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <unistd.h>
#include <signal.h>
#include <sched.h>
#include <stddef.h>
#include <sys/mman.h>
#include <time.h>

#include "internal.h"
#include "task.h"

/* Records are their index (8 bytes); the result is 3 * index, or, for
 * indices with index % big_every == 1, big bytes of pattern. */
typedef struct api_work {
    size_t big_every, big;
} api_work;

static int api_fn(void *ctx, const void *in, size_t len, pm_writer *out)
{
    const api_work *w = ctx;
    uint64_t idx;
    ASSERT_UEQ(len, 8);
    memcpy(&idx, in, 8);
    if (w && w->big_every && idx % w->big_every == 1) {
        unsigned char buf[4096];
        for (size_t off = 0; off < w->big;) {
            size_t k = w->big - off < sizeof buf ? w->big - off : sizeof buf;
            pat_fill(buf, k, idx, off);
            int rc = pm_write(out, buf, k);
            if (rc < 0)
                return rc;
            off += k;
        }
        return 0;
    }
    uint64_t r = idx * 3;
    return pm_write(out, &r, sizeof r);
}

typedef struct recs {
    size_t n;
    uint64_t *vals;
    pm_record *recs;
} recs;

static void recs_make(recs *r, size_t n)
{
    r->n = n;
    r->vals = malloc(n * sizeof *r->vals);
    r->recs = malloc(n * sizeof *r->recs);
    ASSERT(r->vals && r->recs);
    for (size_t i = 0; i < n; i++) {
        r->vals[i] = i;
        r->recs[i] = (pm_record){&r->vals[i], 8};
    }
}

static void recs_free(recs *r)
{
    free(r->vals);
    free(r->recs);
}

static pm_job *api_job(int nproc, const recs *r, api_work *w)
{
    pm_job_options o;
    pm_job_options_init(&o);
    o.nproc = nproc;
    pm_job *job;
    ASSERT_OK(pm_job_create(&job, &o, api_fn, w));
    if (r)
        ASSERT_OK(pm_job_feed_array(job, r->recs, r->n));
    return job;
}

/* --- one job, two threads -------------------------------------------------- */

typedef struct pull {
    pm_job *job;
    _Atomic uint32_t *seen;
    size_t n;
    size_t got, busy;
    int rc;
} pull;

static void *pull_main(void *arg)
{
    pull *p = arg;
    pm_item it;
    int rc;
    for (;;) {
        rc = pm_job_next(p->job, &it);
        if (rc == PM_EBUSY) {
            p->busy++;
            sched_yield();
            continue;
        }
        if (rc != 1)
            break;
        /* it.data is valid only until the next call, by either thread:
         * only the index and status are used. */
        ASSERT_ULT(it.index, p->n);
        ASSERT_EQ(it.status, PM_ITEM_OK);
        atomic_fetch_add(&p->seen[it.index], 1);
        p->got++;
    }
    p->rc = rc;
    return NULL;
}

/* Two threads call pm_job_next on one job at the same time: calls that
 * overlap are refused with PM_EBUSY (the job goes on), every item is
 * delivered exactly once, and both threads see the end (0).  On a job that
 * does not refuse them, the two calls corrupt it. */
TEST_IMPL(job_threads_share_one_job)
{
    size_t n = N_(20000, 3000);
    recs r;
    recs_make(&r, n);
    _Atomic uint32_t *seen = calloc(n, sizeof *seen);
    ASSERT(seen != NULL);
    for (int round = 0; round < N_(10, 3); round++) {
        memset((void *)seen, 0, n * sizeof *seen);
        pm_job *job = api_job(2, &r, NULL);
        pull a = {job, seen, n, 0, 0, 0}, b = a;
        pthread_t ta, tb;
        ASSERT_OK(pthread_create(&ta, NULL, pull_main, &a));
        ASSERT_OK(pthread_create(&tb, NULL, pull_main, &b));
        pthread_join(ta, NULL);
        pthread_join(tb, NULL);
        ASSERT_RC(a.rc, 0);
        ASSERT_RC(b.rc, 0);
        ASSERT_UEQ(a.got + b.got, n);
        for (size_t i = 0; i < n; i++)
            ASSERT_MSG(atomic_load(&seen[i]) == 1, "item %zu delivered %u times",
                       i, atomic_load(&seen[i]));
        ASSERT_UEQ(pm_job_done(job), n);
        ASSERT_OK(pm_job_destroy(job));
        ASSERT_NO_CHILDREN();
    }
    free((void *)seen);
    recs_free(&r);
}

/* A job made in one thread and run in another, one call at a time: fine. */
static void *run_half(void *arg)
{
    pull *p = arg;
    pm_item it;
    while (p->got < p->n / 2 && (p->rc = pm_job_next(p->job, &it)) == 1) {
        uint64_t v;
        memcpy(&v, it.data, 8);
        ASSERT_UEQ(v, it.index * 3);
        p->got++;
    }
    return NULL;
}

TEST_IMPL(job_threads_hand_over)
{
    recs r;
    recs_make(&r, 1000);
    pm_job *job = api_job(2, &r, NULL);
    pull p = {.job = job, .n = r.n};
    pthread_t t;
    ASSERT_OK(pthread_create(&t, NULL, run_half, &p));
    pthread_join(t, NULL);
    ASSERT_UEQ(p.got, r.n / 2);
    pm_item it;
    int rc;
    while ((rc = pm_job_next(job, &it)) == 1)
        ASSERT_UEQ(it.index, p.got++);
    ASSERT_RC(rc, 0);
    ASSERT_UEQ(p.got, r.n);
    ASSERT_OK(pm_job_destroy(job));
    recs_free(&r);
}

/* --- callbacks calling back into their job --------------------------------- */

typedef struct reenter {
    pm_job *job;
    const recs *r;
    int calls;
} reenter;

static int reenter_item(void *ctx, const pm_item *it)
{
    reenter *re = ctx;
    pm_item other;
    if (re->calls++ < 3) {
        ASSERT_RC(pm_job_next(re->job, &other), PM_EBUSY);
        ASSERT_RC(pm_job_run(re->job, reenter_item, re), PM_EBUSY);
        ASSERT_RC(pm_job_destroy(re->job), PM_EBUSY);
        ASSERT_RC(pm_job_feed_array(re->job, re->r->recs, re->r->n), PM_EBUSY);
        ASSERT(pm_job_take_result(re->job) == NULL);
        ASSERT_UEQ(pm_job_done(re->job), it->index + 1);
        ASSERT(pm_job_death(re->job) == NULL);
    }
    return 0;
}

typedef struct refeed {
    pm_job *job;
    size_t next, n;
    uint64_t v;
} refeed;

static int refeed_fn(void *ctx, const void **data, size_t *len)
{
    refeed *f = ctx;
    pm_item it;
    ASSERT_RC(pm_job_next(f->job, &it), PM_EBUSY);
    ASSERT_RC(pm_job_destroy(f->job), PM_EBUSY);
    if (f->next == f->n)
        return 0;
    f->v = f->next++;
    *data = &f->v;
    *len = 8;
    return 1;
}

static void reprogress(void *ctx, uint64_t done, uint64_t total)
{
    pm_job **jp = ctx;
    (void)total;
    ASSERT_UEQ(pm_job_done(*jp), done);
    ASSERT_RC(pm_job_destroy(*jp), PM_EBUSY); /* not freed under its feet */
}

TEST_IMPL(job_callbacks_reenter)
{
    recs r;
    recs_make(&r, 300);
    pm_job *job = api_job(2, &r, NULL);
    reenter re = {job, &r, 0};
    ASSERT_OK(pm_job_run(job, reenter_item, &re));
    ASSERT_EQ(re.calls, 300);
    ASSERT_OK(pm_job_destroy(job));

    /* The feed function and the progress callback. */
    pm_job_options o;
    pm_job_options_init(&o);
    o.nproc = 2;
    o.progress = reprogress;
    o.progress_ctx = &job;
    ASSERT_OK(pm_job_create(&job, &o, api_fn, NULL));
    refeed f = {job, 0, 300, 0};
    ASSERT_OK(pm_job_feed_fn(job, refeed_fn, &f));
    pm_item it;
    int rc;
    size_t got = 0;
    while ((rc = pm_job_next(job, &it)) == 1) {
        uint64_t v;
        memcpy(&v, it.data, 8);
        ASSERT_UEQ(v, it.index * 3);
        ASSERT_UEQ(it.index, got++);
    }
    ASSERT_RC(rc, 0);
    ASSERT_UEQ(got, 300);
    ASSERT_OK(pm_job_destroy(job));
    ASSERT_NO_CHILDREN();
    recs_free(&r);
}

/* --- calls refused without failing the job --------------------------------- */

static int stop_at(void *ctx, const pm_item *it)
{
    (void)it;
    return --*(int *)ctx == 0 ? 99 : 0;
}

TEST_IMPL(job_refusals_keep_the_job)
{
    recs r;
    recs_make(&r, 100);
    /* Asked for items before its input: refused; given its input, it
     * runs. */
    pm_job *job = api_job(2, NULL, NULL);
    pm_item it;
    ASSERT_RC(pm_job_next(job, &it), PM_ESTATE);
    ASSERT_RC(pm_job_run(job, stop_at, &(int){1}), PM_ESTATE);
    ASSERT_OK(pm_job_feed_array(job, r.recs, 50));
    /* A second input is refused: the first is the one that runs. */
    ASSERT_RC(pm_job_feed_array(job, r.recs, r.n), PM_ESTATE);
    refeed f = {job, 0, 10, 0};
    ASSERT_RC(pm_job_feed_fn(job, refeed_fn, &f), PM_ESTATE);
    int rc;
    size_t got = 0;
    while ((rc = pm_job_next(job, &it)) == 1)
        ASSERT_UEQ(it.index, got++);
    ASSERT_RC(rc, 0);
    ASSERT_UEQ(got, 50);
    ASSERT_OK(pm_job_destroy(job));

    /* pm_job_run stopped by its callback ends the call, not the job: the
     * next call goes on with the next item. */
    job = api_job(2, &r, NULL);
    int left = 10;
    ASSERT_RC(pm_job_run(job, stop_at, &left), 99);
    ASSERT_UEQ(pm_job_done(job), 10);
    ASSERT_RC(pm_job_next(job, &it), 1);
    ASSERT_UEQ(it.index, 10);
    left = 1000;
    ASSERT_OK(pm_job_run(job, stop_at, &left));
    ASSERT_UEQ(pm_job_done(job), r.n);
    ASSERT_OK(pm_job_destroy(job));
    ASSERT_NO_CHILDREN();
    recs_free(&r);
}

/* --- the options' size ------------------------------------------------------ */

TEST_IMPL(job_options_size)
{
    pm_job_options o;
    pm_job *job = NULL;
    /* Not set up by pm_job_options_init: refused. */
    memset(&o, 0, sizeof o);
    o.nproc = 1;
    o.nthreads = 1;
    ASSERT_RC(pm_job_create(&job, &o, api_fn, NULL), -EINVAL);
    ASSERT(job == NULL);
    pm_job_options_init(&o);
    ASSERT_UEQ(o.size, sizeof o);
    ASSERT_EQ(o.nthreads, 1);
    ASSERT_EQ(o.ordered, 1);

    /* The library writes no more than the size it is given. */
    unsigned char buf[sizeof(pm_job_options) + 64];
    memset(buf, 0xAB, sizeof buf);
    pm_job_options_init_size((pm_job_options *)(void *)buf, 24);
    for (size_t i = 24; i < sizeof buf; i++)
        ASSERT_MSG(buf[i] == 0xAB, "byte %zu written", i);

    /* A program built against a newer pm.h: a larger struct is fine while
     * the fields this library does not know are zero; one it would have to
     * ignore is refused. */
    struct {
        pm_job_options o;
        uint64_t newer[2];
    } big;
    pm_job_options_init_size(&big.o, sizeof big);
    ASSERT_UEQ(big.o.size, sizeof big);
    ASSERT_UEQ(big.newer[0] | big.newer[1], 0);
    big.o.nproc = 1;
    ASSERT_OK(pm_job_create(&job, &big.o, api_fn, NULL));
    recs r;
    recs_make(&r, 20);
    ASSERT_OK(pm_job_feed_array(job, r.recs, r.n));
    ASSERT_OK(pm_job_run(job, stop_at, &(int){1000}));
    ASSERT_UEQ(pm_job_done(job), r.n);
    ASSERT_OK(pm_job_destroy(job));
    big.newer[1] = 7;
    ASSERT_RC(pm_job_create(&job, &big.o, api_fn, NULL), -E2BIG);
    ASSERT(job == NULL);
    /* Limits named in pm.h. */
    pm_job_options_init(&o);
    o.nproc = PM_MAX_NPROC + 1;
    ASSERT_RC(pm_job_create(&job, &o, api_fn, NULL), -EINVAL);
    pm_job_options_init(&o);
    o.nthreads = PM_MAX_NTHREADS + 1;
    ASSERT_RC(pm_job_create(&job, &o, api_fn, NULL), -EINVAL);
    pm_job_options_init(&o);
    o.timeout_ms = PM_MAX_TIMEOUT_MS + 1;
    ASSERT_RC(pm_job_create(&job, &o, api_fn, NULL), -EINVAL);
    ASSERT_NO_CHILDREN();
    recs_free(&r);
}

/* --- taking a large result -------------------------------------------------- */

TEST_IMPL(job_take_result)
{
    enum { N = 60 };
    size_t big = 300000;
    recs r;
    recs_make(&r, N);
    api_work w = {.big_every = 3, .big = big};
    for (int ordered = 0; ordered < 2; ordered++) {
        pm_job_options o;
        pm_job_options_init(&o);
        o.nproc = 2;
        o.chunk = 1;
        o.ordered = ordered;
        o.ring_bytes = 65536; /* a big result is assembled off the ring */
        pm_job *job;
        ASSERT_OK(pm_job_create(&job, &o, api_fn, &w));
        ASSERT_OK(pm_job_feed_array(job, r.recs, r.n));
        void *blocks[N] = {0};
        const unsigned char *data[N] = {0};
        pm_item it;
        int rc;
        size_t taken = 0;
        while ((rc = pm_job_next(job, &it)) == 1) {
            ASSERT_EQ(it.status, PM_ITEM_OK);
            void *p = pm_job_take_result(job);
            if (it.index % 3 == 1) {
                ASSERT_UEQ(it.len, big);
                ASSERT_MSG(p != NULL, "item %llu: no block to take",
                           (unsigned long long)it.index);
                ASSERT((const unsigned char *)it.data >= (unsigned char *)p);
                blocks[it.index] = p;
                data[it.index] = it.data;
                taken++;
                ASSERT(pm_job_take_result(job) == NULL); /* taken once */
            } else {
                /* 8 bytes: read in place, unless the message wrapped
                 * around the ring's end and was assembled. */
                uint64_t v;
                memcpy(&v, it.data, 8);
                ASSERT_UEQ(v, it.index * 3);
                if (p) {
                    ASSERT((const unsigned char *)it.data >= (unsigned char *)p);
                    free(p);
                }
            }
        }
        ASSERT_RC(rc, 0);
        ASSERT_UEQ(taken, N / 3);
        ASSERT_OK(pm_job_destroy(job));
        /* The blocks outlive the job and hold the results. */
        for (size_t i = 1; i < N; i += 3) {
            ASSERT_UEQ(pat_check(data[i], big, i, 0), big);
            free(blocks[i]);
        }
    }
    ASSERT_NO_CHILDREN();
    recs_free(&r);
}

/* --- the worker named after PM_ECORRUPT ------------------------------------ */

typedef struct scrib {
    pm_job **job;
    _Atomic uint32_t *shared; /* [0] runs of item 40, [1] pid */
} scrib;

/* Item 40 writes over its result ring's head (a wild write, simulated
 * through the engine's internal layout): the parent must kill the worker
 * and name it. */
static int scrib_fn(void *ctx, const void *in, size_t len, pm_writer *out)
{
    scrib *s = ctx;
    uint64_t idx;
    memcpy(&idx, in, 8);
    (void)len;
    if (idx == 40 && atomic_fetch_add(&s->shared[0], 1) == 0) {
        atomic_store(&s->shared[1], (uint32_t)getpid());
        pm_map *m = pm__job_map(*s->job);
        pm_ring *rr = m->slots[0].result_ring; /* nproc 1, nthreads 1 */
        uint64_t cap = m->opt.ring_bytes;
        atomic_store(&rr->head, atomic_load(&rr->tail) + 3 * cap);
        pm__bell_ring(&m->ctl->parent);
        struct timespec ts = {60, 0};
        nanosleep(&ts, NULL); /* killed by the parent */
    }
    uint64_t v = idx * 3;
    return pm_write(out, &v, 8);
}

TEST_IMPL(job_corrupt_worker_named)
{
    recs r;
    recs_make(&r, 100);
    _Atomic uint32_t *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                                    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT(shared != MAP_FAILED);
    pm_job_options o;
    pm_job_options_init(&o);
    o.nproc = 1;
    o.chunk = 1;
    pm_job *job = NULL;
    scrib s = {&job, shared};
    ASSERT_OK(pm_job_create(&job, &o, scrib_fn, &s));
    ASSERT_OK(pm_job_feed_array(job, r.recs, r.n));
    ASSERT(pm_job_death(job) == NULL);
    pm_item it;
    int rc;
    size_t got = 0;
    while ((rc = pm_job_next(job, &it)) == 1) {
        ASSERT_EQ(it.status, PM_ITEM_OK); /* not reported as a crashed item */
        got++;
    }
    ASSERT_RC(rc, PM_ECORRUPT);
    ASSERT_ULE(got, 40);
    const pm_death *d = pm_job_death(job);
    ASSERT_MSG(d != NULL, "PM_ECORRUPT does not name the worker");
    ASSERT_EQ(d->pid, (pid_t)atomic_load(&shared[1]));
    ASSERT_EQ(d->signal, SIGKILL); /* the engine killed it */
    int found = 0;
    for (size_t i = 0; i < d->nlost; i++)
        found |= d->lost[i].first <= 40 && 40 - d->lost[i].first < d->lost[i].count;
    ASSERT(found);
    ASSERT_RC(pm_job_next(job, &it), PM_ECORRUPT); /* sticky */
    ASSERT_OK(pm_job_destroy(job));
    ASSERT_NO_CHILDREN();
    munmap((void *)shared, 4096);
    recs_free(&r);
}

/* Item 41 (the second of the task [40, 42)) overwrites, in its result ring,
 * the item trailers already written (item 40's, of the message not yet
 * published): the map's framing is intact, the job's is not.  The job
 * fails with PM_ECORRUPT and names the worker, with that task first. */
#define TEST_ITEM_MAGIC 0x4d455449u /* job.h's item trailer magic */

static int trailer_fn(void *ctx, const void *in, size_t len, pm_writer *out)
{
    scrib *s = ctx;
    uint64_t idx;
    memcpy(&idx, in, 8);
    (void)len;
    if (idx == 41 && atomic_fetch_add(&s->shared[0], 1) == 0) {
        atomic_store(&s->shared[1], (uint32_t)getpid());
        pm_map *m = pm__job_map(*s->job);
        pm_ring *rr = m->slots[0].result_ring;
        /* Only past what is published: the message being written. */
        uint64_t cap = m->opt.ring_bytes, head = atomic_load(&rr->head);
        for (uint64_t k = 0; k < 4096; k += 4) {
            uint64_t off = (head + k) & (cap - 1);
            uint32_t v;
            memcpy(&v, rr->data + off, 4);
            if (v == TEST_ITEM_MAGIC)
                memset(rr->data + off, 0, 4);
        }
    }
    if (idx > 41) { /* still running when the parent finds it out */
        struct timespec ts = {0, 2000000};
        nanosleep(&ts, NULL);
    }
    uint64_t v = idx * 3;
    return pm_write(out, &v, 8);
}

TEST_IMPL(job_bad_trailer_worker_named)
{
    recs r;
    recs_make(&r, 100);
    _Atomic uint32_t *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                                    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT(shared != MAP_FAILED);
    pm_job_options o;
    pm_job_options_init(&o);
    o.nproc = 1;
    o.chunk = 2;
    pm_job *job = NULL;
    scrib s = {&job, shared};
    ASSERT_OK(pm_job_create(&job, &o, trailer_fn, &s));
    ASSERT_OK(pm_job_feed_array(job, r.recs, r.n));
    pm_item it;
    int rc;
    size_t got = 0;
    while ((rc = pm_job_next(job, &it)) == 1) {
        ASSERT_EQ(it.status, PM_ITEM_OK);
        ASSERT_ULT(it.index, 40);
        got++;
    }
    ASSERT_RC(rc, PM_ECORRUPT);
    ASSERT_UEQ(got, 40);
    const pm_death *d = pm_job_death(job);
    ASSERT_MSG(d != NULL, "PM_ECORRUPT does not name the worker");
    ASSERT_EQ(d->pid, (pid_t)atomic_load(&shared[1]));
    ASSERT_EQ(d->worker, 0);
    ASSERT_EQ(d->signal, SIGKILL); /* still running: the engine killed it */
    ASSERT(d->nlost >= 1);
    ASSERT_UEQ(d->lost[0].first, 40);
    ASSERT_UEQ(d->lost[0].count, 2);
    ASSERT_RC(pm_job_next(job, &it), PM_ECORRUPT);
    ASSERT_OK(pm_job_destroy(job));
    ASSERT_NO_CHILDREN();
    munmap((void *)shared, 4096);
    recs_free(&r);
}

/* A feed fed by another thread (the job's input read elsewhere): it returns
 * PM_NO_TASK_YET while the feeder has nothing, and the feeder calls
 * pm_job_wake() after each record.  Five records, then a pause until the
 * caller has their five results: they must come while the feed waits. */
typedef struct jlater {
    pthread_mutex_t mu;
    pm_job *job;
    uint64_t made, taken, n;
    _Atomic uint64_t delivered;
    int paused_out;
    long later;
    uint64_t val[32];
} jlater;

static int jlater_feed(void *ctx, const void **data, size_t *len)
{
    jlater *g = ctx;
    pthread_mutex_lock(&g->mu);
    int rc;
    if (g->taken < g->made) {
        *data = &g->val[g->taken++];
        *len = sizeof g->val[0];
        rc = 1;
    } else {
        rc = g->made == g->n ? 0 : PM_NO_TASK_YET;
        g->later += rc != 0;
    }
    pthread_mutex_unlock(&g->mu);
    return rc;
}

static void *jlater_thread(void *arg)
{
    jlater *g = arg;
    for (uint64_t k = 0; k < g->n; k++) {
        if (k == 5) {
            double t0 = pm_test_now_ms();
            while (atomic_load(&g->delivered) < 5) {
                if (pm_test_now_ms() - t0 > LIMIT_MS(20000)) {
                    g->paused_out = 1;
                    break;
                }
                usleep(1000);
            }
        }
        pthread_mutex_lock(&g->mu);
        g->val[k] = 500 + k;
        g->made++;
        pthread_mutex_unlock(&g->mu);
        pm_job_wake(g->job);
        usleep(k < 5 ? 0 : 2000);
    }
    return NULL;
}

static int jlater_work(void *ctx, const void *in, size_t len, pm_writer *out)
{
    (void)ctx;
    uint64_t v;
    if (len != sizeof v)
        return -1;
    memcpy(&v, in, sizeof v);
    v *= 2;
    return pm_write(out, &v, sizeof v);
}

TEST_IMPL(job_feed_from_a_thread)
{
    for (int chunk = 0; chunk < 2; chunk++) {
        jlater g = {.n = 12};
        pthread_mutex_init(&g.mu, NULL);
        pm_job_options o;
        pm_job_options_init(&o);
        o.nproc = 2;
        o.chunk = chunk ? 4 : 0;
        ASSERT_OK(pm_job_create(&g.job, &o, jlater_work, NULL));
        ASSERT_OK(pm_job_feed_fn(g.job, jlater_feed, &g));
        pthread_t th;
        ASSERT(pthread_create(&th, NULL, jlater_thread, &g) == 0);
        pm_item it;
        int rc;
        uint64_t seen = 0;
        while ((rc = pm_job_next(g.job, &it)) == 1) {
            uint64_t v;
            ASSERT_UEQ(it.len, sizeof v);
            memcpy(&v, it.data, sizeof v);
            ASSERT_UEQ(v, 2 * (500 + it.index));
            ASSERT(!(seen & (1u << it.index)));
            seen |= 1u << it.index;
            atomic_fetch_add(&g.delivered, 1);
        }
        ASSERT_RC(rc, 0);
        ASSERT(pthread_join(th, NULL) == 0);
        ASSERT_UEQ(seen, (1u << g.n) - 1);
        ASSERT_MSG(!g.paused_out, "the first five results waited for the feed");
        ASSERT(g.later > 0);
        ASSERT_OK(pm_job_destroy(g.job));
        pthread_mutex_destroy(&g.mu);
    }
    ASSERT_NO_CHILDREN();
}

/* A C program's window need not be a power of two (a slot's FIFO is the
 * window rounded up, fifo_mask): windows 1, 3, 5, 7 and 100, fixed and
 * adaptive chunks, small rings, some results of a few KB; every record's
 * result checked, in order when ordered. */
TEST_IMPL(job_odd_windows_sweep)
{
    static const int wins[] = {1, 3, 5, 7, 100};
    size_t n = N_(700, 70);
    recs r;
    recs_make(&r, n);
    for (int wi = 0; wi < 5; wi++)
        for (int np = 1; np <= 3; np++)
            for (int nt = 1; nt <= 2; nt++)
                for (int ord = 0; ord < 2; ord++)
                    for (int ch = 0; ch < 3; ch++) {
                        pm_job_options o;
                        pm_job_options_init(&o);
                        o.nproc = np;
                        o.nthreads = nt;
                        o.ordered = ord;
                        o.window = wins[wi];
                        o.chunk = ch == 0 ? 0 : ch == 1 ? 1 : 3;
                        o.ring_bytes = (wi + ch) % 2 ? 4096 : 0;
                        api_work w = {.big_every = 7,
                                      .big = (size_t)(wi * 977 + ch * 333) % 3000};
                        pm_job *job;
                        ASSERT_OK(pm_job_create(&job, &o, api_fn, &w));
                        ASSERT_OK(pm_job_feed_array(job, r.recs, r.n));
                        unsigned char *seen = calloc(n, 1);
                        ASSERT(seen != NULL);
                        pm_item it;
                        int rc;
                        uint64_t next = 0;
                        while ((rc = pm_job_next(job, &it)) == 1) {
                            ASSERT_EQ(it.status, PM_ITEM_OK);
                            ASSERT_ULT(it.index, n);
                            ASSERT(!seen[it.index]);
                            seen[it.index] = 1;
                            if (ord)
                                ASSERT_UEQ(it.index, next++);
                            if (it.index % 7 == 1) {
                                ASSERT_UEQ(it.len, w.big);
                            } else {
                                uint64_t v;
                                ASSERT_UEQ(it.len, 8);
                                memcpy(&v, it.data, 8);
                                ASSERT_UEQ(v, it.index * 3);
                            }
                        }
                        ASSERT_RC(rc, 0);
                        for (size_t i = 0; i < n; i++)
                            ASSERT(seen[i]);
                        free(seen);
                        pm_job_destroy(job);
                    }
    recs_free(&r);
}

/* A feed that another thread fills: records appear one at a time, each
 * followed by pm_job_wake(); with ping set, the next only once the result
 * of the last one came back (a job that sits on a record until more tasks
 * are done, or misses the wake, stalls until the producer gives up). */
typedef struct slow_feed {
    pm_job *job;
    _Atomic uint64_t avail; /* records made so far */
    _Atomic uint64_t consumed; /* results the consumer has seen */
    uint64_t taken, n;
    uint64_t vals[512];
    int ping;
    int started;   /* the producer thread runs (th) */
    pthread_t th;
} slow_feed;

static void *slow_producer(void *arg);

static int slow_feed_fn(void *ctx, const void **data, size_t *len)
{
    slow_feed *f = ctx;
    if (!f->started) {
        /* The producer starts here, at the job's first ask, after its
         * workers are forked: a thread that exists at a fork can leave
         * ASan's allocator lock held in the child, where the worker then
         * waits on it for ever (seen under ASan in CI; glibc's malloc is
         * fork-safe, ASan's is not). */
        f->started = 1;
        ASSERT_OK(pthread_create(&f->th, NULL, slow_producer, f));
    }
    if (f->taken == f->n)
        return 0;
    if (f->taken >= atomic_load(&f->avail))
        return PM_NO_TASK_YET;
    f->vals[f->taken] = f->taken;
    *data = &f->vals[f->taken];
    *len = 8;
    f->taken++;
    return 1;
}

static void *slow_producer(void *arg)
{
    slow_feed *f = arg;
    for (uint64_t i = 0; i < f->n; i++) {
        if (f->ping) {
            uint64_t t0 = pm__now_ns();
            while (atomic_load(&f->consumed) < i) {
                if (pm__now_ns() - t0 > 20000000000ull)
                    return NULL; /* the job stalled: it fails on the count */
                sched_yield();
            }
        } else if (i % 7 == 0) {
            struct timespec ts = {0, 200000};
            nanosleep(&ts, NULL);
        }
        atomic_store(&f->avail, i + 1);
        pm_job_wake(f->job);
    }
    return NULL;
}

TEST_IMPL(job_slow_feed_odd_windows)
{
    static const int wins[] = {1, 3, 5, 7, 100};
    for (int wi = 0; wi < 5; wi++)
        for (int np = 1; np <= 3; np += 2)
            for (int ping = 0; ping < 2; ping++)
                for (int ord = 0; ord < 2; ord++) {
                    pm_job_options o;
                    pm_job_options_init(&o);
                    o.nproc = np;
                    o.nthreads = 1 + (wi & 1);
                    o.ordered = ord;
                    o.window = wins[wi];
                    o.chunk = 1;
                    slow_feed *f = calloc(1, sizeof *f);
                    ASSERT(f != NULL);
                    f->n = N_(100, 40); /* ping-pong: a round trip each */
                    f->ping = ping;
                    ASSERT_OK(pm_job_create(&f->job, &o, api_fn, NULL));
                    ASSERT_OK(pm_job_feed_fn(f->job, slow_feed_fn, f));
                    pm_item it;
                    int rc;
                    uint64_t got = 0;
                    while ((rc = pm_job_next(f->job, &it)) == 1) {
                        ASSERT_EQ(it.status, PM_ITEM_OK);
                        uint64_t v;
                        ASSERT_UEQ(it.len, 8);
                        memcpy(&v, it.data, 8);
                        ASSERT_UEQ(v, it.index * 3);
                        atomic_store(&f->consumed, ++got);
                    }
                    ASSERT(f->started);
                    pthread_join(f->th, NULL);
                    ASSERT_RC(rc, 0);
                    ASSERT_UEQ(got, f->n);
                    pm_job_destroy(f->job);
                    free(f);
                }
}
