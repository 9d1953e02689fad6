/*
 * test_gather.c -- tasks given as pieces (pm_map_create_gather): the bytes
 * arrive whole and in order however the pieces fall across the ring, every
 * owner is released exactly once (written, worker dead, or map destroyed),
 * pieces without an owner may be reused after the call; and the worker's
 * pm_writer_take_input().
 */
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <unistd.h>
#include <sys/mman.h>
#include <time.h>

#include "task.h"

/* One task's memory, owned by the caller until the engine releases it. */
typedef struct gtask {
    unsigned char *bytes; /* the values, then the pad pattern */
    size_t len;
    pm_iov iov[12];
    int niov;
} gtask;

typedef struct ggen {
    tgen g;         /* the item values and pad, as tgen_produce makes them */
    int owner_every; /* tasks k with k % owner_every == 0 get an owner */
    long live;       /* owners given and not yet released */
    long released;
    long owned;
    gtask scratch;   /* the pieces of a task without an owner */
} ggen;

/* Splits bytes[0..len) into pieces of pseudo-random sizes, some empty. */
static void split(gtask *t, uint64_t seed)
{
    size_t off = 0;
    t->niov = 0;
    while (t->niov < 11 && off < t->len) {
        size_t k = mix64(seed + (uint64_t)t->niov) % (t->len / 3 + 2);
        if (k > t->len - off)
            k = t->len - off;
        t->iov[t->niov].base = t->bytes + off;
        t->iov[t->niov].len = k;
        t->niov++;
        off += k;
    }
    t->iov[t->niov].base = t->bytes + off;
    t->iov[t->niov].len = t->len - off;
    t->niov++;
}

static int ggen_gather(void *ctx, pm_task *task, const pm_iov **iov,
                       int *niov, void **owner)
{
    ggen *gg = ctx;
    const void *data;
    size_t len;
    int rc = tgen_produce(&gg->g, task, &data, &len);
    if (rc <= 0)
        return rc;
    gtask *t = &gg->scratch;
    if (gg->owner_every && (gg->g.ntasks - 1) % gg->owner_every == 0) {
        t = calloc(1, sizeof *t);
        ASSERT(t != NULL);
        *owner = t;
        gg->live++;
        gg->owned++;
    }
    if (t != &gg->scratch || !t->bytes || t->len < len) {
        if (t == &gg->scratch)
            free(t->bytes);
        t->bytes = malloc(len ? len : 1);
        ASSERT(t->bytes != NULL);
    }
    memcpy(t->bytes, data, len);
    t->len = len;
    split(t, task->first);
    *iov = t->iov;
    *niov = t->niov;
    return 1;
}

static void ggen_release(void *ctx, void *owner)
{
    ggen *gg = ctx;
    gtask *t = owner;
    ASSERT(owner != NULL && owner != &gg->scratch);
    /* Scribble: an engine still reading the pieces would send garbage. */
    memset(t->bytes, 0xEE, t->len);
    free(t->bytes);
    free(t);
    gg->live--;
    gg->released++;
}

/* Destroys the map and checks that every owner was released exactly once
 * and no process is left. */
static void destroy_checked(pm_map *m, ggen *gg)
{
    ASSERT_OK(pm_map_destroy(m));
    ASSERT_EQ(gg->live, 0);
    ASSERT_EQ(gg->released, gg->owned);
    ASSERT_NO_CHILDREN();
    free(gg->scratch.bytes);
    tgen_free(&gg->g);
}

/* Runs a whole map of gathered tasks and checks every result. */
static void run_gather(const pm_options *opt, ggen *gg, twork *w)
{
    pm_map *m;
    ASSERT_OK(pm_map_create_gather(&m, opt, ggen_gather, ggen_release, gg,
                                   twork_work, w, NULL));
    pm_result res;
    int rc;
    uint64_t items = 0, next = 0;
    while ((rc = pm_map_next(m, &res)) == 1) {
        CHECK_RESULT(&gg->g, w, &res);
        if (opt->ordered)
            ASSERT_UEQ(res.task.first, next);
        next = res.task.first + res.task.count;
        items += res.task.count;
    }
    ASSERT_RC(rc, 0);
    ASSERT_UEQ(items, gg->g.nitems);
    ASSERT_EQ(gg->live, 0); /* every owner released before the end */
    destroy_checked(m, gg);
}

