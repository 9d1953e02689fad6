/*
 * bench_job.c -- the engine's jobs API (pm_job) against a plain serial loop
 * that calls the same work function on every record, side by side in one run.
 *
 *   bash benchmarks/c/run.sh            build, run, update docs/benchmarks.md
 *   benchmarks/c/build/.../bench_job [--reps R (9)] [--quick] [--only abcde]
 *                      [--ring-bytes N] [--command TEXT] [--note TEXT]
 * (--ring-bytes sets pm_job_options.ring_bytes, for experiments.)
 *
 * Cases (records are 8 bytes, results 8 bytes, except in e):
 *   a  trivial work, 10^6 records: chunk=1 and adaptive chunks (chunk=0),
 *      input from pm_job_feed_array and from pm_job_feed_fn
 *   b  ~1 us of CPU per record (a calibrated arithmetic loop), 10^6 records
 *   c  ~20 us per record, 10^5 records
 *   d  ~1 ms per record, 1000 records
 *   e  64 records of 8 MB in, 8 MB out (array and feed input)
 * Parallel runs use nproc=2 and nproc = the number of usable CPUs when that
 * differs; case a adds nproc=1 with chunk=1 (the parent and its one worker
 * each on a core of their own: the hand-off without oversubscription).  The clock covers the whole call: pm_job_create, the fork of the
 * workers (at the first pm_job_next), every item and pm_job_destroy (which
 * reaps the workers).  Each repetition runs every configuration of a case once,
 * in an order rotated (and reversed) from one repetition to the next; medians
 * are reported, and ratios are taken within a repetition, then their median.
 * Every result is checked against the serial loop's (an untimed reference run):
 * a wrong or missing result stops the program with status 1.
 *
 * Prints the markdown section to stdout (between the markers that run.sh
 * uses to put it into docs/benchmarks.md), progress to stderr.
 */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "pm.h"

#ifndef BENCH_CFLAGS
#define BENCH_CFLAGS "?"
#endif

#define MAXCFG 16
#define MAXREPS 101
#define BIG_WORDS ((size_t)1 << 20) /* 8 MB records in case e */
#define PIECE_WORDS 8192            /* e: results are written 64 KB at a time */

/* --- clocks --------------------------------------------------------------- */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t self_cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* CPU time of the reaped children (the workers, once pm_job_destroy has
 * reaped them). */
static uint64_t children_cpu_ns(void)
{
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    return ((uint64_t)ru.ru_utime.tv_sec + (uint64_t)ru.ru_stime.tv_sec) *
               1000000000u +
           ((uint64_t)ru.ru_utime.tv_usec + (uint64_t)ru.ru_stime.tv_usec) * 1000u;
}

/* Busy time of the whole machine (every CPU, steal included) from
 * /proc/stat, in seconds: what other processes used during a run is this
 * minus the run's own CPU time. */
static double machine_busy_s(void)
{
    static long hz;
    if (!hz)
        hz = sysconf(_SC_CLK_TCK);
    FILE *f = fopen("/proc/stat", "r");
    if (!f)
        return NAN;
    unsigned long long v[8] = {0};
    int n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0],
                   &v[1], &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]);
    fclose(f);
    if (n < 8 || hz <= 0)
        return NAN;
    /* user nice system idle iowait irq softirq steal */
    return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)hz;
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "bench_job: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static void logf_(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fflush(stderr);
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        die("out of memory (%zu bytes)", n);
    return p;
}

/* --- the work --------------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdu;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53u;
    x ^= x >> 33;
    return x;
}

/* The work function of cases a-d: `loops` rounds of a dependent multiply
 * chain (loops = 0 for the trivial work).  noinline: the serial loop and the
 * workers make the same call per record. */
__attribute__((noinline)) static uint64_t work(uint64_t x, uint32_t loops)
{
    uint64_t h = x ^ 0x9e3779b97f4a7c15u;
    for (uint32_t i = 0; i < loops; i++) {
        h ^= h >> 31;
        h *= 0xbf58476d1ce4e5b9u;
    }
    return h ^ (h >> 29);
}

