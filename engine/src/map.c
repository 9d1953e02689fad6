/*
 * map.c -- the map, the parent's side: creating it, the main loop of
 * pm_map_next() (health now and then, a round of dispatch, one of delivery,
 * else the idle wait), the other public calls, and teardown.
 */
/* GNU and POSIX interfaces under any -std (builds may -D it too). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef __linux__
#include <sys/eventfd.h>
#endif

#include "slot.h"

#define CHECK_EVERY 4096 /* deliveries between two check-hook calls */
#define STOP_GRACE_MS 200

void pm_options_init(pm_options *o)
{
    memset(o, 0, sizeof *o);
    o->nproc = 1;
    o->nthreads = 1;
    o->ordered = 1;
}

/* Whether a map keeps a copy of each task to send it again to a fresh
 * worker (m->keep): the options under which health.c's handle_dead
 * replaces a dead, timed-out or oversized worker. */
static int keeps_tasks(const pm_options *o)
{
    return o->retries > 0 || o->timeout_ms > 0 || o->deliver_lost ||
           o->max_rss_bytes > 0;
}

/* The replacements: handle_dead (keeps_tasks) and the retirement after
 * max_items_per_worker (pm__poll_health), both in health.c. */
int pm_options_respawn(const pm_options *o)
{
    return keeps_tasks(o) || o->max_items_per_worker > 0;
}

static uint64_t pow2_at_least(uint64_t x)
{
    uint64_t p = 1;
    while (p < x)
        p <<= 1;
    return p;
}

/* pm_map_why(NULL): why the last create of this thread failed. */
static __thread char create_why[320];

/* Are the options within their bounds (pm.h)? */
static int options_valid(const pm_options *opt)
{
    if (!opt || opt->nproc < 1 || opt->nthreads < 1 || opt->window < 0 ||
        opt->nproc > PM_MAX_NPROC || opt->nthreads > PM_MAX_NTHREADS ||
        opt->retries < 0 || opt->timeout_ms < 0 ||
        opt->timeout_ms > PM_MAX_TIMEOUT_MS)
        return 0;
    return !opt->ring_bytes ||
           (opt->ring_bytes >= 4096 &&
            !(opt->ring_bytes & (opt->ring_bytes - 1)));
}

static int create(pm_map **out, const pm_options *opt, pm_produce_fn produce,
                  pm_gather_fn gather, pm_release_fn release,
                  void *produce_ctx, pm_work_fn work, void *work_ctx,
                  const pm_hooks *hooks)
{
    int err = 0;
    pm_map *m = NULL;
    *out = NULL;
    create_why[0] = '\0';
    if (!(produce || gather) || !work || !options_valid(opt))
        return -EINVAL;

    m = calloc(1, sizeof *m);
    if (!m)
        return -ENOMEM;
    m->creator = getpid();
    pm__watch_forks();
    m->opt = *opt;
    if (!m->opt.window)
        m->opt.window = PM_DEFAULT_WINDOW;
    if (!m->opt.ring_bytes)
        m->opt.ring_bytes = PM_DEFAULT_RING;
    m->produce = produce;
    m->gather = gather;
    m->release = release;
    m->produce_ctx = produce_ctx;
    m->work = work;
    m->work_ctx = work_ctx;
    if (hooks)
        m->hooks = *hooks;
    m->held_slot = -1;
    m->volatile_slot = -1;
    m->assembly_slot = -1;
    m->last_slot = -1;
    m->keep = keeps_tasks(&m->opt);
    m->spin.budget_ns = PM_SPIN_MIN_NS * 8;
    m->nslots = m->opt.nproc * m->opt.nthreads;
    m->win = pow2_at_least((uint64_t)m->nslots * (uint64_t)m->opt.window);
    /* Dispatch in batches: once an eighth of the slots' tasks are done
     * (the rest keeps the workers busy meanwhile). */
    uint64_t cap = (uint64_t)m->nslots * (uint64_t)m->opt.window;
    m->fifo_mask = (uint32_t)pow2_at_least((uint64_t)m->opt.window) - 1;
    m->refill_at = cap - cap / 8;

    m->efd = -1;
    m->workers = calloc((size_t)m->opt.nproc, sizeof *m->workers);
    m->slots = calloc((size_t)m->nslots, sizeof *m->slots);
    m->slot_of = calloc((size_t)m->win, sizeof *m->slot_of);
    m->pids = calloc((size_t)m->opt.nproc, sizeof *m->pids);
    m->pfds = calloc((size_t)m->opt.nproc + 1, sizeof *m->pfds);
    if (!m->workers || !m->slots || !m->slot_of || !m->pids || !m->pfds) {
        err = -ENOMEM;
        goto fail;
    }
    for (int w = 0; w < m->opt.nproc; w++)
        m->workers[w].pidfd = -1;
#ifdef __linux__
    /* Without it, the parent sleeps on the futex and notices deaths on
     * naps (idle.c, PARENT_SLEEP_MS). */
    m->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
#endif
    err = pm__shm_map(m, create_why, sizeof create_why);
    if (err < 0)
        goto fail;
    for (int i = 0; i < m->nslots; i++) {
        m->slots[i].fifo = calloc((size_t)m->fifo_mask + 1,
                                  sizeof *m->slots[i].fifo);
        if (!m->slots[i].fifo) {
            err = -ENOMEM;
            goto fail;
        }
    }
    *out = m;
    return 0;
fail:
    pm_map_destroy(m);
    return err;
}

