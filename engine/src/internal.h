/*
 * internal.h -- the engine's shared declarations: memory layout, the map
 * object, and the functions the engine's files call in each other (the
 * per-slot helpers of the parent's hot path: slot.h; jobs: job.h).
 */
#ifndef PM_INTERNAL_H
#define PM_INTERNAL_H

#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <stdint.h>
#include <poll.h>
#include <sys/types.h>
#include <unistd.h>

#include "asm.h"
#include "pm.h"
#include "ring.h"
#include "wait.h"

/* Grows the malloc'd buffer *p of capacity *cap to hold at least need bytes
 * (doubling from 4 KiB).  Returns 0, or -ENOMEM with the buffer unchanged. */
static inline int pm__grow(unsigned char **p, size_t *cap, size_t need)
{
    if (need <= *cap)
        return 0;
    size_t c = *cap ? *cap : 4096;
    while (c < need)
        c *= 2;
    unsigned char *q = realloc(*p, c);
    if (!q)
        return -ENOMEM;
    *p = q;
    *cap = c;
    return 0;
}

/* The shared structures and rings start on their own cache lines. */
#define ALIGN64(x) (((x) + 63u) & ~(size_t)63u)

#define PM_DEFAULT_WINDOW 32
#define PM_DEFAULT_RING (1u << 20)
#define PM_MSG_MAGIC 0x4d41504du /* "MPAM" */
/* The magic of a task to run alone in its worker process (a suspect: it was
 * running when a worker died with other threads running too); results
 * always echo PM_MSG_MAGIC. */
#define PM_MSG_MAGIC_SOLO 0x4f4c4f53u /* "SOLO" */
#define PM_WORKER_FATAL_EXIT 70  /* the work function asked to stop */
#define PM_WORKER_CORRUPT_EXIT 71

/* Every task and result message starts with this header; results echo the
 * task's, so the parent can check that the bytes it reads answer the task it
 * expects from that slot. */
typedef struct pm_msg_hdr {
    uint64_t first;
    uint32_t count;
    uint32_t magic;
} pm_msg_hdr;

/* Shared: the parent's bell, in a mapping of its own. */
typedef struct pm_ctl {
    pm_bell parent;
} pm_ctl;

/* Shared, at the start of each worker's own mapping. */
typedef struct pm_wctl {
    _Alignas(64) _Atomic uint32_t stop; /* the parent asks the worker to exit */
    /* No task will come any more: exit once every task in the rings is done
     * and its result written (stop, by contrast, abandons them). */
    _Atomic uint32_t finish;
    /* Job control (proc.c, on_tstp): the clock when the worker stopped
     * itself on SIGTSTP, 0 once it runs again and has moved the start of
     * its running tasks past the stop; stops counts the stops so ended, so
     * that the parent, which was stopped too, does not judge a timeout on a
     * clock read before it. */
    _Atomic uint64_t stopped_at;
    _Atomic uint32_t stops;
    _Atomic uint32_t ready; /* the worker serves its rings (set once) */
} pm_wctl;

/* Shared, at the start of each slot (one thread of one worker). */
typedef struct pm_slot_ctl {
    pm_bell bell; /* the worker thread sleeps here */
    /* The task the worker thread is running: its first item and the clock
     * when it started (0 when idle).  Read by the parent for timeouts and to
     * tell which tasks were running when a worker died. */
    _Alignas(64) _Atomic uint64_t run_first;
    _Atomic uint64_t run_start_ns;
} pm_slot_ctl;

/* run_start_ns while the running task's work function waits for room in
 * the result ring (pm_write): that time is not the task's (worker.c). */
#define PM_CLOCK_PAUSED UINT64_MAX

/* States of a task in a slot's FIFO. */
enum {
    PM_T_SENT = 0, /* written (or being written) to the worker */
    PM_T_TIMEDOUT, /* abandoned: delivered as PM_RESULT_TIMEDOUT */
    PM_T_DONE,     /* its result was saved from a dead worker's ring */
    PM_T_LOST,     /* opt.deliver_lost: delivered as PM_RESULT_DIED */
    PM_T_MEMORY,   /* its worker passed opt.max_rss_bytes: delivered as
                      PM_RESULT_MEMORY */
};

