/*
 * test_map.c -- the map through its public API: the shared task generator
 * and work function, delivery order, task meta, sizes.
 */
#include <signal.h>
#include <time.h>

#include "task.h"

/* --- the shared generator and work (declared in task.h) ------------------ */

int twork_worker_index = -1;

void twork_after_fork_child(void *ctx, int worker)
{
    (void)ctx;
    twork_worker_index = worker;
}

int tgen_produce(void *ctx, pm_task *task, const void **data, size_t *len)
{
    tgen *g = ctx;
    g->calls++;
    if (g->fail_rc && g->next == g->fail_at)
        return g->fail_rc;
    if (g->next >= g->nitems)
        return 0;
    uint32_t c = tgen_count(g, g->next);
    size_t need = (size_t)c * 8 + g->task_pad;
    /* The previous task's bytes may be reused now: scribble over them so
     * that an engine still reading them sends garbage the worker detects. */
    if (g->buf)
        memset(g->buf, 0xEE, g->cap);
    if (need > g->cap) {
        free(g->buf);
        g->buf = malloc(need);
        ASSERT(g->buf != NULL);
        g->cap = need;
    }
    for (uint32_t i = 0; i < c; i++) {
        uint64_t v = item_value(g->next + i);
        memcpy(g->buf + 8 * (size_t)i, &v, 8);
    }
    pat_fill(g->buf + (size_t)c * 8, g->task_pad, g->next, 0);
    task->first = g->next;
    task->count = c;
    *data = g->buf;
    *len = need;
    g->next += c;
    g->ntasks++;
    return 1;
}