int pm_map_create(pm_map **out, const pm_options *opt, pm_produce_fn produce,
                  void *produce_ctx, pm_work_fn work, void *work_ctx,
                  const pm_hooks *hooks)
{
    *out = NULL;
    if (!produce)
        return -EINVAL;
    return create(out, opt, produce, NULL, NULL, produce_ctx, work, work_ctx,
                  hooks);
}

int pm_map_create_gather(pm_map **out, const pm_options *opt,
                         pm_gather_fn gather, pm_release_fn release,
                         void *produce_ctx, pm_work_fn work, void *work_ctx,
                         const pm_hooks *hooks)
{
    *out = NULL;
    if (!gather)
        return -EINVAL;
    return create(out, opt, NULL, gather, release, produce_ctx, work,
                  work_ctx, hooks);
}

int pm_map_start(pm_map *m)
{
    if (getpid() != m->creator)
        return PM_ENOTOWNER;
    if (m->started)
        return 0;
    m->started = 1;
    for (int w = 0; w < m->opt.nproc; w++) {
        int rc = pm__spawn(m, w);
        if (rc < 0)
            return rc;
    }
    return 0;
}


/* --- the public entry points --------------------------------------------- */

int pm_map_next(pm_map *m, pm_result *res)
{
    /* Only a process forked after the map was made can be another one
     * (pm__watch_forks): one load per call, a getpid() only there. */
    if (pm__forked && getpid() != m->creator)
        return PM_ENOTOWNER;
    pm__release_held(m);
    if (m->error)
        return m->error;
    if (!m->started) {
        int rc = pm_map_start(m);
        if (rc < 0)
            return pm__fail(m, rc);
    }
    for (;;) {
        int progress = 0;
        int rc;
        /* Look at the workers now and then even when busy: a worker that
         * dies while the others keep the parent busy is noticed too. */
        if ((++m->loops & 63) == 0 && pm__now_ns() >= m->next_health_ns) {
            rc = pm__poll_health(m);
            if (rc < 0)
                return pm__fail(m, rc);
        }
        if (pm__dispatch_due(m)) {
            rc = pm__dispatch(m, &progress);
            if (rc < 0)
                return pm__fail(m, rc);
        }
        if (m->finish_scan && m->input_done)
            pm__finish_idle(m);
        if (m->retire_scan)
            pm__retire_idle(m);
        rc = pm__deliver(m, res, &progress);
        if (rc < 0)
            return pm__fail(m, rc);
        if (rc == 1) {
            if (++m->checks >= CHECK_EVERY && m->hooks.check) {
                m->checks = 0;
                /* Keep the result: the check runs before it is handed out,
                 * so an abort here must not lose it silently. */
                int c = m->hooks.check(m->hooks.ctx);
                if (c != 0)
                    return pm__fail(m, c);
            }
            return 1;
        }
        if (m->outstanding == 0 && m->input_done)
            return 0;
        if (!progress) {
            rc = pm__idle_wait(m);
            if (rc != 0)
                return pm__fail(m, rc);
        }
    }
}

