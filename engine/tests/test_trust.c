/*
 * test_trust.c -- what a worker can do to the caller through its shared
 * memory: wild writes over its ring headers (geometry, head, tail) give at
 * worst PM_ECORRUPT naming the worker (or a replacement with opt.retries),
 * never an access outside its rings; a map's mappings reach only its own
 * workers; a worker reaped by someone else is reported as status unknown.
 *
 * The workers find their rings through the engine's internal layout
 * (internal.h): the wild write of a C extension, simulated.
 */
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>

#include "internal.h"
#include "task.h"

/* --- rings with their geometry overwritten --------------------------------- */

#define CAP 4096u

/* A ring whose data ends right at a PROT_NONE page: a write or read past
 * its end faults.  Sets base and len to the whole mapping, for munmap. */
static pm_ring *guarded_ring(void **base, size_t *len)
{
    size_t page = 4096;
    *len = 4 * page;
    unsigned char *p = mmap(NULL, *len, PROT_READ | PROT_WRITE,
                            MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT(p != MAP_FAILED);
    ASSERT_OK(mprotect(p + 3 * page, page, PROT_NONE));
    *base = p;
    pm_ring *r = (pm_ring *)(p + 3 * page - CAP - sizeof(pm_ring));
    pm__ring_init(r, CAP);
    ASSERT(r->data + CAP == p + 3 * page);
    return r;
}

static void send_all(pm_ring_tx *tx, const unsigned char *p, size_t n,
                     pm_ring_rx *rx, unsigned char *out, size_t *got)
{
    /* One thread: write what fits, read what is there, until done. */
    size_t off = 0;
    int ended = 0;
    *got = 0;
    while (!ended) {
        if (off < n)
            off += pm__tx_write(tx, p + off, n - off);
        else if (pm__tx_end(tx) == 0)
            ended = 1;
        pm_frag f;
        int rc;
        while ((rc = pm__rx_peek(rx, &f)) == 1) {
            ASSERT_ULE(f.len, CAP / 4 - PM_FRAG_HDR);
            ASSERT(f.p1 >= rx->data && f.p1 + f.n1 <= rx->data + CAP);
            memcpy(out + *got, f.p1, f.n1);
            *got += f.n1;
            if (f.p2) {
                ASSERT(f.p2 == rx->data && f.n2 <= CAP);
                memcpy(out + *got, f.p2, f.n2);
                *got += f.n2;
            }
            pm__rx_consume(rx, &f);
            if (f.flags & PM_FRAG_LAST)
                return;
        }
        ASSERT_EQ(rc, 0);
    }
    pm_frag f;
    while (pm__rx_peek(rx, &f) == 1) {
        memcpy(out + *got, f.p1, f.n1);
        *got += f.n1;
        if (f.p2) {
            memcpy(out + *got, f.p2, f.n2);
            *got += f.n2;
        }
        pm__rx_consume(rx, &f);
        if (f.flags & PM_FRAG_LAST)
            break;
    }
}

TEST_IMPL(ring_geometry_stays_private)
{
    void *base;
    size_t blen;
    pm_ring *r = guarded_ring(&base, &blen);
    pm_ring_tx tx;
    pm_ring_rx rx;
    pm__tx_init(&tx, r, CAP);
    pm__rx_init(&rx, r, CAP);
    /* The other side's wild writes: neither end reads these back. */
    r->cap = (uint64_t)1 << 40;
    r->max_frag = (uint64_t)1 << 36;
    static unsigned char src[3 * CAP + 5], dst[3 * CAP + 5];
    const size_t sizes[] = {10, CAP - 8, 3 * CAP + 5, 1017, 1};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        pat_fill(src, sizes[i], 77 + i, 0);
        size_t got = 0;
        send_all(&tx, src, sizes[i], &rx, dst, &got);
        ASSERT_UEQ(got, sizes[i]);
        ASSERT_MEM_EQ(dst, src, sizes[i]);
        r->cap = 0;          /* and again, other values */
        r->max_frag = ~(uint64_t)0;
    }
    munmap(base, blen);
}

