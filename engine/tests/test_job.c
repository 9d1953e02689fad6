/*
 * test_job.c -- jobs, the item-level API for C programs: both kinds of
 * input, ordered and unordered delivery, chunking, big records, crashes,
 * failures, timeouts, retries, progress and misuse.
 */
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>

#include "task.h"

/* --- the records and the work -------------------------------------------- */

/* Record i: len_of(i) bytes of pattern i. */
typedef struct recset {
    size_t n;
    size_t big_every; /* every big_every-th record is big_len bytes (0: no) */
    size_t big_len;
    pm_record *recs;
    unsigned char *bytes;
} recset;

static size_t len_of(const recset *rs, uint64_t i)
{
    if (rs->big_every && i % rs->big_every == rs->big_every - 1)
        return rs->big_len;
    return (size_t)(mix64(i) % 300);
}

static void recset_make(recset *rs)
{
    size_t total = 0;
    for (size_t i = 0; i < rs->n; i++)
        total += len_of(rs, i);
    rs->recs = calloc(rs->n ? rs->n : 1, sizeof *rs->recs);
    rs->bytes = malloc(total ? total : 1);
    ASSERT(rs->recs && rs->bytes);
    size_t off = 0;
    for (size_t i = 0; i < rs->n; i++) {
        size_t l = len_of(rs, i);
        pat_fill(rs->bytes + off, l, i, 0);
        rs->recs[i].data = rs->bytes + off;
        rs->recs[i].len = l;
        off += l;
    }
}

static void recset_free(recset *rs)
{
    free(rs->recs);
    free(rs->bytes);
}

/* What a worker does with an item, by the input's first byte and index. */
typedef struct jwork {
    size_t out_extra;   /* bytes of pattern appended to each result */
    int crash_mod;      /* items with index % crash_mod == crash_at ... */
    int crash_at;
    int crash_how;      /* 0 SIGKILL, 1 _exit(3), 2 return -1 */
    unsigned crash_delay_ms; /* sleep this long before crashing */
    int fail_mod;       /* items with index % fail_mod == 0 return 5 */
    int sleep_mod;      /* items with index % sleep_mod == 1 hang */
    _Atomic uint32_t *attempts; /* shared: runs per item; crash only on the
                                   first when set */
    uint64_t spin_ns;   /* busy work per item */
    int fed;            /* records are fed: their copies are 8-aligned */
    int indexed;        /* records start with their index (recset_index) */
} jwork;

/* The index of an item is not given to the work function: the record says
 * it (its first 8 bytes, or its length pattern, see index_of). */
static uint64_t index_of(const void *in, size_t len)
{
    uint64_t i;
    if (len < 8)
        return UINT64_MAX;
    memcpy(&i, in, 8);
    return i;
}

/* Result: fnv64 of the input, its length, then out_extra pattern bytes,
 * written in three pieces. */
static int jwork_fn(void *ctx, const void *in, size_t len, pm_writer *out)
{
    jwork *w = ctx;
    uint64_t idx = index_of(in, len);
    if (w->indexed && idx != UINT64_MAX)
        ASSERT_UEQ(pm_writer_item(out), idx);
    if (w->fed)
        ASSERT_UEQ((uintptr_t)in % 8, 0);
    if (w->spin_ns) {
        struct timespec t0, t;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        do
            clock_gettime(CLOCK_MONOTONIC, &t);
        while ((uint64_t)(t.tv_sec - t0.tv_sec) * 1000000000u +
                   (uint64_t)(t.tv_nsec - t0.tv_nsec) <
               w->spin_ns);
    }
    if (idx != UINT64_MAX && w->crash_mod &&
        idx % (uint64_t)w->crash_mod == (uint64_t)w->crash_at) {
        uint32_t prior = w->attempts ? atomic_fetch_add(&w->attempts[idx], 1)
                                     : 0;
        if (prior == 0) {
            if (w->crash_delay_ms) {
                struct timespec ts = {w->crash_delay_ms / 1000,
                                      (long)(w->crash_delay_ms % 1000) *
                                          1000000L};
                nanosleep(&ts, NULL);
            }
            if (w->crash_how == 0)
                raise(SIGKILL);
            if (w->crash_how == 1)
                _exit(3);
            return -1;
        }
    }
    if (idx != UINT64_MAX && w->sleep_mod &&
        idx % (uint64_t)w->sleep_mod == 1) {
        for (;;)
            pause();
    }
    uint64_t h = fnv64(in, len), l = len;
    int rc = pm_write(out, &h, 8);
    if (rc == 0)
        rc = pm_write(out, &l, 8);
    if (rc == 0 && w->out_extra) {
        unsigned char buf[4096];
        for (size_t off = 0; off < w->out_extra && rc == 0;) {
            size_t k = w->out_extra - off < sizeof buf ? w->out_extra - off
                                                       : sizeof buf;
            pat_fill(buf, k, h, off);
            rc = pm_write(out, buf, k);
            off += k;
        }
    }
    if (rc < 0)
        return rc;
    if (idx != UINT64_MAX && w->fail_mod && idx % (uint64_t)w->fail_mod == 0)
        return 5;
    return 0;
}

/* Records whose first 8 bytes are their index (at least 8 bytes each). */
static void recset_index(recset *rs)
{
    for (size_t i = 0; i < rs->n; i++) {
        if (rs->recs[i].len >= 8) {
            uint64_t v = i;
            memcpy((unsigned char *)rs->recs[i].data, &v, 8);
        }
    }
}

