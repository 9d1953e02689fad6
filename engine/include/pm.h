/*
 * pm.h -- the parmapper engine: a parallel map over forked worker processes.
 *
 * This is the one public header of the engine.  The engine knows nothing of
 * Python: it moves opaque byte records ("tasks" from the parent to the
 * workers, "results" back) through single-producer single-consumer rings in
 * shared memory, forks and reaps the workers, schedules tasks, delivers
 * results in input order or as they complete, and tells the caller exactly
 * which tasks were lost when a worker dies.
 *
 * Names: everything public is pm_ / PM_; internal non-static symbols are
 * pm__; everything else is file-local.
 *
 * Errors: functions return 0 (or a count) on success and a negative code on
 * failure: either -errno of the failing system call or one of the PM_E*
 * codes below.  pm_strerror() turns any of them into a message.
 */
#ifndef PM_H
#define PM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The engine's own error codes, beyond the range of errno values.  One table
 * generates the enum, the names and the messages (see error.c). */
#define PM_ERRNO_MAP(X)                                                        \
    X(CALLBACK, -4001, "a caller-supplied callback failed")                    \
    X(WORKERDIED, -4002, "a worker process died with tasks in flight")         \
    X(CORRUPT, -4003, "a worker wrote a malformed record into its ring")       \
    X(STATE, -4004, "the map is not in a state that allows this call")        \
    X(NOTOWNER, -4005, "the map belongs to another process")

enum {
#define PM__ENUM(name, code, msg) PM_E##name = (code),
    PM_ERRNO_MAP(PM__ENUM)
#undef PM__ENUM
};

/* Returns a static message for any code returned by this library (negative
 * errno values included).  Never NULL. */
const char *pm_strerror(int err);

/* Returns the symbolic name ("PM_EWORKERDIED", "ENOMEM", ...) of a code, or
 * "UNKNOWN".  Never NULL. */
const char *pm_errname(int err);

/* A task covers the items [first, first + count) of the caller's input. The
 * engine only carries these numbers; they come back with the result and in
 * death reports so the caller can name the items concerned. */
typedef struct pm_task {
    uint64_t first;
    uint32_t count;
} pm_task;

/* Status of a delivered result. */
enum {
    PM_RESULT_OK = 0,       /* data/len hold what the work function wrote */
    PM_RESULT_TIMEDOUT = 1, /* the task ran longer than opt.timeout_ms: its
                               worker was killed (and replaced); no data */
};

/* One delivered result. */
typedef struct pm_result {
    pm_task task;     /* the task this result answers */
    int status;       /* PM_RESULT_* */
    const void *data; /* the bytes the worker wrote */
    size_t len;
} pm_result;

/* What the engine knows about a worker that died. */
typedef struct pm_death {
    pid_t pid;
    int worker;        /* 0 .. nproc-1 */
    int exit_code;     /* exit status, or -1 when killed by a signal */
    int signal;        /* the signal that killed it, or 0 */
    size_t nlost;      /* tasks that were in flight on it, oldest first */
    const pm_task *lost;
} pm_death;

/* Writer handed to the work function: results of any size stream through it
 * into the result ring. */
typedef struct pm_writer pm_writer;

/*
 * The parent's source of tasks.  Called only in the parent, only from inside
 * pm_map_next(), when there is room for one more task.  Returns 1 and sets
 * *task, *data and *len to describe the task; 0 when the input is exhausted
 * (it is not called again); a negative value to abort the map, which
 * pm_map_next() then returns.  *data must stay valid until the next call of
 * the function or until pm_map_destroy().
 */
typedef int (*pm_produce_fn)(void *ctx, pm_task *task, const void **data,
                             size_t *len);

/*
 * The work, run in a worker process (in one of its threads) for each task:
 * the input bytes are valid for the duration of the call; the result is
 * written with pm_write() (zero or more calls; an empty result is fine).
 * Returns 0, or a negative value when the worker process must stop: it then
 * runs hooks.worker_exit and exits with status 70, and the parent reports
 * the task as lost.
 */
typedef int (*pm_work_fn)(void *ctx, const pm_task *task, const void *in,
                          size_t len, pm_writer *out);

/* Appends bytes to the result being written.  Blocks while the result ring
 * is full.  Returns 0, or a negative code when the parent is gone (the worker
 * should then return the code from its work function). */
int pm_write(pm_writer *w, const void *data, size_t len);