/* A task in flight on a slot. */
typedef struct pm_inflight {
    pm_task task;
    uint32_t attempts;   /* runs lost to a dying worker, charged to it */
    int state;           /* PM_T_* */
    unsigned char *copy; /* the whole task message, kept when it may have to
                            be sent again (retries, timeout or deliver_lost
                            set); NULL for a task without data, whose
                            message is rebuilt from .task */
    size_t copy_len;
    unsigned char *result; /* PM_T_DONE: the result message */
    size_t result_len;
    void *routed;          /* PM_T_DONE: its routed ranges' owner */
    int signal, exit_code; /* PM_T_LOST: how its worker ended */
    uint64_t rss;          /* PM_T_MEMORY: bytes its worker had grown by */
    int suspect;           /* it was running when its worker died with other
                              threads running: not charged, sent again to
                              run alone in its process (PM_MSG_MAGIC_SOLO) */
} pm_inflight;

/* Parent's private view of one slot. */
typedef struct pm_slot {
    int worker;
    pm_slot_ctl *ctl;
    pm_ring *task_ring;
    pm_ring *result_ring;
    pm_ring_tx tx; /* tasks, parent -> worker */
    pm_ring_rx rx; /* results, worker -> parent */
    /* Tasks in flight on this slot, oldest first (capacity: window). */
    pm_inflight *fifo;
    uint32_t fifo_head;
    uint32_t fifo_n;
    uint32_t resend;  /* after a respawn: FIFO position of the next task to
                         send again; == fifo_n when nothing is left to send */
    /* The rest of a task message that did not fit in the ring yet: the
     * bytes copied in pend, then the caller's pieces pend_iov[pend_i..]
     * (gathered with an owner, released once written). */
    unsigned char *pend;
    size_t pend_len, pend_off, pend_cap;
    const pm_iov *pend_iov;
    int pend_niov, pend_i;
    size_t pend_ioff; /* bytes of pend_iov[pend_i] already written */
    void *pend_owner;
    int pend_active; /* bytes or the end marker still to write */
    /* A result that came in several fragments, or wrapped around. */
    pm_asm assembly;
    /* Timeouts: since when (0: not) the worker has tasks in its ring, no
     * result waiting and runs nothing, and its progress then (task bytes
     * taken + result bytes written). */
    uint64_t stall_ns, stall_mark;
} pm_slot;

/* PM_W_DONE: told to finish (the input was exhausted), it exited with no
 * task of its left undone; started again only if the input is re-opened. */
enum { PM_W_IDLE = 0, PM_W_RUNNING, PM_W_REAPED, PM_W_DONE };

/* pm_worker.status of a worker reaped by someone else (SIGCHLD ignored, a
 * waitpid(-1) of the caller's): no wait status is -1. */
#define PM_WAIT_UNKNOWN (-1)

typedef struct pm_worker {
    pid_t pid;
    int state;
    int status; /* raw wait status once reaped, or PM_WAIT_UNKNOWN */
    void *shm;
    size_t shm_len;
    pm_wctl *wctl;
    int uncharged; /* deaths in a row with no running task to blame */
    int finishing; /* wctl->finish is set: it gets no new task */
    uint32_t seen_stops; /* wctl->stops when the parent last looked */
    int pidfd; /* readable once the running worker exits (-1: none) */
    /* opt.max_items_per_worker: items sent to this process; retiring 1 when
     * they reached the limit (it gets no new task: finishing is set too), 2
     * once told to finish (wctl->finish), after its last task is whole in
     * its rings. */
    uint64_t items_sent;
    int retiring;
    uint64_t rss_base; /* opt.max_rss_bytes: resident bytes at the fork */
} pm_worker;

struct pm_map {
    pid_t creator;
    pm_options opt;
    pm_produce_fn produce; /* one of produce and gather is set */
    pm_gather_fn gather;
    pm_release_fn release;
    void *produce_ctx;
    pm_work_fn work;
    void *work_ctx;
    pm_hooks hooks;

