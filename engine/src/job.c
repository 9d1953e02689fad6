/*
 * job.c -- jobs: a parallel map of a C function over records, item by item
 * (pm.h's pm_job_*): options, creation, input, the calls that hand out
 * items, teardown.  The formats and the crash handling: job.h.
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

#include "job.h"

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

int pm_job_next(pm_job *j, pm_item *item)
{
    int rc = enter(j);
    if (rc < 0)
        return rc;
    rc = pm__job_next(j, item);
    leave(j);
    return rc;
}

int pm_job_run(pm_job *j, pm_item_cb on_item, void *ctx)
{
    int rc = enter(j);
    if (rc < 0)
        return rc;
    pm_item it;
    while ((rc = pm__job_next(j, &it)) > 0) {
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
    int rc = pm_map_create(&j->map, &mo, pm__job_produce, j, pm__job_work, j, NULL);
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

void pm_job_wake(pm_job *j)
{
    pm_map_wake(j->map); /* made with the job, never changed */
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