static void check_ok_item(const recset *rs, const jwork *w, const pm_item *it)
{
    const pm_record *r = &rs->recs[it->index];
    ASSERT_MSG(it->status == PM_ITEM_OK || it->status == PM_ITEM_FAILED,
               "item %llu: status %d", (unsigned long long)it->index,
               it->status);
    ASSERT_UEQ(it->len, 16 + w->out_extra);
    ASSERT_UEQ((uintptr_t)it->data % 8, 0);
    uint64_t h, l;
    memcpy(&h, it->data, 8);
    memcpy(&l, (const unsigned char *)it->data + 8, 8);
    ASSERT_UEQ(l, r->len);
    ASSERT_UEQ(h, fnv64(r->data, r->len));
    ASSERT_UEQ(pat_check((const unsigned char *)it->data + 16, w->out_extra,
                         h, 0),
               w->out_extra);
}

/* The feed function's state: hands out the records of rs through a buffer
 * that it scribbles over at each call. */
typedef struct feeder {
    const recset *rs;
    size_t next;
    unsigned char *buf;
    size_t cap;
    int fail_at; /* return -42 at this record (0: never) */
} feeder;

static int feeder_fn(void *ctx, const void **data, size_t *len)
{
    feeder *f = ctx;
    if (f->buf)
        memset(f->buf, 0xEE, f->cap);
    if (f->fail_at && f->next == (size_t)f->fail_at)
        return -42;
    if (f->next >= f->rs->n)
        return 0;
    const pm_record *r = &f->rs->recs[f->next++];
    if (r->len > f->cap) {
        free(f->buf);
        f->buf = malloc(r->len);
        ASSERT(f->buf != NULL);
        f->cap = r->len;
    }
    memcpy(f->buf, r->data, r->len);
    *data = f->buf;
    *len = r->len;
    return 1;
}

typedef struct jrun {
    int nproc, nthreads, ordered, retries;
    size_t chunk, ring;
    int64_t timeout_ms;
    int fed; /* input through feeder_fn */
} jrun;

/* Runs one job over rs and checks every item; returns the number of items
 * with each status in counts[0..3]. */
static void run_job(const jrun *jr, recset *rs, jwork *w, size_t counts[4],
                    uint64_t *crashed, size_t max_crashed)
{
    pm_job_options o;
    pm_job_options_init(&o);
    o.nproc = jr->nproc;
    o.nthreads = jr->nthreads ? jr->nthreads : 1;
    o.ordered = jr->ordered;
    o.chunk = jr->chunk;
    o.retries = jr->retries;
    o.timeout_ms = jr->timeout_ms;
    o.ring_bytes = jr->ring;
    pm_job *job;
    w->fed = jr->fed;
    w->indexed = 1; /* every run_job caller indexes its records */
    ASSERT_OK(pm_job_create(&job, &o, jwork_fn, w));
    feeder f = {.rs = rs};
    if (jr->fed)
        ASSERT_OK(pm_job_feed_fn(job, feeder_fn, &f));
    else
        ASSERT_OK(pm_job_feed_array(job, rs->recs, rs->n));
    unsigned char *seen = calloc(rs->n + 1, 1);
    ASSERT(seen != NULL);
    memset(counts, 0, 4 * sizeof *counts);
    size_t nc = 0;
    uint64_t next = 0;
    pm_item it;
    int rc;
    while ((rc = pm_job_next(job, &it)) == 1) {
        ASSERT_ULT(it.index, rs->n);
        if (jr->ordered)
            ASSERT_UEQ(it.index, next);
        next++;
        ASSERT_MSG(!seen[it.index], "item %llu delivered twice",
                   (unsigned long long)it.index);
        seen[it.index] = 1;
        ASSERT(it.status >= 0 && it.status < 4);
        counts[it.status]++;
        if (it.status == PM_ITEM_OK || it.status == PM_ITEM_FAILED)
            check_ok_item(rs, w, &it);
        if (it.status == PM_ITEM_FAILED)
            ASSERT_EQ(it.code, 5);
        if (it.status == PM_ITEM_CRASHED || it.status == PM_ITEM_TIMEDOUT) {
            ASSERT(it.data == NULL && it.len == 0);
            if (crashed && nc < max_crashed)
                crashed[nc++] = it.index;
        }
    }
    ASSERT_RC(rc, 0);
    ASSERT_UEQ(next, rs->n);
    ASSERT_UEQ(pm_job_done(job), rs->n);
    ASSERT_RC(pm_job_next(job, &it), 0);
    ASSERT_OK(pm_job_destroy(job));
    ASSERT_NO_CHILDREN();
    free(seen);
    free(f.buf);
}

/* --- tests ---------------------------------------------------------------- */

static void every_way(size_t n, size_t big_every, size_t big_len, size_t ring,
                      size_t out_extra, int nthreads)
{
    recset rs = {.n = n, .big_every = big_every, .big_len = big_len};
    recset_make(&rs);
    recset_index(&rs);
    jwork w = {.out_extra = out_extra};
    size_t chunks[] = {1, 7, 0};
    for (int fed = 0; fed < 2; fed++)
        for (int ordered = 0; ordered < 2; ordered++)
            for (size_t c = 0; c < 3; c++) {
                jrun jr = {.nproc = 1 + (int)(c % 3), .nthreads = nthreads,
                           .ordered = ordered, .chunk = chunks[c],
                           .ring = ring, .fed = fed};
                size_t counts[4];
                run_job(&jr, &rs, &w, counts, NULL, 0);
                ASSERT_UEQ(counts[PM_ITEM_OK], n);
            }
    recset_free(&rs);
}

TEST_IMPL(job_every_way)
{
    every_way(N_(20000, 2000), 0, 0, 0, 0, 1);
}

TEST_IMPL(job_every_way_threads)
{
    every_way(N_(5000, 500), 0, 0, 0, 0, 3);
}

/* A feed function that fails after `fail_at` records: every record it gave
 * is mapped and delivered (right, and once), then pm_job_next returns its
 * code, as for a Python input that raises. */