/* Optional hooks; any may be NULL.  All get hooks.ctx. */
typedef struct pm_hooks {
    void *ctx;
    /* Parent, around each fork(): e.g. PyOS_BeforeFork/AfterFork_Parent. */
    void (*before_fork)(void *ctx);
    void (*after_fork_parent)(void *ctx);
    /* Child, right after fork(), before anything else of the engine runs. */
    void (*after_fork_child)(void *ctx, int worker);
    /* Child, after the last task and before _exit(): flush what it wrote. */
    void (*worker_exit)(void *ctx);
    /* Child, in the calling worker thread, when it is about to wait for a
     * task or for room in the result ring (never while tasks flow), and when
     * it ends: e.g. release the GIL (take it back lazily in the work
     * function). */
    void (*worker_idle)(void *ctx);
    /* Parent, around every blocking wait (e.g. release and take the GIL). */
    void (*wait_begin)(void *ctx);
    void (*wait_end)(void *ctx);
    /* Parent, after a wait was interrupted or timed out (~every 50 ms while
     * blocked): a nonzero return aborts pm_map_next() with that value. */
    int (*check)(void *ctx);
} pm_hooks;

typedef struct pm_options {
    int nproc;          /* worker processes, >= 1 */
    int nthreads;       /* threads per worker process, >= 1 */
    int ordered;        /* deliver results in task order (else as completed) */
    int window;         /* tasks in flight per thread (0: default) */
    size_t ring_bytes;  /* bytes per ring, a power of two (0: default) */
    int retries;        /* times a task lost to a dying worker is run again
                           on a fresh worker before PM_EWORKERDIED (0: never) */
    int64_t timeout_ms; /* a task running longer is abandoned: its worker is
                           killed and replaced, the task is delivered with
                           PM_RESULT_TIMEDOUT (0: no limit) */
} pm_options;

/* Fills *o with defaults: 1 process, 1 thread, ordered, default window and
 * ring size. */
void pm_options_init(pm_options *o);

typedef struct pm_map pm_map;

/*
 * Creates a map: checks the options, allocates and maps the shared memory.
 * Starts no process.  On success *out owns everything and must be released
 * with pm_map_destroy().  Returns 0, -EINVAL for bad options, -ENOMEM or the
 * -errno of mmap().
 */
int pm_map_create(pm_map **out, const pm_options *opt, pm_produce_fn produce,
                  void *produce_ctx, pm_work_fn work, void *work_ctx,
                  const pm_hooks *hooks);

/*
 * Forks the workers.  Called by the first pm_map_next() if not before.
 * Returns 0, or the -errno of fork() (the workers already started are then
 * stopped by pm_map_destroy()).
 */
int pm_map_start(pm_map *m);

/*
 * Runs the map until the next result is available and returns 1 with *res
 * filled in; res->data stays valid until the next call on the map.
 * Tasks that were in flight on a worker that died are run again on a fresh
 * worker when opt.retries allows (other tasks of that worker that were not
 * running are re-sent without counting an attempt; results it had completed
 * are kept), and tasks past opt.timeout_ms come back as PM_RESULT_TIMEDOUT.  Returns
 * 0 when every task has been delivered, or a negative code: the produce
 * function's or the check hook's value, PM_EWORKERDIED (see pm_map_death),
 * PM_ECORRUPT, or a -errno.  After an error every later call returns the
 * same error; the caller should destroy the map.
 */
int pm_map_next(pm_map *m, pm_result *res);

/* After PM_EWORKERDIED: what died and which tasks were lost; NULL otherwise.
 * Valid until pm_map_destroy(). */
const pm_death *pm_map_death(const pm_map *m);

/* Process ids of the workers (0 for a slot not started or already reaped),
 * nproc of them.  For diagnostics and tests. */
const pid_t *pm_map_pids(const pm_map *m, int *n);

/*
 * Stops the map and frees everything: asks idle workers to exit, kills any
 * that have not exited after a short grace (SIGKILL), reaps all of them and
 * unmaps the shared memory.  Safe at any point, including after an error and
 * before pm_map_start().  In a process other than the one that created the
 * map (a forked child) it frees only that process's memory and touches no
 * process.  Returns 0, or the first unexpected error met while tearing down.
 */
int pm_map_destroy(pm_map *m);

#ifdef __cplusplus
}
#endif
#endif /* PM_H */
