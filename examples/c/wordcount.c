/*
 * wordcount.c -- count lines, words and bytes like wc(1), in parallel.
 *
 *     wordcount [-j N] [FILE]        (no FILE, or "-": standard input)
 *
 * The input streams through a job: the parent reads it one line at a time
 * with getline() and hands each line to the job as a record (a feed
 * function), so a file far larger than memory is fine.  A worker process
 * counts one line and writes its counts back with pm_write(); the parent
 * adds them up.  A word is a run of bytes that are not white space, as wc
 * counts them in the C locale.  (Real work per record would be heavier than
 * this: the engine groups records into chunks, so even cheap ones are not
 * swamped by the hand-offs.)
 *
 * Build: cc wordcount.c $(pkg-config --cflags --libs parmapper)
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <pm.h>

/* What a worker sends back for one line: plain bytes, so a struct will do
 * (parent and workers are the same program). */
typedef struct counts {
    uint64_t lines, words, bytes;
} counts;

/* The work function, run in a worker process for each record (one line,
 * with its '\n' unless it is the last line of a file that does not end with
 * one).  Returns pm_write()'s code: 0, or negative if the parent is gone. */
static int count_line(void *ctx, const void *in, size_t len, pm_writer *out)
{
    (void)ctx;
    const unsigned char *p = in;
    counts c = {0, 0, len};
    int in_word = 0;
    for (size_t i = 0; i < len; i++) {
        if (isspace(p[i])) {
            in_word = 0;
            c.lines += p[i] == '\n';
        } else if (!in_word) {
            in_word = 1;
            c.words++;
        }
    }
    return pm_write(out, &c, sizeof c);
}

/* The feed function's state: the file and getline()'s buffer. */
typedef struct reader {
    FILE *f;
    char *line;
    size_t cap;
} reader;

/* The feed function, called in the parent whenever the workers can take
 * more: returns 1 with the next line, 0 at the end of the input, or a
 * negative errno to stop the job (pm_job_next() then returns it).  The
 * line may live in getline()'s buffer, reused by the next call: the engine
 * is done with a record before it asks for the next one. */
static int feed_line(void *ctx, const void **data, size_t *len)
{
    reader *r = ctx;
    errno = 0;
    ssize_t n = getline(&r->line, &r->cap, r->f);
    if (n < 0)
        return ferror(r->f) ? -(errno ? errno : EIO) : 0;
    *data = r->line;
    *len = (size_t)n;
    return 1;
}

static void usage(void)
{
    fprintf(stderr, "usage: wordcount [-j NPROC] [FILE]\n");
    exit(2);
}

int main(int argc, char **argv)
{
    pm_job_options opt;
    pm_job_options_init(&opt); /* one worker per CPU, results in order */

    int c;
    while ((c = getopt(argc, argv, "j:")) != -1) {
        char *end;
        long n = c == 'j' ? strtol(optarg, &end, 10) : 0;
        if (c != 'j' || *optarg == '\0' || *end != '\0' || n < 1 || n > 1024)
            usage();
        opt.nproc = (int)n;
    }
    if (argc - optind > 1)
        usage();
    const char *path = optind < argc ? argv[optind] : "-";
    int from_stdin = strcmp(path, "-") == 0;

    reader r = {stdin, NULL, 0};
    if (!from_stdin && !(r.f = fopen(path, "r"))) {
        fprintf(stderr, "wordcount: %s: %s\n", path, strerror(errno));
        return 1;
    }

    counts total = {0, 0, 0};
    pm_job *job = NULL;
    int rc = pm_job_create(&job, &opt, count_line, NULL);
    if (rc < 0)
        goto done;
    rc = pm_job_feed_fn(job, feed_line, &r);
    if (rc < 0)
        goto done;

    /* The first pm_job_next() forks the workers; each call returns 1 with
     * one line's result, 0 once every line is counted, or an error. */
    pm_item item;
    while ((rc = pm_job_next(job, &item)) > 0) {
        counts one;
        if (item.status != PM_ITEM_OK || item.len != sizeof one) {
            /* A worker killed from outside (by the OOM killer, say) while
             * counting this line: the job goes on, but the total would be
             * wrong. */
            fprintf(stderr, "wordcount: line %" PRIu64 " was not counted\n",
                    item.index + 1);
            rc = 1; /* reported: not a pm_ code */
            break;
        }
        memcpy(&one, item.data, sizeof one); /* item.data may be unaligned */
        total.lines += one.lines;
        total.words += one.words;
        total.bytes += one.bytes;
    }

done:;
    /* Always: stops and reaps the workers, frees the shared memory. */
    int drc = pm_job_destroy(job);
    if (rc == 0)
        rc = drc;
    free(r.line);
    if (r.f != stdin)
        fclose(r.f);
    if (rc < 0)
        fprintf(stderr, "wordcount: %s\n", pm_strerror(rc));
    if (rc != 0)
        return 1;
    printf("%7" PRIu64 " %7" PRIu64 " %7" PRIu64 "%s%s\n", total.lines,
           total.words, total.bytes, from_stdin ? "" : " ",
           from_stdin ? "" : path);
    return 0;
}