/* Pieces that straddle the ring's end, fill it and wait for room; with and
 * without owners, one and several threads. */
TEST_IMPL(map_gather_pieces_threads)
{
    static const struct {
        int nthreads, ordered, owner_every;
        size_t pad;
    } cases[] = {
        {1, 1, 1, 100 * 1024}, {1, 1, 0, 100 * 1024}, {2, 0, 2, 30000},
        {1, 1, 3, 500},         {2, 1, 1, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        pm_options opt;
        pm_options_init(&opt);
        opt.nproc = 2;
        opt.nthreads = cases[i].nthreads;
        opt.ordered = cases[i].ordered;
        opt.ring_bytes = 4096;
        ggen gg = {.g = {.nitems = N_(80, 20), .max_count = 3,
                         .task_pad = cases[i].pad},
                   .owner_every = cases[i].owner_every};
        twork w = {.result_pad = 3000, .chunk = 700};
        run_gather(&opt, &gg, &w);
        if (cases[i].owner_every)
            ASSERT_GT(gg.owned, 0);
    }
}

/* A task still partly written when the map is destroyed (its worker is
 * slow to read it) has its owner released by pm_map_destroy(). */
TEST_IMPL(map_gather_released_on_destroy)
{
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 1;
    opt.ring_bytes = 4096;
    ggen gg = {.g = {.nitems = 10, .max_count = 1, .task_pad = 200 * 1024},
               .owner_every = 1};
    twork w = {.sleep_ms = 300};
    pm_map *m;
    ASSERT_OK(pm_map_create_gather(&m, &opt, ggen_gather, ggen_release, &gg,
                                   twork_work, &w, NULL));
    pm_result res;
    ASSERT_RC(pm_map_next(m, &res), 1);
    CHECK_RESULT(&gg.g, &w, &res);
    ASSERT_GT(gg.live, 0); /* the next tasks are still being written */
    destroy_checked(m, &gg);
}

/* Kills its worker the first time it meets item 5 (a flag in shared
 * memory), then works like twork_work. */
static volatile int *died_once;

static int die_once_work(void *ctx, const pm_task *task, const void *in,
                         size_t len, pm_writer *out)
{
    if (task->first <= 5 && 5 < task->first + task->count && !*died_once) {
        *died_once = 1;
        raise(SIGKILL);
    }
    return twork_work(ctx, task, in, len, out);
}

/* A worker killed while gathered tasks are in flight (and partly written:
 * big tasks, small ring): the owners are released, the tasks are sent
 * again from the engine's copies (retries keep one) and every result is
 * right. */
TEST_IMPL(map_gather_retry)
{
    died_once = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT(died_once != MAP_FAILED);
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 2;
    opt.ring_bytes = 4096;
    opt.retries = 1;
    ggen gg = {.g = {.nitems = N_(30, 12), .max_count = 1,
                     .task_pad = 50 * 1024},
               .owner_every = 1};
    twork w = {0};
    pm_map *m;
    ASSERT_OK(pm_map_create_gather(&m, &opt, ggen_gather, ggen_release, &gg,
                                   die_once_work, &w, NULL));
    pm_result res;
    int rc;
    uint64_t items = 0, next = 0;
    while ((rc = pm_map_next(m, &res)) == 1) {
        CHECK_RESULT(&gg.g, &w, &res);
        ASSERT_UEQ(res.task.first, next);
        next += res.task.count;
        items += res.task.count;
    }
    ASSERT_RC(rc, 0);
    ASSERT_EQ(*died_once, 1);
    ASSERT_UEQ(items, gg.g.nitems);
    destroy_checked(m, &gg);
    munmap((void *)died_once, 4096);
}

/* --- pm_writer_take_input ------------------------------------------------ */

/* Takes the input when the engine assembled it, checks it after writing
 * the result (the engine has moved on by then in the ring), frees it; the
 * result says whether it was taken. */
static int take_work(void *ctx, const pm_task *task, const void *in,
                     size_t len, pm_writer *out)
{
    (void)ctx;
    void *blk = pm_writer_take_input(out);
    ASSERT(pm_writer_take_input(out) == NULL); /* only once */
    if (blk)
        ASSERT((const unsigned char *)in >= (unsigned char *)blk);
    uint64_t r[3] = {task->first, blk != NULL, fnv64(in, len)};
    int rc = pm_write(out, r, sizeof r);
    if (blk) {
        ASSERT_UEQ(fnv64(in, len), r[2]);
        free(blk);
    }
    return rc;
}

TEST_IMPL(map_take_input)
{
    for (int big = 0; big < 2; big++) {
        pm_options opt;
        pm_options_init(&opt);
        opt.nproc = 2;
        opt.ring_bytes = 8192;
        tgen g = {.nitems = N_(40, 10), .max_count = 1,
                  .task_pad = big ? 20000 : 100};
        pm_map *m;
        ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g, take_work, NULL,
                                NULL));
        pm_result res;
        int rc, n = 0;
        while ((rc = pm_map_next(m, &res)) == 1) {
            uint64_t r[3];
            ASSERT_UEQ(res.len, sizeof r);
            memcpy(r, res.data, sizeof r);
            ASSERT_UEQ(r[0], res.task.first);
            ASSERT_UEQ(r[1], (uint64_t)big);
            n++;
        }
        ASSERT_RC(rc, 0);
        ASSERT_EQ(n, (int)g.nitems);
        ASSERT_OK(pm_map_destroy(m));
        ASSERT_NO_CHILDREN();
        tgen_free(&g);
    }
}