    pm_ctl *ctl;
    pm_worker *workers;
    pid_t *pids; /* for pm_map_pids: running workers' pids, else 0 */
    pm_slot *slots;
    int nslots;
    size_t slot_bytes;

    int started;
    int input_done;
    int error;           /* sticky error code */
    uint64_t next_seq;   /* tasks produced */
    uint64_t next_deliver;
    uint64_t outstanding; /* produced and not yet delivered */
    uint64_t win;         /* power of two >= nslots * window */
    int32_t *slot_of;     /* slot of task seq, at seq & (win - 1) */
    int rr;               /* unordered delivery: slot to look at first */
    unsigned checks;      /* deliveries since the last check hook */
    unsigned loops;       /* rounds of pm_map_next's loop, for health checks */

    int input_later;      /* the source returned PM_NO_TASK_YET: ask it
                             again only once input_woken is set */
    _Atomic int input_woken; /* pm_map_wake() was called (any thread) */
    int volatile_slot;    /* this slot is still writing a task's volatile
                             pieces (PM_PRODUCED_VOLATILE): the source is
                             not asked again until they are in the ring
                             (-1: none) */
    int held_slot;        /* fragment delivered in place, consumed next call */
    pm_frag held;
    unsigned char *held_copy; /* a saved result delivered, freed next call */
    int assembly_slot;    /* the result delivered was assembled in this
                             slot's buffer (-1: it was not) */
    void *routed;         /* owner of the delivered result's routed ranges,
                             released next call unless taken */

    uint32_t fifo_mask;   /* a slot's FIFO holds fifo_mask + 1 entries (the
                             window rounded up to a power of two) */
    uint64_t refill_at;   /* pm_map_next dispatches when no more tasks than
                             this are in flight (or see pm__dispatch_due) */
    int unsent;           /* a slot may have task bytes pending or tasks to
                             send again (save_pending, pm__reset_worker):
                             dispatch looks at every slot while it is set */
    int draining;         /* a worker died for good: send no new task */
    int finish_scan;      /* the input is exhausted and a running worker
                             may not have been told to finish yet */
    uint64_t result_rss;  /* pm_map_result_rss() */
    int retire_scan;      /* a retiring worker may not have been told to
                             finish yet (retire_idle) */
    int keep;             /* keep task copies: retries, timeout or
                             deliver_lost are set */
    uint64_t next_health_ns; /* when to look at the workers again while busy */

    pm_spin spin;
    pm_death death;
    int death_corrupt;    /* m->death names the worker that broke its rings
                             (PM_ECORRUPT) */
    int dontfork;         /* every shared mapping is MADV_DONTFORK: a fork
                             inherits none but the ones pm__spawn lets
                             through for its worker */
    pm_task *lost;
    char why[320]; /* pm_map_why(): what failed, when a call failed */
    /* The parent's bell as a descriptor (eventfd, -1: none): the workers
     * write it instead of waking the futex when the parent sleeps in poll()
     * on it and the workers' pidfds together, to be woken by a result or by
     * a death (idle.c, parent_sleep). */
    int efd;
    struct pollfd *pfds; /* nproc + 1 entries for that poll */
    int last_slot;        /* the slot of the result delivered last (-1) */
    pid_t last_pid;       /* the worker that wrote it (0: unknown) */
};

/* Wakes the parent if it is (about to be) asleep; cheap otherwise (a fence
 * and a load, as pm__bell_ring).  sleeping is 1 while the parent sleeps on
 * the futex, 2 while it sleeps in poll() on the eventfd (idle.c,
 * parent_sleep).  The worker that wakes it clears sleeping, as
 * pm__bell_ring does: one wake per sleep, not one per result published
 * until the parent runs. */
static inline void pm__ring_parent(pm_map *m)
{
    pm_bell *b = &m->ctl->parent;
    atomic_thread_fence(memory_order_seq_cst);
    uint32_t how = atomic_load_explicit(&b->sleeping, memory_order_relaxed);
    if (how)
        how = atomic_exchange_explicit(&b->sleeping, 0, memory_order_relaxed);
    if (how) {
        atomic_fetch_add_explicit(&b->seq, 1, memory_order_release);
        if (how == 2 && m->efd >= 0) {
            uint64_t one = 1;
            if (write(m->efd, &one, sizeof one) < 0) {
                /* EAGAIN: the counter is full, the parent is woken. */
            }
        } else {
            pm__futex_wake(&b->seq);
        }
    }
}

