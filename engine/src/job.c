/*
 * job.c -- jobs: a parallel map of a C function over records, item by item.
 *
 * A job is a pm_map whose tasks are chunks of records and whose results are
 * split back into items here.  Formats, all in native byte order:
 *
 *   task data   array input: none (the workers read their inherited copy of
 *               the array, items [first, first + count)); fed input: one
 *               record's bytes when count == 1, else count times
 *               (u64 length, bytes, zeros up to a multiple of 8).
 *   result      for each item: the bytes the work function wrote, zeros up
 *               to a multiple of 8, then an item trailer (length, code,
 *               magic); then a task trailer with the time the task took in
 *               the worker.  Every item's bytes thus start 8-aligned.  The parent walks
 *               the trailers backwards, so the worker streams results of any
 *               size without buffering or knowing their length beforehand,
 *               and the parent hands them out without copying.
 *
 * Crashes: the map runs with deliver_lost.  A lost chunk of several items
 * comes back with its input; its items go into the redo queue and are run
 * again one per task, so only the item at fault is reported as crashed.  In
 * ordered mode the results that arrive before those of the redo are copied
 * aside (the held list) until their turn: the only copies, and only after a
 * crash.
 */
/* GNU and POSIX interfaces under any -std (builds may -D it too). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define ITEM_MAGIC 0x4d455449u  /* "ITEM" */
#define TASK_TARGET_NS 2000000u /* adaptive chunks aim at this much work */
#define CHUNK_MAX 65536u

typedef struct item_trailer {
    uint64_t len;
    int32_t code;
    uint32_t magic;
} item_trailer;

#define ROUND8(n) (((n) + 7u) & ~(uint64_t)7u)

static const unsigned char zeros[8];

typedef struct task_trailer {
    uint64_t elapsed_ns;
} task_trailer;

/* One item of the batch being handed out. */
typedef struct parsed {
    const unsigned char *data;
    size_t len;
    int code;
} parsed;

/* A result put aside until its turn (ordered, after a crash). */
typedef struct held {
    pm_task task;
    int status, signal, exit_code;
    unsigned char *data; /* the result message, owned */
    size_t len;
} held;

/* An item of a lost chunk, to run again alone. */
typedef struct redo {
    uint64_t index;
    unsigned char *data; /* fed input: its bytes, owned */
    size_t len;
} redo;

struct pm_job {
    _Atomic int busy; /* a call on the job is under way (PM_EBUSY) */
    pm_job_options opt;
    pm_item_fn fn;
    void *fn_ctx;
    pm_map *map;
    int nslots;
    int error;

    /* Input. */
    int have_input;
    int array;             /* the input is recs[0 .. nrecs) */
    const pm_record *recs;
    size_t nrecs;
    pm_feed_fn feed; /* fed input */
    void *feed_ctx;
    int feed_done;
    int feed_err;   /* what the feed function failed with: reported once
                       every record it gave before is delivered */
    uint64_t next_index; /* index of the next fresh item */
    uint64_t total;      /* items expected, or PM_TOTAL_UNKNOWN */
    unsigned char *pack; /* the chunk being fed */
    size_t pack_cap;
    size_t max_task_bytes;

    /* Redo queue: a FIFO of single items. */
    redo *redo;
    size_t redo_head, redo_n, redo_cap;
    unsigned char *redo_sent; /* the input of the last redo item sent */

    /* Adaptive chunks. */
    double item_ns; /* worker time per item, moving average (0: unknown) */
    uint64_t chunk_max; /* largest chunk sent so far */

    /* Delivery. */
    pm_task batch_task;
    int batch_status, batch_signal, batch_exit;
    parsed *batch;
    size_t batch_cap;
    uint32_t batch_n, batch_pos;
    unsigned char *batch_owned; /* a held result being handed out */
    int batch_map;              /* the batch is pm_map_next()'s last result */
    held *held;
    size_t held_n, held_cap;
    uint64_t next_out; /* ordered: index of the next item to hand out */
    _Atomic uint64_t done; /* one writer (the call under way); read by
                              pm_job_done() from any thread */
};

/* The fields of the first pm_job_options (everything up to total). */
#define OPTIONS_SIZE_V1                                                        \
    (offsetof(pm_job_options, total) + sizeof(uint64_t))

