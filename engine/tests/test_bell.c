/* test_bell.c -- futex bells (wait.h): timeouts and lost wake-ups. */
#include <pthread.h>
#include <sys/mman.h>

#include "task.h"
#include "wait.h"

TEST_IMPL(bell_futex_timeout)
{
    _Atomic uint32_t word = 5;
    double t0 = pm_test_now_ms();
    ASSERT_RC(pm__futex_wait(&word, 5, 60), -ETIMEDOUT);
    double dt = pm_test_now_ms() - t0;
    ASSERT_MSG(dt >= 50, "the 60 ms wait returned after %.1f ms", dt);
    ASSERT_DBL_LT(dt, LIMIT_MS(1000));
    /* A word that already differs returns at once. */
    t0 = pm_test_now_ms();
    ASSERT_RC(pm__futex_wait(&word, 6, 5000), 0);
    ASSERT_DBL_LT(pm_test_now_ms() - t0, LIMIT_MS(1000));
    /* pm__now_ns is monotonic and in nanoseconds. */
    uint64_t a = pm__now_ns();
    struct timespec ts = {0, 20000000};
    nanosleep(&ts, NULL);
    uint64_t b = pm__now_ns();
    ASSERT_GE(b - a, 19000000);
    ASSERT_LT(b - a, (long long)LIMIT_MS(1000) * 1000000);
}

/*
 * Two parties pass a token back and forth, each always sleeping on its bell
 * (no spinning) with a long timeout.  A lost wake-up shows as a timeout.
 */
typedef struct pingpong {
    pm_bell bell[2];
    _Alignas(64) _Atomic uint32_t turn; /* whose turn: count, even = side 0 */
    uint32_t rounds;
} pingpong;

static void play(pingpong *pp, int side)
{
    pm_bell *mine = &pp->bell[side], *other = &pp->bell[!side];
    for (uint32_t i = 0; i < pp->rounds; i++) {
        uint32_t want = 2 * i + (uint32_t)side;
        while (atomic_load(&pp->turn) != want) {
            uint32_t v = pm__bell_prepare(mine);
            if (atomic_load(&pp->turn) == want) {
                pm__bell_done(mine);
                break;
            }
            int rc = pm__bell_sleep(mine, v, 1000);
            pm__bell_done(mine);
            /* A round takes microseconds: sleeping 1 s means the ring that
             * passed the turn did not wake us. */
            ASSERT_MSG(rc != -ETIMEDOUT,
                       "side %d: lost wake-up in round %u (turn %u, want %u)",
                       side, (unsigned)i, (unsigned)atomic_load(&pp->turn),
                       (unsigned)want);
        }
        atomic_store(&pp->turn, want + 1);
        pm__bell_ring(other);
    }
}

static void *side1(void *p)
{
    play(p, 1);
    return NULL;
}

static pingpong *pingpong_new(uint32_t rounds)
{
    pingpong *pp = mmap(NULL, sizeof *pp, PROT_READ | PROT_WRITE,
                        MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT(pp != MAP_FAILED);
    pp->rounds = rounds;
    return pp;
}

static void pingpong_check(pingpong *pp, double t0)
{
    ASSERT_UEQ(atomic_load(&pp->turn), 2 * pp->rounds);
    ASSERT_DBL_LT(pm_test_now_ms() - t0, LIMIT_MS(15000));
    munmap(pp, sizeof *pp);
}

TEST_IMPL(bell_pingpong_threads)
{
    pingpong *pp = pingpong_new(N_(20000, 2000));
    double t0 = pm_test_now_ms();
    pthread_t th;
    ASSERT_EQ(pthread_create(&th, NULL, side1, pp), 0);
    play(pp, 0);
    ASSERT_EQ(pthread_join(th, NULL), 0);
    pingpong_check(pp, t0);
}

/* The same across processes: the futex must not be process-private. */
TEST_IMPL(bell_pingpong_procs)
{
    pingpong *pp = pingpong_new(N_(20000, 2000));
    double t0 = pm_test_now_ms();
    pid_t pid = pm_test_fork();
    if (pid == 0) {
        play(pp, 1);
        _exit(0);
    }
    play(pp, 0);
    WAIT_HELPER(pid);
    pingpong_check(pp, t0);
}