/* Makes err the map's sticky error, unless it has one already; returns
 * the sticky one. */
static inline int pm__fail(pm_map *m, int err)
{
    if (!m->error)
        m->error = err;
    return m->error;
}

static inline int pm__worker_alive(const pm_map *m, int w)
{
    return m->workers[w].state == PM_W_RUNNING;
}

/*
 * The functions the engine's files call in each other, by file, lowest
 * layer first.  Calls run one way (make layers checks it): the map's main
 * loop (map.c) calls dispatch.c, deliver.c and idle.c, which call health.c,
 * which calls the per-slot bookkeeping (slot.h, slot.c), which calls
 * proc.c (processes), which calls worker.c, shm.c (the layout) and the
 * messages and rings (asm.c, ring.c, wait.c).  Jobs (job*.c) sit on the map.
 */

/* error.c */

/* Records in why[len] a sentence naming the call that failed with err
 * (negative errno) for worker w (-1: none) and the limit most likely
 * reached.  call: "fork" or "mmap"; bytes: the size asked of mmap. */
void pm__explain(char *why, size_t len, const char *call, int err, int w,
                 int nproc, size_t bytes);

/* shm.c */

/* Address of the control words of slot t of worker w inside the worker's
 * mapping (then come its task ring and its result ring). */
pm_slot_ctl *pm__slot_ctl(pm_map *m, int w, int t);

/* Maps the parent's bell and each worker's memory (m->workers and m->slots
 * allocated, m->opt final), and points each slot at its control words and
 * rings, initialised.  Keeps the mappings out of forks where the kernel
 * can (m->dontfork).  Returns 0, or the -errno of mmap() with why[why_len]
 * saying which mapping failed; what was mapped is pm__shm_unmap()'s. */
int pm__shm_map(pm_map *m, char *why, size_t why_len);

/* Resets worker w's shared memory (control words, its slots' bells, clocks
 * and rings) and the parent's ends of its rings, for a fresh process. */
void pm__shm_reset_worker(pm_map *m, int w);

/* Unmaps what pm__shm_map() mapped. */
void pm__shm_unmap(pm_map *m);

/* worker.c */

/* 1 in a process that fork() made and the engine did not make a worker of:
 * set by an at-fork child handler (registered on the first spawn), cleared
 * by the engine in each worker it forks.  A copy of a worker that the work
 * function forked shares the worker's rings; worker code reads this (one
 * load) before it touches them and ends such a copy instead. */
extern volatile int pm__forked_copy;

/* The worker process: serves its slots (one thread each when nthreads > 1)
 * until asked to stop or the parent dies, then runs the worker_exit hook and
 * _exits.  Never returns. */
void pm__worker_main(pm_map *m, int w) __attribute__((noreturn));

/* Bytes written through w with pm_write() since the worker started: a
 * work function can tell how long each part of its result is. */
uint64_t pm__writer_written(const pm_writer *w);

/* Sets what pm_writer_item() returns (jobs: the item being run). */
void pm__writer_set_item(pm_writer *w, uint64_t item);

/* proc.c */

/* From now on every fork() of this process, and of its descendants, sets
 * pm__forked_copy and pm__forked in the child (a pthread_atfork handler,
 * registered once).  Called when a map is made: a process forked from its
 * creator afterwards (a worker too) is told apart by pm__forked, without a
 * getpid() per call. */
void pm__watch_forks(void);

/* 1 in every process forked (after pm__watch_forks) from one that made a
 * map, the engine's own workers included; never cleared.  Only there can a
 * map belong to another process: pm_map_next compares pids then. */
extern volatile int pm__forked;

/* Forks worker w, letting only the mappings it needs into the fork
 * (m->dontfork).  In the child: unmaps the other workers' memory, runs the
 * after_fork_child hook, arranges to die with the parent, ignores SIGINT and
 * runs pm__worker_main(); it never returns.  Returns 0 in the parent, or the
 * -errno of fork(). */
