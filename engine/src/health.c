/*
 * health.c -- the workers' health, seen from the parent: deaths and
 * respawns (what a dead worker's tasks are charged, which run again), a
 * worker that broke the ring protocol, timeouts, stalls and the memory
 * limit, and telling workers that no task will come.
 */
/* GNU and POSIX interfaces under any -std (builds may -D it too). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <stdlib.h>
#include <string.h>

#include "slot.h"

#define STALL_MIN_NS 1000000000u /* see pm__stall_limit() */

static int handle_dead(pm_map *m, int w, int killed);

/*
 * Slot s's worker broke the ring protocol: a malformed record, an impossible
 * counter, a result that answers no task.  Whatever it still wrote is not
 * trusted: it is killed, and its oldest task in flight on s is charged with
 * one attempt.  With retries left, a fresh worker is started that is sent
 * its tasks again (returns 0, *progress set); otherwise the map fails with
 * PM_ECORRUPT and pm_map_death() names the worker and the tasks in flight.
 */
int pm__corrupt(pm_map *m, pm_slot *s, int *progress)
{
    int w = s->worker;
    int was_running = pm__worker_alive(m, w);
    pm__kill_reap(m, w);
    pm_inflight *e = NULL;
    for (uint32_t i = 0; i < s->fifo_n && !e; i++)
        if (pm__fifo_at(m, s, i)->state == PM_T_SENT)
            e = pm__fifo_at(m, s, i);
    if (was_running && m->keep && e &&
        ++e->attempts <= (uint32_t)m->opt.retries) {
        int rc = handle_dead(m, w, 1);
        *progress = 1;
        return rc < 0 ? rc : 0;
    }
    pm__record_death(m, w);
    m->death_corrupt = 1;
    return PM_ECORRUPT;
}

/*
 * The result pm_map_next() delivered last is malformed in a way only its
 * user can see (a job's item trailers): the worker that wrote it broke the
 * protocol.  It is killed (if it still runs as the process that wrote it)
 * and named by pm_map_death() with that task first among the lost ones;
 * the map fails with PM_ECORRUPT.
 */
int pm__map_corrupt_result(pm_map *m, const pm_task *task)
{
    if (m->last_slot < 0)
        return pm__fail(m, PM_ECORRUPT);
    int w = m->slots[m->last_slot].worker;
    int same = m->workers[w].pid == m->last_pid;
    if (same && pm__worker_alive(m, w))
        pm__kill_reap(m, w);
    pm__record_death(m, w);
    m->death.pid = m->last_pid;
    if (!same) { /* it had died already: how it ended is not kept */
        m->death.signal = 0;
        m->death.exit_code = PM_EXIT_UNKNOWN;
    }
    pm_task *l = realloc(m->lost, (m->death.nlost + 1) * sizeof *l);
    if (l) {
        memmove(l + 1, l, m->death.nlost * sizeof *l);
        l[0] = *task;
        m->lost = l;
        m->death.lost = l;
        m->death.nlost++;
    }
    m->death_corrupt = 1;
    return pm__fail(m, PM_ECORRUPT);
}

/* The worker running e died with wait status st: e is delivered as
 * PM_RESULT_DIED instead of being run again. */
static void mark_lost(pm_inflight *e, int st)
{
    e->state = PM_T_LOST;
    pm__decode_status(st, &e->signal, &e->exit_code);
}

/* e was running when its worker died with other threads running: which of
 * them killed it is not known, so none is charged; each is sent again to run
 * alone in its process, where a crash is its own. */
#define SUSPECT_MAX 3 /* shared deaths after which a task is charged anyway */
static void make_suspect(pm_inflight *e)
{
    e->suspect++;
    if (e->copy) {
        pm_msg_hdr hdr;
        memcpy(&hdr, e->copy, sizeof hdr);
        hdr.magic = PM_MSG_MAGIC_SOLO;
        memcpy(e->copy, &hdr, sizeof hdr);
    }
}

/*
 * Worker w is gone (it died; killed 1: it was killed because a task timed
 * out; killed 2: because it stalled with tasks unstarted): keeps
 * what it finished, charges the tasks it was running with one attempt each
 * (unless it was killed), and starts a fresh worker that is sent the rest
 * again.  When several of its threads were running a task, the death is
 * nobody's in particular: none is charged, each is made a suspect and runs
 * alone in its process when sent again (with deliver_lost, a chunk of
 * several items is delivered lost as before: the job splits it).  When a task has used up its retries (or the worker keeps dying
 * with nothing to blame), the worker is not replaced and the map drains
 * instead: no new task is sent.  Returns 0 or the -errno of fork().
 */
