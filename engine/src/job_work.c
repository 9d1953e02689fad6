/*
 * job_work.c -- a job's worker side: runs each item of a task through the
 * C function and writes the item trailers and the task trailer (job.h).
 */
/* GNU and POSIX interfaces under any -std (builds may -D it too). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdint.h>

#include "job.h"

static const unsigned char zeros[8];

/* Runs one item: its result, zeros to a multiple of 8, its trailer. */
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

/* The pm_work_fn of every job (job.h). */
int pm__job_work(void *ctx, const pm_task *task, const void *in, size_t len,
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
            if (pm__job_unpack(&p, end, &d, &n) < 0)
                return PM_ECORRUPT;
            rc = run_item(j, task->first + i, d, (size_t)n, out);
        }
    }
    if (rc < 0)
        return rc;
    task_trailer tt = {pm__now_ns() - t0};
    return pm_write(out, &tt, sizeof tt);
}