int pm__spawn(pm_map *m, int w);

/* Reaps worker w if it has exited: 1 when reaped (status recorded), 0 when
 * still running, or when it was not running. */
int pm__try_reap(pm_map *m, int w);

/* Resident bytes of process pid (/proc/PID/statm), or 0 when unknown. */
uint64_t pm__rss_bytes(pid_t pid);

/* Kills worker w (SIGKILL) and reaps it. */
void pm__kill_reap(pm_map *m, int w);

/* Stops every running worker: asks politely, waits up to grace_ms, then
 * SIGKILLs and reaps the rest. */
void pm__stop_all(pm_map *m, int grace_ms);

/* How a process ended, from its wait status: the signal that killed it (0
 * if none) and its exit status (-1 when killed; PM_EXIT_UNKNOWN, signal 0,
 * for PM_WAIT_UNKNOWN). */
void pm__decode_status(int st, int *signal, int *exit_code);

/* health.c */

/* Look at the workers this often while busy (pm_map_next) and while asleep
 * with a memory limit (idle.c). */
#define HEALTH_EVERY_NS 20000000u

/* Slot s's worker broke the ring protocol: it is killed, its oldest task
 * on s charged one attempt; with retries left a fresh worker is started
 * (returns 0, *progress set), else PM_ECORRUPT (m->death names it). */
int pm__corrupt(pm_map *m, pm_slot *s, int *progress);

/* Starts again a worker that had finished (the input was re-opened, or a
 * retired worker is not replaced yet).  Returns 1 when it did, 0 when there
 * is none, or the -errno of fork(). */
int pm__restart_done(pm_map *m);

/* Tells each retiring worker (opt.max_items_per_worker) whose last task is
 * whole in its rings to finish. */
void pm__retire_idle(pm_map *m);

/* Once the input is exhausted, tells each running worker whose tasks are
 * all in its rings that no task will come. */
void pm__finish_idle(pm_map *m);

/* How long a worker may stall with tasks unstarted, in ns. */
uint64_t pm__stall_limit(const pm_map *m);

/* Reaps dead workers, replaces them when tasks may be re-run, enforces the
 * timeout and the memory limit.  Returns 1 when anything changed, 0, or a
 * negative code. */
int pm__poll_health(pm_map *m);

/* The result delivered last is malformed (a job's trailers): kills and
 * names its worker (pm_map_death), fails the map with PM_ECORRUPT. */
int pm__map_corrupt_result(pm_map *m, const pm_task *task);

/* dispatch.c */

/* One round of dispatch: pending bytes pushed, tasks of a respawned worker
 * sent again, new tasks asked of the source while the window has room.
 * Returns 0 (*progress set when anything moved) or a negative code. */
int pm__dispatch(pm_map *m, int *progress);

/* Is a round of dispatch due?  When a slot may have bytes pending or tasks
 * to send again (always pushed at once: a result waited for may depend on
 * them), when the source said it has a task, and otherwise only once the
 * tasks in flight are down to refill_at: the new tasks then go out in a
 * batch (one round per result cost the parent ~30 instructions per item at
 * chunksize=1). */
static inline int pm__dispatch_due(pm_map *m)
{
    return m->unsent || m->outstanding <= m->refill_at ||
           atomic_load_explicit(&m->input_woken, memory_order_relaxed);
}

/* deliver.c */

/* Delivers the next result (ordered or as they come): 1 with *res filled,
 * 0 when none is complete yet, or a negative code (PM_EWORKERDIED: the
 * result waited for can no longer come). */
int pm__deliver(pm_map *m, pm_result *res, int *progress);

/* Releases what the result delivered last held: the ring space it was read
 * in place from, its saved copy, its routed ranges unless taken. */
void pm__release_held(pm_map *m);

/* idle.c */

/* The wait when a round of pm_map_next() made no progress.  Returns 0 to go
 * round again, PM_EWORKERDIED when no worker is left to finish the work, or
 * another negative code. */
int pm__idle_wait(pm_map *m);

/* job.c */

/* For the tests: a job's map. */
pm_map *pm__job_map(pm_job *job);

#endif