void pm_job_options_init_size(pm_job_options *o, size_t size)
{
    /* A program built against an older pm.h passes its smaller size: only
     * that much is written. */
    pm_job_options d;
    memset(&d, 0, sizeof d);
    d.size = size;
    d.nthreads = 1;
    d.ordered = 1;
    memset(o, 0, size);
    memcpy(o, &d, size < sizeof d ? size : sizeof d);
}

/* One call at a time on a job: returns 0 when this call may go on, or
 * PM_EBUSY when another call (in another thread, or a callback calling
 * back into the job) is under way. */
static int enter(pm_job *j)
{
    return atomic_exchange_explicit(&j->busy, 1, memory_order_acquire)
               ? PM_EBUSY
               : 0;
}

static void leave(pm_job *j)
{
    atomic_store_explicit(&j->busy, 0, memory_order_release);
}

/* Reads the next record of a packed task from *p (before end): returns 0
 * with *data and *len set and *p moved past it, or PM_ECORRUPT. */
static int unpack(const unsigned char **p, const unsigned char *end,
                  const unsigned char **data, uint64_t *len)
{
    uint64_t n;
    if ((size_t)(end - *p) < sizeof n)
        return PM_ECORRUPT;
    memcpy(&n, *p, sizeof n);
    *p += sizeof n;
    if (n > (uint64_t)(end - *p))
        return PM_ECORRUPT;
    *data = *p;
    *len = n;
    *p += n < (uint64_t)(end - *p) ? ROUND8(n) : n;
    return 0;
}

/* --- the worker side ------------------------------------------------------ */

static int run_item(pm_job *j, uint64_t index, const void *in, size_t len,
                    pm_writer *out)
{
    pm__writer_set_item(out, index);
    uint64_t before = pm__writer_written(out);
    int rc = j->fn(j->fn_ctx, in, len, out);
    if (pm__forked_copy)
        return PM_ECALLBACK; /* a copy forked by fn: no further item here */
    if (rc < 0)
        return rc;
    item_trailer t = {pm__writer_written(out) - before, rc, ITEM_MAGIC};
    size_t pad = (size_t)(ROUND8(t.len) - t.len);
    if (pad && (rc = pm_write(out, zeros, pad)) < 0)
        return rc;
    return pm_write(out, &t, sizeof t);
}

/* The pm_work_fn of every job: runs the task's items one after the other. */
static int job_work(void *ctx, const pm_task *task, const void *in, size_t len,
                    pm_writer *out)
{
    pm_job *j = ctx;
    uint64_t t0 = pm__now_ns();
    int rc = 0;
    if (j->array) {
        if (task->first > j->nrecs || task->count > j->nrecs - task->first)
            return PM_ECORRUPT;
        for (uint32_t i = 0; i < task->count && rc >= 0; i++) {
            const pm_record *r = &j->recs[task->first + i];
            rc = run_item(j, task->first + i, r->data, r->len, out);
        }
    } else if (task->count == 1) {
        rc = run_item(j, task->first, in, len, out);
    } else {
        const unsigned char *p = in, *end = p + len, *d;
        uint64_t n;
        for (uint32_t i = 0; i < task->count && rc >= 0; i++) {
            if (unpack(&p, end, &d, &n) < 0)
                return PM_ECORRUPT;
            rc = run_item(j, task->first + i, d, (size_t)n, out);
        }
    }
    if (rc < 0)
        return rc;
    task_trailer tt = {pm__now_ns() - t0};
    return pm_write(out, &tt, sizeof tt);
}

/* --- the parent side: feeding ------------------------------------------- */

/* Records for the next fresh task. */
static uint64_t next_chunk(pm_job *j)
{
    if (j->opt.chunk)
        return j->opt.chunk < UINT32_MAX ? j->opt.chunk : UINT32_MAX;
    uint64_t c = 1;
    if (j->item_ns > 0) {
        double want = TASK_TARGET_NS / j->item_ns;
        c = want < 1 ? 1 : want > CHUNK_MAX ? CHUNK_MAX : (uint64_t)want;
        /* Grow step by step: the first timings come from tiny tasks. */
        uint64_t step = j->chunk_max * 2 > 1 ? j->chunk_max * 2 : 2;
        if (c > step)
            c = step;
    }
    if (j->total != PM_TOTAL_UNKNOWN && j->total > j->next_index) {
        /* Near the end, smaller chunks keep every worker busy. */
        uint64_t fair = (j->total - j->next_index) / (2 * (uint64_t)j->nslots);
        if (c > fair)
            c = fair ? fair : 1;
    }
    return c;
}

