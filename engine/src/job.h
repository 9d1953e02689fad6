/*
 * job.h -- jobs, private: the job object and the formats of its tasks and
 * results, shared by job.c and the files of its parts.
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
#ifndef PM_JOB_H
#define PM_JOB_H

#include <string.h>

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

/* Reads the next record of a packed task from *p (before end): returns 0
 * with *data and *len set and *p moved past it, or PM_ECORRUPT. */
static inline int pm__job_unpack(const unsigned char **p, const unsigned char *end,
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

/* job_work.c */

/* The pm_work_fn of every job: runs the task's items one after the other,
 * each result followed by its item trailer, then the task trailer. */
int pm__job_work(void *ctx, const pm_task *task, const void *in, size_t len,
                 pm_writer *out);

/* job_feed.c */

/* The pm_produce_fn of every job: an item to run again first, else the
 * next chunk of the array or of the feed function. */
int pm__job_produce(void *ctx, pm_task *task, const void **data, size_t *len);

/* A chunk of several items was lost with its worker (res, delivered
 * PM_RESULT_DIED with its input): queues its items to run again one by
 * one and re-opens the map's input.  Returns 0 or a negative code. */
int pm__job_split_lost(pm_job *j, const pm_result *res);

/* job_deliver.c */

/* Hands out the next item: 1 with *item filled, 0 at the end, or a
 * negative code (the job's sticky error). */
int pm__job_next(pm_job *j, pm_item *item);

#endif
