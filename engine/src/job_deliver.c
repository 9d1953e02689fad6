/*
 * job_deliver.c -- a job's delivery, the parent's side: splits each result
 * into its items by their trailers, hands them out one by one (in order:
 * results that come before their turn, after a crash, are held aside).
 */
/* GNU and POSIX interfaces under any -std (builds may -D it too). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "job.h"

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

/* Makes err the job's sticky error, unless it has one; returns it. */
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

/* Hands out the next item (job.h). */
int pm__job_next(pm_job *j, pm_item *item)
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
            rc = pm__job_split_lost(j, &res);
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