static int pack_room(pm_job *j, size_t need)
{
    return pm__grow(&j->pack, &j->pack_cap, need);
}

/* Reads up to want records from the feed function into one task. */
static int feed_task(pm_job *j, uint64_t want, pm_task *task,
                     const void **data, size_t *len)
{
    size_t used = 0, last_len = 0;
    uint32_t n = 0;
    while (n < want && used < j->max_task_bytes) {
        const void *d = NULL;
        size_t l = 0;
        int rc = j->feed(j->feed_ctx, &d, &l);
        if (rc < 0) {
            /* The input ends here; the records it gave are still mapped. */
            j->feed_err = rc;
            rc = 0;
        }
        if (rc == 0) {
            j->feed_done = 1;
            if (j->total == PM_TOTAL_UNKNOWN || j->total < j->next_index + n)
                j->total = j->next_index + n;
            break;
        }
        if (l && !d)
            return -EINVAL;
        if (want == 1) {
            /* One record: handed over as it is, no copy here. */
            *data = d;
            *len = l;
            n = 1;
            used = l;
            break;
        }
        uint64_t l64 = l;
        size_t step = sizeof l64 + (size_t)ROUND8(l64);
        int e = pack_room(j, used + step);
        if (e < 0)
            return e;
        memcpy(j->pack + used, &l64, sizeof l64);
        if (l)
            memcpy(j->pack + used + sizeof l64, d, l);
        memset(j->pack + used + sizeof l64 + l, 0, (size_t)(ROUND8(l64) - l64));
        used += step;
        last_len = l;
        n++;
    }
    if (n == 0)
        return 0;
    if (want > 1) {
        if (n == 1) {
            *data = j->pack + sizeof(uint64_t);
            *len = last_len;
        } else {
            *data = j->pack;
            *len = used;
        }
    }
    task->first = j->next_index;
    task->count = n;
    j->next_index += n;
    return 1;
}

/* The pm_produce_fn of every job. */
static int job_produce(void *ctx, pm_task *task, const void **data,
                       size_t *len)
{
    pm_job *j = ctx;
    free(j->redo_sent);
    j->redo_sent = NULL;
    *data = NULL;
    *len = 0;
    if (j->redo_n) {
        redo *r = &j->redo[j->redo_head];
        j->redo_head = (j->redo_head + 1) % j->redo_cap;
        j->redo_n--;
        task->first = r->index;
        task->count = 1;
        *data = r->data;
        *len = r->len;
        j->redo_sent = r->data;
        return 1;
    }
    uint64_t want = next_chunk(j);
    if (j->array) {
        if (j->next_index >= j->nrecs)
            return 0;
        if (want > j->nrecs - j->next_index)
            want = j->nrecs - j->next_index;
        task->first = j->next_index;
        task->count = (uint32_t)want;
        j->next_index += want;
    } else {
        if (j->feed_done)
            return 0;
        int rc = feed_task(j, want, task, data, len);
        if (rc <= 0)
            return rc;
    }
    if (task->count > j->chunk_max)
        j->chunk_max = task->count;
    return 1;
}

static int redo_push(pm_job *j, uint64_t index, const void *data, size_t len)
{
    if (j->redo_n == j->redo_cap) {
        size_t cap = j->redo_cap ? j->redo_cap * 2 : 16;
        redo *q = malloc(cap * sizeof *q);
        if (!q)
            return -ENOMEM;
        for (size_t i = 0; i < j->redo_n; i++)
            q[i] = j->redo[(j->redo_head + i) % j->redo_cap];
        free(j->redo);
        j->redo = q;
        j->redo_cap = cap;
        j->redo_head = 0;
    }
    redo *r = &j->redo[(j->redo_head + j->redo_n) % j->redo_cap];
    r->index = index;
    r->data = NULL;
    r->len = len;
    if (len) {
        r->data = malloc(len);
        if (!r->data)
            return -ENOMEM;
        memcpy(r->data, data, len);
    }
    j->redo_n++;
    return 0;
}

/* A chunk of several items was lost with its worker: queue its items to
 * run again one by one. */
static int split_lost(pm_job *j, const pm_result *res)
{
    const unsigned char *p = res->data, *end = p + res->len;
    for (uint32_t i = 0; i < res->task.count; i++) {
        const unsigned char *d = NULL;
        uint64_t n = 0;
        if (!j->array && unpack(&p, end, &d, &n) < 0)
            return PM_ECORRUPT;
        int rc = redo_push(j, res->task.first + i, d, (size_t)n);
        if (rc < 0)
            return rc;
    }
    return pm_map_resume(j->map);
}