static int handle_dead(pm_map *m, int w, int killed)
{
    int fatal = 0, charged = 0, running = 0;
    int nt = m->opt.nthreads;
    for (int t = 0; t < nt; t++) {
        pm_slot *s = &m->slots[w * nt + t];
        pm__drain_dead(m, s);
        running += !killed && atomic_load(&s->ctl->run_start_ns) != 0;
    }
    for (int t = 0; t < nt; t++) {
        pm_slot *s = &m->slots[w * nt + t];
        uint64_t started = atomic_load(&s->ctl->run_start_ns);
        if (!started || killed)
            continue;
        uint64_t first = atomic_load(&s->ctl->run_first);
        for (uint32_t i = 0; i < s->fifo_n; i++) {
            pm_inflight *e = pm__fifo_at(m, s, i);
            if (e->state != PM_T_SENT || e->task.first != first)
                continue;
            charged = 1;
            if (running > 1 && !(m->opt.deliver_lost && e->task.count > 1)) {
                make_suspect(e);
                /* A suspect runs alone unless it had to wait for room in
                 * its ring (worker.c, gate_yield): a task that keeps dying
                 * in company is charged after SUSPECT_MAX such deaths, so
                 * that retries stay bounded. */
                if (e->suspect < SUSPECT_MAX)
                    continue;
            }
            int spent = ++e->attempts > (uint32_t)m->opt.retries;
            if (m->opt.deliver_lost && (spent || e->task.count > 1))
                mark_lost(e, m->workers[w].status);
            else if (spent)
                fatal = 1;
        }
    }
    pm_worker *wk = &m->workers[w];
    if (wk->finishing && !fatal && !pm__undone(m, w)) {
        /* Told to finish, and nothing of its is left to run: it ended as
         * asked (or died after its last task, which costs nothing). */
        wk->state = PM_W_DONE;
        return 0;
    }
    if (!charged && killed != 1 && ++wk->uncharged > 3)
        fatal = 1; /* it dies, or stalls, between tasks: do not respawn
                      forever */
    if (fatal) {
        /* Not replaced: the results due before its lost task are still
         * delivered (from the live workers, and those it completed), then
         * delivery reaches the lost task and fails with PM_EWORKERDIED. */
        m->draining = 1;
        return 0;
    }
    pm__reset_worker(m, w);
    m->finish_scan = 1;
    return pm__spawn(m, w);
}

/* Starts finished worker w again, after saving the results left in its
 * rings: 1 when it did, 0 when a result of its is missing (it is marked
 * reaped: delivery reports the death), or the -errno of fork(). */
static int restart_one(pm_map *m, int w)
{
    for (int t = 0; t < m->opt.nthreads; t++)
        pm__drain_dead(m, &m->slots[w * m->opt.nthreads + t]);
    if (pm__undone(m, w)) {
        /* A result is missing: delivery reports the death. */
        m->workers[w].state = PM_W_REAPED;
        return 0;
    }
    pm__reset_worker(m, w);
    m->finish_scan = 1;
    int rc = pm__spawn(m, w);
    return rc < 0 ? rc : 1;
}

/* The input was re-opened (pm_map_resume), or a worker retired after
 * opt.max_items_per_worker is not replaced yet, and no running worker can take a
 * task: starts again a worker that had finished, after saving the results
 * left in its rings.  Returns 1 when it did, 0 when there is none, or the
 * -errno of fork(). */