TEST_IMPL(job_feed_error)
{
    recset rs = {.n = 1000};
    recset_make(&rs);
    recset_index(&rs);
    jwork w = {0};
    w.fed = 1;
    w.indexed = 1;
    size_t chunks[] = {0, 1, 7, 64};
    size_t fails[] = {1, 100, 999};
    for (size_t c = 0; c < 4; c++)
        for (int ordered = 0; ordered < 2; ordered++)
            for (int nthreads = 1; nthreads <= 2; nthreads++)
                for (size_t k = 0; k < 3; k++) {
                    pm_job_options o;
                    pm_job_options_init(&o);
                    o.nproc = c == 1 ? 1 : 2;
                    o.nthreads = nthreads;
                    o.ordered = ordered;
                    o.chunk = chunks[c];
                    pm_job *job;
                    ASSERT_OK(pm_job_create(&job, &o, jwork_fn, &w));
                    feeder f = {.rs = &rs, .fail_at = (int)fails[k]};
                    ASSERT_OK(pm_job_feed_fn(job, feeder_fn, &f));
                    unsigned char seen[1000] = {0};
                    size_t got = 0;
                    pm_item it;
                    int rc;
                    while ((rc = pm_job_next(job, &it)) == 1) {
                        ASSERT_ULT(it.index, fails[k]);
                        if (ordered)
                            ASSERT_UEQ(it.index, got);
                        ASSERT(!seen[it.index]);
                        seen[it.index] = 1;
                        check_ok_item(&rs, &w, &it);
                        got++;
                    }
                    ASSERT_RC(rc, -42);
                    ASSERT_UEQ(got, fails[k]);
                    ASSERT_RC(pm_job_next(job, &it), -42);
                    ASSERT_OK(pm_job_destroy(job));
                    free(f.buf);
                }
    ASSERT_NO_CHILDREN();
    recset_free(&rs);
}

/* Records and results far larger than the rings, between small ones. */
TEST_IMPL(job_big_records)
{
    every_way(N_(300, 60), 17, 300000, 8192, 0, 1);
    every_way(N_(200, 40), 0, 0, 8192, 70000, 1);
}

TEST_IMPL(job_empty_input)
{
    recset rs = {.n = 0};
    recset_make(&rs);
    jwork w = {0};
    for (int fed = 0; fed < 2; fed++) {
        jrun jr = {.nproc = 2, .ordered = 1, .fed = fed};
        size_t counts[4];
        run_job(&jr, &rs, &w, counts, NULL, 0);
    }
    recset_free(&rs);
}

/* Some items kill their worker, in three ways, in chunks of every size:
 * exactly those items are reported, with how the worker ended; every
 * other item is delivered, in order when asked. */
TEST_IMPL(job_crashes)
{
    size_t n = N_(3000, 400);
    recset rs = {.n = n};
    recset_make(&rs);
    recset_index(&rs);
    size_t chunks[] = {1, 16, 0};
    for (int how = 0; how < 3; how++)
        for (int fed = 0; fed < 2; fed++)
            for (size_t c = 0; c < 3; c++) {
                jwork w = {.crash_mod = 97, .crash_at = 13, .crash_how = how};
                jrun jr = {.nproc = 2, .ordered = (int)(c != 1), .fed = fed,
                           .chunk = chunks[c]};
                size_t counts[4];
                uint64_t crashed[64];
                run_job(&jr, &rs, &w, counts, crashed, 64);
                size_t expect = 0;
                for (size_t i = 0; i < n; i++)
                    if (rs.recs[i].len >= 8 && i % 97 == 13)
                        expect++;
                ASSERT_UEQ(counts[PM_ITEM_CRASHED], expect);
                ASSERT_UEQ(counts[PM_ITEM_OK], n - expect);
                for (size_t k = 0; k < expect && k < 64; k++)
                    ASSERT_UEQ(crashed[k] % 97, 13);
            }
    recset_free(&rs);
}

/* A record of the last chunk crashes its worker after the other worker has
 * finished and exited: the chunk's other records are run again (the input
 * is re-opened, so a finished worker is started again) and only the guilty
 * record is reported crashed; with retries and a crash on the first run
 * only, every record succeeds. */