void tgen_free(tgen *g)
{
    free(g->buf);
    g->buf = NULL;
    g->cap = 0;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int twork_work(void *ctx, const pm_task *task, const void *in, size_t len,
               pm_writer *out)
{
    const twork *w = ctx;
    const unsigned char *p = in;
    uint64_t first = task->first;
    uint32_t c = task->count;
    int rc;
    if (w->die_mode && w->die_item >= first && w->die_item < first + c) {
        switch (w->die_mode) {
        case DIE_EXIT3:
            _exit(3);
        case DIE_SIGKILL:
            raise(SIGKILL);
            break;
        case DIE_RETURN_NEG:
            return -1;
        }
    }
    if (w->sleep_ms)
        sleep_ms(w->sleep_ms);
    if (w->slow_ms && w->slow_item >= first && w->slow_item < first + c)
        sleep_ms(w->slow_ms);

    ASSERT_ULE((size_t)c * 8, len);
    if (w->tag_pid) {
        uint64_t tag[2] = {(uint64_t)getpid(), (uint64_t)twork_worker_index};
        if ((rc = pm_write(out, tag, sizeof tag)) < 0)
            return rc;
    }
    uint64_t vals[64];
    for (uint32_t i = 0; i < c;) {
        uint32_t k = 0;
        for (; k < 64 && i < c; k++, i++) {
            uint64_t v;
            memcpy(&v, p + 8 * (size_t)i, 8);
            ASSERT_MSG(v == item_value(first + i),
                       "worker got a wrong value for item %llu",
                       (unsigned long long)(first + i));
            vals[k] = item_result(v);
        }
        if ((rc = pm_write(out, vals, 8 * (size_t)k)) < 0)
            return rc;
    }
    size_t pad = len - (size_t)c * 8;
    if (pad) {
        const unsigned char *q = p + (size_t)c * 8;
        size_t bad = pat_check(q, pad, first, 0);
        ASSERT_MSG(bad == pad,
                   "worker: task %llu: payload differs at byte %zu of %zu",
                   (unsigned long long)first, (size_t)c * 8 + bad, len);
        uint64_t sum[2] = {pad, fnv64(q, pad)};
        if ((rc = pm_write(out, sum, sizeof sum)) < 0)
            return rc;
    }
    unsigned char buf[16384];
    size_t chunk = w->chunk && w->chunk <= sizeof buf ? w->chunk : sizeof buf;
    for (size_t off = 0; off < w->result_pad;) {
        size_t k = 1 + mix64(first ^ (off * 31)) % chunk;
        if (k > w->result_pad - off)
            k = w->result_pad - off;
        pat_fill(buf, k, ~first, off);
        if ((rc = pm_write(out, buf, k)) < 0)
            return rc;
        off += k;
    }
    return 0;
}

void check_result_(const tgen *g, const twork *w, const pm_result *res,
                   const char *file, int line)
{
    uint64_t first = res->task.first;
    uint32_t c = res->task.count;
    if (res->status != PM_RESULT_OK)
        pm_test_fail(file, line, "task %llu: status %d, expected PM_RESULT_OK",
                     (unsigned long long)first, res->status);
    if (first >= g->nitems || c == 0 || c != tgen_count(g, first))
        pm_test_fail(file, line, "result for a task that was never sent: "
                                 "first %llu count %u",
                     (unsigned long long)first, (unsigned)c);
    size_t want = (w->tag_pid ? 16 : 0) + (size_t)c * 8 +
                  (g->task_pad ? 16 : 0) + w->result_pad;
    if (res->len != want)
        pm_test_fail(file, line, "task %llu: result of %zu bytes, expected %zu",
                     (unsigned long long)first, res->len, want);
    if (want && !res->data)
        pm_test_fail(file, line, "task %llu: NULL data",
                     (unsigned long long)first);
    const unsigned char *p = (const unsigned char *)res->data +
                             (w->tag_pid ? 16 : 0);
    for (uint32_t i = 0; i < c; i++) {
        uint64_t v;
        memcpy(&v, p + 8 * (size_t)i, 8);
        if (v != item_result(item_value(first + i)))
            pm_test_fail(file, line, "task %llu: wrong result for item %llu",
                         (unsigned long long)first,
                         (unsigned long long)(first + i));
    }
    p += (size_t)c * 8;
    if (g->task_pad) {
        uint64_t sum[2];
        memcpy(sum, p, sizeof sum);
        uint64_t h = 0xcbf29ce484222325ull;
        for (size_t i = 0; i < g->task_pad; i++)
            h = (h ^ pat_byte(first, i)) * 0x100000001b3ull;
        if (sum[0] != g->task_pad || sum[1] != h)
            pm_test_fail(file, line,
                         "task %llu: the worker saw %llu payload bytes with "
                         "another hash",
                         (unsigned long long)first,
                         (unsigned long long)sum[0]);
        p += 16;
    }
    size_t bad = pat_check(p, w->result_pad, ~first, 0);
    if (bad != w->result_pad)
        pm_test_fail(file, line, "task %llu: result differs at byte %zu",
                     (unsigned long long)first,
                     (size_t)(p - (const unsigned char *)res->data) + bad);
}

/* --- running a whole map ------------------------------------------------- */

/* Asserts that every pid is gone (and reaped: no zombie either). */
static void assert_gone(const pid_t *pids, int n)
{
    ASSERT_NO_CHILDREN();
    for (int i = 0; i < n; i++)
        ASSERT_MSG(pids[i] == 0 || (kill(pids[i], 0) < 0 && errno == ESRCH),
                   "worker %d (pid %d) still exists", i, (int)pids[i]);
}

/*
 * Runs a map over g with work w to the end and checks everything: each
 * result against its task; input order when opt->ordered; else that the
 * results are a permutation of the tasks.  Destroys the map and checks that
 * no process is left.
 */
static void run_verify(const pm_options *opt, tgen *g, twork *w)
{
    pm_map *m = NULL;
    ASSERT_OK(pm_map_create(&m, opt, tgen_produce, g, twork_work, w, NULL));
    ASSERT(m != NULL);
    ASSERT_OK(pm_map_start(m));
    ASSERT_OK(pm_map_start(m)); /* a second start is a no-op */
    int n = 0;
    const pid_t *pp = pm_map_pids(m, &n);
    ASSERT_EQ(n, opt->nproc);
    pid_t *pids = calloc((size_t)n, sizeof *pids);
    ASSERT(pids != NULL);
    for (int i = 0; i < n; i++) {
        pids[i] = pp[i];
        ASSERT_GT(pids[i], 0);
        for (int j = 0; j < i; j++)
            ASSERT_NE(pids[i], pids[j]);
    }

    unsigned char *seen = calloc(g->nitems ? g->nitems : 1, 1);
    ASSERT(seen != NULL);
    uint64_t next = 0, tasks = 0, items = 0;
    pm_result res;
    int rc;
    while ((rc = pm_map_next(m, &res)) == 1) {
        CHECK_RESULT(g, w, &res);
        if (opt->ordered)
            ASSERT_MSG(res.task.first == next,
                       "ordered delivery gave task %llu, expected %llu",
                       (unsigned long long)res.task.first,
                       (unsigned long long)next);
        for (uint32_t i = 0; i < res.task.count; i++) {
            ASSERT_MSG(!seen[res.task.first + i], "item %llu delivered twice",
                       (unsigned long long)(res.task.first + i));
            seen[res.task.first + i] = 1;
        }
        next = res.task.first + res.task.count;
        tasks++;
        items += res.task.count;
    }
    ASSERT_RC(rc, 0);
    ASSERT_RC(pm_map_next(m, &res), 0); /* and it stays at the end */
    ASSERT(pm_map_death(m) == NULL);
    ASSERT_UEQ(items, g->nitems);
    ASSERT_UEQ(tasks, g->ntasks);
    for (uint64_t i = 0; i < g->nitems; i++)
        ASSERT_MSG(seen[i], "item %llu never delivered", (unsigned long long)i);
    ASSERT_OK(pm_map_destroy(m));
    assert_gone(pids, n);
    free(seen);
    free(pids);
    tgen_free(g);
}

static void run_simple(int nproc, int nthreads, int ordered, uint64_t nitems)
{
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = nproc;
    opt.nthreads = nthreads;
    opt.ordered = ordered;
    tgen g = {.nitems = nitems, .max_count = 4};
    twork w = {0};
    run_verify(&opt, &g, &w);
}

#define NITEMS N_(20000, 1000)

TEST_IMPL(map_ordered_p1) { run_simple(1, 1, 1, NITEMS); }
TEST_IMPL(map_ordered_p2) { run_simple(2, 1, 1, NITEMS); }
TEST_IMPL(map_ordered_p3) { run_simple(3, 1, 1, NITEMS); }
TEST_IMPL(map_ordered_p8) { run_simple(8, 1, 1, NITEMS); }
TEST_IMPL(map_ordered_p1_threads3) { run_simple(1, 3, 1, NITEMS); }
TEST_IMPL(map_ordered_p2_threads3) { run_simple(2, 3, 1, NITEMS); }
TEST_IMPL(map_ordered_p3_threads3) { run_simple(3, 3, 1, NITEMS); }
TEST_IMPL(map_ordered_p8_threads3) { run_simple(8, 3, 1, NITEMS); }
TEST_IMPL(map_unordered_p1) { run_simple(1, 1, 0, NITEMS); }
TEST_IMPL(map_unordered_p3) { run_simple(3, 1, 0, NITEMS); }
TEST_IMPL(map_unordered_p8_threads3) { run_simple(8, 3, 0, NITEMS); }

TEST_IMPL(map_ordered_window1)
{
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 2;
    opt.window = 1;
    tgen g = {.nitems = N_(3000, 300), .max_count = 3};
    twork w = {.tag_pid = 1};
    run_verify(&opt, &g, &w);
}

/* Unordered delivery is "as completed": a slow first task does not hold
 * back the results of the other worker. */
TEST_IMPL(map_unordered_not_blocked_by_slow_task)
{
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 2;
    opt.ordered = 0;
    tgen g = {.nitems = 200, .max_count = 1};
    twork w = {.slow_item = 0, .slow_ms = (unsigned)LIMIT_MS(500)};
    pm_map *m;
    ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g, twork_work, &w, NULL));
    pm_result res;
    int rc, pos = 0, pos0 = -1;
    while ((rc = pm_map_next(m, &res)) == 1) {
        CHECK_RESULT(&g, &w, &res);
        if (res.task.first == 0)
            pos0 = pos;
        pos++;
    }
    ASSERT_RC(rc, 0);
    ASSERT_EQ(pos, 200);
    ASSERT_MSG(pos0 >= 50, "the slow task 0 came out at position %d", pos0);
    ASSERT_OK(pm_map_destroy(m));
    ASSERT_NO_CHILDREN();
    tgen_free(&g);
}

