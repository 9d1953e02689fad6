/*
 * core.h -- what the files of the binding share: the wire format, the
 * return conventions, the types and the module's state.
 *
 * The binding is ONE translation unit: _core.c includes every file of this
 * folder in layer order (module state and codecs first, the iterator type and
 * the module last), so the compiler sees the whole per-item path at once and
 * inlines across files as it did when they were one file.  Do not compile
 * the parts on their own: everything here is `static`.
 *
 * Return conventions.  The engine returns negative codes and never touches
 * Python; every Python exception is made in the binding:
 *   - A function returning PyObject * returns a new reference, or NULL with
 *     an exception set.
 *   - A function returning int returns 0 on success (or a documented
 *     non-negative value) and -1 with an exception set on failure.  The
 *     compact encoder adds ENC_UNSUPPORTED (1, nothing raised: pickle the
 *     record instead).
 *   - An engine callback returns what pm.h asks: PM_ECALLBACK after a Python
 *     exception, which stays set; raise_engine_error turns any other engine
 *     code into a Python exception.
 *   - print_error, proc_error and error_entry take the exception being
 *     handled and clear it; the worker's side of a task returns -1 only when
 *     the worker must stop, having printed what it could.
 */
#ifndef PARMAPPER_BINDING_CORE_H
#define PARMAPPER_BINDING_CORE_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifdef __GLIBC__
#include <malloc.h>
#include <pthread.h>
#endif
#include <signal.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "pm.h"

/* ======================================================================== */
/* The wire format: what crosses between the caller and a worker.           */
/*
 * The engine moves opaque records; their layout is the binding's.  A task
 * record carries items first..first+count of the input (pm_task), a result
 * record their results, in the same order.
 */
/* Task records start with one byte saying where the items are. */
#define TASK_PICKLE 0  /* pickle of the list of items */
#define TASK_COMPACT 1 /* the list in the compact codec */
#define TASK_INDEX 2   /* nothing: items first..first+count of the inherited
                          sequence (index dispatch) */
#define TASK_OOB 0x80  /* flag on TASK_PICKLE: out-of-band buffers, laid out
                          as for REC_OOB after the one byte */
#define TASK_ROUTES 0x40 /* flag on TASK_COMPACT: a route table (see
                            route_table) between the byte and the list */

/* Result records: one byte saying how the rest is laid out, then the
 * nanoseconds the worker spent on the task (u64; measured only for an
 * adaptive chunk size, the one reader, else 0), then the data. */
#define REC_PLAIN 0   /* pickle of the list of results */
#define REC_ERRORS 1  /* pickle of (results, {position: error entry}) */
#define REC_COMPACT 2 /* the list of results in the compact codec */
#define REC_OOB 0x80  /* flag on REC_PLAIN / REC_ERRORS: pickle protocol 5
                         with out-of-band buffers, laid out as
                         u64 nbuf, u64 pickle length, u64 length of each
                         buffer, the pickle, then each buffer, each part
                         starting 16-aligned from the record's start */
#define REC_ROUTES 0x40 /* flag on REC_COMPACT: a route table (see
                           route_table) between the header and the list */
#define REC_HDR 9
#define OOB_MIN (64 * 1024) /* smaller buffers stay inside the pickle */

/* Kinds of error entries. */
#define ERR_CALL 0  /* raised by the user's function: follows `exception` */
#define ERR_SHAPE 1 /* item of the wrong shape for star/kwstar: always raised */
#define ERR_BASE 2  /* a BaseException that is not an Exception (KeyboardInterrupt,
                       SystemExit, GeneratorExit...): always raised, as a
                       serial loop and concurrent.futures do; the rest of its
                       task is not run */

/* Error entries (in REC_ERRORS records and the chunk's error dict):
 * (exception or None, type name, message, traceback text, kind), kind one
 * of ERR_* above.  The module exports ERR_CALL, ERR_SHAPE and ERR_BASE, and
 * the exception modes below as MODE_*, so the Python package (_api.py,
 * _cluster.py, _salvage.py) uses these same numbers. */

/* exception=: 'raise', 'return', 'proc'. */
enum { MODE_RAISE = 0, MODE_RETURN = 1, MODE_PROC = 2 };

/*
 * The compact codec: the common scalar types without pickle.
 * A value is a tag byte and its data, little-endian as the machine is (both
 * ends are the same machine):
 *   'N' None  'T' True  'F' False
 *   'i' int64            'f' float64
 *   's' u32 length + UTF-8     'b' u64 length + bytes
 *   'B' u64 length, data routed (see route tables below; read as 'b'
 *       where nothing was routed)
 *   't' u32 count + values     'l' u32 count + values
 *   'd' u32 count + key, value pairs (an exact dict, in its order)
 *   'p' u64 length + the pickle of [item] (an item pickled alone:
 *       input_thread.c)
 * Only exact types are encoded (a subclass may carry state pickle keeps);
 * anything else makes the whole record fall back to pickle.
 */