/* --- the parent side: delivery -------------------------------------------- */

/* Splits an OK result message into its items (walking the trailers back
 * from the end) and learns how long the task took. */
static int parse_result(pm_job *j, const pm_task *task, const unsigned char *msg,
                        size_t len)
{
    if (task->count > j->batch_cap) {
        parsed *b = realloc(j->batch, task->count * sizeof *b);
        if (!b)
            return -ENOMEM;
        j->batch = b;
        j->batch_cap = task->count;
    }
    task_trailer tt;
    if (len < sizeof tt)
        return PM_ECORRUPT;
    size_t pos = len - sizeof tt;
    memcpy(&tt, msg + pos, sizeof tt);
    for (uint32_t i = task->count; i-- > 0;) {
        item_trailer t;
        if (pos < sizeof t)
            return PM_ECORRUPT;
        pos -= sizeof t;
        memcpy(&t, msg + pos, sizeof t);
        if (t.magic != ITEM_MAGIC || t.len > pos || ROUND8(t.len) > pos)
            return PM_ECORRUPT;
        pos -= ROUND8(t.len);
        j->batch[i].data = msg + pos;
        j->batch[i].len = t.len;
        j->batch[i].code = t.code;
    }
    if (pos != 0)
        return PM_ECORRUPT;
    double per = (double)tt.elapsed_ns / task->count;
    j->item_ns = j->item_ns > 0 ? 0.7 * j->item_ns + 0.3 * per : per;
    return 0;
}

/* Makes the result the batch being handed out. */
static int start_batch(pm_job *j, const pm_task *task, int status, int sig,
                       int exit_code, const unsigned char *data, size_t len)
{
    j->batch_task = *task;
    j->batch_status = status;
    j->batch_signal = sig;
    j->batch_exit = exit_code;
    j->batch_pos = 0;
    j->batch_n = 0;
    if (status == PM_ITEM_OK) {
        int rc = parse_result(j, task, data, len);
        if (rc < 0)
            return rc;
    }
    j->batch_n = task->count;
    return 0;
}

/* Puts a result aside until the items before it are delivered (ordered,
 * after a crash), keeping the list sorted by first item. */
static int hold(pm_job *j, const pm_task *task, int status, int sig,
                int exit_code, const void *data, size_t len)
{
    if (j->held_n == j->held_cap) {
        size_t cap = j->held_cap ? j->held_cap * 2 : 8;
        held *h = realloc(j->held, cap * sizeof *h);
        if (!h)
            return -ENOMEM;
        j->held = h;
        j->held_cap = cap;
    }
    unsigned char *copy = NULL;
    if (status == PM_ITEM_OK) {
        copy = malloc(len ? len : 1);
        if (!copy)
            return -ENOMEM;
        memcpy(copy, data, len);
    }
    size_t k = j->held_n;
    while (k > 0 && j->held[k - 1].task.first > task->first) {
        j->held[k] = j->held[k - 1];
        k--;
    }
    j->held[k] = (held){*task, status, sig, exit_code, copy, len};
    j->held_n++;
    return 0;
}

static int job_fail(pm_job *j, int err)
{
    if (!j->error)
        j->error = err;
    return j->error;
}

