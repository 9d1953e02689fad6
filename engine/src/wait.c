/* wait.c -- futex wait/wake on shared words, with a portable fallback. */
/* GNU and POSIX interfaces under any -std (builds may -D it too). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "wait.h"

#include <errno.h>
#include <sched.h>
#include <time.h>

#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

uint64_t pm__now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int pm__spin_until(pm_spin *s, int (*ready)(void *), void *arg)
{
    uint64_t t0 = pm__now_ns(), now = t0;
    do {
        for (int i = 0; i < 64; i++) {
            if (ready(arg)) {
                pm__spin_hit(s);
                return 1;
            }
            pm__cpu_relax();
        }
        now = pm__now_ns();
    } while (now - t0 < PM_SPIN_PAUSE_NS && now - t0 < s->budget_ns);
    while (now - t0 < s->budget_ns) {
        sched_yield();
        if (ready(arg)) {
            pm__spin_hit(s);
            return 1;
        }
        now = pm__now_ns();
    }
    pm__spin_miss(s);
    return 0;
}

#ifdef __linux__
int pm__futex_wait(_Atomic uint32_t *addr, uint32_t expected, int timeout_ms)
{
    struct timespec ts;
    ts.tv_sec = timeout_ms / 1000;
    ts.tv_nsec = (long)(timeout_ms % 1000) * 1000000L;
    /* Not FUTEX_PRIVATE: the word lives in memory shared between processes. */
    long rc = syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAIT, expected, &ts,
                      NULL, 0);
    if (rc == 0 || errno == EAGAIN)
        return 0;
    return errno == ETIMEDOUT ? -ETIMEDOUT : errno == EINTR ? -EINTR : 0;
}

void pm__futex_wake(_Atomic uint32_t *addr)
{
    syscall(SYS_futex, (uint32_t *)addr, FUTEX_WAKE, 0x7fffffff, NULL, NULL,
            0);
}
#else
/* Portable fallback: poll the word with short sleeps.  Correct (the bell
 * protocol only needs "returns when the word changes or time passes"), slower
 * to wake than a futex. */
int pm__futex_wait(_Atomic uint32_t *addr, uint32_t expected, int timeout_ms)
{
    uint64_t deadline = pm__now_ns() + (uint64_t)timeout_ms * 1000000u;
    struct timespec ts = {0, 50000};
    while (atomic_load_explicit(addr, memory_order_acquire) == expected) {
        if (pm__now_ns() >= deadline)
            return -ETIMEDOUT;
        if (nanosleep(&ts, NULL) != 0 && errno == EINTR)
            return -EINTR;
    }
    return 0;
}

void pm__futex_wake(_Atomic uint32_t *addr)
{
    (void)addr;
}
#endif
