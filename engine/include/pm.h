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
 * codes below.  pm_strerror() turns any of them into a message.  A value a
 * callback of yours returns (a feed function, pm_job_run's on_item, the
 * check hook, a produce function) comes back unchanged: -1 .. -4095 read as
 * -errno (pm_strerror(-1) is "Operation not permitted"), so give your
 * callbacks codes of their own below PM_EUSER (PM_EUSER - n), or return a
 * real -errno.
 *
 * Installed as <prefix>/include/parmapper/pm.h (pkg-config's Cflags add
 * -I<prefix>/include/parmapper, so programs write #include <pm.h>), where it
 * cannot collide with another library's pm.h.
 *
 * Threads: see "Threads and callbacks" above pm_job_options.  Processes:
 * the engine forks its workers and reaps them itself; see docs/c-api.md
 * ("The program and its children") for what that asks of the program.
 */
#ifndef PM_H
#define PM_H

/* The version of this header.  pm_version() gives the library's, which can
 * differ when the program runs against another build of the shared
 * library (same soname: same ABI). */
#define PM_VERSION_MAJOR 0
#define PM_VERSION_MINOR 1
#define PM_VERSION_PATCH 0
#define PM_VERSION_STRING "0.1.0"
#define PM_VERSION                                                             \
    (PM_VERSION_MAJOR * 10000 + PM_VERSION_MINOR * 100 + PM_VERSION_PATCH)

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Marks the library's public functions; everything else stays hidden in the
 * shared library (built with -fvisibility=hidden). */
#if defined(__GNUC__)
#define PM_EXTERN __attribute__((visibility("default")))
#else
#define PM_EXTERN
#endif

/* The engine's own error codes, beyond the range of errno values.  One table
 * generates the enum, the names and the messages (see error.c). */
#define PM_ERRNO_MAP(X)                                                        \
    X(CALLBACK, -4001, "a caller-supplied callback failed")                    \
    X(WORKERDIED, -4002, "a worker process died with tasks in flight")         \
    X(CORRUPT, -4003, "a worker wrote a malformed record into its ring")       \
    X(STATE, -4004, "the map is not in a state that allows this call")        \
    X(NOTOWNER, -4005, "the map belongs to another process")                  \
    X(BUSY, -4006, "another call on this job is under way (a second thread, "  \
                   "or a callback calling back into the job)")

enum {
#define PM__ENUM(name, code, msg) PM_E##name = (code),
    PM_ERRNO_MAP(PM__ENUM)
#undef PM__ENUM
    /* Codes at or below PM_EUSER are never the engine's: they are free for
     * the caller's callbacks (pm_strerror says "error returned by a
     * callback", pm_errname "PM_EUSER"). */
    PM_EUSER = -5000,
};

/* The library's version, PM_VERSION of the pm.h it was built with. */
PM_EXTERN int pm_version(void);
/* The same as a string ("0.1.0"). */
PM_EXTERN const char *pm_version_string(void);

/* Returns a static message for any code returned by this library (negative
 * errno values included).  Never NULL. */
PM_EXTERN const char *pm_strerror(int err);

/* Returns the symbolic name ("PM_EWORKERDIED", "ENOMEM", "ENOMSG", ...) of
 * a code: the engine's, any -errno value the C library names, "PM_EUSER"
 * for a callback's code at or below PM_EUSER, else "UNKNOWN".  Never
 * NULL. */
PM_EXTERN const char *pm_errname(int err);

/* A task covers the items [first, first + count) of the caller's input. The
 * engine only carries these numbers; they come back with the result and in
 * death reports so the caller can name the items concerned. */
typedef struct pm_task {
    uint64_t first;
    uint32_t count;
} pm_task;

/* The most items one task can cover (pm_task.count is 32 bits): a producer
 * must split a larger chunk into several tasks. */
#define PM_TASK_MAX_COUNT UINT32_MAX

/* exit_code of a worker whose end the engine could not learn: the caller
 * reaped it (a waitpid(-1) of its own) or let the kernel reap it (SIGCHLD
 * set to SIG_IGN), so its wait status was gone.  signal is 0 then: "status
 * unknown (reaped elsewhere)", not an exit or a signal. */
#define PM_EXIT_UNKNOWN (-2)

/* Exit status of a worker that could not start its nthreads threads
 * (pthread_create failed: the limit on processes and threads, RLIMIT_NPROC;
 * the stack size, RLIMIT_STACK; or memory).  It says so on its stderr. */
#define PM_EXIT_NO_THREADS 71

/* Status of a delivered result. */
enum {
    PM_RESULT_OK = 0,       /* data/len hold what the work function wrote */
    PM_RESULT_TIMEDOUT = 1, /* the task ran longer than opt.timeout_ms: its
                               worker was killed (and replaced); data/len
                               hold the task's input when the engine kept it
                               (opt.retries or opt.deliver_lost set) */
    PM_RESULT_DIED = 2,     /* only with opt.deliver_lost: the worker died
                               while running the task (after its retries);
                               data/len hold the task's input, signal and
                               exit_code say how the worker ended */
    PM_RESULT_MEMORY = 3,   /* the worker's resident memory passed
                               opt.max_rss_bytes while it ran the task
                               (after its retries): it was killed (SIGKILL)
                               and replaced; data/len hold the task's input;
                               pm_map_result_rss() says what was measured */
};

/* One delivered result. */
typedef struct pm_result {
    pm_task task;     /* the task this result answers */
    int status;       /* PM_RESULT_* */
    const void *data; /* the bytes the worker wrote */
    size_t len;
    int signal;       /* PM_RESULT_DIED: the signal that killed the worker,
                         or 0 when it exited (or its status is unknown) */
    int exit_code;    /* PM_RESULT_DIED: its exit status, -1 when killed,
                         PM_EXIT_UNKNOWN when reaped elsewhere */
} pm_result;

/* What the engine knows about a worker that died. */
typedef struct pm_death {
    pid_t pid;
    int worker;        /* 0 .. nproc-1 */
    int exit_code;     /* exit status, -1 when killed by a signal, or
                          PM_EXIT_UNKNOWN when reaped elsewhere */
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
 * *task, *data and *len to describe the task; PM_PRODUCED_SLOW (2) for the
 * same when making it took long (a slow input): the engine then delivers a
 * result that is ready before it asks for the next task, so results do not
 * wait behind a slow input; 0 when the input is exhausted (it is not called
 * again); a negative value to abort the map, which pm_map_next() then
 * returns.  *data must stay valid until the next call of the function or
 * until pm_map_destroy().
 */
#define PM_PRODUCED_SLOW 2

/*
 * A gathering source (pm_gather_fn) may also add PM_PRODUCED_VOLATILE to its
 * return value (PM_PRODUCED_VOLATILE | 1, or | PM_PRODUCED_SLOW) when the
 * task's owned pieces point into memory that asking the source for the next
 * task may change (a buffer the input reuses): the engine then writes all of
 * them into the ring before it calls the function again, so the worker gets
 * the bytes as they were when the task was made.
 */
#define PM_PRODUCED_VOLATILE 4

/*
 * A source that reads its input somewhere else (another thread) returns
 * PM_NO_TASK_YET (8, alone) when it has no task ready and its input is not
 * finished either: the engine goes on delivering results and sleeping as
 * usual, and calls the source again only after pm_map_wake().  Results
 * thus never wait for an input that blocks.
 */
#define PM_NO_TASK_YET 8
typedef int (*pm_produce_fn)(void *ctx, pm_task *task, const void **data,
                             size_t *len);

/* One piece of a task's bytes, for pm_gather_fn. */
typedef struct pm_iov {
    const void *base;
    size_t len;
} pm_iov;

/*
 * A gathering source of tasks, for tasks made of large pieces (buffers of
 * the caller's objects): like pm_produce_fn, but the task's bytes are the
 * concatenation of (*iov)[0 .. *niov - 1], which the engine writes into the
 * task ring without an intermediate copy.  When *owner is left NULL the
 * pieces need only stay valid until the next call (the engine copies what
 * does not fit in the ring at once, as for pm_produce_fn).  When the
 * function sets *owner, the array and the pieces stay valid until the
 * engine passes that owner to the release function: once the last byte is
 * in the ring, or when the worker dies or the map is destroyed first.
 */
typedef int (*pm_gather_fn)(void *ctx, pm_task *task, const pm_iov **iov,
                            int *niov, void **owner);
typedef void (*pm_release_fn)(void *ctx, void *owner);

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
PM_EXTERN int pm_write(pm_writer *w, const void *data, size_t len);

/* In a work function: nonzero when this process is not the worker but a
 * copy of it that fork() made inside the work (the function forked and the
 * child went on).  Such a copy shares the worker's rings and must not touch
 * them: pm_write() and the worker's loop end it (worker_exit hook, exit
 * status 0) before they do; a work function that runs several items calls
 * this after each to stop the copy from running the next ones.  One load. */
PM_EXTERN int pm_forked_copy(void);

/* In a work function: takes over the memory the task's input bytes were
 * assembled in (a task larger than what the ring holds at once, or one
 * that wrapped around its end), so that objects built on the input can
 * outlive the call without a copy.  Returns the block `in` points into,
 * which the caller now owns and releases with free(); NULL when the input
 * is read in place in shared memory (valid only during the call: copy what
 * must outlive it). */
PM_EXTERN void *pm_writer_take_input(pm_writer *w);

/* In a work function: takes the owner hooks.route set for the task's input
 * (NULL when nothing was routed), which the caller now releases.  Not
 * taken, it goes to hooks.route_release when the work function returns. */
PM_EXTERN void *pm_writer_take_routed(pm_writer *w);

/* In a work function: the item being worked on -- for a job, the index of
 * the record (its position in the input); for a map, the task's first
 * item. */
PM_EXTERN uint64_t pm_writer_item(const pm_writer *w);

/* A range of a message that the engine writes into memory of the caller's
 * instead of assembling it (see hooks.route). */
typedef struct pm_span {
    size_t off; /* offset in the message's bytes (the `in` of the work
                   function, pm_result.data) */
    size_t len; /* > 0 */
    void *dst;  /* len bytes of the caller's */
} pm_span;

#define PM_ROUTE_HEAD 512 /* bytes of a message the route hook sees */
#define PM_ROUTE_MAX 16   /* ranges one message may route */

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
    /* Where the large parts of a large message go.  Called in the process
     * that assembles a message too large to be read in place in its ring
     * (the parent for a result; a worker, in the thread that will run it,
     * for a task) once its first PM_ROUTE_HEAD bytes are in, with those
     * bytes, when more are coming.  It may fill spans[0 .. k-1] (k <=
     * PM_ROUTE_MAX, by increasing offset, not overlapping), set *owner and
     * return k: each such range of the message is then written straight
     * into its dst, and left out of the message as delivered, which is
     * shorter by their total.  A message that ends before a range is filled
     * is corrupt (PM_ECORRUPT); 0 or a negative return routes nothing.  The
     * owner comes back with the message (pm_map_take_routed(),
     * pm_writer_take_routed()); one nobody takes, or of a message never
     * delivered (its worker died, the map was destroyed), goes to
     * route_release. */
    int (*route)(void *ctx, const void *head, size_t n, pm_span *spans,
                 void **owner);
    void (*route_release)(void *ctx, void *owner);
} pm_hooks;

/* Limits of pm_options (pm_map_create returns -EINVAL beyond them). */
#define PM_MAX_NPROC 4096                  /* nproc */
#define PM_MAX_NTHREADS 4096               /* nthreads */
#define PM_MAX_TIMEOUT_MS 1000000000000LL  /* timeout_ms: 10^9 s, so that
                                              deadlines in 64-bit ns never
                                              overflow */

typedef struct pm_options {
    int nproc;          /* worker processes, 1 .. PM_MAX_NPROC */
    int nthreads;       /* threads per worker process, 1 .. PM_MAX_NTHREADS */
    int ordered;        /* deliver results in task order (else as completed) */
    int window;         /* tasks in flight per thread (0: default) */
    size_t ring_bytes;  /* bytes per ring, a power of two (0: default) */
    int retries;        /* times a task lost to a dying worker is run again
                           on a fresh worker before PM_EWORKERDIED (0: never);
                           also for a worker killed for writing a malformed
                           record into its rings (before PM_ECORRUPT).  With
                           nthreads > 1, a death while several threads ran a
                           task charges none of them: each is run again
                           alone in its worker process, and only one that
                           dies then is charged */
    int64_t timeout_ms; /* a task running longer is abandoned: its worker is
                           killed and replaced, the task is delivered with
                           PM_RESULT_TIMEDOUT (0: no limit) */
    int deliver_lost;   /* a task whose worker died while running it, after
                           its retries, is delivered as PM_RESULT_DIED with
                           its input, and the map goes on with a fresh
                           worker, instead of failing with PM_EWORKERDIED.
                           A task of more than one item is delivered at its
                           first loss, not retried, so the caller can split
                           it and find the item that kills the worker. */
    uint64_t max_items_per_worker; /* a worker process is replaced by a
                           fresh one once it has been sent this many items
                           (the sum of its tasks' pm_task.count; the task
                           that reaches the count is its last): it gets no
                           new task, finishes those it has, writes their
                           results and exits, and a fresh process takes its
                           place.  No task is lost or run twice.  Tasks sent
                           again after a death are not counted (0: never) */
    uint64_t max_rss_bytes; /* a worker process whose resident memory grew
                           by more than this since its fork (statm resident
                           now minus at the fork, read by the parent on its
                           health schedule, about every 20 ms) is killed and
                           replaced; the tasks it was running are run again
                           (opt.retries) or delivered as PM_RESULT_MEMORY.
                           Keeps task copies, as retries do (0: no limit) */
} pm_options;

/* Fills *o with defaults: 1 process, 1 thread, ordered, default window and
 * ring size. */
PM_EXTERN void pm_options_init(pm_options *o);

/* 1 when a map with these options may fork a worker after pm_map_start(),
 * to replace one that died or broke its rings (retries, deliver_lost), ran
 * past timeout_ms, grew past max_rss_bytes or retired after
 * max_items_per_worker; 0 when its workers are all forked by
 * pm_map_start() -- unless the caller calls pm_map_resume(), which forks
 * again the workers that had finished.  A replacement inherits the
 * caller's memory as it is at its fork: whatever the workers read from
 * there (the items, when the work function indexes the caller's data)
 * must then be a copy that the caller cannot change during the map. */
PM_EXTERN int pm_options_respawn(const pm_options *o);

typedef struct pm_map pm_map;

/*
 * Creates a map: checks the options, allocates and maps the shared memory.
 * Starts no process.  On success *out owns everything and must be released
 * with pm_map_destroy().  Returns 0, -EINVAL for bad options, -ENOMEM or the
 * -errno of mmap().
 */
PM_EXTERN int pm_map_create(pm_map **out, const pm_options *opt, pm_produce_fn produce,
                  void *produce_ctx, pm_work_fn work, void *work_ctx,
                  const pm_hooks *hooks);

/*
 * pm_map_create() with a gathering source of tasks: the same contract, and
 * release(produce_ctx, owner) is called for every owner the gather
 * function set (release may be NULL when it never sets one).  Only in the
 * process that created the map.
 */
PM_EXTERN int pm_map_create_gather(pm_map **out, const pm_options *opt,
                                   pm_gather_fn gather, pm_release_fn release,
                                   void *produce_ctx, pm_work_fn work,
                                   void *work_ctx, const pm_hooks *hooks);

/*
 * Forks the workers.  Called by the first pm_map_next() if not before.
 * Returns 0, or the -errno of fork() (the workers already started are then
 * stopped by pm_map_destroy()).
 */
PM_EXTERN int pm_map_start(pm_map *m);

/*
 * Runs the map until the next result is available and returns 1 with *res
 * filled in; res->data stays valid until the next call on the map.
 * Tasks that were in flight on a worker that died are run again on a fresh
 * worker when opt.retries allows (other tasks of that worker that were not
 * running are re-sent without counting an attempt; results it had completed
 * are kept), and tasks past opt.timeout_ms come back as PM_RESULT_TIMEDOUT.  Returns
 * 0 when every task has been delivered, or a negative code: the produce
 * function's or the check hook's value, PM_EWORKERDIED (see pm_map_death),
 * PM_ECORRUPT (a worker broke its rings: it is killed, and named by
 * pm_map_death; with opt.retries left it is replaced instead, like a dead
 * worker, its oldest task charged with an attempt), or a -errno.  After an error every later call returns the
 * same error; the caller should destroy the map.
 */
PM_EXTERN int pm_map_next(pm_map *m, pm_result *res);

/*
 * After pm_map_next() returned a result (PM_RESULT_OK) whose bytes the
 * engine assembled in memory of its own -- a result larger than a ring
 * fragment, or one saved from a dead worker -- hands that memory over:
 * returns the block res->data points into, which the caller now owns and
 * releases with free().  Returns NULL when the result is read in place in
 * shared memory (then copy what must outlive the next call).  Lets a caller
 * keep a large result without copying it again.
 */
PM_EXTERN void *pm_map_take_result(pm_map *m);

/* After pm_map_next() returned a PM_RESULT_MEMORY result: the bytes of
 * resident memory the worker had grown by since its fork when it was
 * killed (0 for any other result). */
PM_EXTERN uint64_t pm_map_result_rss(const pm_map *m);

/* After pm_map_next() returned a result: takes the owner hooks.route set
 * for its message (NULL when nothing was routed), which the caller now
 * releases.  Not taken, it goes to hooks.route_release at the next call on
 * the map. */
PM_EXTERN void *pm_map_take_routed(pm_map *m);

/* After the source returned PM_NO_TASK_YET: tells the map that it has a
 * task ready, so that it is called again; wakes pm_map_next() if it
 * sleeps.  The one call of the engine that any thread of the parent may
 * make while another is in pm_map_next() (it is a few atomic operations and
 * at most one futex wake or eventfd write); not after pm_map_destroy(). */
PM_EXTERN void pm_map_wake(pm_map *m);

/* After the produce function returned 0: tells the map that it has tasks
 * again (for instance items of a lost task to run again), so that it is
 * called once more.  Workers that had already finished their work and
 * exited (the map tells each worker to finish once the input is exhausted)
 * are forked again as the new tasks need them.  Returns 0, or PM_ESTATE
 * when the map has failed. */
PM_EXTERN int pm_map_resume(pm_map *m);

/* After PM_EWORKERDIED: what died and which tasks were lost.  After a
 * PM_ECORRUPT that a worker caused (a malformed record or an impossible
 * counter in its rings): that worker, which the engine killed (its
 * signal/exit_code say how it ended), and the tasks that were in flight on
 * it.  NULL otherwise.  Valid until pm_map_destroy(). */
PM_EXTERN const pm_death *pm_map_death(const pm_map *m);

/*
 * After a call on m failed for want of a resource (fork() or mmap() of a
 * worker's shared memory): a sentence naming the call, the worker and the
 * limit most likely reached (RLIMIT_NPROC, vm.max_map_count, memory); ""
 * otherwise.  With m NULL: the same for the last pm_map_create() or
 * pm_map_create_gather() of the calling thread (which leaves no map to
 * ask).  Valid until the next call on the map (m NULL: the next create on
 * this thread).
 */
PM_EXTERN const char *pm_map_why(const pm_map *m);

/* Process ids of the workers (0 for a slot not started or already reaped),
 * nproc of them.  For diagnostics and tests. */
PM_EXTERN const pid_t *pm_map_pids(const pm_map *m, int *n);

/*
 * Stops the map and frees everything: asks idle workers to exit, kills any
 * that have not exited after a short grace (SIGKILL), reaps all of them and
 * unmaps the shared memory.  Safe at any point, including after an error and
 * before pm_map_start().  In a process other than the one that created the
 * map (a forked child) it frees only that process's memory and touches no
 * process.  Returns 0, or the first unexpected error met while tearing down.
 */
PM_EXTERN int pm_map_destroy(pm_map *m);

/* ==========================================================================
 * Jobs: the item-level API for C programs.
 *
 * pm_map above moves tasks; a job maps a C function over records (a pointer
 * and a length each) and reports every item by itself, whatever happens to
 * it:
 *
 *     int count_words(void *ctx, const void *in, size_t len, pm_writer *out)
 *     {
 *         uint64_t n = ...;                  // work on in[0 .. len)
 *         return pm_write(out, &n, sizeof n); // any size, in any pieces
 *     }
 *
 *     pm_job_options o;
 *     pm_job_options_init(&o);               // all CPUs, ordered, adaptive
 *     pm_job *job;
 *     int rc = pm_job_create(&job, &o, count_words, NULL);
 *     if (rc == 0) rc = pm_job_feed_array(job, records, n);
 *     pm_item it;
 *     while (rc >= 0 && (rc = pm_job_next(job, &it)) > 0)
 *         if (it.status == PM_ITEM_OK) ...   // it.index, it.data, it.len
 *     pm_job_destroy(job);
 *
 * The workers are forked when the first result is asked for, so they
 * inherit the function, its context and everything the program built
 * before: only records and results cross between processes (records of an
 * array not even that: the workers read their own copy).  Records are
 * grouped into tasks ("chunks") to amortise the cost of a hand-off; results
 * are delivered one item at a time either way.
 *
 * A worker that crashes (a signal, exit(), abort()) takes down only its
 * process: the engine starts a fresh one, runs again the other items it had
 * been given, and reports the item it was running as PM_ITEM_CRASHED (after
 * opt.retries further attempts).  When the crash happens in a chunk of
 * several items, the chunk is run again one item at a time to find the
 * item at fault; the others are then delivered normally.  With
 * opt.nthreads > 1, the items that the dead worker's other threads were
 * running are not blamed: they are run again, each alone in its worker
 * process, and only an item that crashes its worker alone is charged.  So
 * items can run more than once when a worker crashes: work functions with
 * side effects outside their result should tolerate that.
 * ========================================================================== */

/* One input record. */
typedef struct pm_record {
    const void *data;
    size_t len;
} pm_record;

/* What happened to an item. */
enum {
    PM_ITEM_OK = 0,       /* the work function returned 0 */
    PM_ITEM_FAILED = 1,   /* it returned a positive value (item.code); what
                             it wrote before returning is in data/len */
    PM_ITEM_CRASHED = 2,  /* its worker died while running it (every
                             attempt): item.signal / item.exit_code */
    PM_ITEM_TIMEDOUT = 3, /* it ran longer than opt.timeout_ms: its worker
                             was killed and replaced */
    PM_ITEM_MEMORY = 4,   /* its worker's resident memory passed
                             opt.max_rss_bytes while it ran (every attempt):
                             the worker was killed and replaced */
};

/* One delivered item.  data/len stay valid until the next call on the job
 * (they point into shared memory when they can: no copy is made); data is
 * 8-byte aligned. */
typedef struct pm_item {
    uint64_t index;   /* position of the record in the input, from 0 */
    int status;       /* PM_ITEM_* */
    int code;         /* PM_ITEM_FAILED: the work function's return value */
    int signal;       /* PM_ITEM_CRASHED: the signal that killed the worker,
                         or 0 when it exited (or its status is unknown) */
    int exit_code;    /* PM_ITEM_CRASHED: its exit status, -1 when killed,
                         PM_EXIT_UNKNOWN when reaped elsewhere */
    const void *data; /* the result written by the work function */
    size_t len;
} pm_item;

/*
 * The work, run in a worker process (in one of its threads when
 * opt.nthreads > 1) for each record: in/len are valid for the duration of
 * the call (in is 8-byte aligned for fed records; for an array, it is the
 * caller's pointer), and pm_writer_item(out) is the record's index.  The
 * result is written with pm_write(out, ...) (zero or more
 * calls; it can be far larger than the rings).  Returns 0 for success, a
 * positive value to report the item as PM_ITEM_FAILED with that code, or a
 * negative value (for instance pm_write()'s, when the parent is gone) to
 * make the worker process exit: the item is then reported as crashed.
 */
typedef int (*pm_item_fn)(void *ctx, const void *in, size_t len,
                          pm_writer *out);

/*
 * A source of records, called in the parent from inside pm_job_next() when
 * there is room for more work.  Returns 1 with *data and *len set to the next
 * record (which must stay valid until the next call of the function), 0 at
 * the end of the input (it is not called again), or a negative value: the
 * input ends there too (it is not called again), every record it gave
 * before is still mapped and delivered, and then pm_job_next() returns
 * that value.  A source fed by another thread returns PM_NO_TASK_YET when
 * it has no record yet: pm_job_next() goes on delivering results and
 * waiting, and calls it again after pm_job_wake().
 */
typedef int (*pm_feed_fn)(void *ctx, const void **data, size_t *len);

/* Called in the parent for each delivered item by pm_job_run(): returns 0 to
 * go on, anything else to stop the job with that value. */
typedef int (*pm_item_cb)(void *ctx, const pm_item *item);

/* Called in the parent, from pm_job_next(), after each batch of results
 * (each task's items) has been handed out: done items delivered so far out
 * of total.  With a feed function and no opt.total, total is
 * PM_TOTAL_UNKNOWN until the feed function has returned 0.  The last call
 * has done == the number of items. */
typedef void (*pm_progress_fn)(void *ctx, uint64_t done, uint64_t total);

#define PM_TOTAL_UNKNOWN UINT64_MAX

/* The CPUs this process may use: its affinity mask (sched_getaffinity on
 * Linux, else the online CPUs), capped by the CPU quota of its cgroup or an
 * ancestor (cgroup v2 cpu.max, v1 cpu.cfs_quota_us / cpu.cfs_period_us under
 * /sys/fs/cgroup) rounded up; at least 1.  Read afresh at each call.  The
 * default number of workers of a job. */
PM_EXTERN int pm_cpu_count(void);

/*
 * Threads and callbacks.  A job may be created in one thread and used in
 * others, one call at a time: the calls on one job (pm_job_feed_*,
 * pm_job_next, pm_job_run, pm_job_take_result, pm_job_destroy) must not
 * overlap.  A call made while another is under way on the same job -- from
 * a second thread, or from a callback (feed, on_item, progress) calling
 * back into its own job -- is refused with PM_EBUSY and changes nothing
 * (pm_job_destroy then frees nothing; pm_job_take_result returns NULL);
 * the job goes on.  Only pm_job_done(), pm_job_death() and
 * pm_item_status_name() may be called at any time from any thread (and
 * from callbacks).  Different jobs are independent: one thread per job is
 * fine.  Callbacks run in the thread of the call that runs them.  The work
 * function runs in a worker process, where the job is a copy that it must
 * not use (calls return PM_EBUSY); it may create jobs of its own.
 */
typedef struct pm_job_options {
    size_t size;        /* sizeof(pm_job_options) as the program was built:
                           set by pm_job_options_init(), checked by
                           pm_job_create() (-EINVAL when it was not set), so
                           that fields added later keep programs built
                           against an older pm.h working; never set it by
                           hand */
    int nproc;          /* worker processes (0: pm_cpu_count(), the CPUs
                           this process may use), <= PM_MAX_NPROC */
    int nthreads;       /* threads per worker process, 1 .. PM_MAX_NTHREADS */
    int ordered;        /* deliver items in input order (else as completed) */
    size_t chunk;       /* records per task (0: adaptive, aiming at a few
                           milliseconds of work per task, smaller near the
                           end of an input of known length) */
    int window;         /* tasks in flight per thread (0: default) */
    int retries;        /* further attempts, each on a fresh worker, for an
                           item whose worker crashed (0: none) */
    int64_t timeout_ms; /* per item; an item running longer is reported as
                           PM_ITEM_TIMEDOUT (0: no limit), at most
                           PM_MAX_TIMEOUT_MS.  Makes chunk 1. */
    size_t ring_bytes;  /* bytes per ring, a power of two (0: default) */
    pm_progress_fn progress; /* optional */
    void *progress_ctx;
    uint64_t total;     /* items to expect from a feed function, for the
                           progress callback (0: unknown) */
    uint64_t max_items_per_worker; /* a worker process is replaced by a
                           fresh one once it has been sent this many records
                           (the chunk that reaches the count is its last; a
                           fixed chunk of 1 makes it exact); no record is
                           lost or run twice by it (0: never) */
    uint64_t max_rss_bytes; /* per worker: as pm_options.max_rss_bytes; an
                           item running when its worker passes it is run
                           again (retries) or reported PM_ITEM_MEMORY.
                           Makes chunk 1 (0: no limit) */
} pm_job_options;

/* Fills *o with defaults: one process per usable CPU (nproc 0), 1 thread, ordered, adaptive
 * chunks, no retries, no timeout, no progress callback; and o->size.  A
 * macro, so that the size is the program's sizeof (the library writes no
 * more than that). */
#define pm_job_options_init(o) pm_job_options_init_size((o), sizeof *(o))
PM_EXTERN void pm_job_options_init_size(pm_job_options *o, size_t size);

typedef struct pm_job pm_job;

/*
 * Creates a job that will run fn(fn_ctx, ...) on every record.  Starts no
 * process.  Returns 0 with *out to be released by pm_job_destroy(),
 * -EINVAL for bad options (beyond the limits, or opt not set up by
 * pm_job_options_init) or a NULL fn, -E2BIG when opt sets a field this
 * library does not know (a program built against a newer pm.h), -ENOMEM,
 * or the -errno of mmap().
 */
PM_EXTERN int pm_job_create(pm_job **out, const pm_job_options *opt,
                            pm_item_fn fn, void *fn_ctx);

/*
 * Gives the job its input: n records of an array.  The workers read the
 * records from their own copy of the program's memory, made when they are
 * forked: recs and the bytes it points to must be complete before the first
 * pm_job_next() or pm_job_run(), and stay valid and unchanged until
 * pm_job_destroy() (a worker replaced after a crash is forked later).
 * Returns 0; PM_ESTATE when the job already has its input (or has failed):
 * the call is refused and the job keeps the input it was given first;
 * -EINVAL for a NULL recs with n > 0; PM_EBUSY (see Threads).
 */
PM_EXTERN int pm_job_feed_array(pm_job *job, const pm_record *recs, size_t n);

/*
 * Gives the job its input: the records returned by feed(ctx, ...), read as
 * the workers need them (so an input larger than memory streams through).
 * Their bytes are copied to the workers.  Returns as pm_job_feed_array().
 */
PM_EXTERN int pm_job_feed_fn(pm_job *job, pm_feed_fn feed, void *ctx);

/*
 * After the feed function returned PM_NO_TASK_YET: it has a record again;
 * wakes pm_job_next() if it waits.  Like pm_map_wake(), callable from any
 * thread of the parent, also while another is in pm_job_next() (it takes
 * no part of the job's call guard); not after pm_job_destroy().
 */
PM_EXTERN void pm_job_wake(pm_job *job);

/*
 * Runs the job until its next item is delivered: returns 1 with *item
 * filled in (valid until the next call on the job), 0 when every item has
 * been delivered, or a negative code: the feed function's value, -ENOMEM,
 * -errno of fork(), PM_ECORRUPT (a worker wrote a malformed record: it is
 * killed and pm_job_death() names it and the tasks it had; not an item's
 * crash, since which item wrote it is not known -- opt.retries replaces the
 * worker instead while they last), or PM_EWORKERDIED when workers die
 * without running any item (for instance, killed from outside again and
 * again; pm_job_death() says which).  Crashes and timeouts of items are not
 * errors: they come back as items.  After such an error every later call
 * returns the same code.  Two codes refuse the call without failing the
 * job: PM_ESTATE when no input was given yet (give it, then call again),
 * PM_EBUSY (see Threads).
 */
PM_EXTERN int pm_job_next(pm_job *job, pm_item *item);

/* Delivers the items to on_item(ctx, item), in the job's order, until all
 * are delivered (returns 0), on_item returns nonzero (returns that value),
 * or an error (a negative code as pm_job_next()).  A nonzero on_item ends
 * this call, not the job: the item it was given counts as delivered, and a
 * later pm_job_next() or pm_job_run() goes on with the next item (destroy
 * the job to stop it).  on_item must not call back into the job (PM_EBUSY),
 * except pm_job_done()/pm_job_death(). */
PM_EXTERN int pm_job_run(pm_job *job, pm_item_cb on_item, void *ctx);

/*
 * After pm_job_next() returned an item with status PM_ITEM_OK or
 * PM_ITEM_FAILED whose result the engine assembled in memory of its own (a
 * result larger than a ring fragment, or one kept aside after a crash):
 * hands that memory over, without a copy.  Returns the block item.data
 * points into (item.data itself stays valid and unchanged), which the
 * caller now owns and releases with free(); the block may also hold the
 * results of the items of the same task before it.  Returns NULL when the
 * result is read in place in shared memory, or when items of the same task
 * follow it (then copy what must outlive the next call).  Valid only for
 * the item returned last.
 */
PM_EXTERN void *pm_job_take_result(pm_job *job);

/* After pm_job_next() returned PM_EWORKERDIED or PM_ECORRUPT: the worker
 * concerned (pid, how it ended: signal 9 when the engine killed it for a
 * malformed record) and the tasks (pm_task.first = index of the first
 * record) it had; for PM_ECORRUPT found in a job's result, that task comes
 * first.  NULL otherwise.  Valid until pm_job_destroy(). */
PM_EXTERN const pm_death *pm_job_death(const pm_job *job);

/* A static name for a PM_ITEM_ status: "ok", "failed", "crashed",
 * "timed out", "over memory", or "unknown".  Never NULL. */
PM_EXTERN const char *pm_item_status_name(int status);

/* Items delivered so far (any thread, any time). */
PM_EXTERN uint64_t pm_job_done(const pm_job *job);

/* After a call on job failed for want of a resource: which call (fork,
 * mmap), for which worker, and the limit most likely reached, as
 * pm_map_why(); "" otherwise.  With job NULL: why the last pm_job_create()
 * of the calling thread failed. */
PM_EXTERN const char *pm_job_why(const pm_job *job);

/*
 * Stops the job's workers (asking first, then SIGKILL after a grace of
 * PM_STOP_GRACE_MS milliseconds from the environment, default 200),
 * reaps them, unmaps all shared memory and frees the job.  Safe at any
 * point and with NULL, but not while another call on the job is under way
 * (PM_EBUSY: nothing is freed).  Returns 0, or the first error met while
 * tearing down.
 */
PM_EXTERN int pm_job_destroy(pm_job *job);

#ifdef __cplusplus
}
#endif
#endif /* PM_H */