/* Bad calls. */
TEST_IMPL(map_gather_einval)
{
    pm_options opt;
    pm_options_init(&opt);
    pm_map *m = (pm_map *)1;
    ASSERT_RC(pm_map_create_gather(&m, &opt, NULL, NULL, NULL, twork_work,
                                   NULL, NULL),
              -EINVAL);
    ASSERT(m == NULL);
    m = (pm_map *)1;
    ASSERT_RC(pm_map_create(&m, &opt, NULL, NULL, twork_work, NULL, NULL),
              -EINVAL);
    ASSERT(m == NULL);
}

/* One buffer the source refills for every task (as an input that reuses an
 * array): with PM_PRODUCED_VOLATILE the engine writes a task's pieces whole
 * before it asks for the next one, so no task arrives mixed from two fills. */
typedef struct vgen {
    unsigned char *buf;
    size_t len;
    uint64_t next, n;
    int flag;     /* PM_PRODUCED_VOLATILE, or 0 for the broken control */
    pm_iov iov;
    long live;
} vgen;

static int vgen_gather(void *ctx, pm_task *task, const pm_iov **iov,
                       int *niov, void **owner)
{
    vgen *v = ctx;
    if (v->next == v->n)
        return 0;
    memset(v->buf, (int)(v->next & 0xff), v->len); /* the refill */
    task->first = v->next++;
    task->count = 1;
    v->iov = (pm_iov){v->buf, v->len};
    *iov = &v->iov;
    *niov = 1;
    *owner = v; /* written from v->buf itself, no copy */
    v->live++;
    return 1 | v->flag;
}

static void vgen_release(void *ctx, void *owner)
{
    (void)owner;
    ((vgen *)ctx)->live--;
}

/* Result: 1 when every byte of the task is its index's, else 0. */
static int vwork(void *ctx, const pm_task *task, const void *in, size_t len,
                 pm_writer *out)
{
    (void)ctx;
    const unsigned char *p = in;
    uint64_t whole = 1;
    for (size_t i = 0; i < len; i++)
        if (p[i] != (unsigned char)(task->first & 0xff))
            whole = 0;
    return pm_write(out, &whole, sizeof whole);
}