/* Case e: an 8 MB result from an 8 MB record, word by word. */
__attribute__((noinline)) static void transform(const unsigned char *in,
                                                uint64_t *out, size_t words)
{
    for (size_t k = 0; k < words; k++) {
        uint64_t x;
        memcpy(&x, in + 8 * k, 8);
        out[k] = (x * 0x9e3779b97f4a7c15u) ^ (x >> 17);
    }
}

/* What the consumer of case e does with each result: a position-dependent
 * checksum (also what the results are checked with). */
typedef struct sum2 {
    uint64_t a, b;
} sum2;

__attribute__((noinline)) static sum2 fold(const void *p, size_t len)
{
    const unsigned char *c = p;
    uint64_t a = len, b = 0;
    for (size_t k = 0; k < len / 8; k++) {
        uint64_t x;
        memcpy(&x, c + 8 * k, 8);
        a += x;
        b ^= x + k;
    }
    return (sum2){a, b};
}

/* The item functions given to pm_job. */
static int small_fn(void *ctx, const void *in, size_t len, pm_writer *out)
{
    const uint32_t *loops = ctx;
    uint64_t x, r;
    if (len != 8)
        return 1;
    memcpy(&x, in, 8);
    r = work(x, *loops);
    return pm_write(out, &r, 8);
}

static int big_fn(void *ctx, const void *in, size_t len, pm_writer *out)
{
    (void)ctx;
    uint64_t piece[PIECE_WORDS];
    if (len != BIG_WORDS * 8)
        return 1;
    const unsigned char *p = in;
    for (size_t k = 0; k < BIG_WORDS; k += PIECE_WORDS) {
        transform(p + 8 * k, piece, PIECE_WORDS);
        int rc = pm_write(out, piece, sizeof piece);
        if (rc < 0)
            return rc;
    }
    return 0;
}

/* pm_job_feed_fn input: the records of the array, one by one. */
typedef struct feeder {
    const pm_record *recs;
    size_t n, i;
} feeder;

static int feed_next(void *ctx, const void **data, size_t *len)
{
    feeder *f = ctx;
    if (f->i == f->n)
        return 0;
    *data = f->recs[f->i].data;
    *len = f->recs[f->i].len;
    f->i++;
    return 1;
}

static void count_tasks(void *ctx, uint64_t done, uint64_t total)
{
    (void)done;
    (void)total;
    ++*(uint64_t *)ctx;
}

/* --- calibration -------------------------------------------------------------- */

static volatile uint64_t sink;

/* Seconds per call of work(., loops): the fastest of a few batches. */
static double per_call(uint32_t loops, double target)
{
    size_t reps = (size_t)(0.02 / target);
    if (reps < 3)
        reps = 3;
    double best = 1e9;
    for (int b = 0; b < 7; b++) {
        uint64_t t0 = now_ns(), s = 0;
        for (size_t i = 0; i < reps; i++)
            s += work(i, loops);
        sink += s;
        double t = (double)(now_ns() - t0) / 1e9 / (double)reps;
        if (t < best)
            best = t;
    }
    return best;
}

static uint32_t calibrate(double target, double *measured)
{
    uint32_t loops = 100;
    double t = 0;
    for (int i = 0; i < 12; i++) {
        t = per_call(loops, target);
        if (fabs(t / target - 1) <= 0.03)
            break;
        double l = loops * target / t;
        loops = l < 1 ? 1 : (uint32_t)(l + 0.5);
    }
    *measured = t;
    return loops;
}

/* --- configurations and samples ----------------------------------------------- */

typedef struct sample {
    double wall;       /* s */
    double pcpu;       /* the parent's CPU time, s */
    double wcpu;       /* the workers' CPU time, s */
    double first;      /* from the start to the first item, s */
    double destroy;    /* pm_job_destroy, s */
    uint64_t tasks;    /* tasks (chunks) the items came in */
    double others;     /* CPU time used by other processes meanwhile, s */
} sample;

typedef struct config {
    char label[64];
    int serial;
    int nproc;
    size_t chunk;
    int feed;
    sample s[MAXREPS];
    int ns;
} config;

typedef struct bcase {
    char id;
    const char *title;
    size_t n;
    uint32_t loops;
    int big;
    config cfg[MAXCFG];
    int ncfg;
} bcase;