int pm__restart_done(pm_map *m)
{
    for (int w = 0; w < m->opt.nproc; w++) {
        if (m->workers[w].state != PM_W_DONE)
            continue;
        int rc = restart_one(m, w);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* Tells worker w that no task will come: after the last task was
 * published, a worker that sees finish looks at its ring once more
 * (worker.c, nothing_more), then exits after its last result. */
static void tell_finish(pm_map *m, int w)
{
    atomic_store_explicit(&m->workers[w].wctl->finish, 1,
                          memory_order_release);
    for (int t = 0; t < m->opt.nthreads; t++)
        pm__bell_ring(&pm__slot_ctl(m, w, t)->bell);
}

/*
 * opt.max_items_per_worker: tells each retiring worker whose last task is
 * whole in its rings (nothing pending, nothing to send again) to finish:
 * it runs what it has, writes the results and exits; poll_health then
 * forks its replacement.  The same handshake as finish_idle's.
 */
void pm__retire_idle(pm_map *m)
{
    int later = 0;
    for (int w = 0; w < m->opt.nproc; w++) {
        pm_worker *wk = &m->workers[w];
        if (wk->state != PM_W_RUNNING || wk->retiring != 1)
            continue;
        if (pm__tasks_unwritten(m, w)) {
            later = 1;
            continue;
        }
        wk->retiring = 2;
        tell_finish(m, w);
    }
    m->retire_scan = later;
}

/*
 * Once the input is exhausted, tells each running worker whose tasks are
 * all in its rings (nothing pending, nothing to send again) that no task
 * will come: it exits after its last result, so that its exit overlaps the
 * parent's handling of the last results instead of adding to the teardown.
 * A worker so told gets no new task, even if the input is re-opened.
 */
void pm__finish_idle(pm_map *m)
{
    int later = 0;
    for (int w = 0; w < m->opt.nproc; w++) {
        pm_worker *wk = &m->workers[w];
        if (wk->state != PM_W_RUNNING || wk->finishing)
            continue;
        if (pm__tasks_unwritten(m, w)) {
            later = 1;
            continue;
        }
        wk->finishing = 1;
        tell_finish(m, w);
    }
    m->finish_scan = later;
}

/* How long a stall may last: the timeout, but at least STALL_MIN_NS, so
 * that a tiny timeout does not take a worker the scheduler left waiting a
 * few milliseconds (on a loaded machine) for a stuck one. */
uint64_t pm__stall_limit(const pm_map *m)
{
    uint64_t limit = (uint64_t)m->opt.timeout_ms * 1000000u;
    return limit < STALL_MIN_NS ? STALL_MIN_NS : limit;
}

/*
 * Is slot s's worker stuck outside any task -- stopped (SIGSTOP), or hung
 * between tasks -- for the timeout?  It runs nothing (the caller checked),
 * tasks wait in its ring, no result waits for the parent (so it is not
 * blocked on a full result ring), and it has taken no task byte and written
 * no result byte since the parent first saw it so.  A healthy worker wakes
 * within microseconds of a task's arrival.  Not before the worker serves
 * its rings: starting up may take long (the caller's memory is large).
 */
static int stalled(pm_map *m, pm_slot *s, uint64_t now)
{
    uint64_t taken = atomic_load_explicit(&s->task_ring->tail,
                                          memory_order_acquire);
    uint64_t mark = taken + atomic_load_explicit(&s->result_ring->head,
                                                 memory_order_acquire);
    if (!atomic_load_explicit(&m->workers[s->worker].wctl->ready,
                              memory_order_acquire) ||
        (!s->pend_active &&
         atomic_load_explicit(&s->task_ring->head, memory_order_relaxed) ==
             taken) ||
        pm__rx_ready(&s->rx)) {
        s->stall_ns = 0;
        return 0;
    }
    if (!s->stall_ns || mark != s->stall_mark) {
        s->stall_ns = now;
        s->stall_mark = mark;
        return 0;
    }
    return now - s->stall_ns >= pm__stall_limit(m);
}

/* The FIFO entry of slot s that its worker is running (run_first), or
 * NULL. */
static pm_inflight *running_entry(pm_map *m, pm_slot *s)
{
    uint64_t first = atomic_load(&s->ctl->run_first);
    for (uint32_t i = 0; i < s->fifo_n; i++) {
        pm_inflight *x = pm__fifo_at(m, s, i);
        if (x->state == PM_T_SENT && x->task.first == first)
            return x;
    }
    return NULL;
}

/*
 * Kills and replaces the workers whose running task is past the timeout, or
 * that have let their tasks wait unstarted for the timeout (stalled()): those
 * tasks are sent again to the fresh worker, and no item is charged.  A
 * worker stopped by job control (SIGTSTP) is left alone while stopped and
 * just after (see proc.c, on_tstp).  Returns 1 when it did, 0, or a
 * negative code.
 */
static int check_timeouts(pm_map *m, uint64_t now)
{
    uint64_t limit = (uint64_t)m->opt.timeout_ms * 1000000u;
    for (int w = 0; w < m->opt.nproc; w++) {
        pm_worker *wk = &m->workers[w];
        if (!pm__worker_alive(m, w))
            continue;
        uint32_t stops = atomic_load_explicit(&wk->wctl->stops,
                                              memory_order_acquire);
        int jc = atomic_load_explicit(&wk->wctl->stopped_at,
                                      memory_order_acquire) != 0 ||
                 stops != wk->seen_stops;
        wk->seen_stops = stops;
        for (int t = 0; t < m->opt.nthreads; t++) {
            pm_slot *s = &m->slots[w * m->opt.nthreads + t];
            if (jc) {
                s->stall_ns = 0;
                continue;
            }
            uint64_t started = atomic_load_explicit(&s->ctl->run_start_ns,
                                                    memory_order_acquire);
            if (!started) {
                if (!stalled(m, s, now))
                    continue;
                pm__kill_reap(m, w);
                int rc = handle_dead(m, w, 2);
                return rc < 0 ? rc : 1;
            }
            s->stall_ns = 0;
            if (now <= started || now - started < limit)
                continue;
            pm_inflight *e = running_entry(m, s);
            if (!e)
                continue;
            e->state = PM_T_TIMEDOUT;
            pm__kill_reap(m, w);
            int rc = handle_dead(m, w, 1);
            return rc < 0 ? rc : 1;
        }
    }
    return 0;
}

/*
 * opt.max_rss_bytes: reads each running worker's resident memory
 * (/proc/PID/statm, one open and read per worker, on the health schedule,
 * never on the path of an item).  A worker that grew by more than the limit
 * since its fork is killed and replaced: each task it was running is
 * charged an attempt, run again while retries last, else delivered as
 * PM_RESULT_MEMORY; its other tasks are sent again.  A worker over the
 * limit with no task running (memory kept after a task) is replaced too,
 * no task charged; three such in a row fail the map as a stall does.
 * Returns 1 when it killed one, 0, or a negative code.
 */
static int check_memory(pm_map *m)
{
    for (int w = 0; w < m->opt.nproc; w++) {
        pm_worker *wk = &m->workers[w];
        if (!pm__worker_alive(m, w))
            continue;
        uint64_t rss = pm__rss_bytes(wk->pid);
        if (rss <= wk->rss_base || rss - wk->rss_base <= m->opt.max_rss_bytes)
            continue;
        int charged = 0;
        for (int t = 0; t < m->opt.nthreads; t++) {
            pm_slot *s = &m->slots[w * m->opt.nthreads + t];
            if (!atomic_load_explicit(&s->ctl->run_start_ns,
                                      memory_order_acquire))
                continue;
            pm_inflight *e = running_entry(m, s);
            if (!e)
                continue;
            charged = 1;
            if (++e->attempts > (uint32_t)m->opt.retries) {
                e->state = PM_T_MEMORY;
                e->rss = rss - wk->rss_base;
            }
        }
        pm__kill_reap(m, w);
        int rc = handle_dead(m, w, charged ? 1 : 2);
        return rc < 0 ? rc : 1;
    }
    return 0;
}

/* Reaps dead workers, replaces them when tasks may be re-run, enforces the
 * timeout and the memory limit.  Returns 1 when anything changed, 0, or a
 * negative code. */
int pm__poll_health(pm_map *m)
{
    int changed = 0;
    for (int w = 0; w < m->opt.nproc; w++) {
        if (!pm__try_reap(m, w))
            continue;
        changed = 1;
        if (m->keep) {
            int rc = handle_dead(m, w, 0);
            if (rc < 0)
                return rc;
        } else if (m->workers[w].finishing) {
            /* Its results are read from its rings as usual; one missing
             * is reported when delivery reaches it. */
            m->workers[w].state = PM_W_DONE;
        }
        /* Retired after opt.max_items_per_worker: a fresh process takes
         * its place while input remains. */
        if (m->workers[w].retiring && m->workers[w].state == PM_W_DONE &&
            !m->input_done && !m->draining) {
            int rc = restart_one(m, w);
            if (rc < 0)
                return rc;
        }
    }
    /* A worker that broke its task ring's tail is caught here too, not only
     * when the parent next writes to that ring (it may have nothing more to
     * write there, and wait for that worker's results for ever). */
    for (int i = 0; i < m->nslots; i++) {
        pm_slot *s = &m->slots[i];
        if (pm__worker_alive(m, s->worker) && pm__tx_check(&s->tx)) {
            int progress = 0;
            int rc = pm__corrupt(m, s, &progress);
            if (rc < 0)
                return rc;
            changed = 1;
        }
    }
    uint64_t now = pm__now_ns();
    if (m->opt.timeout_ms) {
        int rc = check_timeouts(m, now);
        if (rc < 0)
            return rc;
        changed |= rc;
    }
    if (m->opt.max_rss_bytes) {
        int rc = check_memory(m);
        if (rc < 0)
            return rc;
        changed |= rc;
    }
    m->next_health_ns = now + HEALTH_EVERY_NS;
    return changed;
}