/* --- empty tasks and results ----------------------------------------------- */

typedef struct empty_gen {
    uint64_t next, n;
} empty_gen;

static int empty_produce(void *ctx, pm_task *task, const void **data,
                         size_t *len)
{
    empty_gen *g = ctx;
    if (g->next == g->n)
        return 0;
    task->first = g->next * 10;
    task->count = (uint32_t)(g->next % 3); /* count 0 is carried as well */
    *data = g->next % 2 ? NULL : "";
    *len = 0;
    g->next++;
    return 1;
}

/* Task i: empty input; result empty for even i, else i % 7 bytes of 'r'. */
static int empty_work(void *ctx, const pm_task *task, const void *in,
                      size_t len, pm_writer *out)
{
    (void)ctx;
    (void)in;
    ASSERT_UEQ(len, 0);
    uint64_t i = task->first / 10;
    if (i % 2 == 0)
        return 0;
    int rc = pm_write(out, "rrrrrrr", 0); /* zero bytes are fine */
    if (rc == 0)
        rc = pm_write(out, "rrrrrrr", i % 7);
    return rc;
}

TEST_IMPL(map_empty_results_and_tasks)
{
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 2;
    opt.ring_bytes = 4096;
    empty_gen g = {0, N_(5000, 500)};
    pm_map *m;
    ASSERT_OK(pm_map_create(&m, &opt, empty_produce, &g, empty_work, NULL,
                            NULL));
    pm_result res;
    int rc;
    uint64_t i = 0;
    while ((rc = pm_map_next(m, &res)) == 1) {
        ASSERT_UEQ(res.task.first, i * 10);
        ASSERT_UEQ(res.task.count, i % 3);
        size_t want = i % 2 == 0 ? 0 : i % 7;
        ASSERT_UEQ(res.len, want);
        if (want)
            ASSERT_MEM_EQ(res.data, "rrrrrrr", want);
        i++;
    }
    ASSERT_RC(rc, 0);
    ASSERT_UEQ(i, g.n);
    ASSERT_OK(pm_map_destroy(m));
    ASSERT_NO_CHILDREN();
}