TEST_IMPL(job_crash_after_finish)
{
    size_t n = 40;
    recset rs = {.n = n};
    recset_make(&rs);
    recset_index(&rs);
    _Atomic uint32_t *att = mmap(NULL, n * sizeof *att, PROT_READ | PROT_WRITE,
                                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT(att != MAP_FAILED);
    for (int v = 0; v < 4; v++) {
        int retries = v & 1;
        memset((void *)att, 0, n * sizeof *att);
        jwork w = {.crash_mod = 40, .crash_at = 37, .crash_how = 1,
                   .crash_delay_ms = (unsigned)LIMIT_MS(200),
                   .attempts = retries ? att : NULL};
        jrun jr = {.nproc = 2, .ordered = !(v & 2), .chunk = 8,
                   .retries = retries};
        size_t counts[4];
        uint64_t crashed[4];
        run_job(&jr, &rs, &w, counts, crashed, 4);
        size_t expect = !retries && rs.recs[37].len >= 8;
        ASSERT_UEQ(counts[PM_ITEM_CRASHED], expect);
        ASSERT_UEQ(counts[PM_ITEM_OK], n - expect);
        if (expect)
            ASSERT_UEQ(crashed[0], 37);
    }
    munmap((void *)att, n * sizeof *att);
    recset_free(&rs);
}

/* How a crashed item's worker ended is reported with the item. */
TEST_IMPL(job_crash_status)
{
    recset rs = {.n = 200};
    recset_make(&rs);
    recset_index(&rs);
    int how_sig[] = {SIGKILL, 0, 0}, how_exit[] = {-1, 3, 70};
    for (int how = 0; how < 3; how++) {
        jwork w = {.crash_mod = 50, .crash_at = 10, .crash_how = how};
        pm_job_options o;
        pm_job_options_init(&o);
        o.nproc = 2;
        pm_job *job;
        ASSERT_OK(pm_job_create(&job, &o, jwork_fn, &w));
        ASSERT_OK(pm_job_feed_array(job, rs.recs, rs.n));
        pm_item it;
        int rc, seen = 0;
        while ((rc = pm_job_next(job, &it)) == 1) {
            if (it.status != PM_ITEM_CRASHED)
                continue;
            seen++;
            ASSERT_UEQ(it.index % 50, 10);
            ASSERT_EQ(it.signal, how_sig[how]);
            ASSERT_EQ(it.exit_code, how_exit[how]);
        }
        ASSERT_RC(rc, 0);
        ASSERT(seen >= 1);
        ASSERT_OK(pm_job_destroy(job));
        ASSERT_NO_CHILDREN();
    }
    recset_free(&rs);
}

/* An item that crashes only on its first run: with retries it succeeds;
 * without, it is reported crashed (one item per task, so the crash is the
 * item's own attempt). */
TEST_IMPL(job_retries)
{
    size_t n = N_(1000, 200);
    recset rs = {.n = n};
    recset_make(&rs);
    recset_index(&rs);
    size_t bytes = n * sizeof(_Atomic uint32_t);
    for (int retries = 0; retries < 2; retries++) {
        _Atomic uint32_t *att = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        ASSERT(att != MAP_FAILED);
        jwork w = {.crash_mod = 37, .crash_at = 5, .attempts = att};
        jrun jr = {.nproc = 2, .ordered = 1, .chunk = 1, .retries = retries};
        size_t counts[4];
        run_job(&jr, &rs, &w, counts, NULL, 0);
        size_t expect = 0;
        for (size_t i = 0; i < n; i++)
            if (rs.recs[i].len >= 8 && i % 37 == 5) {
                expect++;
                ASSERT_EQ(atomic_load(&att[i]), retries ? 2 : 1);
            }
        ASSERT_UEQ(counts[PM_ITEM_CRASHED], retries ? 0 : expect);
        ASSERT_UEQ(counts[PM_ITEM_OK], retries ? n : n - expect);
        munmap((void *)att, bytes);
    }
    recset_free(&rs);
}

/* A positive return value is the item's failure code; what it wrote comes
 * with it. */
TEST_IMPL(job_failed_items)
{
    size_t n = N_(2000, 300);
    recset rs = {.n = n};
    recset_make(&rs);
    recset_index(&rs);
    jwork w = {.fail_mod = 10, .out_extra = 5};
    for (int ordered = 0; ordered < 2; ordered++) {
        jrun jr = {.nproc = 2, .ordered = ordered};
        size_t counts[4];
        run_job(&jr, &rs, &w, counts, NULL, 0);
        size_t expect = 0;
        for (size_t i = 0; i < n; i++)
            if (rs.recs[i].len >= 8 && i % 10 == 0)
                expect++;
        ASSERT_UEQ(counts[PM_ITEM_FAILED], expect);
        ASSERT_UEQ(counts[PM_ITEM_OK], n - expect);
    }
    recset_free(&rs);
}

/* Items that hang are cut off at the timeout, the others go through. */
TEST_IMPL(job_timeout)
{
    size_t n = 60;
    recset rs = {.n = n};
    recset_make(&rs);
    recset_index(&rs);
    jwork w = {.sleep_mod = 25};
    jrun jr = {.nproc = 2, .ordered = 1, .timeout_ms = 150, .chunk = 50};
    size_t counts[4];
    uint64_t timed[8];
    double t0 = pm_test_now_ms();
    run_job(&jr, &rs, &w, counts, timed, 8);
    size_t expect = 0;
    for (size_t i = 0; i < n; i++)
        if (rs.recs[i].len >= 8 && i % 25 == 1)
            expect++;
    ASSERT(expect >= 1);
    ASSERT_UEQ(counts[PM_ITEM_TIMEDOUT], expect);
    ASSERT_UEQ(counts[PM_ITEM_OK], n - expect);
    for (size_t k = 0; k < expect; k++)
        ASSERT_UEQ(timed[k] % 25, 1);
    ASSERT_DBL_LT(pm_test_now_ms() - t0, LIMIT_MS(5000));
    recset_free(&rs);
}

typedef struct prog {
    uint64_t last, total;
    unsigned calls;
    int bad;
} prog;

static void prog_fn(void *ctx, uint64_t done, uint64_t total)
{
    prog *p = ctx;
    /* total is known from the start, or becomes known once the input ends. */
    if (done < p->last ||
        (p->calls && total != p->total && p->total != PM_TOTAL_UNKNOWN))
        p->bad = 1;
    p->last = done;
    p->total = total;
    p->calls++;
}

TEST_IMPL(job_progress)
{
    size_t n = N_(5000, 500);
    recset rs = {.n = n};
    recset_make(&rs);
    for (int fed = 0; fed < 2; fed++) {
        for (int known = 0; known < 2; known++) {
            if (!fed && !known)
                continue;
            prog p = {0};
            jwork w = {0};
            pm_job_options o;
            pm_job_options_init(&o);
            o.nproc = 2;
            o.progress = prog_fn;
            o.progress_ctx = &p;
            o.total = known && fed ? n : 0;
            pm_job *job;
            ASSERT_OK(pm_job_create(&job, &o, jwork_fn, &w));
            feeder f = {.rs = &rs};
            if (fed)
                ASSERT_OK(pm_job_feed_fn(job, feeder_fn, &f));
            else
                ASSERT_OK(pm_job_feed_array(job, rs.recs, rs.n));
            pm_item it;
            int rc;
            while ((rc = pm_job_next(job, &it)) == 1)
                ASSERT_ULE(p.last, pm_job_done(job));
            ASSERT_RC(rc, 0);
            ASSERT(!p.bad);
            ASSERT(p.calls >= 1);
            ASSERT_UEQ(p.last, n);
            if (known)
                ASSERT_UEQ(p.total, n);
            ASSERT_OK(pm_job_destroy(job));
            free(f.buf);
        }
    }
    recset_free(&rs);
}

static int stop_at_10(void *ctx, const pm_item *it)
{
    int *count = ctx;
    (void)it;
    return ++*count == 10 ? 99 : 0;
}

static int count_all(void *ctx, const pm_item *it)
{
    size_t *count = ctx;
    if (it->status == PM_ITEM_OK)
        ++*count;
    return 0;
}

TEST_IMPL(job_run_callback)
{
    recset rs = {.n = 1000};
    recset_make(&rs);
    jwork w = {0};
    pm_job_options o;
    pm_job_options_init(&o);
    o.nproc = 2;
    pm_job *job;
    ASSERT_OK(pm_job_create(&job, &o, jwork_fn, &w));
    ASSERT_OK(pm_job_feed_array(job, rs.recs, rs.n));
    size_t all = 0;
    ASSERT_OK(pm_job_run(job, count_all, &all));
    ASSERT_UEQ(all, rs.n);
    ASSERT_OK(pm_job_destroy(job));

    /* Stopping early: the callback's value comes back, teardown is clean. */
    ASSERT_OK(pm_job_create(&job, &o, jwork_fn, &w));
    ASSERT_OK(pm_job_feed_array(job, rs.recs, rs.n));
    int count = 0;
    ASSERT_RC(pm_job_run(job, stop_at_10, &count), 99);
    ASSERT_EQ(count, 10);
    ASSERT_OK(pm_job_destroy(job));
    ASSERT_NO_CHILDREN();
    recset_free(&rs);
}

TEST_IMPL(job_misuse)
{
    ASSERT_STREQ(pm_item_status_name(PM_ITEM_OK), "ok");
    ASSERT_STREQ(pm_item_status_name(PM_ITEM_FAILED), "failed");
    ASSERT_STREQ(pm_item_status_name(PM_ITEM_CRASHED), "crashed");
    ASSERT_STREQ(pm_item_status_name(PM_ITEM_TIMEDOUT), "timed out");
    ASSERT_STREQ(pm_item_status_name(42), "unknown");
    jwork w = {0};
    pm_job_options o;
    pm_job *job = (pm_job *)&w;
    pm_job_options_init(&o);
    ASSERT_RC(pm_job_create(&job, &o, NULL, NULL), -EINVAL);
    ASSERT(job == NULL);
    o.nthreads = 0;
    ASSERT_RC(pm_job_create(&job, &o, jwork_fn, &w), -EINVAL);
    pm_job_options_init(&o);
    o.nproc = -1;
    ASSERT_RC(pm_job_create(&job, &o, jwork_fn, &w), -EINVAL);
    pm_job_options_init(&o);
    o.timeout_ms = -5;
    ASSERT_RC(pm_job_create(&job, &o, jwork_fn, &w), -EINVAL);
    pm_job_options_init(&o);
    o.ring_bytes = 5000; /* not a power of two */
    ASSERT_RC(pm_job_create(&job, &o, jwork_fn, &w), -EINVAL);
    ASSERT_OK(pm_job_destroy(NULL));

    /* No input yet; input given twice; NULL array. */
    pm_job_options_init(&o);
    o.nproc = 2;
    ASSERT_OK(pm_job_create(&job, &o, jwork_fn, &w));
    pm_item it;
    ASSERT_RC(pm_job_next(job, &it), PM_ESTATE);
    ASSERT_OK(pm_job_destroy(job));
    ASSERT_OK(pm_job_create(&job, &o, jwork_fn, &w));
    ASSERT_RC(pm_job_feed_array(job, NULL, 3), -EINVAL);
    recset rs = {.n = 100};
    recset_make(&rs);
    ASSERT_OK(pm_job_feed_array(job, rs.recs, rs.n));
    ASSERT_RC(pm_job_feed_array(job, rs.recs, rs.n), PM_ESTATE);
    ASSERT_RC(pm_job_feed_fn(job, feeder_fn, NULL), PM_ESTATE);
    ASSERT_OK(pm_job_destroy(job));

    /* The feed function's error stops the job, for good, once the records
     * it gave before are delivered (test job_feed_error has the shapes). */
    feeder f = {.rs = &rs, .fail_at = 50};
    ASSERT_OK(pm_job_create(&job, &o, jwork_fn, &w));
    ASSERT_OK(pm_job_feed_fn(job, feeder_fn, &f));
    int rc, got = 0;
    while ((rc = pm_job_next(job, &it)) == 1)
        got++;
    ASSERT_RC(rc, -42);
    ASSERT_EQ(got, 50);
    ASSERT_RC(pm_job_next(job, &it), -42);
    ASSERT_OK(pm_job_destroy(job));
    ASSERT_NO_CHILDREN();
    free(f.buf);
    recset_free(&rs);
}

/* --- the work function forks --------------------------------------------- */

/* Shared with the workers: runs per record and the copies' exit statuses. */
typedef struct fork_log {
    _Atomic uint32_t runs[200];
    _Atomic int status[200];
} fork_log;

/* Every 37th record forks; the child (a copy of the worker) writes a wrong
 * result and returns, as if it were the worker.  The copy must be ended
 * before it touches the rings: its result never arrives, it runs no other
 * record, and it exits with status 0. */
static int forking_fn(void *ctx, const void *in, size_t len, pm_writer *out)
{
    fork_log *lg = ctx;
    uint64_t i = index_of(in, len);
    if (i >= 200)
        return 1;
    atomic_fetch_add(&lg->runs[i], 1);
    if (i % 37 == 36) {
        pid_t pid = fork();
        if (pid == 0) {
            uint64_t wrong = UINT64_MAX;
            pm_write(out, &wrong, sizeof wrong);
            return 0;
        }
        int st = 0;
        waitpid(pid, &st, 0);
        atomic_store(&lg->status[i], WIFEXITED(st) ? WEXITSTATUS(st) : 1000);
    }
    uint64_t v = i * 3;
    return pm_write(out, &v, sizeof v);
}

TEST_IMPL(job_fn_forks)
{
    fork_log *lg = mmap(NULL, sizeof *lg, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT(lg != MAP_FAILED);
    uint64_t keys[200];
    pm_record recs[200];
    for (size_t i = 0; i < 200; i++) {
        keys[i] = i;
        recs[i].data = &keys[i];
        recs[i].len = sizeof keys[i];
    }
    for (int threads = 1; threads <= 2; threads++) {
        memset(lg, 0, sizeof *lg);
        memset(lg->status, 0xff, sizeof lg->status);
        pm_job_options o;
        pm_job_options_init(&o);
        o.nproc = 2;
        o.nthreads = threads;
        o.chunk = 10;
        pm_job *job;
        ASSERT_OK(pm_job_create(&job, &o, forking_fn, lg));
        ASSERT_OK(pm_job_feed_array(job, recs, 200));
        pm_item it;
        size_t n = 0;
        int rc;
        while ((rc = pm_job_next(job, &it)) > 0) {
            ASSERT_EQ(it.status, PM_ITEM_OK);
            ASSERT_UEQ(it.index, n);
            uint64_t v;
            ASSERT_UEQ(it.len, sizeof v);
            memcpy(&v, it.data, sizeof v);
            ASSERT_UEQ(v, it.index * 3);
            n++;
        }
        ASSERT_OK(rc);
        ASSERT_UEQ(n, 200);
        ASSERT_OK(pm_job_destroy(job));
        for (size_t i = 0; i < 200; i++) {
            ASSERT_UEQ(atomic_load(&lg->runs[i]), 1);
            if (i % 37 == 36)
                ASSERT_EQ(atomic_load(&lg->status[i]), 0);
        }
    }
    ASSERT_NO_CHILDREN();
    munmap(lg, sizeof *lg);
}

/* --- memory: OOM ordering --------------------------------------------------- */

static int read_adj(void)
{
    FILE *f = fopen("/proc/self/oom_score_adj", "re");
    int v = -12345;
    if (f) {
        if (fscanf(f, "%d", &v) != 1)
            v = -12345;
        fclose(f);
    }
    return v;
}

static int adj_fn(void *ctx, const void *in, size_t len, pm_writer *out)
{
    (void)ctx;
    (void)in;
    (void)len;
    int v = read_adj();
    return pm_write(out, &v, sizeof v);
}

/* Every worker volunteers for the kernel's OOM killer (oom_score_adj 1000)
 * so that it, not the caller, is killed when memory runs out; the caller
 * keeps its own score. */
TEST_IMPL(job_oom_score)
{
    if (read_adj() == -12345)
        return; /* no /proc */
    int mine = read_adj();
    pm_record recs[16];
    for (int i = 0; i < 16; i++)
        recs[i] = (pm_record){&recs[i], 1};
    pm_job_options o;
    pm_job_options_init(&o);
    o.nproc = 2;
    o.nthreads = 2;
    o.chunk = 1;
    pm_job *job;
    ASSERT_EQ(pm_job_create(&job, &o, adj_fn, NULL), 0);
    ASSERT_EQ(pm_job_feed_array(job, recs, 16), 0);
    pm_item it;
    int rc, n = 0;
    while ((rc = pm_job_next(job, &it)) > 0) {
        int v;
        ASSERT_EQ(it.status, PM_ITEM_OK);
        ASSERT_UEQ(it.len, sizeof v);
        memcpy(&v, it.data, sizeof v);
        ASSERT_EQ(v, 1000);
        n++;
    }
    ASSERT_EQ(rc, 0);
    ASSERT_EQ(n, 16);
    pm_job_destroy(job);
    ASSERT_EQ(read_adj(), mine);
}

/* --- worker recycling: max_items_per_worker --------------------------------- */

typedef struct recyc {
    _Atomic uint32_t *runs; /* shared: runs per record */
} recyc;

static int recyc_fn(void *ctx, const void *in, size_t len, pm_writer *out)
{
    recyc *r = ctx;
    (void)in;
    (void)len;
    uint64_t i = pm_writer_item(out);
    atomic_fetch_add(&r->runs[i], 1);
    struct { uint64_t i; int32_t pid; } res = {i, (int32_t)getpid()};
    return pm_write(out, &res, sizeof res);
}

/* A worker is replaced after max_items_per_worker records: the pids change,
 * every record runs once and comes back, in order when ordered. */
TEST_IMPL(job_max_items_per_worker)
{
    enum { N = 300, LIMIT = 7 };
    size_t bytes = N * sizeof(_Atomic uint32_t);
    pm_record recs[N];
    for (int i = 0; i < N; i++)
        recs[i] = (pm_record){&recs[i], 1};
    for (int v = 0; v < 8; v++) {
        int ordered = v & 1, nthreads = v & 2 ? 2 : 1, chunk1 = !(v & 4);
        recyc r;
        r.runs = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        ASSERT(r.runs != MAP_FAILED);
        pm_job_options o;
        pm_job_options_init(&o);
        o.nproc = 2;
        o.nthreads = nthreads;
        o.ordered = ordered;
        o.chunk = chunk1 ? 1 : 0;
        o.max_items_per_worker = LIMIT;
        pm_job *job;
        ASSERT_EQ(pm_job_create(&job, &o, recyc_fn, &r), 0);
        ASSERT_EQ(pm_job_feed_array(job, recs, N), 0);
        pm_item it;
        int rc, n = 0, npids = 0;
        int32_t pids[N];
        int per_pid[N];
        unsigned char seen[N] = {0};
        while ((rc = pm_job_next(job, &it)) > 0) {
            struct { uint64_t i; int32_t pid; } res;
            ASSERT_EQ(it.status, PM_ITEM_OK);
            ASSERT_UEQ(it.len, sizeof res);
            memcpy(&res, it.data, sizeof res);
            ASSERT_UEQ(res.i, it.index);
            if (ordered)
                ASSERT_UEQ(it.index, (uint64_t)n);
            ASSERT_EQ(seen[it.index], 0);
            seen[it.index] = 1;
            int k = 0;
            while (k < npids && pids[k] != res.pid)
                k++;
            if (k == npids) {
                pids[npids] = res.pid;
                per_pid[npids++] = 0;
            }
            per_pid[k]++;
            n++;
        }
        ASSERT_EQ(rc, 0);
        ASSERT_EQ(n, N);
        for (int i = 0; i < N; i++)
            ASSERT_UEQ(atomic_load(&r.runs[i]), 1);
        /* Each process ran at most LIMIT records with chunks of 1; with
         * adaptive chunks the chunk that reaches it is its last. */
        if (chunk1) {
            ASSERT_GE(npids, N / LIMIT);
            for (int k = 0; k < npids; k++)
                ASSERT_LE(per_pid[k], LIMIT);
        } else {
            ASSERT_GE(npids, 3);
        }
        pm_job_destroy(job);
        munmap((void *)r.runs, bytes);
    }
}

/* --- memory: max_rss_bytes -------------------------------------------------- */

static int hog_fn(void *ctx, const void *in, size_t len, pm_writer *out)
{
    (void)ctx;
    (void)in;
    (void)len;
    uint64_t i = pm_writer_item(out);
    if (i == 3) {
        /* Grows until the parent kills it (or gives up after 30 s). */
        for (int k = 0; k < 3000; k++) {
            unsigned char *p = malloc(4u << 20);
            if (p)
                memset(p, 1, 4u << 20);
            struct timespec ts = {0, 10000000};
            nanosleep(&ts, NULL);
        }
    }
    return pm_write(out, &i, sizeof i);
}

/* A worker that grows past max_rss_bytes is killed and replaced: its item
 * is PM_ITEM_MEMORY, every other item comes back. */
TEST_IMPL(job_max_rss)
{
    enum { N = 12 };
    pm_record recs[N];
    for (int i = 0; i < N; i++)
        recs[i] = (pm_record){&recs[i], 1};
    for (int ordered = 0; ordered < 2; ordered++) {
        pm_job_options o;
        pm_job_options_init(&o);
        o.nproc = 2;
        o.ordered = ordered;
        o.max_rss_bytes = 48u << 20;
        pm_job *job;
        ASSERT_EQ(pm_job_create(&job, &o, hog_fn, NULL), 0);
        ASSERT_EQ(pm_job_feed_array(job, recs, N), 0);
        pm_item it;
        int rc, n = 0, bad = 0;
        while ((rc = pm_job_next(job, &it)) > 0) {
            if (it.index == 3) {
                ASSERT_EQ(it.status, PM_ITEM_MEMORY);
                ASSERT_STREQ(pm_item_status_name(it.status), "over memory");
                bad++;
            } else {
                uint64_t v;
                ASSERT_EQ(it.status, PM_ITEM_OK);
                ASSERT_UEQ(it.len, sizeof v);
                memcpy(&v, it.data, sizeof v);
                ASSERT_UEQ(v, it.index);
            }
            n++;
        }
        ASSERT_EQ(rc, 0);
        ASSERT_EQ(n, N);
        ASSERT_EQ(bad, 1);
        pm_job_destroy(job);
    }
}

/* --- crashes with several threads per worker ------------------------------ */

typedef struct blame {
    uint64_t guilty;            /* the record that crashes its worker */
    _Atomic uint32_t *attempts; /* shared; when set, it crashes only once */
    _Atomic uint32_t *runs;     /* shared: runs per record */
} blame;

/* Records are their index (8 bytes); every record takes ~2 ms, so that the
 * threads of a worker run records side by side; the guilty one takes 5 ms
 * and then segfaults; the result is 3 * index. */
static int blame_fn(void *ctx, const void *in, size_t len, pm_writer *out)
{
    blame *b = ctx;
    uint64_t idx;
    ASSERT_UEQ(len, 8);
    memcpy(&idx, in, 8);
    atomic_fetch_add(&b->runs[idx], 1);
    struct timespec ts = {0, 2000000};
    if (idx == b->guilty &&
        (!b->attempts || atomic_fetch_add(&b->attempts[idx], 1) == 0)) {
        ts.tv_nsec = 5000000;
        nanosleep(&ts, NULL);
        signal(SIGSEGV, SIG_DFL); /* not a sanitizer's handler */
        raise(SIGSEGV);
    }
    nanosleep(&ts, NULL);
    uint64_t r = idx * 3;
    return pm_write(out, &r, sizeof r);
}

typedef struct blame_feed {
    const uint64_t *vals;
    size_t n, next;
} blame_feed;

static int blame_feed_fn(void *ctx, const void **data, size_t *len)
{
    blame_feed *f = ctx;
    if (f->next == f->n)
        return 0;
    *data = &f->vals[f->next++];
    *len = 8;
    return 1;
}

/*
 * nproc 2, nthreads 4: record 50 segfaults its worker while the worker's
 * other threads run other records.  Only record 50 is reported crashed
 * (signal 11), with and without retries, every way of feeding and chunking;
 * every other record is delivered with its result.  When record 50 crashes
 * only on its first run, retries=1 delivers every record.
 */
TEST_IMPL(job_threads_crash_blame)
{
    enum { N = 200 };
    uint64_t vals[N];
    pm_record recs[N];
    for (size_t i = 0; i < N; i++) {
        vals[i] = i;
        recs[i] = (pm_record){&vals[i], 8};
    }
    size_t bytes = 2 * N * sizeof(_Atomic uint32_t);
    _Atomic uint32_t *shm = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT(shm != MAP_FAILED);
    size_t chunks[] = {1, 4, 0};
    for (int v = 0; v < 2 * 2 * 3 * 3; v++) {
        int fed = v & 1, ordered = (v >> 1) & 1;
        size_t chunk = chunks[(v >> 2) % 3];
        int mode = (v >> 2) / 3; /* 0: no retries, 1: retries=2, 2: once */
        if (pm_test_quick && v % 5)
            continue;
        memset((void *)shm, 0, bytes);
        blame b = {.guilty = 50, .attempts = mode == 2 ? shm : NULL,
                   .runs = shm + N};
        pm_job_options o;
        pm_job_options_init(&o);
        o.nproc = 2;
        o.nthreads = 4;
        o.ordered = ordered;
        o.chunk = chunk;
        o.retries = mode == 1 ? 2 : mode == 2 ? 1 : 0;
        pm_job *job;
        ASSERT_OK(pm_job_create(&job, &o, blame_fn, &b));
        blame_feed f = {vals, N, 0};
        if (fed)
            ASSERT_OK(pm_job_feed_fn(job, blame_feed_fn, &f));
        else
            ASSERT_OK(pm_job_feed_array(job, recs, N));
        pm_item it;
        int rc;
        size_t got = 0;
        while ((rc = pm_job_next(job, &it)) == 1) {
            got++;
            if (it.index == 50 && mode != 2) {
                ASSERT_MSG(it.status == PM_ITEM_CRASHED,
                           "v %d: record 50: status %d", v, it.status);
                ASSERT_EQ(it.signal, SIGSEGV);
                continue;
            }
            ASSERT_MSG(it.status == PM_ITEM_OK,
                       "v %d (fed %d ordered %d chunk %zu mode %d): record "
                       "%llu: status %s, signal %d",
                       v, fed, ordered, chunk, mode,
                       (unsigned long long)it.index,
                       pm_item_status_name(it.status), it.signal);
            ASSERT_UEQ(it.len, 8);
            uint64_t r;
            memcpy(&r, it.data, 8);
            ASSERT_UEQ(r, it.index * 3);
        }
        ASSERT_RC(rc, 0);
        ASSERT_UEQ(got, N);
        /* The guilty record ran once per attempt charged to it, plus at
         * most two runs whose crash was not yet its own (in a chunk, then
         * beside other threads' records). */
        uint32_t runs = atomic_load(&shm[N + 50]);
        uint32_t charged = mode == 0 ? 1 : mode == 1 ? 3 : 2;
        if (mode == 2)
            ASSERT_EQ(runs, 2);
        ASSERT(runs >= charged && runs <= charged + 2);
        ASSERT_OK(pm_job_destroy(job));
        ASSERT_NO_CHILDREN();
    }
    munmap((void *)shm, bytes);
}

/* Big results (far larger than the rings) with threads, ordered: after a
 * shared death the suspects run alone, but one that waits for room in its
 * ring must not wait for the others while the parent, in order, waits for
 * theirs (a hang).  Record 20 crashes on its first run only; retries=1:
 * every record is delivered with its result. */
static int big_blame_fn(void *ctx, const void *in, size_t len, pm_writer *out)
{
    blame *b = ctx;
    uint64_t idx;
    ASSERT_UEQ(len, 8);
    memcpy(&idx, in, 8);
    atomic_fetch_add(&b->runs[idx], 1);
    if (idx == b->guilty && atomic_fetch_add(&b->attempts[idx], 1) == 0) {
        struct timespec ts = {0, 3000000};
        nanosleep(&ts, NULL);
        raise(SIGKILL);
    }
    unsigned char buf[4096];
    for (size_t off = 0; off < 100000;) {
        size_t k = 100000 - off < sizeof buf ? 100000 - off : sizeof buf;
        pat_fill(buf, k, idx, off);
        int rc = pm_write(out, buf, k);
        if (rc < 0)
            return rc;
        off += k;
    }
    return 0;
}

TEST_IMPL(job_threads_crash_big_results)
{
    enum { N = 60 };
    uint64_t vals[N];
    pm_record recs[N];
    for (size_t i = 0; i < N; i++) {
        vals[i] = i;
        recs[i] = (pm_record){&vals[i], 8};
    }
    size_t bytes = 2 * N * sizeof(_Atomic uint32_t);
    _Atomic uint32_t *shm = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                                 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT(shm != MAP_FAILED);
    for (int v = 0; v < 4; v++) {
        memset((void *)shm, 0, bytes);
        blame b = {.guilty = 20, .attempts = shm, .runs = shm + N};
        pm_job_options o;
        pm_job_options_init(&o);
        o.nproc = 1 + (v & 1);
        o.nthreads = 3;
        o.ordered = 1;
        o.chunk = 1 + (size_t)(v >> 1);
        o.retries = 1;
        o.ring_bytes = 8192;
        pm_job *job;
        ASSERT_OK(pm_job_create(&job, &o, big_blame_fn, &b));
        ASSERT_OK(pm_job_feed_array(job, recs, N));
        pm_item it;
        int rc;
        uint64_t next = 0;
        while ((rc = pm_job_next(job, &it)) == 1) {
            ASSERT_UEQ(it.index, next++);
            ASSERT_MSG(it.status == PM_ITEM_OK, "v %d: record %llu: %s", v,
                       (unsigned long long)it.index,
                       pm_item_status_name(it.status));
            ASSERT_UEQ(it.len, 100000);
            ASSERT_UEQ(pat_check(it.data, it.len, it.index, 0), it.len);
        }
        ASSERT_RC(rc, 0);
        ASSERT_UEQ(next, N);
        ASSERT_OK(pm_job_destroy(job));
        ASSERT_NO_CHILDREN();
    }
    munmap((void *)shm, bytes);
}
