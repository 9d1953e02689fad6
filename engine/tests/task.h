/*
 * task.h -- the engine tests' toolkit: assertions, test declarations, a
 * deterministic PRNG, and the task generator / work function that the map
 * tests share.
 *
 * Every test is a function `void test_NAME(void)` (write TEST_IMPL(NAME)) and
 * is listed in runner.c.  A failed assertion records "file:line: message" in
 * memory shared with the runner (so that a failure in a forked helper or in a
 * worker process is reported too) and ends the process with status 1.
 */
#ifndef PM_TEST_TASK_H
#define PM_TEST_TASK_H

#include <errno.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "pm.h"

#define TEST_IMPL(name) void test_##name(void)

/* --- provided by runner.c ------------------------------------------------ */

extern int pm_test_quick;         /* PM_TEST_QUICK=1: shrink iteration counts */
extern double pm_test_time_scale; /* PM_TEST_TIME_SCALE: stretch time limits */

void pm_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));

/* Milliseconds on the monotonic clock. */
double pm_test_now_ms(void);

/* fork() for a helper process inside a test: the child must end with
 * _exit() (or a failed assertion); it never returns into the runner. */
pid_t pm_test_fork(void);

/* Waits for a helper made by pm_test_fork and asserts it exited with 0. */
#define WAIT_HELPER(pid) pm_test_wait_helper((pid), __FILE__, __LINE__)
void pm_test_wait_helper(pid_t pid, const char *file, int line);

/* Asserts that the calling process has no child left, not even a zombie. */
#define ASSERT_NO_CHILDREN() pm_test_assert_no_children(__FILE__, __LINE__)
void pm_test_assert_no_children(const char *file, int line);

/* Full count, or the smaller one under PM_TEST_QUICK. */
#define N_(full, quick) (pm_test_quick ? (quick) : (full))
/* A time limit in ms, stretched under valgrind. */
#define LIMIT_MS(ms) ((double)(ms) * pm_test_time_scale)

/* --- assertions ---------------------------------------------------------- */