static int nprocs[2], n_nprocs;

static void add_cfg(bcase *c, int serial, int nproc, size_t chunk, int feed)
{
    config *g = &c->cfg[c->ncfg++];
    memset(g, 0, sizeof *g);
    g->serial = serial;
    g->nproc = nproc;
    g->chunk = chunk;
    g->feed = feed;
    if (serial)
        snprintf(g->label, sizeof g->label, "serial loop");
    else
        snprintf(g->label, sizeof g->label, "pm_job nproc=%d, %s, %s", nproc,
                 feed ? "feed_fn" : "feed_array",
                 chunk ? "chunk=1" : "adaptive");
}

/* --- the data ---------------------------------------------------------------- */

typedef struct data {
    size_t n;
    pm_record *recs;
    unsigned char *bytes; /* the records' bytes */
    uint64_t *out;        /* a-d: the results, by index */
    uint64_t *ref;        /* a-d: the serial loop's results */
    sum2 *sums, *ref_sums; /* e: the checksums of the results */
    unsigned char *scratch; /* e: the serial loop's result buffer */
} data;

static void data_make(data *d, const bcase *c)
{
    memset(d, 0, sizeof *d);
    d->n = c->n;
    d->recs = xmalloc(c->n * sizeof *d->recs);
    size_t rlen = c->big ? BIG_WORDS * 8 : 8;
    d->bytes = xmalloc(c->n * rlen);
    for (size_t i = 0; i < c->n; i++) {
        unsigned char *r = d->bytes + i * rlen;
        for (size_t k = 0; k < rlen / 8; k++) {
            uint64_t v = mix64(i * 0x100000001b3u + k);
            memcpy(r + 8 * k, &v, 8);
        }
        d->recs[i].data = r;
        d->recs[i].len = rlen;
    }
    if (c->big) {
        d->sums = xmalloc(c->n * sizeof *d->sums);
        d->ref_sums = xmalloc(c->n * sizeof *d->ref_sums);
        d->scratch = xmalloc(BIG_WORDS * 8);
    } else {
        d->out = xmalloc(c->n * 8);
        d->ref = xmalloc(c->n * 8);
    }
}

static void data_free(data *d)
{
    free(d->recs);
    free(d->bytes);
    free(d->out);
    free(d->ref);
    free(d->sums);
    free(d->ref_sums);
    free(d->scratch);
}

/* --- one run ------------------------------------------------------------------- */

static uint32_t g_loops; /* the work's size, inherited by the workers */
static size_t g_ring_bytes; /* --ring-bytes: pm_job_options.ring_bytes */

static void run_serial(const bcase *c, data *d, sample *s)
{
    uint64_t p0 = self_cpu_ns(), t0 = now_ns();
    if (c->big) {
        for (size_t i = 0; i < d->n; i++) {
            transform(d->recs[i].data, (uint64_t *)d->scratch, BIG_WORDS);
            d->sums[i] = fold(d->scratch, BIG_WORDS * 8);
        }
    } else {
        uint32_t loops = g_loops;
        for (size_t i = 0; i < d->n; i++) {
            uint64_t x;
            memcpy(&x, d->recs[i].data, 8);
            d->out[i] = work(x, loops);
        }
    }
    uint64_t t1 = now_ns();
    s->wall = (t1 - t0) / 1e9;
    s->pcpu = (self_cpu_ns() - p0) / 1e9;
    s->wcpu = 0;
    s->first = s->destroy = 0;
    s->tasks = 0;
}