TEST_IMPL(ring_bad_counters)
{
    void *base;
    size_t blen;
    pm_ring *r = guarded_ring(&base, &blen);
    pm_ring_tx tx;
    pm_ring_rx rx;
    pm__tx_init(&tx, r, CAP);
    pm__rx_init(&rx, r, CAP);
    unsigned char b[100] = {0};
    pm_frag f;

    /* A head more than the ring ahead of the tail. */
    ASSERT_UEQ(pm__tx_write(&tx, b, sizeof b), sizeof b);
    ASSERT_OK(pm__tx_end(&tx));
    uint64_t head = atomic_load(&r->head);
    atomic_store(&r->head, CAP + 8);
    ASSERT_RC(pm__rx_peek(&rx, &f), PM_ECORRUPT);
    pm__rx_init(&rx, r, CAP);
    atomic_store(&r->head, ~(uint64_t)0 - 7);
    ASSERT_RC(pm__rx_peek(&rx, &f), PM_ECORRUPT);
    /* Restored, the message reads fine. */
    pm__rx_init(&rx, r, CAP);
    atomic_store(&r->head, head);
    ASSERT_RC(pm__rx_peek(&rx, &f), 1);
    ASSERT_UEQ(f.len, sizeof b);
    pm__rx_consume(&rx, &f);

    /* A tail past what the producer wrote: no room, and bad. */
    atomic_store(&r->tail, head + 64);
    ASSERT_UEQ(pm__tx_room(&tx, CAP), 0);
    ASSERT(tx.bad);
    /* A tail more than the ring behind the write position. */
    pm__tx_init(&tx, r, CAP);
    ASSERT(tx.bad); /* checked at init too */
    atomic_store(&r->tail, head);
    pm__tx_init(&tx, r, CAP);
    ASSERT(!tx.bad);
    for (int i = 0; i < 30; i++) { /* move on past one turn of the ring */
        ASSERT_UEQ(pm__tx_write(&tx, b, sizeof b), sizeof b);
        ASSERT_OK(pm__tx_end(&tx));
        ASSERT_RC(pm__rx_peek(&rx, &f), 1);
        pm__rx_consume(&rx, &f);
    }
    ASSERT(!tx.bad);
    atomic_store(&r->tail, tx.pos - CAP - 8);
    ASSERT_UEQ(pm__tx_room(&tx, CAP), 0);
    ASSERT(tx.bad);
    munmap(base, blen);
}

/* --- workers that write over their rings ----------------------------------- */

enum {
    SCRIBBLE_GEOMETRY = 1, /* cap and max_frag of both rings */
    SCRIBBLE_RESULT_HEAD,  /* result ring head far past the tail */
    SCRIBBLE_TASK_TAIL,    /* task ring tail past what was written */
    SCRIBBLE_TASK_TAIL_BEHIND, /* task ring tail more than a ring behind */
};

typedef struct swork {
    twork base;
    pm_map **m;       /* the map (the worker's copy of the pointer) */
    int mode;
    uint64_t item;
    _Atomic uint32_t *shared; /* [0]: runs of item, [1]: pid, [2]: worker */
} swork;

static void nap_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int swork_work(void *ctx, const pm_task *task, const void *in,
                      size_t len, pm_writer *out)
{
    swork *w = ctx;
    if (w->item >= task->first && w->item - task->first < task->count &&
        atomic_fetch_add(&w->shared[0], 1) == 0) {
        pm_map *m = *w->m;
        int wi = twork_worker_index;
        atomic_store(&w->shared[1], (uint32_t)getpid());
        atomic_store(&w->shared[2], (uint32_t)wi);
        /* This thread's slot: the one whose task ring holds this task.
         * With one thread per worker it is the worker's only slot. */
        pm_slot *s = &m->slots[wi * m->opt.nthreads];
        pm_ring *tr = s->task_ring, *rr = s->result_ring;
        uint64_t cap = m->opt.ring_bytes;
        switch (w->mode) {
        case SCRIBBLE_GEOMETRY:
            tr->cap = rr->cap = (uint64_t)1 << 44;
            tr->max_frag = rr->max_frag = (uint64_t)1 << 40;
            break;
        case SCRIBBLE_RESULT_HEAD:
            atomic_store(&rr->head, atomic_load(&rr->tail) + 3 * cap);
            pm__bell_ring(&m->ctl->parent);
            nap_ms(60000); /* killed by the parent */
            break;
        case SCRIBBLE_TASK_TAIL:
            atomic_store(&tr->tail, atomic_load(&tr->head) + cap + 64);
            pm__bell_ring(&m->ctl->parent);
            nap_ms(60000);
            break;
        case SCRIBBLE_TASK_TAIL_BEHIND:
            atomic_store(&tr->tail, atomic_load(&tr->head) - 2 * cap);
            pm__bell_ring(&m->ctl->parent);
            nap_ms(60000);
            break;
        }
    }
    return twork_work(&w->base, task, in, len, out);
}

