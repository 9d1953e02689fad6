/*
 * wait.h -- sleeping and waking across processes.
 *
 * A bell is a pair of shared words: seq (the futex word) and sleeping (set by
 * the one process or thread that may sleep on the bell).  The waiter
 *   v = pm__bell_prepare(b); recheck its condition; pm__bell_sleep(b, v, ms);
 *   pm__bell_done(b);
 * and the party that makes the condition true calls pm__bell_ring(b).  Both
 * sides issue a full fence between their store and their load, so either the
 * waiter sees the new state on its recheck or the ringer sees sleeping set and
 * bumps seq, which makes the futex wait return at once.  While work flows the
 * waiter never sleeps and pm__bell_ring is one fence and one load: no syscall.
 */
#ifndef PM_WAIT_H
#define PM_WAIT_H

#include <stdatomic.h>
#include <stdint.h>

typedef struct pm_bell {
    _Alignas(64) _Atomic uint32_t seq;
    _Atomic uint32_t sleeping;
} pm_bell;

static inline void pm__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

/* Blocks while *addr == expected, at most timeout_ms.  Returns 0 when woken
 * or the value differs, -ETIMEDOUT, or -EINTR. */
int pm__futex_wait(_Atomic uint32_t *addr, uint32_t expected, int timeout_ms);

/* Wakes every waiter on addr. */
void pm__futex_wake(_Atomic uint32_t *addr);

static inline uint32_t pm__bell_prepare(pm_bell *b)
{
    uint32_t v = atomic_load_explicit(&b->seq, memory_order_acquire);
    atomic_store_explicit(&b->sleeping, 1, memory_order_relaxed);
    atomic_thread_fence(memory_order_seq_cst);
    return v;
}

static inline int pm__bell_sleep(pm_bell *b, uint32_t v, int timeout_ms)
{
    return pm__futex_wait(&b->seq, v, timeout_ms);
}

static inline void pm__bell_done(pm_bell *b)
{
    atomic_store_explicit(&b->sleeping, 0, memory_order_relaxed);
}

/* Wakes the bell's waiter if it is (about to be) asleep.  Cheap otherwise.
 * The ringer that wakes it clears sleeping: until the waiter runs again
 * (which on a loaded machine takes a time slice), later rings are a fence
 * and a load, not a futex wake each.  The waiter's futex wait returns all
 * the same (seq moved), and it sets sleeping again before it sleeps again. */
static inline void pm__bell_ring(pm_bell *b)
{
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load_explicit(&b->sleeping, memory_order_relaxed) &&
        atomic_exchange_explicit(&b->sleeping, 0, memory_order_relaxed)) {
        atomic_fetch_add_explicit(&b->seq, 1, memory_order_release);
        pm__futex_wake(&b->seq);
    }
}

/* Monotonic clock in nanoseconds (vDSO: no syscall on Linux). */
uint64_t pm__now_ns(void);

/*
 * Adaptive spinning: how long a waiter polls before it sleeps.  The budget
 * doubles when polling paid off (the condition came true while spinning) and
 * halves when the waiter had to sleep anyway, between the bounds below.
 */
typedef struct pm_spin {
    uint32_t budget_ns;
} pm_spin;

#define PM_SPIN_MIN_NS 1000u
#define PM_SPIN_PAUSE_NS 5000u /* pure spinning before yielding the CPU */
#define PM_SPIN_MAX_NS 100000u

static inline void pm__spin_hit(pm_spin *s)
{
    uint32_t b = s->budget_ns * 2;
    s->budget_ns = b > PM_SPIN_MAX_NS ? PM_SPIN_MAX_NS : b;
}

static inline void pm__spin_miss(pm_spin *s)
{
    uint32_t b = s->budget_ns / 2;
    s->budget_ns = b < PM_SPIN_MIN_NS ? PM_SPIN_MIN_NS : b;
}

/* Polling phase before a sleep, shared by the parent and the workers: the
 * first PM_SPIN_PAUSE_NS (or the budget, when smaller) with the CPU's
 * pause hint, then yielding the CPU
 * between polls until the budget is spent.  Yielding matters when there are
 * more busy processes than cores: a pure spin would keep the very process
 * it waits for off the CPU.  Returns 1 when ready(arg) came true (and grows
 * the budget), 0 when the budget ran out (and shrinks it). */
int pm__spin_until(pm_spin *s, int (*ready)(void *), void *arg);

#endif