/* --- sizes beyond the ring ------------------------------------------------- */

TEST_IMPL(map_big_results)
{
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 2;
    opt.ring_bytes = 4096;
    tgen g = {.nitems = N_(60, 12), .max_count = 1};
    twork w = {.result_pad = 100 * 1024, .chunk = 9000};
    run_verify(&opt, &g, &w);
}

/* Results assembled from fragments can be taken over by the caller; small
 * ones read in place cannot.  A taken block holds the result and stays
 * valid after the map is gone. */
TEST_IMPL(map_take_result)
{
    for (int big = 0; big < 2; big++) {
        pm_options opt;
        pm_options_init(&opt);
        opt.nproc = 2;
        opt.ring_bytes = 8192; /* fragments of at most 2 KiB */
        tgen g = {.nitems = N_(40, 10), .max_count = 1};
        twork w = {.chunk = 3000, .result_pad = big ? 20000 : 0};
        pm_map *m;
        ASSERT_OK(
            pm_map_create(&m, &opt, tgen_produce, &g, twork_work, &w, NULL));
        pm_result res, kept[64];
        void *keep[64];
        int rc, taken = 0;
        while ((rc = pm_map_next(m, &res)) == 1) {
            void *blk = pm_map_take_result(m);
            ASSERT(pm_map_take_result(m) == NULL); /* only once */
            CHECK_RESULT(&g, &w, &res);
            ASSERT(big == (blk != NULL));
            if (blk) {
                ASSERT((const unsigned char *)res.data >= (unsigned char *)blk);
                keep[taken] = blk;
                kept[taken++] = res;
            }
        }
        ASSERT_RC(rc, 0);
        ASSERT_OK(pm_map_destroy(m));
        ASSERT_NO_CHILDREN();
        /* The taken blocks outlive the map. */
        for (int i = 0; i < taken; i++) {
            CHECK_RESULT(&g, &w, &kept[i]);
            free(keep[i]);
        }
        ASSERT_EQ(taken, big ? (int)g.nitems : 0);
        tgen_free(&g);
    }
}