typedef struct scribble_case {
    int mode;
    int nproc, nthreads, ordered;
    int retries;
    int expect_corrupt; /* PM_ECORRUPT naming the worker, else all results */
} scribble_case;

static void run_scribble(const scribble_case *sc)
{
    const uint64_t item = 40;
    tgen g = {.nitems = 300, .max_count = 1, .task_pad = 1500};
    swork w = {.base = {.result_pad = 700}, .mode = sc->mode, .item = item};
    pm_map *m = NULL;
    w.m = &m;
    w.shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                    MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT(w.shared != MAP_FAILED);
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = sc->nproc;
    opt.nthreads = sc->nthreads;
    opt.ordered = sc->ordered;
    opt.retries = sc->retries;
    opt.ring_bytes = CAP; /* tasks fill it: the parent reads the tail */
    pm_hooks h = {0};
    h.after_fork_child = twork_after_fork_child;
    ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g, swork_work, &w, &h));
    pm_result res;
    int rc;
    uint64_t n = 0;
    while ((rc = pm_map_next(m, &res)) == 1) {
        CHECK_RESULT(&g, &w.base, &res);
        n += res.task.count;
    }
    ASSERT_UGE(atomic_load(&w.shared[0]), 1); /* the scribble happened */
    if (!sc->expect_corrupt) {
        ASSERT_RC(rc, 0);
        ASSERT_UEQ(n, g.nitems);
    } else {
        ASSERT_RC(rc, PM_ECORRUPT);
        const pm_death *d = pm_map_death(m);
        ASSERT_MSG(d != NULL, "PM_ECORRUPT does not name the worker");
        ASSERT_EQ(d->pid, (pid_t)atomic_load(&w.shared[1]));
        ASSERT_EQ(d->worker, (int)atomic_load(&w.shared[2]));
        ASSERT_EQ(d->signal, SIGKILL); /* the engine killed it */
        int found = 0;
        for (size_t i = 0; i < d->nlost; i++)
            found |= d->lost[i].first <= item &&
                     item - d->lost[i].first < d->lost[i].count;
        ASSERT_MSG(found, "item %llu not among the %zu tasks in flight",
                   (unsigned long long)item, d->nlost);
        ASSERT_RC(pm_map_next(m, &res), PM_ECORRUPT); /* sticky */
    }
    ASSERT_OK(pm_map_destroy(m));
    ASSERT_NO_CHILDREN();
    tgen_free(&g);
    munmap((void *)w.shared, 4096);
}

TEST_IMPL(map_worker_scribbles_geometry)
{
    scribble_case sc = {SCRIBBLE_GEOMETRY, 2, 1, 1, 0, 0};
    run_scribble(&sc);
}

TEST_IMPL(map_worker_scribbles_geometry_threads_unordered)
{
    scribble_case sc = {SCRIBBLE_GEOMETRY, 2, 2, 0, 0, 0};
    run_scribble(&sc);
}

TEST_IMPL(map_worker_scribbles_result_head)
{
    scribble_case sc = {SCRIBBLE_RESULT_HEAD, 2, 1, 1, 0, 1};
    run_scribble(&sc);
}

TEST_IMPL(map_worker_scribbles_result_head_unordered)
{
    scribble_case sc = {SCRIBBLE_RESULT_HEAD, 3, 1, 0, 0, 1};
    run_scribble(&sc);
}

TEST_IMPL(map_worker_scribbles_result_head_retries)
{
    scribble_case sc = {SCRIBBLE_RESULT_HEAD, 2, 1, 1, 1, 0};
    run_scribble(&sc);
}