/* Hands out item batch_pos of the batch. */
static void emit(pm_job *j, pm_item *item)
{
    uint32_t i = j->batch_pos++;
    item->index = j->batch_task.first + i;
    item->status = j->batch_status;
    item->signal = j->batch_signal;
    item->exit_code = j->batch_exit;
    item->code = 0;
    item->data = NULL;
    item->len = 0;
    if (j->batch_status == PM_ITEM_OK) {
        item->data = j->batch[i].data;
        item->len = j->batch[i].len;
        item->code = j->batch[i].code;
        if (item->code != 0)
            item->status = PM_ITEM_FAILED;
    }
    atomic_store_explicit(&j->done,
                          atomic_load_explicit(&j->done, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    if (j->opt.ordered)
        j->next_out = item->index + 1;
    if (j->batch_pos == j->batch_n && j->opt.progress)
        j->opt.progress(j->opt.progress_ctx,
                        atomic_load_explicit(&j->done, memory_order_relaxed),
                        j->total);
}

static int job_next(pm_job *j, pm_item *item)
{
    if (j->error)
        return j->error;
    if (!j->have_input)
        return PM_ESTATE; /* refused; the job can still be given its input */
    for (;;) {
        if (j->batch_pos < j->batch_n) {
            emit(j, item);
            return 1;
        }
        free(j->batch_owned);
        j->batch_owned = NULL;
        if (j->held_n && j->held[0].task.first == j->next_out) {
            held h = j->held[0];
            memmove(j->held, j->held + 1, --j->held_n * sizeof *j->held);
            j->batch_owned = h.data;
            j->batch_map = 0;
            int rc = start_batch(j, &h.task, h.status, h.signal, h.exit_code,
                                 h.data, h.len);
            if (rc < 0)
                return job_fail(j, rc);
            continue;
        }
        if (j->array && j->nrecs == 0)
            return 0;
        pm_result res;
        int rc = pm_map_next(j->map, &res);
        if (rc < 0)
            return job_fail(j, rc);
        if (rc == 0) {
            if (j->held_n || j->redo_n)
                return job_fail(j, PM_ECORRUPT);
            return j->feed_err ? job_fail(j, j->feed_err) : 0;
        }
        int status = res.status == PM_RESULT_OK         ? PM_ITEM_OK
                     : res.status == PM_RESULT_TIMEDOUT ? PM_ITEM_TIMEDOUT
                     : res.status == PM_RESULT_MEMORY   ? PM_ITEM_MEMORY
                                                        : PM_ITEM_CRASHED;
        if (status == PM_ITEM_CRASHED && res.task.count > 1) {
            rc = split_lost(j, &res);
            if (rc < 0)
                return job_fail(j, rc);
            continue;
        }
        if (j->opt.ordered && res.task.first != j->next_out) {
            rc = hold(j, &res.task, status, res.signal, res.exit_code,
                      res.data, res.len);
        } else {
            j->batch_map = 1;
            rc = start_batch(j, &res.task, status, res.signal, res.exit_code,
                             res.data, res.len);
            if (rc == PM_ECORRUPT)
                /* Its item trailers do not add up: the worker that wrote
                 * it is named (pm_job_death) like one that broke its
                 * rings. */
                rc = pm__map_corrupt_result(j->map, &res.task);
        }
        if (rc < 0)
            return job_fail(j, rc);
    }
}

int pm_job_next(pm_job *j, pm_item *item)
{
    int rc = enter(j);
    if (rc < 0)
        return rc;
    rc = job_next(j, item);
    leave(j);
    return rc;
}

int pm_job_run(pm_job *j, pm_item_cb on_item, void *ctx)
{
    int rc = enter(j);
    if (rc < 0)
        return rc;
    pm_item it;
    while ((rc = job_next(j, &it)) > 0) {
        int r = on_item(ctx, &it);
        if (r != 0) {
            rc = r;
            break;
        }
    }
    leave(j);
    return rc;
}

void *pm_job_take_result(pm_job *j)
{
    if (enter(j) < 0)
        return NULL;
    void *p = NULL;
    /* Only the last item of its batch: the items before it were handed out
     * already, none after it points into the block. */
    if (j->batch_pos > 0 && j->batch_pos == j->batch_n &&
        j->batch_status == PM_ITEM_OK) {
        if (j->batch_owned) {
            p = j->batch_owned;
            j->batch_owned = NULL;
        } else if (j->batch_map) {
            p = pm_map_take_result(j->map);
        }
        j->batch_map = 0;
    }
    leave(j);
    return p;
}

const pm_death *pm_job_death(const pm_job *j)
{
    return j->error == PM_EWORKERDIED || j->error == PM_ECORRUPT
               ? pm_map_death(j->map)
               : NULL;
}

const char *pm_item_status_name(int status)
{
    switch (status) {
    case PM_ITEM_OK:
        return "ok";
    case PM_ITEM_FAILED:
        return "failed";
    case PM_ITEM_CRASHED:
        return "crashed";
    case PM_ITEM_TIMEDOUT:
        return "timed out";
    case PM_ITEM_MEMORY:
        return "over memory";
    }
    return "unknown";
}

/* For the tests: the job's map. */
pm_map *pm__job_map(pm_job *j)
{
    return j->map;
}

uint64_t pm_job_done(const pm_job *j)
{
    return atomic_load_explicit(&j->done, memory_order_relaxed);
}

const char *pm_job_why(const pm_job *j)
{
    return pm_map_why(j ? j->map : NULL);
}

/* --- life cycle ----------------------------------------------------------- */

int pm_job_create(pm_job **out, const pm_job_options *opt, pm_item_fn fn,
                  void *fn_ctx)
{
    *out = NULL;
    if (!opt || !fn)
        return -EINVAL;
    /* opt->size: what pm_job_options_init() was given, the caller's
     * sizeof.  A smaller struct (an older pm.h) lacks the newer fields,
     * which keep their defaults; a larger one (a newer pm.h) may only have
     * zeros in what this library does not know. */
    if (opt->size < OPTIONS_SIZE_V1)
        return -EINVAL; /* not set up by pm_job_options_init() */
    pm_job_options o;
    pm_job_options_init_size(&o, sizeof o);
    if (opt->size > sizeof o) {
        const unsigned char *tail = (const unsigned char *)opt + sizeof o;
        for (size_t i = 0; i < opt->size - sizeof o; i++)
            if (tail[i])
                return -E2BIG; /* an option this library does not have */
    }
    memcpy(&o, opt, opt->size < sizeof o ? opt->size : sizeof o);
    o.size = sizeof o;
    opt = &o;
    if (opt->nproc < 0 || opt->nthreads < 1 || opt->timeout_ms < 0 ||
        opt->retries < 0 || opt->window < 0)
        return -EINVAL;
    pm_job *j = calloc(1, sizeof *j);
    if (!j)
        return -ENOMEM;
    j->opt = *opt;
    j->fn = fn;
    j->fn_ctx = fn_ctx;
    j->total = opt->total ? opt->total : PM_TOTAL_UNKNOWN;
    if (j->opt.timeout_ms || j->opt.max_rss_bytes)
        j->opt.chunk = 1; /* the engine times (and measures) tasks: one
                             item each */

    pm_options mo;
    pm_options_init(&mo);
    mo.nproc = opt->nproc;
    if (!mo.nproc)
        mo.nproc = pm_cpu_count();
    mo.nthreads = opt->nthreads;
    mo.ordered = opt->ordered;
    mo.window = opt->window;
    mo.ring_bytes = opt->ring_bytes;
    mo.retries = opt->retries;
    mo.timeout_ms = opt->timeout_ms;
    mo.deliver_lost = 1;
    mo.max_items_per_worker = opt->max_items_per_worker;
    mo.max_rss_bytes = opt->max_rss_bytes;
    j->nslots = mo.nproc * mo.nthreads;
    int rc = pm_map_create(&j->map, &mo, job_produce, j, job_work, j, NULL);
    if (rc < 0) {
        free(j);
        return rc;
    }
    /* A chunk's bytes stay well inside one ring, so tasks of small records
     * are not split into fragments. */
    j->max_task_bytes = (mo.ring_bytes ? mo.ring_bytes : PM_DEFAULT_RING) / 8;
    *out = j;
    return 0;
}

int pm_job_feed_array(pm_job *j, const pm_record *recs, size_t n)
{
    int rc = enter(j);
    if (rc < 0)
        return rc;
    if (j->have_input || j->error)
        rc = PM_ESTATE;
    else if (n && !recs)
        rc = -EINVAL;
    else {
        j->have_input = 1;
        j->array = 1;
        j->recs = recs;
        j->nrecs = n;
        j->total = n;
    }
    leave(j);
    return rc;
}

int pm_job_feed_fn(pm_job *j, pm_feed_fn feed, void *ctx)
{
    int rc = enter(j);
    if (rc < 0)
        return rc;
    if (j->have_input || j->error)
        rc = PM_ESTATE;
    else if (!feed)
        rc = -EINVAL;
    else {
        j->have_input = 1;
        j->feed = feed;
        j->feed_ctx = ctx;
    }
    leave(j);
    return rc;
}

int pm_job_destroy(pm_job *j)
{
    if (!j)
        return 0;
    if (enter(j) < 0)
        return PM_EBUSY; /* a call is under way: nothing is freed */
    int rc = pm_map_destroy(j->map);
    for (size_t i = 0; i < j->redo_n; i++)
        free(j->redo[(j->redo_head + i) % j->redo_cap].data);
    for (size_t i = 0; i < j->held_n; i++)
        free(j->held[i].data);
    free(j->redo);
    free(j->redo_sent);
    free(j->held);
    free(j->batch);
    free(j->batch_owned);
    free(j->pack);
    free(j);
    return rc;
}