#define ENC_UNSUPPORTED 1 /* enc_value: not encodable, nothing raised */
#define ENC_OTHER 2       /* enc_fast: not one of its scalars */
#define ENC_MAX_DEPTH 32

/*
 * Route tables.  A compact record with large bytes values ('B') carries,
 * right after its first byte (task) or header (result), u8 count then
 * count x {u64 offset in the message, u64 length} of their data, so that
 * the receiver can route them from the first PM_ROUTE_HEAD bytes alone.
 */
#define ROUTE_TABLE_MAX (1 + 16 * PM_ROUTE_MAX)

/* Reading a chunk of input for longer than this sends what was read and
 * lets the engine deliver ready results before reading on. */
#define SLOW_INPUT_NS 2000000u

/* ======================================================================== */
/* Types.                                                                   */

/* Caller: the star/kwstar table (caller.c). */
typedef struct {
    PyObject_HEAD
    PyObject *fun;
    PyObject *args;   /* tuple */
    PyObject *kwargs; /* dict or NULL when empty */
    int star;         /* 0 False, 1 True, -1 None */
    int kwstar;
    int plain;        /* star False, no kwstar, args or kwargs: fun(item) */
} Caller;

/* A large bytes value the encoding refers to instead of copying it: its
 * data goes into the record at offset `at` of the encoded bytes.  The
 * encoding holds a reference to it until it is cleared or freed: a
 * container may drop the bytes (an input that refills a dict) before the
 * record is written. */
typedef struct {
    size_t at;
    const char *p;
    size_t n;
    PyObject *obj;
} splice_t;

/* Lists one item may hold that are referenced elsewhere too (more are
 * pickled, which keeps any sharing). */
#define ENC_SEEN_MAX 16

typedef struct {
    unsigned char *p;
    size_t len, cap;
    int splice;       /* refer to bytes of OOB_MIN or more (see splice_t) */
    int nsp, spcap;
    splice_t *sp;
    int nseen;        /* lists inside the current item that other
                         references may share (see enc_value) */
    unsigned nmut;    /* lists and dicts encoded so far: a tuple that
                         holds one is looked for twice as well (enc_seq) */
    PyObject *seen[ENC_SEEN_MAX];
} buf_t;

/* The bytes objects a record's 'B' values were routed into (route_cb),
 * taken in order by the decoder. */
typedef struct {
    int n, k;
    size_t total; /* their bytes */
    PyObject *objs[PM_ROUTE_MAX];
} Routed;

typedef struct InputReader InputReader; /* input_thread.c */

/* MapIter: the iterator parmap() returns for N > 1 (mapiter.c). */
typedef struct {
    PyObject_HEAD
    Caller *caller;
    PyObject *it;         /* iterator over the input */
    pm_map *map;
    pm_options opt;
    Py_ssize_t chunksize;
    int mode;
    int daemon;
    int started;
    int finished;
    int running;          /* __next__ in progress (guards re-entry) */
    pid_t parent_pid;     /* the process that runs the map */
    Py_ssize_t next_index; /* index of the next item pulled from the input */
    PyThreadState *save;   /* the parent's thread state while it waits */
    PyObject *timeout_obj; /* the timeout in seconds, for messages */
    PyObject *proc_log;    /* exception='proc' with workers: where a dying
                              worker leaves its traceback for the caller's
                              WorkerDiedError (parmapper._worker.ProcLog) */
    PyObject *index_seq;   /* the input, when the workers index it (a list
                              is replaced by a tuple of its items when the
                              map may fork replacements: index_snapshot) */
    PyObject *spare_int;   /* in a worker: an int item the function kept no
                              reference to, reused for the next (worker.c) */
    int range_fast;        /* index_seq is a range of long longs: */
    long long range_start, range_step; /* item i is start + i * step */
    int input_done;        /* the input is finished: never read it again */
    PyObject *input_exc;   /* the Exception that ended the input, raised
                              once every result before it is delivered */
    int input_thread;      /* read an iterator input in a thread of its own */
    InputReader *reader;   /* ... that thread's side, while the map runs */
    Py_ssize_t length;     /* its length (or len(seq)), -1 when unknown */
    int adaptive;          /* chunksize chosen from measurements */
    Py_ssize_t last_chunk;
    double ns_per_item;    /* moving averages fed by the results */
    double bytes_per_item;
    double in_bytes_per_item; /* measured on the tasks sent */
    buf_t enc;             /* the task being sent */
    pm_iov iov1;           /* ... when it is one piece */
    /* The chunk being handed out. */
    PyObject *chunk;       /* list of results */
    PyObject *chunk_errors; /* dict position -> entry, or NULL */
    Py_ssize_t chunk_pos;
    Py_ssize_t chunk_first;
    /* Or a compact record handed out value by value, decoded as each is
     * asked for (results.c, stream_record): the record stays where the
     * engine holds it until the next pm_map_next. */
    const unsigned char *rec_p;   /* its next value */
    const unsigned char *rec_end; /* its end; NULL when there is none */
    Py_ssize_t rec_left;          /* values still to come */
    Py_ssize_t rec_count;         /* its task's item count (messages) */
    unsigned long rec_forks;      /* fork_count when it was read */
    long oom_base;         /* OOM kills counted when the map started (see
                              oom_kills), -1 when unknown */
} MapIter;