TEST_IMPL(map_worker_scribbles_task_tail)
{
    scribble_case sc = {SCRIBBLE_TASK_TAIL, 2, 1, 1, 0, 1};
    run_scribble(&sc);
}

TEST_IMPL(map_worker_scribbles_task_tail_behind)
{
    scribble_case sc = {SCRIBBLE_TASK_TAIL_BEHIND, 1, 1, 1, 0, 1};
    run_scribble(&sc);
}

TEST_IMPL(map_worker_scribbles_task_tail_retries)
{
    scribble_case sc = {SCRIBBLE_TASK_TAIL, 2, 1, 0, 2, 0};
    run_scribble(&sc);
}

/* --- what a fork inherits ---------------------------------------------------- */

/* Is [p, p + len) mapped in this process? */
static int mapped(const void *p, size_t len)
{
    unsigned char vec[64];
    size_t pages = (len + 4095) / 4096;
    if (pages > sizeof vec)
        pages = sizeof vec, len = pages * 4096;
    return mincore((void *)p, len, vec) == 0;
}

pm_map *trust_map_b;

/* Bit 0: this worker's own rings and the parent's bell are mapped; bit 1:
 * none of map A's mappings is (the context: map A); bit 2: a fork() of the
 * worker (in the work function) has neither its rings nor the bell. */
static int reach_work(void *ctx, const pm_task *task, const void *in,
                      size_t len, pm_writer *out)
{
    (void)task, (void)in, (void)len;
    pm_map *a = *(pm_map **)ctx;
    pm_map *b = trust_map_b;
    int w = twork_worker_index;
    uint64_t bits = 0;
    if (mapped(b->workers[w].shm, b->workers[w].shm_len) &&
        mapped(b->ctl, sizeof(pm_ctl)))
        bits |= 1;
    int any = mapped(a->ctl, sizeof(pm_ctl));
    for (int i = 0; i < a->opt.nproc; i++)
        any |= mapped(a->workers[i].shm, a->workers[i].shm_len);
    if (!any)
        bits |= 2;
    pid_t pid = fork();
    if (pid == 0) {
        int has = mapped(b->workers[w].shm, b->workers[w].shm_len) ||
                  mapped(b->ctl, sizeof(pm_ctl));
        _exit(has ? 1 : 0);
    }
    int st = -1;
    if (pid > 0 && waitpid(pid, &st, 0) == pid && WIFEXITED(st) &&
        WEXITSTATUS(st) == 0)
        bits |= 4;
    return pm_write(out, &bits, sizeof bits);
}

static int one_task(void *ctx, pm_task *task, const void **data, size_t *len)
{
    int *left = ctx;
    if (*left == 0)
        return 0;
    task->first = (uint64_t)(3 - *left);
    task->count = 1;
    *data = NULL;
    *len = 0;
    (*left)--;
    return 1;
}

TEST_IMPL(map_rings_reach_only_own_workers)
{
    /* Map A runs (its workers hold their rings). */
    tgen g = {.nitems = 100000, .max_count = 1};
    twork tw = {0};
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 2;
    pm_hooks h = {0};
    h.after_fork_child = twork_after_fork_child;
    pm_map *a = NULL;
    ASSERT_OK(pm_map_create(&a, &opt, tgen_produce, &g, twork_work, &tw, &h));
    pm_result res;
    ASSERT_RC(pm_map_next(a, &res), 1);
    ASSERT(mapped(a->workers[1].shm, a->workers[1].shm_len));

    /* A plain fork of the caller has none of them. */
    pid_t pid = fork();
    ASSERT(pid >= 0);
    if (pid == 0) {
        int any = mapped(a->ctl, sizeof(pm_ctl));
        for (int i = 0; i < a->opt.nproc; i++)
            any |= mapped(a->workers[i].shm, a->workers[i].shm_len);
        /* Its copy of the map is freed without touching them. */
        pm_map_destroy(a);
        _exit(any ? 1 : 0);
    }
    int st = 0;
    ASSERT_EQ(waitpid(pid, &st, 0), pid);
    ASSERT_MSG(WIFEXITED(st) && WEXITSTATUS(st) == 0,
               "a plain fork inherited map A's rings (status %#x)", st);

    /* The workers of map B have their own and none of A's, and a fork of
     * theirs has none.  (Replacement workers, forked later, get theirs
     * too: the *_retries cases above.) */
    int left = 3;
    pm_options ob;
    pm_options_init(&ob);
    ob.nproc = 2;
    ASSERT_OK(pm_map_create(&trust_map_b, &ob, one_task, &left, reach_work,
                            &a, &h));
    int k = 0, rc;
    while ((rc = pm_map_next(trust_map_b, &res)) == 1) {
        uint64_t bits;
        ASSERT_UEQ(res.len, sizeof bits);
        memcpy(&bits, res.data, sizeof bits);
        ASSERT_MSG(bits == 7,
                   "worker of map B: own rings %s, map A's %s, its fork's %s",
                   bits & 1 ? "mapped" : "MISSING",
                   bits & 2 ? "absent" : "MAPPED",
                   bits & 4 ? "absent" : "MAPPED");
        k++;
    }
    ASSERT_RC(rc, 0);
    ASSERT_EQ(k, 3);
    ASSERT_OK(pm_map_destroy(trust_map_b));
    ASSERT_OK(pm_map_destroy(a));
    tgen_free(&g);
    ASSERT_NO_CHILDREN();
}