static void run_job(const bcase *c, const config *g, data *d, sample *s)
{
    pm_job_options o;
    pm_job_options_init(&o);
    o.nproc = g->nproc;
    o.chunk = g->chunk;
    o.ring_bytes = g_ring_bytes;
    uint64_t tasks = 0;
    o.progress = count_tasks;
    o.progress_ctx = &tasks;
    feeder fd = {d->recs, d->n, 0};
    uint64_t expect = 0;
    int bad = 0;
    pm_item it;

    uint64_t c0 = children_cpu_ns();
    uint64_t p0 = self_cpu_ns(), t0 = now_ns(), tfirst = 0;
    pm_job *job = NULL;
    int rc = pm_job_create(&job, &o, c->big ? big_fn : small_fn, &g_loops);
    if (rc == 0)
        rc = g->feed ? pm_job_feed_fn(job, feed_next, &fd)
                     : pm_job_feed_array(job, d->recs, d->n);
    if (c->big) {
        while (rc >= 0 && (rc = pm_job_next(job, &it)) > 0) {
            if (!tfirst)
                tfirst = now_ns();
            if (it.status != PM_ITEM_OK || it.index != expect ||
                it.len != BIG_WORDS * 8) {
                bad = 1;
                break;
            }
            d->sums[it.index] = fold(it.data, it.len);
            expect++;
        }
    } else {
        while (rc >= 0 && (rc = pm_job_next(job, &it)) > 0) {
            if (__builtin_expect(!tfirst, 0))
                tfirst = now_ns();
            if (it.status != PM_ITEM_OK || it.index != expect || it.len != 8) {
                bad = 1;
                break;
            }
            memcpy(&d->out[it.index], it.data, 8);
            expect++;
        }
    }
    uint64_t td = now_ns();
    int drc = pm_job_destroy(job);
    uint64_t t1 = now_ns();
    s->wall = (t1 - t0) / 1e9;
    s->pcpu = (self_cpu_ns() - p0) / 1e9;
    s->wcpu = (children_cpu_ns() - c0) / 1e9;
    s->destroy = (t1 - td) / 1e9;
    s->first = tfirst ? (tfirst - t0) / 1e9 : 0;
    s->tasks = tasks;
    if (rc < 0)
        die("%s: pm_job failed: %s (%s)", g->label, pm_strerror(rc),
            pm_errname(rc));
    if (drc < 0)
        die("%s: pm_job_destroy failed: %s", g->label, pm_strerror(drc));
    if (bad)
        die("%s: item %" PRIu64 " came back wrong (status %d, index %" PRIu64
            ", %zu bytes)", g->label, expect, it.status, it.index, it.len);
    if (expect != d->n)
        die("%s: %" PRIu64 " items delivered, %zu expected", g->label, expect,
            d->n);
}

static void check(const bcase *c, const config *g, data *d)
{
    if (c->big) {
        for (size_t i = 0; i < d->n; i++)
            if (d->sums[i].a != d->ref_sums[i].a || d->sums[i].b != d->ref_sums[i].b)
                die("%s: the result of record %zu differs from the serial loop's",
                    g->label, i);
    } else if (memcmp(d->out, d->ref, d->n * 8) != 0) {
        for (size_t i = 0; i < d->n; i++)
            if (d->out[i] != d->ref[i])
                die("%s: the result of record %zu differs from the serial loop's",
                    g->label, i);
    }
}

static void clear(const bcase *c, data *d)
{
    if (c->big)
        memset(d->sums, 0, d->n * sizeof *d->sums);
    else
        memset(d->out, 0, d->n * 8);
}

/* --- statistics and formatting -------------------------------------------------- */