/*
 * The pieces of a task the engine writes from the objects' own memory (large
 * bytes items, out-of-band buffers): it holds them until it releases the
 * task (release_pieces), once the bytes are in the ring.
 */
typedef struct {
    PyObject *keep[2];  /* what the pieces point into */
    Py_buffer *views;   /* the out-of-band buffers, held */
    Py_ssize_t nviews;
    buf_t head;         /* the encoded bytes, or the out-of-band header */
    unsigned char table[1 + ROUTE_TABLE_MAX]; /* spliced: first byte, table */
    int niov;
    pm_iov iov[];
} Pieces;

/* ======================================================================== */
/* The module's state, filled at import or on first use.                    */

static PyObject *pickle_dumps;    /* pickle.dumps */
static PyObject *pickle_loads;    /* pickle.loads */
static PyObject *protocol;        /* the pickle protocol, an int */
static PyObject *kw_buffer_callback; /* ("buffer_callback",) */
static PyObject *kw_buffers;         /* ("buffers",) */
static PyObject *ItemShapeError;  /* TypeError subclass, made here */
static PyObject *errors_module;   /* parmapper._errors, imported lazily */
static PyObject *unsent_type;     /* parmapper._errors._Unsent, set before fork */
static PyObject *gc_module;       /* gc, set before fork */
/* The caller's collector was on when the first of the forks in progress
 * paused it, and how many are in progress: between their gc_pause and
 * gc_resume (hooks.c), in any thread of the caller (under the GIL). */
static int gc_was_on;
static int gc_pauses;
static PyObject *fresh_stdio;     /* parmapper._worker.fresh_stdio, idem */

/* 0 in the caller's process; 1 in a worker of a daemon map; 2 in a worker of
 * a map with daemon=False. */
static int in_worker = 0;

/* Worker-side thread state: each thread that runs Python code in a worker
 * owns one, made once; the GIL is taken per task, never held while waiting. */
static __thread PyThreadState *tls_tstate = NULL;
/* Whether this worker thread holds the GIL: it keeps it while tasks flow and
 * lets it go only while waiting (worker_wait hooks). */
static __thread int tls_holds_gil = 0;
static PyInterpreterState *worker_interp = NULL;
/* parmapper._worker: what a worker sets up for the user's code and how it
 * reports, in Python.  Imported by the caller before any fork, so a worker
 * only looks it up (worker_attr). */
static PyObject *worker_module = NULL;

/* ======================================================================== */
/* Clocks.                                                                  */

static inline uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A clock of the kernel's tick (1-4 ms), read without a system call in a
 * few ns: enough to tell an input that takes milliseconds per chunk. */
static inline uint64_t coarse_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ======================================================================== */
/* What one file calls in another (defined in the file named).              */

/* module.c: `name` of parmapper._errors / parmapper._worker, imported once
 * (new reference, or NULL with an exception). */
static PyObject *errors_attr(const char *name);
static PyObject *worker_attr(const char *name);
/* module.c: `name` of module `mod`, the module cached in *cache. */
static PyObject *module_attr(PyObject **cache, const char *mod,
                             const char *name);

/* pickle.c: a compact 'p' value (after its tag). */
static PyObject *dec_pickled(const unsigned char **pp,
                             const unsigned char *end);

/* input_thread.c: gather_cb when the input is read in its own thread. */
static int gather_read(MapIter *self, pm_task *task, const pm_iov **iov,
                       int *niov, void **owner);

/* tasks.c: takes the pending exception: its value (new reference), with
 * its traceback attached. */
static PyObject *take_exception(void);

/* hooks.c: a worker thread takes the GIL back (a no-op while it holds it),
 * or lets it go. */
static void gil_take(void);
static void gil_drop(void);

/* mapiter.c: the map's teardown (its processes and memory released), the
 * exception being raised kept. */
static void map_teardown_keep_error(MapIter *self);

#endif /* PARMAPPER_BINDING_CORE_H */