TEST_IMPL(map_gather_volatile)
{
    vgen v = {.len = 1u << 18, .n = N_(64, 16), .flag = PM_PRODUCED_VOLATILE};
    v.buf = malloc(v.len);
    ASSERT(v.buf != NULL);
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 2;
    opt.ring_bytes = 1u << 16; /* a quarter of a task: written in steps */
    pm_map *m;
    ASSERT_OK(pm_map_create_gather(&m, &opt, vgen_gather, vgen_release, &v,
                                   vwork, NULL, NULL));
    pm_result res;
    int rc;
    uint64_t n = 0;
    while ((rc = pm_map_next(m, &res)) == 1) {
        uint64_t whole;
        ASSERT_UEQ(res.len, sizeof whole);
        memcpy(&whole, res.data, sizeof whole);
        ASSERT_MSG(whole == 1, "task %llu arrived mixed from two fills",
                   (unsigned long long)res.task.first);
        n++;
    }
    ASSERT_RC(rc, 0);
    ASSERT_UEQ(n, v.n);
    ASSERT_OK(pm_map_destroy(m));
    ASSERT_EQ(v.live, 0);
    ASSERT_NO_CHILDREN();
    free(v.buf);
}

/* A source fed by another thread (as an input read in a thread of its
 * own): it returns PM_NO_TASK_YET while the feeder has nothing, and the
 * feeder calls pm_map_wake() after each task.  The feeder gives 5 tasks,
 * then pauses until the caller has all 5 results (or a generous limit):
 * results must arrive while the source has nothing, never wait for it. */
typedef struct lgen {
    pthread_mutex_t mu;
    pm_map *m;
    uint64_t made, taken, n; /* tasks the feeder made, the source took */
    _Atomic uint64_t delivered;
    int paused_out;          /* the pause ended on the limit, not results */
    long later;              /* PM_NO_TASK_YET returned */
    uint64_t val[64];
} lgen;

static int lgen_produce(void *ctx, pm_task *task, const void **data,
                        size_t *len)
{
    lgen *g = ctx;
    pthread_mutex_lock(&g->mu);
    int rc;
    if (g->taken < g->made) {
        task->first = g->taken;
        task->count = 1;
        *data = &g->val[g->taken];
        *len = sizeof g->val[0];
        g->taken++;
        rc = 1;
    } else {
        rc = g->made == g->n ? 0 : PM_NO_TASK_YET;
        g->later += rc != 0;
    }
    pthread_mutex_unlock(&g->mu);
    return rc;
}

static void *lgen_feed(void *arg)
{
    lgen *g = arg;
    for (uint64_t k = 0; k < g->n; k++) {
        if (k == 5) { /* the pause: until the five results are out */
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
        g->val[k] = 1000 + k;
        g->made++;
        pthread_mutex_unlock(&g->mu);
        pm_map_wake(g->m);
        usleep(k < 5 ? 0 : 2000);
    }
    return NULL;
}

/* Result: the task's value plus one. */
static int lwork(void *ctx, const pm_task *task, const void *in, size_t len,
                 pm_writer *out)
{
    (void)ctx;
    (void)task;
    uint64_t v;
    if (len != sizeof v)
        return -1;
    memcpy(&v, in, sizeof v);
    v++;
    return pm_write(out, &v, sizeof v);
}

static void input_later(int ordered)
{
    lgen g = {.n = 12};
    pthread_mutex_init(&g.mu, NULL);
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 2;
    opt.ordered = ordered;
    ASSERT_OK(pm_map_create(&g.m, &opt, lgen_produce, &g, lwork, NULL, NULL));
    pthread_t th;
    ASSERT(pthread_create(&th, NULL, lgen_feed, &g) == 0);
    pm_result res;
    int rc;
    uint64_t seen = 0;
    while ((rc = pm_map_next(g.m, &res)) == 1) {
        uint64_t v;
        ASSERT_UEQ(res.len, sizeof v);
        memcpy(&v, res.data, sizeof v);
        ASSERT_UEQ(v, 1001 + res.task.first);
        ASSERT(!(seen & (1u << res.task.first)));
        seen |= 1u << res.task.first;
        atomic_fetch_add(&g.delivered, 1);
    }
    ASSERT_RC(rc, 0);
    ASSERT(pthread_join(th, NULL) == 0);
    ASSERT_UEQ(seen, (1u << g.n) - 1);
    ASSERT_MSG(!g.paused_out, "the first five results waited for the input");
    ASSERT(g.later > 0);
    ASSERT_OK(pm_map_destroy(g.m));
    pthread_mutex_destroy(&g.mu);
    ASSERT_NO_CHILDREN();
}

TEST_IMPL(map_input_thread)
{
    input_later(1);
}

TEST_IMPL(map_input_thread_unordered)
{
    input_later(0);
}
