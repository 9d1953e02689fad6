/*
 * job_feed.c -- a job's feeding, the parent's side: chunks of the array or
 * of the feed function sized to the measured work (or opt.chunk), and the
 * items of a lost chunk queued to run again one by one.
 */
/* GNU and POSIX interfaces under any -std (builds may -D it too). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"

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

/* Makes room for need bytes in the chunk being packed. */
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
        if (rc == PM_NO_TASK_YET) {
            /* Nothing yet (the input comes from another thread): what was
             * read goes now; asked again after pm_job_wake(). */
            if (n == 0)
                return PM_NO_TASK_YET;
            break;
        }
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
int pm__job_produce(void *ctx, pm_task *task, const void **data,
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
        if (rc != 1)
            return rc; /* 0: the end, PM_NO_TASK_YET, or an error */
    }
    if (task->count > j->chunk_max)
        j->chunk_max = task->count;
    return 1;
}

/* Queues item index (fed input: a copy of its bytes) to run again alone. */
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
int pm__job_split_lost(pm_job *j, const pm_result *res)
{
    const unsigned char *p = res->data, *end = p + res->len;
    for (uint32_t i = 0; i < res->task.count; i++) {
        const unsigned char *d = NULL;
        uint64_t n = 0;
        if (!j->array && pm__job_unpack(&p, end, &d, &n) < 0)
            return PM_ECORRUPT;
        int rc = redo_push(j, res->task.first + i, d, (size_t)n);
        if (rc < 0)
            return rc;
    }
    return pm_map_resume(j->map);
}