TEST_IMPL(map_big_results_unordered_threads2)
{
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 2;
    opt.nthreads = 2;
    opt.ordered = 0;
    opt.ring_bytes = 4096;
    tgen g = {.nitems = N_(80, 16), .max_count = 2};
    twork w = {.result_pad = 100 * 1024, .chunk = 5000};
    run_verify(&opt, &g, &w);
}

TEST_IMPL(map_big_tasks)
{
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 2;
    opt.ring_bytes = 4096;
    tgen g = {.nitems = N_(60, 12), .max_count = 1, .task_pad = 100 * 1024};
    twork w = {0};
    run_verify(&opt, &g, &w);
}

TEST_IMPL(map_big_tasks_and_results)
{
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 3;
    opt.nthreads = 2;
    opt.window = 4;
    opt.ring_bytes = 4096;
    tgen g = {.nitems = N_(120, 24), .max_count = 2, .task_pad = 50 * 1024};
    twork w = {.result_pad = 70 * 1024, .chunk = 3000};
    run_verify(&opt, &g, &w);
}

TEST_IMPL(map_many_workers)
{
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 16;
    opt.nthreads = 2;
    tgen g = {.nitems = N_(10000, 1000), .max_count = 1};
    twork w = {.tag_pid = 1};
    run_verify(&opt, &g, &w);
}

TEST_IMPL(map_zero_tasks)
{
    for (int ordered = 0; ordered < 2; ordered++) {
        pm_options opt;
        pm_options_init(&opt);
        opt.nproc = 3;
        opt.ordered = ordered;
        tgen g = {.nitems = 0};
        twork w = {0};
        pm_map *m;
        ASSERT_OK(
            pm_map_create(&m, &opt, tgen_produce, &g, twork_work, &w, NULL));
        pm_result res;
        ASSERT_RC(pm_map_next(m, &res), 0);
        ASSERT_RC(pm_map_next(m, &res), 0);
        ASSERT(pm_map_death(m) == NULL);
        ASSERT_OK(pm_map_destroy(m));
        ASSERT_NO_CHILDREN();
        tgen_free(&g);
    }
}

/* A slot's FIFO holds the window rounded up to a power of two (fifo_mask):
 * windows that are not powers of two, on one to three processes of one or
 * two threads, ordered or not, rings small enough that tasks and results
 * (pads around a fragment's size, ring/4) wrap and stream, all verified. */
TEST_IMPL(map_odd_windows_sweep)
{
    static const int wins[] = {1, 2, 3, 5, 7, 9, 100};
    static const size_t rings[] = {4096, 8192, 0};
    static const size_t pads[] = {0, 1000, 1020, 1024, 2040, 4000, 9000};
    int nwins = N_(7, 3);
    for (int wi = 0; wi < nwins; wi++)
        for (int np = 1; np <= 3; np++)
            for (int nt = 1; nt <= 2; nt++)
                for (int ord = 0; ord < 2; ord++)
                    for (int ri = 0; ri < 3; ri++) {
                        pm_options opt;
                        pm_options_init(&opt);
                        opt.nproc = np;
                        opt.nthreads = nt;
                        opt.ordered = ord;
                        opt.window = wins[wi + (7 - nwins)];
                        opt.ring_bytes = rings[ri];
                        tgen g = {.nitems = N_(400, 40),
                                  .max_count = 3,
                                  .task_pad = pads[(wi + np + nt + ri) % 7]};
                        twork w = {.result_pad = pads[(wi * 3 + ri + ord) % 7],
                                   .chunk = (ri & 1) ? 700 : 0};
                        run_verify(&opt, &g, &w);
                    }
}