/* --- workers reaped by someone else -------------------------------------------- */

TEST_IMPL(map_worker_reaped_elsewhere)
{
    struct sigaction ign = {0}, old;
    ign.sa_handler = SIG_IGN;
    ASSERT_OK(sigaction(SIGCHLD, &ign, &old));
    tgen g = {.nitems = 200, .max_count = 1};
    twork tw = {.die_mode = DIE_SIGKILL, .die_item = 37};
    pm_options opt;
    pm_options_init(&opt);
    opt.nproc = 2;
    pm_map *m = NULL;
    ASSERT_OK(pm_map_create(&m, &opt, tgen_produce, &g, twork_work, &tw, NULL));
    pm_result res;
    int rc;
    while ((rc = pm_map_next(m, &res)) == 1)
        ASSERT_ULT(res.task.first, 37);
    ASSERT_RC(rc, PM_EWORKERDIED);
    const pm_death *d = pm_map_death(m);
    ASSERT(d != NULL);
    /* Not a made-up "exited with code 127" (nor 0). */
    ASSERT_EQ(d->signal, 0);
    ASSERT_EQ(d->exit_code, PM_EXIT_UNKNOWN);
    ASSERT_OK(pm_map_destroy(m));
    tgen_free(&g);
    sigaction(SIGCHLD, &old, NULL);
}

static int crash_item(void *ctx, const void *in, size_t len, pm_writer *out)
{
    (void)ctx, (void)len, (void)out;
    uint64_t v;
    memcpy(&v, in, sizeof v);
    if (v == 5)
        raise(SIGKILL); /* how it dies is unknown to the engine anyway */
    return 0;
}

TEST_IMPL(job_worker_reaped_elsewhere)
{
    struct sigaction ign = {0}, old;
    ign.sa_handler = SIG_IGN;
    ASSERT_OK(sigaction(SIGCHLD, &ign, &old));
    static uint64_t vals[20];
    static pm_record recs[20];
    for (int i = 0; i < 20; i++) {
        vals[i] = (uint64_t)i;
        recs[i].data = &vals[i];
        recs[i].len = sizeof vals[i];
    }
    pm_job_options o;
    pm_job_options_init(&o);
    o.nproc = 2;
    pm_job *job = NULL;
    ASSERT_OK(pm_job_create(&job, &o, crash_item, NULL));
    ASSERT_OK(pm_job_feed_array(job, recs, 20));
    pm_item it;
    int rc, crashed = 0;
    while ((rc = pm_job_next(job, &it)) == 1) {
        if (it.index == 5) {
            ASSERT_EQ(it.status, PM_ITEM_CRASHED);
            ASSERT_EQ(it.signal, 0);
            ASSERT_EQ(it.exit_code, PM_EXIT_UNKNOWN);
            crashed++;
        } else {
            ASSERT_EQ(it.status, PM_ITEM_OK);
        }
    }
    ASSERT_RC(rc, 0);
    ASSERT_EQ(crashed, 1);
    ASSERT_OK(pm_job_destroy(job));
    sigaction(SIGCHLD, &old, NULL);
}