static int cmpd(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    if (n == 0)
        return NAN;
    qsort(v, (size_t)n, sizeof *v, cmpd);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* Median of one field of a configuration's samples. */
static double med_field(const config *g, size_t off)
{
    double v[MAXREPS];
    for (int i = 0; i < g->ns; i++)
        v[i] = *(const double *)((const char *)&g->s[i] + off);
    return median(v, g->ns);
}

#define MED(g, f) med_field((g), offsetof(sample, f))

/* Median over the repetitions of this configuration's time divided by the
 * serial loop's in the same repetition (what: 0 time, 1 the inverse, 2 CPU
 * time, the workers' included). */
static double med_ratio(const config *g, const config *ser, int what)
{
    double v[MAXREPS];
    int n = g->ns < ser->ns ? g->ns : ser->ns;
    for (int i = 0; i < n; i++)
        v[i] = what == 0 ? g->s[i].wall / ser->s[i].wall
             : what == 1 ? ser->s[i].wall / g->s[i].wall
                         : (g->s[i].pcpu + g->s[i].wcpu) / ser->s[i].pcpu;
    return median(v, n);
}

/* Median share of the machine's CPU time that other processes used during
 * this configuration's runs. */
static double med_others(const config *g, long ncpu)
{
    double v[MAXREPS];
    for (int i = 0; i < g->ns; i++)
        v[i] = g->s[i].others / (g->s[i].wall * (double)ncpu);
    return median(v, g->ns);
}

static const char *fmt_time(char *b, double s)
{
    if (s >= 1)
        snprintf(b, 32, "%.2f s", s);
    else if (s >= 1e-3)
        snprintf(b, 32, "%.3g ms", s * 1e3);
    else
        snprintf(b, 32, "%.3g µs", s * 1e6);
    return b;
}

static const char *fmt_rate(char *b, double r)
{
    if (r >= 1e6)
        snprintf(b, 32, "%.2f M/s", r / 1e6);
    else if (r >= 1e3)
        snprintf(b, 32, "%.1f k/s", r / 1e3);
    else
        snprintf(b, 32, "%.0f /s", r);
    return b;
}

static const char *fmt_ns(char *b, double ns)
{
    if (ns >= 1e6)
        snprintf(b, 32, "%.3g ms", ns / 1e6);
    else if (ns >= 1e4)
        snprintf(b, 32, "%.3g µs", ns / 1e3);
    else
        snprintf(b, 32, "%.0f ns", ns);
    return b;
}

/* --- machine ----------------------------------------------------------------------- */

static void cpu_model(char *b, size_t n)
{
    snprintf(b, n, "?");
    FILE *f = fopen("/proc/cpuinfo", "r");
    if (!f)
        return;
    char line[512];
    while (fgets(line, sizeof line, f)) {
        if (strncmp(line, "model name", 10) == 0) {
            char *p = strchr(line, ':');
            if (p) {
                p++;
                while (*p == ' ' || *p == '\t')
                    p++;
                p[strcspn(p, "\n")] = 0;
                snprintf(b, n, "%s", p);
            }
            break;
        }
    }
    fclose(f);
}

static double mem_gib(void)
{
    long pages = sysconf(_SC_PHYS_PAGES), ps = sysconf(_SC_PAGESIZE);
    return pages > 0 && ps > 0 ? (double)pages * ps / (1u << 30) : 0;
}

static int usable_cpus(void)
{
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0)
        return CPU_COUNT(&set);
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* --- main ---------------------------------------------------------------------------- */

int main(int argc, char **argv)
{
    int reps = 9, quick = 0;
    const char *only = "abcde", *command = NULL, *note = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--reps") && i + 1 < argc)
            reps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--quick"))
            quick = 1;
        else if (!strcmp(argv[i], "--only") && i + 1 < argc)
            only = argv[++i];
        else if (!strcmp(argv[i], "--command") && i + 1 < argc)
            command = argv[++i];
        else if (!strcmp(argv[i], "--note") && i + 1 < argc)
            note = argv[++i];
        else if (!strcmp(argv[i], "--ring-bytes") && i + 1 < argc)
            g_ring_bytes = strtoull(argv[++i], NULL, 0);
        else {
            fprintf(stderr,
                    "usage: %s [--reps R] [--quick] [--only abcde] "
                    "[--ring-bytes N] [--command TEXT] [--note TEXT]\n",
                    argv[0]);
            return 2;
        }
    }
    if (quick && reps == 9)
        reps = 1;
    if (reps < 1 || reps > MAXREPS)
        die("--reps: 1 .. %d", MAXREPS);

    char argline[1024] = "";
    for (int i = 0; i < argc; i++) {
        size_t l = strlen(argline);
        snprintf(argline + l, sizeof argline - l, "%s%s", i ? " " : "", argv[i]);
    }

    int ncpu = usable_cpus();
    long online = sysconf(_SC_NPROCESSORS_ONLN);
    nprocs[n_nprocs++] = 2;
    if (ncpu != 2)
        nprocs[n_nprocs++] = ncpu;

    double la0[3] = {0}, la1[3] = {0};
    getloadavg(la0, 3);
    time_t started = time(NULL);
    uint64_t run0 = now_ns();

    /* Calibration. */
    double targets[3] = {1e-6, 20e-6, 1e-3}, measured[3];
    uint32_t loops[3];
    for (int i = 0; i < 3; i++) {
        loops[i] = calibrate(targets[i], &measured[i]);
        logf_("calibrated: %u rounds = %.2f us per call (target %.0f us)\n",
              loops[i], measured[i] * 1e6, targets[i] * 1e6);
    }
    double trivial = per_call(0, 1e-8);

    size_t k = quick ? 10 : 1;
    static bcase cases[5];
    static const struct {
        char id;
        const char *title;
        size_t n;
        int work; /* -1 trivial, else the index in loops[] */
    } spec[5] = {
        {'a', "trivial work (8-byte record → 8-byte result)", 1000000, -1},
        {'b', "~1 µs of CPU per record", 1000000, 0},
        {'c', "~20 µs of CPU per record", 100000, 1},
        {'d', "~1 ms of CPU per record", 1000, 2},
        {'e', "8 MB records in, 8 MB results out", 64, -1},
    };
    for (int ci = 0; ci < 5; ci++) {
        bcase *c = &cases[ci];
        c->id = spec[ci].id;
        c->title = spec[ci].title;
        c->big = c->id == 'e';
        c->n = c->big ? (quick ? 8 : 64) : spec[ci].n / k;
        c->loops = spec[ci].work < 0 ? 0 : loops[spec[ci].work];
        add_cfg(c, 1, 0, 0, 0);
        for (int p = 0; p < n_nprocs; p++) {
            if (c->id == 'a') {
                add_cfg(c, 0, nprocs[p], 1, 0);
                add_cfg(c, 0, nprocs[p], 0, 0);
                add_cfg(c, 0, nprocs[p], 1, 1);
                add_cfg(c, 0, nprocs[p], 0, 1);
            } else {
                add_cfg(c, 0, nprocs[p], 0, 0);
                if (c->id == 'e')
                    add_cfg(c, 0, nprocs[p], 0, 1);
            }
        }
        /* A reference for the per-record overhead: one worker, so that the
         * parent and the worker each have a core of their own. */
        if (c->id == 'a' && ncpu > 1)
            add_cfg(c, 0, 1, 1, 0);
    }

    for (int ci = 0; ci < 5; ci++) {
        bcase *c = &cases[ci];
        if (!strchr(only, c->id))
            continue;
        data d;
        data_make(&d, c);
        g_loops = c->loops;
        /* The reference: an untimed serial run (it also warms the pages). */
        sample junk;
        run_serial(c, &d, &junk);
        if (c->big)
            memcpy(d.ref_sums, d.sums, d.n * sizeof *d.sums);
        else
            memcpy(d.ref, d.out, d.n * 8);
        for (int r = 0; r < reps; r++) {
            int order[MAXCFG];
            for (int i = 0; i < c->ncfg; i++)
                order[i] = (i + r) % c->ncfg;
            if (r % 2)
                for (int i = 0; i < c->ncfg / 2; i++) {
                    int t = order[i];
                    order[i] = order[c->ncfg - 1 - i];
                    order[c->ncfg - 1 - i] = t;
                }
            for (int i = 0; i < c->ncfg; i++) {
                config *g = &c->cfg[order[i]];
                clear(c, &d);
                sample *s = &g->s[g->ns];
                double busy0 = machine_busy_s();
                if (g->serial)
                    run_serial(c, &d, s);
                else
                    run_job(c, g, &d, s);
                s->others = machine_busy_s() - busy0 - s->pcpu - s->wcpu;
                if (!(s->others > 0))
                    s->others = 0;
                check(c, g, &d);
                g->ns++;
                logf_("[%c] rep %d/%d %-40s %9.4f s  (CPU: parent %.3f s, "
                      "workers %.3f s, other processes %.3f s)\n", c->id,
                      r + 1, reps, g->label, s->wall, s->pcpu, s->wcpu,
                      s->others);
            }
        }
        data_free(&d);
    }
    getloadavg(la1, 3);
    double wall = (now_ns() - run0) / 1e9;

    /* --- the report --- */
    char tb[64], b1[32], b2[32], b3[32], b4[32], b5[32], b6[32];
    struct tm tm;
    gmtime_r(&started, &tm);
    strftime(tb, sizeof tb, "%Y-%m-%d %H:%M UTC", &tm);
    char cpu[256];
    cpu_model(cpu, sizeof cpu);
    struct utsname un;
    uname(&un);

    printf("<!-- c-bench:begin -->\n");
    printf("<!-- Generated by benchmarks/c/run.sh (benchmarks/c/bench_job.c) from a "
           "real run: rerun it rather than editing the numbers. -->\n\n");
    printf("`benchmarks/c/bench_job.c` maps one C function over records with the "
           "engine's jobs API (`pm_job_create`, `pm_job_feed_array` or "
           "`pm_job_feed_fn`, `pm_job_next` until the end, `pm_job_destroy`) and "
           "with a plain serial loop that calls the same function on every record "
           "and writes its result into a buffer, side by side in one run of:\n\n");
    printf("```sh\n%s\n```\n\n", command ? command : argline);
    if (quick)
        printf("**This is a `--quick` smoke run: sizes divided by 10, one "
               "repetition. Its numbers are not the reference.**\n\n");

    printf("| machine | |\n|---|---|\n");
    printf("| CPU | %s, %ld cores online, %d usable |\n", cpu, online, ncpu);
    printf("| memory | %.1f GiB |\n", mem_gib());
    printf("| OS | %s %s (%s) |\n", un.sysname, un.release, un.machine);
    printf("| compiler | gcc %s, `%s` (engine sources compiled with the "
           "benchmark) |\n", __VERSION__, BENCH_CFLAGS);
    if (note)
        printf("| engine | %s |\n", note);
    printf("| date | %s |\n", tb);
    printf("| load average (1 min) at start / end | %.2f / %.2f (a shared VM: "
           "compare the ratios, measured side by side, rather than absolute "
           "times) |\n", la0[0], la1[0]);
    printf("| repetitions | %d per configuration, medians reported |\n", reps);
    if (g_ring_bytes)
        printf("| ring_bytes | %zu (set with --ring-bytes) |\n", g_ring_bytes);
    printf("| wall time of the run | %.0f s |\n", wall);
    printf("| work per record | trivial: %.1f ns per call of the work function; "
           "busy loop: %u rounds = %.2f µs, %u rounds = %.1f µs, %u rounds = "
           "%.0f µs (calibrated at the start of the run) |\n\n",
           trivial * 1e9, loops[0], measured[0] * 1e6, loops[1],
           measured[1] * 1e6, loops[2], measured[2] * 1e6);

    printf("How it is measured: the clock covers the whole call, "
           "`pm_job_create` and the fork of the workers (at the first "
           "`pm_job_next`) to `pm_job_destroy` (which reaps them); the "
           "consumer stores each 8-byte result at its index (case e: reads "
           "each 8 MB result once for a checksum, as the serial loop does with "
           "its buffer). Each repetition runs every configuration of a case "
           "once, in an order rotated and reversed from one repetition to the "
           "next; *time ÷ serial* and *speed-up* are medians of the ratios "
           "within a repetition. Every result of every run is compared with "
           "the serial loop's (an untimed reference run before the "
           "repetitions); a mismatch stops the benchmark. Default options "
           "otherwise: ordered delivery, one thread per worker, default window "
           "and rings. *fastest – slowest* is the range of the times over the "
           "repetitions; *ns per record* is the median wall time divided by the "
           "records; *CPU ÷ serial* is the CPU time of the parent and the "
           "workers together over the serial loop's; *records per task* is the "
           "mean chunk the adaptive chunking chose; *others* is the share of "
           "the machine's CPU time (all %ld cores, steal included, from "
           "/proc/stat) that other processes used during the run: where it "
           "is high, a core was not ours and the speed-up says little about "
           "the engine.\n\n", online);

    printf("| case | records | run | median time | fastest – slowest | records/s | "
           "time ÷ serial | speed-up | CPU ÷ serial | ns per record | "
           "records per task | others |\n");
    printf("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int ci = 0; ci < 5; ci++) {
        bcase *c = &cases[ci];
        if (!strchr(only, c->id))
            continue;
        config *ser = &c->cfg[0];
        for (int i = 0; i < c->ncfg; i++) {
            config *g = &c->cfg[i];
            double t = MED(g, wall);
            char rate[64];
            fmt_rate(rate, c->n / t);
            if (c->big) {
                size_t l = strlen(rate);
                snprintf(rate + l, sizeof rate - l, " (%.0f MB/s)",
                         c->n * 8.0 / t);
            }
            char per_task[32] = "";
            if (!g->serial) {
                double v[MAXREPS];
                for (int s = 0; s < g->ns; s++)
                    v[s] = (double)c->n / (double)(g->s[s].tasks ? g->s[s].tasks : 1);
                double m = median(v, g->ns);
                snprintf(per_task, sizeof per_task, m >= 100 ? "%.0f" : "%.3g", m);
            }
            char name[160];
            snprintf(name, sizeof name, "%c. %s", c->id, c->title);
            char r0[32] = "1", r1[32] = "1", r2[32] = "1", oth[32];
            if (!g->serial) {
                double x0 = med_ratio(g, ser, 0), x2 = med_ratio(g, ser, 2);
                snprintf(r0, sizeof r0, x0 >= 100 ? "%.0f" : "%.3g", x0);
                snprintf(r1, sizeof r1, "%.2f", med_ratio(g, ser, 1));
                snprintf(r2, sizeof r2, x2 >= 100 ? "%.0f" : "%.3g", x2);
            }
            snprintf(oth, sizeof oth, "%.0f%%", 100 * med_others(g, online));
            double lo = g->s[0].wall, hi = g->s[0].wall;
            for (int s = 1; s < g->ns; s++) {
                lo = g->s[s].wall < lo ? g->s[s].wall : lo;
                hi = g->s[s].wall > hi ? g->s[s].wall : hi;
            }
            printf("| %s | %zu | %s%s%s | %s | %s – %s | %s | %s | %s | %s | %s "
                   "| %s | %s |\n",
                   i == 0 ? name : "", c->n, g->serial ? "" : "**", g->label,
                   g->serial ? "" : "**", fmt_time(b1, t), fmt_time(b5, lo),
                   fmt_time(b6, hi), rate, r0, r1, r2,
                   fmt_ns(b4, t / c->n * 1e9), per_task, oth);
        }
    }
    printf("\n");

    bcase *a = &cases[0];
    if (strchr(only, 'a')) {
        printf("Per-record overhead, case a (trivial work, %zu records): the "
               "wall time per record, the CPU time the parent (the caller of "
               "`pm_job_next`) spends per record, its waiting included (it "
               "polls, then yields, then sleeps), and the workers' CPU time per "
               "record (all workers together, from `getrusage(RUSAGE_CHILDREN)` "
               "after `pm_job_destroy` reaped them). The serial loop spends "
               "%s per record. *first result* is the time from `pm_job_create` "
               "to the first item (fork included); *destroy* is "
               "`pm_job_destroy`. The nproc=1 row is a reference: the parent "
               "and its one worker each have a core of their own, where with "
               "nproc=2 three processes share the two cores.\n\n",
               a->n, fmt_ns(b1, MED(&a->cfg[0], wall) / a->n * 1e9));
        printf("| run | wall ns per record | parent CPU ns per record | workers' "
               "CPU ns per record | first result | destroy |\n");
        printf("|---|---:|---:|---:|---:|---:|\n");
        for (int i = 1; i < a->ncfg; i++) {
            config *g = &a->cfg[i];
            printf("| %s | %s | %s | %s | %s | %s |\n", g->label,
                   fmt_ns(b1, MED(g, wall) / a->n * 1e9),
                   fmt_ns(b2, MED(g, pcpu) / a->n * 1e9),
                   fmt_ns(b3, MED(g, wcpu) / a->n * 1e9),
                   fmt_time(b5, MED(g, first)), fmt_time(b6, MED(g, destroy)));
        }
        printf("\n");
    }
    (void)b4;
    printf("<!-- c-bench:end -->\n");
    return 0;
}
