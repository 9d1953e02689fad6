/*
 * risky.c -- a job whose items misbehave, and a program that survives them.
 *
 *     risky
 *
 * Each item asks a worker process to count the primes below some number.
 * Some items are rigged: one crashes its worker with a segmentation fault,
 * one calls abort(), one calls _exit(3), one never returns, and one has bad
 * input and fails cleanly with a message.  Whatever an item does, it takes
 * down at most its own worker process: the engine forks a fresh one, the
 * other items carry on, and every item comes back with its status.  The
 * program prints one line per item, then a summary, and exits 0.
 *
 * Build: cc risky.c $(pkg-config --cflags --libs parmapper)
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <pm.h>

typedef enum { PRIMES, SEGFAULT, ABORT, EXIT, HANG } kind;

typedef struct request {
    const char *what;
    kind kind;
    long n;
} request;

/* The input.  The records given to the job point into this array: the
 * workers are forked from this program, so they read their own copy of it
 * and nothing is sent to them but "run item i". */
static const request requests[] = {
    {"primes below 1000", PRIMES, 1000},
    {"primes below 100000", PRIMES, 100000},
    {"a segfault", SEGFAULT, 0},
    {"primes below 2", PRIMES, 2},
    {"abort()", ABORT, 0},
    {"primes below -5", PRIMES, -5},
    {"_exit(3)", EXIT, 3},
    {"an endless loop", HANG, 0},
    {"primes below 1000000", PRIMES, 1000000},
    {"primes below 10", PRIMES, 10},
};
#define NREQ (sizeof requests / sizeof requests[0])

/* Failure codes of the work function: any positive value reports the item
 * as PM_ITEM_FAILED with that code. */
enum { BAD_INPUT = 1, NO_MEMORY = 2 };

/* Writes a message as the item's result and returns code. */
static int fail(pm_writer *out, int code, const char *msg)
{
    int rc = pm_write(out, msg, strlen(msg));
    return rc < 0 ? rc : code;
}

/* The work function, run in a worker process for each item.  Its result is
 * text, written with pm_write(): "N primes", or why it failed. */
static int run_request(void *ctx, const void *in, size_t len, pm_writer *out)
{
    (void)ctx;
    (void)len;
    const request *r = in;
    switch (r->kind) {
    case SEGFAULT:
        raise(SIGSEGV); /* as a NULL dereference would, minus the UB */
        break;
    case ABORT:
        abort();
    case EXIT:
        _exit((int)r->n);
    case HANG:
        for (;;)
            pause(); /* until opt.timeout_ms runs out and SIGKILL comes */
    case PRIMES:
        break;
    }
    if (r->n < 0)
        return fail(out, BAD_INPUT, "n must not be negative");

    /* Sieve of Eratosthenes over [0, n). */
    char *composite = calloc((size_t)r->n + 1, 1);
    if (!composite)
        return fail(out, NO_MEMORY, "out of memory");
    long count = 0;
    for (long i = 2; i < r->n; i++) {
        if (composite[i])
            continue;
        count++;
        for (long k = i * i; k < r->n; k += i)
            composite[k] = 1;
    }
    free(composite);
    char buf[32];
    int n = snprintf(buf, sizeof buf, "%ld primes", count);
    return pm_write(out, buf, (size_t)n);
}

int main(void)
{
    /* Crashing on purpose: no core files, please (workers inherit this). */
    struct rlimit no_core = {0, 0};
    if (setrlimit(RLIMIT_CORE, &no_core) != 0) {
        perror("risky: setrlimit");
        return 1;
    }

    /* Workers forked after a crash inherit whatever stdio holds unwritten
     * at that moment, and would write it again if they flushed it (a work
     * function calling exit(), say).  Lines that leave at once avoid that. */
    if (setvbuf(stdout, NULL, _IOLBF, 0) != 0) {
        perror("risky: setvbuf");
        return 1;
    }

    pm_record recs[NREQ];
    for (size_t i = 0; i < NREQ; i++)
        recs[i] = (pm_record){&requests[i], sizeof requests[i]};

    pm_job_options opt;
    pm_job_options_init(&opt); /* one worker per CPU, results in order */
    opt.timeout_ms = 1000;     /* an item running longer is abandoned */

    /* Items delivered with each status, and separately the crashed ones
     * whose worker exited rather than being killed by a signal. */
    int nstatus[4] = {0}, nexited = 0;

    pm_job *job = NULL;
    int rc = pm_job_create(&job, &opt, run_request, NULL);
    if (rc < 0)
        goto done;
    rc = pm_job_feed_array(job, recs, NREQ);
    if (rc < 0)
        goto done;

    /* Crashes and timeouts are not errors of pm_job_next(): they are the
     * statuses of items.  It returns 0 once every item is delivered. */
    pm_item it;
    while ((rc = pm_job_next(job, &it)) > 0) {
        const char *what = requests[it.index].what;
        printf("%2u  %-22s ", (unsigned)it.index, what);
        switch (it.status) {
        case PM_ITEM_OK:
            printf("ok: %.*s\n", (int)it.len, (const char *)it.data);
            break;
        case PM_ITEM_FAILED:
            printf("failed with code %d: %.*s\n", it.code, (int)it.len,
                   (const char *)it.data);
            break;
        case PM_ITEM_CRASHED:
            if (it.signal) {
                printf("crashed by signal %d (%s)\n", it.signal,
                       strsignal(it.signal));
            } else {
                printf("exited with status %d\n", it.exit_code);
                nexited++;
            }
            break;
        case PM_ITEM_TIMEDOUT:
            printf("timed out after %d ms\n", (int)opt.timeout_ms);
            break;
        default: /* a status newer than this program */
            printf("status %d\n", it.status);
            continue;
        }
        nstatus[it.status]++;
    }

done:;
    /* Always: stops and reaps the workers, frees the shared memory. */
    int drc = pm_job_destroy(job);
    if (rc == 0)
        rc = drc;
    if (rc < 0) {
        fprintf(stderr, "risky: %s\n", pm_strerror(rc));
        return 1;
    }
    printf("summary: %d ok, %d failed, %d crashed by a signal, %d exited, "
           "%d timed out\n",
           nstatus[PM_ITEM_OK], nstatus[PM_ITEM_FAILED],
           nstatus[PM_ITEM_CRASHED] - nexited, nexited,
           nstatus[PM_ITEM_TIMEDOUT]);
    return 0;
}