#define ASSERT(expr)                                                           \
    do {                                                                       \
        if (!(expr))                                                           \
            pm_test_fail(__FILE__, __LINE__, "assertion failed: %s", #expr);   \
    } while (0)

#define ASSERT_MSG(expr, ...)                                                  \
    do {                                                                       \
        if (!(expr))                                                           \
            pm_test_fail(__FILE__, __LINE__, __VA_ARGS__);                     \
    } while (0)

/* The operands are stringified here, before they are macro-expanded. */
#define ASSERT_CMP_(type, fmt, a, op, b, sa, sb)                               \
    do {                                                                       \
        type a_ = (type)(a), b_ = (type)(b);                                   \
        if (!(a_ op b_))                                                       \
            pm_test_fail(__FILE__, __LINE__,                                   \
                         "assertion failed: %s %s %s (" fmt " vs " fmt ")",    \
                         sa, #op, sb, a_, b_);                                 \
    } while (0)

#define ASSERT_EQ(a, b) ASSERT_CMP_(long long, "%lld", a, ==, b, #a, #b)
#define ASSERT_NE(a, b) ASSERT_CMP_(long long, "%lld", a, !=, b, #a, #b)
#define ASSERT_LT(a, b) ASSERT_CMP_(long long, "%lld", a, <, b, #a, #b)
#define ASSERT_LE(a, b) ASSERT_CMP_(long long, "%lld", a, <=, b, #a, #b)
#define ASSERT_GT(a, b) ASSERT_CMP_(long long, "%lld", a, >, b, #a, #b)
#define ASSERT_GE(a, b) ASSERT_CMP_(long long, "%lld", a, >=, b, #a, #b)
#define ASSERT_UEQ(a, b)                                                       \
    ASSERT_CMP_(unsigned long long, "%llu", a, ==, b, #a, #b)
#define ASSERT_ULE(a, b)                                                       \
    ASSERT_CMP_(unsigned long long, "%llu", a, <=, b, #a, #b)
#define ASSERT_ULT(a, b)                                                       \
    ASSERT_CMP_(unsigned long long, "%llu", a, <, b, #a, #b)
#define ASSERT_UGE(a, b)                                                       \
    ASSERT_CMP_(unsigned long long, "%llu", a, >=, b, #a, #b)
#define ASSERT_DBL_LT(a, b) ASSERT_CMP_(double, "%.1f", a, <, b, #a, #b)
#define ASSERT_STREQ(a, b)                                                     \
    do {                                                                       \
        const char *a_ = (a), *b_ = (b);                                       \
        if (!a_ || !b_ || strcmp(a_, b_) != 0)                                 \
            pm_test_fail(__FILE__, __LINE__,                                   \
                         "assertion failed: %s == %s (\"%s\" vs \"%s\")", #a,  \
                         #b, a_ ? a_ : "(null)", b_ ? b_ : "(null)");          \
    } while (0)

/* An engine call that must return rc_expect: prints the names of both. */
#define ASSERT_RC(call, expect)                                                \
    do {                                                                       \
        int r_ = (call), e_ = (expect);                                        \
        if (r_ != e_)                                                          \
            pm_test_fail(__FILE__, __LINE__,                                   \
                         "%s returned %d (%s), expected %d (%s)", #call, r_,   \
                         pm_errname(r_), e_, pm_errname(e_));                  \
    } while (0)
#define ASSERT_OK(call) ASSERT_RC(call, 0)

/* Byte comparison that names the first differing offset. */
#define ASSERT_MEM_EQ(a, b, n)                                                 \
    do {                                                                       \
        const unsigned char *a_ = (const unsigned char *)(a);                  \
        const unsigned char *b_ = (const unsigned char *)(b);                  \
        size_t n_ = (n);                                                       \
        for (size_t i_ = 0; i_ < n_; i_++)                                     \
            if (a_[i_] != b_[i_])                                              \
                pm_test_fail(__FILE__, __LINE__,                               \
                             "%s and %s differ at byte %zu of %zu "            \
                             "(0x%02x vs 0x%02x)",                             \
                             #a, #b, i_, n_, a_[i_], b_[i_]);                  \
    } while (0)

/* --- deterministic data -------------------------------------------------- */

static inline uint64_t mix64(uint64_t x)
{
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

/* Byte i of the pattern named seed. */
static inline unsigned char pat_byte(uint64_t seed, uint64_t i)
{
    return (unsigned char)(mix64(seed * 0x100000001B3ull + (i >> 3)) >>
                           ((i & 7) * 8));
}

/* Fills p[0..n) with bytes off..off+n of pattern seed. */
static inline void pat_fill(unsigned char *p, size_t n, uint64_t seed,
                            uint64_t off)
{
    for (size_t i = 0; i < n; i++)
        p[i] = pat_byte(seed, off + i);
}

/* Offset of the first byte of p[0..n) that is not pattern seed at off, or
 * n when all match. */
static inline size_t pat_check(const unsigned char *p, size_t n, uint64_t seed,
                               uint64_t off)
{
    for (size_t i = 0; i < n; i++)
        if (p[i] != pat_byte(seed, off + i))
            return i;
    return n;
}

static inline uint64_t fnv64(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++)
        h = (h ^ s[i]) * 0x100000001b3ull;
    return h;
}

/* --- the map tests' tasks and work --------------------------------------- */

/*
 * A task covers items [first, first + count).  Its payload is count 8-byte
 * values item_value(x), then pad bytes of pattern first (big tasks).  The
 * result is count 8-byte values item_result(item_value(x)), then, when the
 * task had pad bytes, the fnv64 of those bytes, then result_pad bytes of
 * pattern ~first written in chunks of PRNG sizes (big results).
 */
static inline uint64_t item_value(uint64_t x) { return mix64(x ^ 0x5555); }
static inline uint64_t item_result(uint64_t v) { return v * 3 + 0x1234567; }

typedef struct tgen {
    uint64_t nitems;    /* items in the input */
    uint32_t max_count; /* items per task: 1 + mix64(first) % max_count */
    size_t task_pad;    /* pattern bytes after the values */
    uint64_t fail_at;   /* produce returns fail_rc when next == fail_at */
    int fail_rc;        /* 0: never fails */
    /* state */
    uint64_t next;   /* next item */
    uint64_t ntasks; /* tasks produced */
    uint64_t calls;  /* calls of the produce function */
    unsigned char *buf;
    size_t cap;
} tgen;

enum { DIE_NONE = 0, DIE_EXIT3, DIE_SIGKILL, DIE_RETURN_NEG };

typedef struct twork {
    size_t result_pad;  /* pattern bytes appended to each result */
    size_t chunk;       /* max bytes per pm_write of the pad (0: one write) */
    int die_mode;       /* DIE_* on the task that holds item die_item */
    uint64_t die_item;
    unsigned sleep_ms;  /* every task sleeps this long */
    uint64_t slow_item; /* the task holding this item sleeps slow_ms */
    unsigned slow_ms;
    int tag_pid;        /* results start with {pid, worker index} (16 bytes) */
} twork;

/* Items of the task starting at first. */
static inline uint32_t tgen_count(const tgen *g, uint64_t first)
{
    uint64_t c = 1 + mix64(first) % (g->max_count ? g->max_count : 1);
    if (c > g->nitems - first)
        c = g->nitems - first;
    return (uint32_t)c;
}

int tgen_produce(void *ctx, pm_task *task, const void **data, size_t *len);
int twork_work(void *ctx, const pm_task *task, const void *in, size_t len,
               pm_writer *out);
/* The worker index after_fork_child recorded (-1 in the parent). */
extern int twork_worker_index;
void twork_after_fork_child(void *ctx, int worker);

/* Asserts that res answers a task of g correctly (meta and bytes). */
#define CHECK_RESULT(g, w, res) check_result_((g), (w), (res), __FILE__, __LINE__)
void check_result_(const tgen *g, const twork *w, const pm_result *res,
                   const char *file, int line);

void tgen_free(tgen *g);

#endif