void pm_map_wake(pm_map *m)
{
    /* Release: the task the source made is seen by the dispatch that takes
     * the flag.  pm__ring_parent's fence orders the store before its look
     * at the parent's sleeping word, as a worker's publish is ordered. */
    atomic_store_explicit(&m->input_woken, 1, memory_order_release);
    pm__ring_parent(m);
}

void *pm_map_take_result(pm_map *m)
{
    void *p = NULL;
    if (m->assembly_slot >= 0) {
        pm_slot *s = &m->slots[m->assembly_slot];
        p = pm__asm_take_buf(&s->assembly);
        m->assembly_slot = -1;
    } else if (m->held_copy) {
        p = m->held_copy;
        m->held_copy = NULL;
    }
    return p;
}

uint64_t pm_map_result_rss(const pm_map *m)
{
    return m->result_rss;
}

void *pm_map_take_routed(pm_map *m)
{
    void *o = m->routed;
    m->routed = NULL;
    return o;
}

int pm_map_resume(pm_map *m)
{
    if (m->error)
        return PM_ESTATE;
    m->input_done = 0;
    return 0;
}

const pm_death *pm_map_death(const pm_map *m)
{
    return m->error == PM_EWORKERDIED ||
                   (m->error == PM_ECORRUPT && m->death_corrupt)
               ? &m->death
               : NULL;
}

const char *pm_map_why(const pm_map *m)
{
    return m ? m->why : create_why;
}

const pid_t *pm_map_pids(const pm_map *m, int *n)
{
    *n = m->opt.nproc;
    return m->pids;
}

int pm_map_destroy(pm_map *m)
{
    if (!m)
        return 0;
    int mine = getpid() == m->creator;
    if (mine && m->started) {
        /* PM_STOP_GRACE_MS: more time for workers to exit by themselves,
         * for runs under valgrind, where they are 50 times slower. */
        const char *g = getenv("PM_STOP_GRACE_MS");
        pm__stop_all(m, g ? atoi(g) : STOP_GRACE_MS);
    }
    /* In another process (a fork of the creator's) the mappings are not
     * there when they were kept out of forks: its addresses may hold
     * something else by now. */
    int mapped = mine || !m->dontfork;
    if (mapped)
        pm__shm_unmap(m);
    if (m->efd >= 0)
        close(m->efd);
    for (int w = 0; m->workers && w < m->opt.nproc; w++)
        if (m->workers[w].pidfd >= 0)
            close(m->workers[w].pidfd);
    free(m->pfds);
    free(m->held_copy);
    /* Owners are the creator's to release; a forked child only frees. */
    pm_hooks h = m->hooks;
    if (!mine)
        h.route_release = NULL;
    if (h.route_release && m->routed)
        h.route_release(h.ctx, m->routed);
    if (m->slots) {
        for (int i = 0; i < m->nslots; i++) {
            pm_slot *s = &m->slots[i];
            for (uint32_t k = 0; s->fifo && k < s->fifo_n; k++) {
                pm_inflight *e = pm__fifo_at(m, s, k);
                free(e->copy);
                free(e->result);
                if (h.route_release && e->routed)
                    h.route_release(h.ctx, e->routed);
            }
            if (mine)
                pm__pend_release(m, s);
            free(m->slots[i].fifo);
            free(m->slots[i].pend);
            pm__asm_free(&s->assembly, &h);
        }
    }
    free(m->slots);
    free(m->workers);
    free(m->slot_of);
    free(m->pids);
    free(m->lost);
    free(m);
    return 0;
}
