/*
 * _core.c -- the one CPython binding of the parmapper engine.
 *
 * It plugs Python into the engine (engine/include/pm.h): items are pickled
 * into task records by the produce callback in the parent, unpickled and
 * passed to the user's function by the work callback in a forked worker,
 * whose results are pickled back.  The function itself is never pickled: the
 * worker inherits it with the rest of the parent's memory at fork.
 *
 * The engine returns negative codes and never touches Python; every Python
 * exception is made here.  The rule: a function returning NULL or -1 has an
 * exception set.
 *
 * Objects:
 *   Caller   -- applies the star/kwstar/args/kwargs table to one item.
 *   MapIter  -- the iterator parmap() returns for N > 1.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <signal.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include "pm.h"

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
 * nanoseconds the worker spent on the task (u64), then the data. */
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

enum { MODE_RAISE = 0, MODE_RETURN = 1, MODE_PROC = 2 };

/* ------------------------------------------------------------------------ */
/* Module-level references, filled at import or on first use.               */

static PyObject *pickle_dumps;    /* pickle.dumps */
static PyObject *pickle_loads;    /* pickle.loads */
static PyObject *protocol;        /* the pickle protocol, an int */
static PyObject *kw_buffer_callback; /* ("buffer_callback",) */
static PyObject *kw_buffers;         /* ("buffers",) */
static PyObject *ItemShapeError;  /* TypeError subclass, made here */
static PyObject *errors_module;   /* parmapper._errors, imported lazily */
static PyObject *unsent_type;     /* parmapper._errors._Unsent, set before fork */
static PyObject *gc_freeze;       /* gc.freeze, set before fork */
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

/* `name` of module `mod`, imported once into *cache (new reference), or
 * NULL with an exception. */
static PyObject *module_attr(PyObject **cache, const char *mod,
                             const char *name)
{
    if (!*cache && !(*cache = PyImport_ImportModule(mod)))
        return NULL;
    return PyObject_GetAttrString(*cache, name);
}

static PyObject *errors_attr(const char *name)
{
    return module_attr(&errors_module, "parmapper._errors", name);
}

/* parmapper._worker's `name`: what a worker sets up for the user's code and
 * how it reports, in Python.  Imported by the caller before any fork, so a
 * worker only looks it up. */
static PyObject *worker_module = NULL;
static PyObject *worker_attr(const char *name)
{
    return module_attr(&worker_module, "parmapper._worker", name);
}

/* ------------------------------------------------------------------------ */
/* Caller: the star/kwstar table.                                           */

typedef struct {
    PyObject_HEAD
    PyObject *fun;
    PyObject *args;   /* tuple */
    PyObject *kwargs; /* dict or NULL when empty */
    int star;         /* 0 False, 1 True, -1 None */
    int kwstar;
} Caller;

static PyObject *shape_error(Py_ssize_t idx, const char *fmt, PyObject *obj)
{
    PyObject *msg = PyUnicode_FromFormat(fmt, (long long)idx,
                                         Py_TYPE(obj)->tp_name);
    if (!msg)
        return NULL;
    PyObject *exc = PyObject_CallOneArg(ItemShapeError, msg);
    Py_DECREF(msg);
    if (!exc)
        return NULL;
    PyObject *pi = PyLong_FromSsize_t(idx);
    if (pi) {
        PyObject_SetAttrString(exc, "seq_index", pi);
        Py_DECREF(pi);
    }
    PyErr_SetObject(ItemShapeError, exc);
    Py_DECREF(exc);
    return NULL;
}

/* Returns a new tuple of the positional values of a star item. */
static PyObject *star_values(Py_ssize_t idx, PyObject *vals)
{
    if (PyTuple_CheckExact(vals)) {
        Py_INCREF(vals);
        return vals;
    }
    PyObject *t = PySequence_Tuple(vals);
    if (!t && PyErr_ExceptionMatches(PyExc_TypeError)) {
        PyErr_Clear();
        return shape_error(idx,
                           "item %lld: star=True expects an iterable of "
                           "positional arguments, got %s",
                           vals);
    }
    return t;
}

/*
 * Calls the function on one item.  Returns a new reference, or NULL with an
 * exception set; *shape is set to 1 when the item itself had the wrong shape
 * (the function was not called).
 */
static PyObject *caller_call(Caller *c, Py_ssize_t idx, PyObject *item,
                             int *shape)
{
    *shape = 0;
    Py_ssize_t nargs = PyTuple_GET_SIZE(c->args);
    if (c->star == 0 && !c->kwstar && nargs == 0 && !c->kwargs)
        return PyObject_CallOneArg(c->fun, item); /* the common case */

    PyObject *vals = item, *kwvals = NULL, *pair = NULL;
    PyObject *pos = NULL, *kw = NULL, *res = NULL;
    if (c->kwstar) {
        if (c->star == -1) {
            vals = NULL;
            kwvals = item;
        } else {
            if (PyTuple_CheckExact(item)) {
                pair = item;
                Py_INCREF(pair);
            } else {
                pair = PySequence_Tuple(item);
                if (!pair) {
                    if (!PyErr_ExceptionMatches(PyExc_TypeError))
                        goto done;
                    PyErr_Clear();
                }
            }
            if (!pair || PyTuple_GET_SIZE(pair) != 2) {
                shape_error(idx,
                            "item %lld: kwstar=True expects a pair (vals, "
                            "kwvals), got %s",
                            item);
                *shape = 1;
                goto done;
            }
            vals = PyTuple_GET_ITEM(pair, 0);
            kwvals = PyTuple_GET_ITEM(pair, 1);
        }
    }
    /* Positional arguments. */
    if (c->star == 1) {
        PyObject *t = star_values(idx, vals);
        if (!t) {
            *shape = PyErr_ExceptionMatches(ItemShapeError);
            goto done;
        }
        if (nargs) {
            pos = PySequence_Concat(t, c->args);
            Py_DECREF(t);
            if (!pos)
                goto done;
        } else {
            pos = t;
        }
    } else if (c->star == 0) {
        pos = PyTuple_New(1 + nargs);
        if (!pos)
            goto done;
        Py_INCREF(vals);
        PyTuple_SET_ITEM(pos, 0, vals);
        for (Py_ssize_t i = 0; i < nargs; i++) {
            PyObject *a = PyTuple_GET_ITEM(c->args, i);
            Py_INCREF(a);
            PyTuple_SET_ITEM(pos, i + 1, a);
        }
    } else {
        pos = c->args;
        Py_INCREF(pos);
    }
    /* Keywords: kwvals win over kwargs. */
    if (kwvals) {
        if (!PyDict_Check(kwvals) && !PyMapping_Check(kwvals)) {
            shape_error(idx,
                        "item %lld: kwstar=True expects a mapping of keyword "
                        "arguments (kwvals), got %s",
                        kwvals);
            *shape = 1;
            goto done;
        }
        kw = c->kwargs ? PyDict_Copy(c->kwargs) : PyDict_New();
        if (!kw)
            goto done;
        if (PyDict_Update(kw, kwvals) < 0) {
            if (PyErr_ExceptionMatches(PyExc_TypeError) ||
                PyErr_ExceptionMatches(PyExc_AttributeError)) {
                PyErr_Clear();
                shape_error(idx,
                            "item %lld: kwstar=True expects a mapping of "
                            "keyword arguments (kwvals), got %s",
                            kwvals);
                *shape = 1;
            }
            goto done;
        }
        PyObject *key;
        Py_ssize_t ppos = 0;
        while (PyDict_Next(kw, &ppos, &key, NULL)) {
            if (!PyUnicode_Check(key)) {
                shape_error(idx,
                            "item %lld: keyword names in kwvals must be "
                            "strings, got a key of type %s",
                            key);
                *shape = 1;
                goto done;
            }
        }
    } else if (c->kwargs) {
        kw = c->kwargs;
        Py_INCREF(kw);
    }
    res = PyObject_Call(c->fun, pos, kw);
done:
    Py_XDECREF(pair);
    Py_XDECREF(pos);
    Py_XDECREF(kw);
    return res;
}

static int Caller_init(Caller *self, PyObject *a, PyObject *k)
{
    static char *kwlist[] = {"fun", "args", "kwargs", "star", "kwstar", NULL};
    PyObject *fun, *args, *kwargs, *star;
    int kwstar;
    if (!PyArg_ParseTupleAndKeywords(a, k, "OOOOp", kwlist, &fun, &args,
                                     &kwargs, &star, &kwstar))
        return -1;
    if (!PyCallable_Check(fun)) {
        PyErr_SetString(PyExc_TypeError, "fun must be callable");
        return -1;
    }
    PyObject *t = PySequence_Tuple(args);
    if (!t)
        return -1;
    PyObject *d = NULL;
    if (kwargs != Py_None) {
        d = PyDict_New();
        if (!d || PyDict_Update(d, kwargs) < 0) {
            Py_DECREF(t);
            Py_XDECREF(d);
            return -1;
        }
        if (PyDict_GET_SIZE(d) == 0)
            Py_CLEAR(d);
    }
    Py_INCREF(fun);
    Py_XSETREF(self->fun, fun);
    Py_XSETREF(self->args, t);
    Py_XSETREF(self->kwargs, d);
    if (star == Py_None) {
        self->star = -1;
    } else {
        int s = PyObject_IsTrue(star);
        if (s < 0)
            return -1;
        self->star = s;
    }
    self->kwstar = kwstar;
    return 0;
}

static PyObject *Caller_call(Caller *self, PyObject *a, PyObject *k)
{
    Py_ssize_t idx;
    PyObject *item;
    if (k && PyDict_GET_SIZE(k)) {
        PyErr_SetString(PyExc_TypeError, "Caller takes no keyword arguments");
        return NULL;
    }
    if (!PyArg_ParseTuple(a, "nO", &idx, &item))
        return NULL;
    int shape;
    return caller_call(self, idx, item, &shape);
}

static int Caller_traverse(Caller *self, visitproc visit, void *arg)
{
    Py_VISIT(self->fun);
    Py_VISIT(self->args);
    Py_VISIT(self->kwargs);
    return 0;
}

static int Caller_clear(Caller *self)
{
    Py_CLEAR(self->fun);
    Py_CLEAR(self->args);
    Py_CLEAR(self->kwargs);
    return 0;
}

static void Caller_dealloc(Caller *self)
{
    PyObject_GC_UnTrack(self);
    Caller_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject CallerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "parmapper._core.Caller",
    .tp_basicsize = sizeof(Caller),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Caller(fun, args, kwargs, star, kwstar)(index, item): call fun "
              "on one item as the star/kwstar table says.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Caller_init,
    .tp_call = (ternaryfunc)Caller_call,
    .tp_traverse = (traverseproc)Caller_traverse,
    .tp_clear = (inquiry)Caller_clear,
    .tp_dealloc = (destructor)Caller_dealloc,
};

/* ------------------------------------------------------------------------ */
/* Pickling helpers.                                                        */

static PyObject *dumps(PyObject *obj)
{
    PyObject *argv[2] = {obj, protocol};
    return PyObject_Vectorcall(pickle_dumps, argv, 2, NULL);
}

static PyObject *loads_mem(const void *p, size_t n)
{
    PyObject *mv = PyMemoryView_FromMemory((char *)p, (Py_ssize_t)n, PyBUF_READ);
    if (!mv)
        return NULL;
    PyObject *r = PyObject_CallOneArg(pickle_loads, mv);
    Py_DECREF(mv);
    return r;
}

/*
 * The caller could not unpickle a worker's result record (the exception is
 * set): loads it again with parmapper._salvage.rescue (`how`), which turns
 * each item whose result (or error) cannot be rebuilt into an error entry
 * for that item alone, and returns (results, errors) in the REC_ERRORS
 * shape.  In a worker, a task's items: _salvage.rescue_items, which puts an
 * _Unsent marker (ItemPicklingError) in place of each item that cannot be
 * rebuilt.  Returns NULL with the original exception when the record cannot
 * be read at all.  Off the per-item path: it runs only after a failure.
 */
static PyObject *rescue_loads(const char *how, PyObject *data,
                              PyObject *bufs, Py_ssize_t first)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception) ||
        PyErr_ExceptionMatches(PyExc_MemoryError))
        return NULL;
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyObject *mod = PyImport_ImportModule("parmapper._salvage");
    PyObject *r = mod ? PyObject_CallMethod(mod, how, "OOn", data,
                                            bufs ? bufs : Py_None, first)
                      : NULL;
    Py_XDECREF(mod);
    if (!r) {
        PyErr_Clear();
        PyErr_Restore(et, ev, etb);
        return NULL;
    }
    Py_XDECREF(et);
    Py_XDECREF(ev);
    Py_XDECREF(etb);
    return r;
}

/* loads_mem for a result record or a task: rescued item by item when it
 * fails (*rescued set to 1; see rescue_loads). */
static PyObject *loads_rescued(const char *how, const void *p, size_t n,
                               Py_ssize_t first, int *rescued)
{
    PyObject *r = loads_mem(p, n);
    if (r)
        return r;
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyObject *data = PyBytes_FromStringAndSize(p, (Py_ssize_t)n);
    if (!data) {
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(etb);
        return NULL; /* MemoryError replaces the unpickler's error */
    }
    PyErr_Restore(et, ev, etb);
    r = rescue_loads(how, data, NULL, first);
    Py_DECREF(data);
    if (r)
        *rescued = 1;
    return r;
}

/* ------------------------------------------------------------------------ */
/* Out-of-band buffers (pickle protocol 5): a large contiguous buffer of a   */
/* result (a numpy array, a bytearray, a PickleBuffer) goes from the        */
/* object's memory straight into the ring, and the parent's object is built */
/* on the memory the result was assembled in: one copy on each side.       */

static void gil_take(void); /* a worker thread takes the GIL back */

/* The parent's block of result memory, owned by the objects built on it. */
typedef struct {
    PyObject_HEAD
    void *alloc; /* malloc'd; freed with the block */
    char *p;     /* the result record inside it */
    Py_ssize_t n;
    PyObject *weakrefs; /* so tests can see when it is freed */
} Block;

static int block_getbuffer(PyObject *o, Py_buffer *v, int flags)
{
    Block *b = (Block *)o;
    return PyBuffer_FillInfo(v, o, b->p, b->n, 0, flags);
}

static void block_dealloc(PyObject *o)
{
    if (((Block *)o)->weakrefs)
        PyObject_ClearWeakRefs(o);
    free(((Block *)o)->alloc);
    Py_TYPE(o)->tp_free(o);
}

static PyBufferProcs block_as_buffer = {block_getbuffer, NULL};

static PyTypeObject BlockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "parmapper._core._Block",
    .tp_basicsize = sizeof(Block),
    .tp_dealloc = block_dealloc,
    .tp_as_buffer = &block_as_buffer,
    .tp_weaklistoffset = offsetof(Block, weakrefs),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Memory of a result received from a worker; the objects "
              "unpickled from its out-of-band buffers refer to it.",
};

/* pickle's buffer_callback (self: a list): a large contiguous buffer is
 * kept out of band (appended, False returned); any other stays in band. */
static PyObject *oob_collect(PyObject *list, PyObject *pb)
{
    Py_buffer v;
    if (PyObject_GetBuffer(pb, &v, PyBUF_CONTIG_RO) < 0) {
        PyErr_Clear();
        Py_RETURN_TRUE;
    }
    Py_ssize_t n = v.len;
    PyBuffer_Release(&v);
    if (n < OOB_MIN)
        Py_RETURN_TRUE;
    if (PyList_Append(list, pb) < 0)
        return NULL;
    Py_RETURN_FALSE;
}

static PyMethodDef oob_collect_def = {"_oob_collect", oob_collect, METH_O,
                                      NULL};

/* Each worker thread's buffer_callback and the list it fills, made once:
 * no allocation per task when nothing goes out of band. */
static __thread PyObject *tls_oob_list, *tls_oob_cb;

/* pickle.dumps(obj, protocol 5, buffer_callback=...): *bufs gets the list
 * of the buffers kept out of band (new reference), or NULL when none. */
static PyObject *dumps_oob(PyObject *obj, PyObject **bufs)
{
    if (!tls_oob_cb) {
        if (!tls_oob_list && !(tls_oob_list = PyList_New(0)))
            return NULL;
        if (!(tls_oob_cb = PyCFunction_New(&oob_collect_def, tls_oob_list)))
            return NULL;
    }
    Py_ssize_t n0 = PyList_GET_SIZE(tls_oob_list);
    PyObject *argv[3] = {obj, protocol, tls_oob_cb};
    PyObject *r = PyObject_Vectorcall(pickle_dumps, argv, 2, kw_buffer_callback);
    /* Take this call's buffers out of the list (a nested dumps in the same
     * thread appends after n0 and removes its own the same way). */
    Py_ssize_t n1 = PyList_GET_SIZE(tls_oob_list);
    *bufs = NULL;
    if (n1 == n0)
        return r;
    *bufs = PyList_GetSlice(tls_oob_list, n0, n1);
    if (PyList_SetSlice(tls_oob_list, n0, n1, NULL) < 0 || !*bufs || !r) {
        Py_CLEAR(r);
        Py_CLEAR(*bufs);
    }
    return r;
}

static size_t pad16(size_t off)
{
    return (16 - (off & 15)) & 15;
}

/*
 * Unpickles an out-of-band record (a REC_OOB result or a TASK_OOB task):
 * `at` bytes of header, then the buffer count and the pickle's length, the
 * buffers' lengths, the pickle and the buffers, each 16-byte aligned from
 * the record's start.  The objects of the buffers are built on `alloc`,
 * the malloc'd block rec lies in, taken over from the engine (freed with
 * the last of them); when alloc is NULL the record is in shared memory and
 * is copied once first.
 */
static PyObject *loads_oob(void *alloc, const unsigned char *rec, size_t n,
                           size_t at, const char *rescue,
                           Py_ssize_t rescue_first, int *rescued)
{
    PyObject *r = NULL, *mv = NULL, *pick = NULL, *list = NULL;
    if (!alloc) {
        alloc = malloc(n ? n : 1);
        if (!alloc)
            return PyErr_NoMemory();
        memcpy(alloc, rec, n);
        rec = alloc;
    }
    Block *blk = PyObject_New(Block, &BlockType);
    if (!blk) {
        free(alloc);
        return NULL;
    }
    blk->alloc = alloc;
    blk->weakrefs = NULL;
    blk->p = (char *)rec;
    blk->n = (Py_ssize_t)n;
    uint64_t meta[2];
    size_t off = at + sizeof meta;
    if (n < off)
        goto bad;
    memcpy(meta, rec + at, sizeof meta);
    if (meta[0] > (n - off) / 8)
        goto bad;
    size_t lens_at = off;
    off += 8 * (size_t)meta[0];
    off += pad16(off);
    if (off > n || meta[1] > n - off)
        goto bad;
    if (!(mv = PyMemoryView_FromObject((PyObject *)blk)))
        goto done;
    if (!(pick = PySequence_GetSlice(mv, (Py_ssize_t)off,
                                     (Py_ssize_t)(off + meta[1]))))
        goto done;
    off += (size_t)meta[1];
    if (!(list = PyList_New((Py_ssize_t)meta[0])))
        goto done;
    for (uint64_t i = 0; i < meta[0]; i++) {
        uint64_t l;
        memcpy(&l, rec + lens_at + 8 * i, 8);
        off += pad16(off);
        if (off > n || l > n - off)
            goto bad;
        PyObject *sl = PySequence_GetSlice(mv, (Py_ssize_t)off,
                                           (Py_ssize_t)(off + l));
        if (!sl)
            goto done;
        PyList_SET_ITEM(list, (Py_ssize_t)i, sl);
        off += (size_t)l;
    }
    PyObject *argv[2] = {pick, list};
    r = PyObject_Vectorcall(pickle_loads, argv, 1, kw_buffers);
    if (!r && rescue && (r = rescue_loads(rescue, pick, list, rescue_first)))
        *rescued = 1;
    goto done;
bad:
    PyErr_SetString(PyExc_RuntimeError, "parmapper: bad out-of-band record");
done:
    Py_XDECREF(list);
    Py_XDECREF(pick);
    Py_XDECREF(mv);
    Py_DECREF(blk);
    return r;
}

/* ------------------------------------------------------------------------ */
/* The compact codec: the common scalar types without pickle.               */
/*
 * A value is a tag byte and its data, little-endian as the machine is (both
 * ends are the same machine):
 *   'N' None  'T' True  'F' False
 *   'i' int64            'f' float64
 *   's' u32 length + UTF-8     'b' u64 length + bytes
 *   't' u32 count + values     'l' u32 count + values
 *   'd' u32 count + key, value pairs (an exact dict, in its order)
 *   'p' u64 length + a pickle (an item pickled alone: input_thread.c)
 * Only exact types are encoded (a subclass may carry state pickle keeps);
 * anything else makes the whole record fall back to pickle.
 */

/* A large bytes value the encoding refers to instead of copying it: its
 * data goes into the record at offset `at` of the encoded bytes. */
typedef struct {
    size_t at;
    const char *p;
    size_t n;
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
    PyObject *seen[ENC_SEEN_MAX];
} buf_t;

static void buf_clear(buf_t *b)
{
    b->len = 0;
    b->nsp = 0;
}

static void buf_free(buf_t *b)
{
    PyMem_RawFree(b->p);
    PyMem_RawFree(b->sp);
    memset(b, 0, sizeof *b);
}

/* Describes the record as 2 * nsp + 1 pieces: iov must have room. */
static int buf_pieces(const buf_t *b, pm_iov *iov)
{
    size_t at = 0;
    int k = 0;
    for (int i = 0; i < b->nsp; i++) {
        iov[k].base = b->p + at;
        iov[k++].len = b->sp[i].at - at;
        iov[k].base = b->sp[i].p;
        iov[k++].len = b->sp[i].n;
        at = b->sp[i].at;
    }
    iov[k].base = b->p + at;
    iov[k++].len = b->len - at;
    return k;
}

#define ENC_UNSUPPORTED 1
#define ENC_MAX_DEPTH 32

static int buf_reserve(buf_t *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    unsigned char *p = PyMem_RawRealloc(b->p, cap);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline int buf_put(buf_t *b, const void *src, size_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, src, n);
    b->len += n;
    return 0;
}

static inline int buf_tag(buf_t *b, unsigned char tag)
{
    return buf_put(b, &tag, 1);
}

/* A large bytes value: its header is encoded, its data referred to (the
 * caller keeps the object alive until the record is written).  The first
 * PM_ROUTE_MAX of a record are tagged 'B' and listed in its route table:
 * where the receiver assembles the record, their data goes straight into
 * the bytes objects it decodes them as (route_cb), and is not in the
 * assembled record; anywhere else 'B' is read as 'b'. */
static int enc_bytes_spliced(buf_t *b, PyObject *o)
{
    uint64_t n = (uint64_t)PyBytes_GET_SIZE(o);
    if (b->nsp == b->spcap) {
        int cap = b->spcap ? 2 * b->spcap : 4;
        splice_t *sp = PyMem_RawRealloc(b->sp, (size_t)cap * sizeof *sp);
        if (!sp) {
            PyErr_NoMemory();
            return -1;
        }
        b->sp = sp;
        b->spcap = cap;
    }
    if (buf_reserve(b, 9) < 0)
        return -1;
    b->p[b->len] = b->nsp < PM_ROUTE_MAX ? 'B' : 'b';
    memcpy(b->p + b->len + 1, &n, 8);
    b->len += 9;
    b->sp[b->nsp++] = (splice_t){b->len, PyBytes_AS_STRING(o), (size_t)n};
    return 0;
}

/* Returns 0, ENC_UNSUPPORTED (nothing is raised), or -1 with an error. */
/*
 * A list inside an item that something else references too (refcount > 1;
 * a list built for the item alone has 1) may be held twice in the item,
 * as in [a, a]: the codec would rebuild two lists where pickle keeps one.
 * Returns 1 when `o` was met before in this item, or when there are more
 * such lists than ENC_SEEN_MAX (the item is then pickled), else records it
 * and returns 0.  Borrowed pointers, compared only while encoding.
 */
static int enc_shared(buf_t *b, PyObject *o)
{
    for (int i = 0; i < b->nseen; i++)
        if (b->seen[i] == o)
            return 1;
    if (b->nseen == ENC_SEEN_MAX)
        return 1;
    b->seen[b->nseen++] = o;
    return 0;
}

static int enc_value(buf_t *b, PyObject *o, int depth)
{
    PyTypeObject *t = Py_TYPE(o);
    if (t == &PyLong_Type) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow)
            return ENC_UNSUPPORTED;
        if (v == -1 && PyErr_Occurred())
            return -1;
        if (buf_reserve(b, 9) < 0)
            return -1;
        b->p[b->len] = 'i';
        memcpy(b->p + b->len + 1, &v, 8);
        b->len += 9;
        return 0;
    }
    if (t == &PyFloat_Type) {
        double v = PyFloat_AS_DOUBLE(o);
        if (buf_reserve(b, 9) < 0)
            return -1;
        b->p[b->len] = 'f';
        memcpy(b->p + b->len + 1, &v, 8);
        b->len += 9;
        return 0;
    }
    if (o == Py_None)
        return buf_tag(b, 'N');
    if (o == Py_True)
        return buf_tag(b, 'T');
    if (o == Py_False)
        return buf_tag(b, 'F');
    if (t == &PyUnicode_Type) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(o, &n);
        if (!s) { /* lone surrogates: let pickle handle them */
            PyErr_Clear();
            return ENC_UNSUPPORTED;
        }
        if ((size_t)n > 0xffffffffu)
            return ENC_UNSUPPORTED;
        uint32_t n32 = (uint32_t)n;
        if (buf_reserve(b, 5 + (size_t)n) < 0)
            return -1;
        b->p[b->len] = 's';
        memcpy(b->p + b->len + 1, &n32, 4);
        memcpy(b->p + b->len + 5, s, (size_t)n);
        b->len += 5 + (size_t)n;
        return 0;
    }
    if (t == &PyBytes_Type) {
        uint64_t n = (uint64_t)PyBytes_GET_SIZE(o);
        if (b->splice && n >= OOB_MIN)
            return enc_bytes_spliced(b, o);
        if (buf_reserve(b, 9 + (size_t)n) < 0)
            return -1;
        b->p[b->len] = 'b';
        memcpy(b->p + b->len + 1, &n, 8);
        memcpy(b->p + b->len + 9, PyBytes_AS_STRING(o), (size_t)n);
        b->len += 9 + (size_t)n;
        return 0;
    }
    if (t == &PyTuple_Type || t == &PyList_Type) {
        if (depth >= ENC_MAX_DEPTH)
            return ENC_UNSUPPORTED;
        int is_list = t == &PyList_Type;
        if (is_list && depth >= 2 && Py_REFCNT(o) > 1 && enc_shared(b, o))
            return ENC_UNSUPPORTED; /* held twice in one item: pickle it */
        Py_ssize_t n = is_list ? PyList_GET_SIZE(o) : PyTuple_GET_SIZE(o);
        if ((size_t)n > 0xffffffffu)
            return ENC_UNSUPPORTED;
        uint32_t n32 = (uint32_t)n;
        if (buf_reserve(b, 5) < 0)
            return -1;
        b->p[b->len] = is_list ? 'l' : 't';
        memcpy(b->p + b->len + 1, &n32, 4);
        b->len += 5;
        for (Py_ssize_t i = 0; i < n; i++) {
            /* A list may change size while encoding only through __del__
             * tricks; re-check the bound on every step. */
            if (is_list && i >= PyList_GET_SIZE(o))
                return ENC_UNSUPPORTED;
            PyObject *x = is_list ? PyList_GET_ITEM(o, i) : PyTuple_GET_ITEM(o, i);
            if (depth == 0)
                b->nseen = 0; /* sharing is looked for within one item */
            int rc = enc_value(b, x, depth + 1);
            if (rc)
                return rc;
        }
        return 0;
    }
    if (t == &PyDict_Type) {
        /* Exact keys and values only: no __hash__ or __eq__ of ours runs,
         * so the dict cannot change while it is read. */
        if (depth >= ENC_MAX_DEPTH)
            return ENC_UNSUPPORTED;
        if (depth >= 2 && Py_REFCNT(o) > 1 && enc_shared(b, o))
            return ENC_UNSUPPORTED; /* held twice in one item: pickle it */
        Py_ssize_t n = PyDict_GET_SIZE(o);
        if ((size_t)n > 0xffffffffu)
            return ENC_UNSUPPORTED;
        uint32_t n32 = (uint32_t)n;
        if (buf_reserve(b, 5) < 0)
            return -1;
        b->p[b->len] = 'd';
        memcpy(b->p + b->len + 1, &n32, 4);
        b->len += 5;
        Py_ssize_t pos = 0, k = 0;
        PyObject *key, *val;
        while (PyDict_Next(o, &pos, &key, &val)) {
            if (++k > n)
                return ENC_UNSUPPORTED;
            int rc = enc_value(b, key, depth + 1);
            if (rc == 0)
                rc = enc_value(b, val, depth + 1);
            if (rc)
                return rc;
        }
        return k == n ? 0 : ENC_UNSUPPORTED;
    }
    return ENC_UNSUPPORTED;
}

static PyObject *dec_corrupt(void)
{
    PyErr_SetString(PyExc_RuntimeError, "parmapper: corrupt compact record");
    return NULL;
}

/* Decodes one value at *p (advanced past it).  NULL with an error set. */
/* The bytes objects a record's 'B' values were routed into (route_cb),
 * taken in order by the decoder. */
typedef struct {
    int n, k;
    size_t total; /* their bytes */
    PyObject *objs[PM_ROUTE_MAX];
} Routed;

static PyObject *dec_value(const unsigned char **pp, const unsigned char *end,
                           int depth, Routed *rt)
{
    const unsigned char *p = *pp;
    if (p >= end || depth > ENC_MAX_DEPTH)
        return dec_corrupt();
    unsigned char tag = *p++;
    PyObject *r = NULL;
    switch (tag) {
    case 'N':
        r = Py_None;
        Py_INCREF(r);
        break;
    case 'T':
        r = Py_True;
        Py_INCREF(r);
        break;
    case 'F':
        r = Py_False;
        Py_INCREF(r);
        break;
    case 'i': {
        long long v;
        if (end - p < 8)
            return dec_corrupt();
        memcpy(&v, p, 8);
        p += 8;
        r = PyLong_FromLongLong(v);
        break;
    }
    case 'f': {
        double v;
        if (end - p < 8)
            return dec_corrupt();
        memcpy(&v, p, 8);
        p += 8;
        r = PyFloat_FromDouble(v);
        break;
    }
    case 's': {
        uint32_t n;
        if (end - p < 4)
            return dec_corrupt();
        memcpy(&n, p, 4);
        p += 4;
        if ((size_t)(end - p) < n)
            return dec_corrupt();
        r = PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n, NULL);
        p += n;
        break;
    }
    case 'B':
    case 'b': {
        uint64_t n;
        if (end - p < 8)
            return dec_corrupt();
        memcpy(&n, p, 8);
        p += 8;
        if (tag == 'B' && rt) {
            if (rt->k == rt->n || (uint64_t)PyBytes_GET_SIZE(rt->objs[rt->k]) != n)
                return dec_corrupt();
            r = rt->objs[rt->k]; /* the reference moves to the result */
            rt->objs[rt->k++] = NULL;
            break;
        }
        if ((uint64_t)(end - p) < n)
            return dec_corrupt();
        r = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
        p += n;
        break;
    }
    case 'd': {
        uint32_t n;
        if (end - p < 4)
            return dec_corrupt();
        memcpy(&n, p, 4);
        p += 4;
        if ((size_t)(end - p) / 2 < n) /* a key and a value take 2 bytes */
            return dec_corrupt();
        r = PyDict_New();
        if (!r)
            return NULL;
        for (uint32_t i = 0; i < n; i++) {
            PyObject *k = dec_value(&p, end, depth + 1, rt);
            PyObject *v = k ? dec_value(&p, end, depth + 1, rt) : NULL;
            int rc = v ? PyDict_SetItem(r, k, v) : -1;
            Py_XDECREF(k);
            Py_XDECREF(v);
            if (rc < 0) {
                Py_DECREF(r);
                return NULL;
            }
        }
        break;
    }
    case 'p': { /* an item pickled alone (input_thread.c) */
        uint64_t n;
        if (end - p < 8)
            return dec_corrupt();
        memcpy(&n, p, 8);
        p += 8;
        if ((uint64_t)(end - p) < n)
            return dec_corrupt();
        r = loads_mem(p, (size_t)n);
        if (!r && PyErr_ExceptionMatches(PyExc_Exception) &&
            !PyErr_ExceptionMatches(PyExc_MemoryError) && unsent_type) {
            /* It cannot be rebuilt here: the item fails, not the task; its
             * bytes in the marker, for work_run to say why, naming it. */
            PyErr_Clear();
            PyObject *data = PyBytes_FromStringAndSize((const char *)p,
                                                       (Py_ssize_t)n);
            r = data ? PyObject_CallOneArg(unsent_type, data) : NULL;
            Py_XDECREF(data);
        }
        p += n;
        break;
    }
    case 't':
    case 'l': {
        uint32_t n;
        if (end - p < 4)
            return dec_corrupt();
        memcpy(&n, p, 4);
        p += 4;
        if ((size_t)(end - p) < n) /* every value takes at least a byte */
            return dec_corrupt();
        r = tag == 'l' ? PyList_New(n) : PyTuple_New(n);
        if (!r)
            return NULL;
        for (uint32_t i = 0; i < n; i++) {
            PyObject *x = dec_value(&p, end, depth + 1, rt);
            if (!x) {
                Py_DECREF(r);
                return NULL;
            }
            if (tag == 'l')
                PyList_SET_ITEM(r, i, x);
            else
                PyTuple_SET_ITEM(r, i, x);
        }
        break;
    }
    default:
        return dec_corrupt();
    }
    *pp = p;
    return r;
}

/* Decodes a whole record that must be exactly one value; rt: where its
 * 'B' values went, when the record was routed. */
static PyObject *dec_record(const unsigned char *p, size_t n, Routed *rt)
{
    const unsigned char *end = p + n;
    PyObject *r = dec_value(&p, end, 0, rt);
    if (r && (p != end || (rt && rt->k != rt->n))) {
        Py_DECREF(r);
        return dec_corrupt();
    }
    return r;
}

/*
 * Route tables.  A compact record with large bytes values ('B') carries,
 * right after its first byte (task) or header (result), u8 count then
 * count x {u64 offset in the message, u64 length} of their data, so that
 * the receiver can route them from the first PM_ROUTE_HEAD bytes alone.
 */
#define ROUTE_TABLE_MAX (1 + 16 * PM_ROUTE_MAX)

/* Writes the table of enc's 'B' values into out (ROUTE_TABLE_MAX bytes);
 * before: bytes of the message ahead of the table; skip: bytes at the
 * start of enc that are not sent after it (a task's own first byte).
 * Returns its length. */
static size_t route_table(const buf_t *enc, size_t before, size_t skip,
                          unsigned char *out)
{
    int count = enc->nsp < PM_ROUTE_MAX ? enc->nsp : PM_ROUTE_MAX;
    size_t len = 1 + 16 * (size_t)count;
    size_t spliced = 0; /* data of the earlier splices, also in the message */
    out[0] = (unsigned char)count;
    for (int i = 0; i < count; i++) {
        uint64_t off = before + len + enc->sp[i].at - skip + spliced;
        uint64_t n = enc->sp[i].n;
        memcpy(out + 1 + 16 * i, &off, 8);
        memcpy(out + 9 + 16 * i, &n, 8);
        spliced += enc->sp[i].n;
    }
    return len;
}

static void release_routed(void *ctx, void *owner)
{
    (void)ctx;
    Routed *rt = owner;
    if (!rt)
        return;
    if (in_worker)
        gil_take();
    for (int i = 0; i < rt->n; i++)
        Py_XDECREF(rt->objs[i]);
    PyMem_RawFree(rt);
}

/* Decodes the compact record rec[0..n) whose list starts at `at`, after
 * the route table when rec[0] has the flag (0x40 for tasks and results);
 * rt (released here) holds its routed values. */
static PyObject *dec_routed(const unsigned char *rec, size_t n, size_t at,
                            Routed *rt)
{
    PyObject *r = NULL;
    if (rec[0] & 0x40) {
        if (at >= n || at + 1 + 16 * (size_t)rec[at] > n) {
            r = dec_corrupt();
            goto done;
        }
        at += 1 + 16 * (size_t)rec[at];
    }
    r = dec_record(rec + at, n - at, rt);
done:
    release_routed(NULL, rt);
    return r;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* A clock of the kernel's tick (1-4 ms), read without a system call in a
 * few ns: enough to tell an input that takes milliseconds per chunk. */
static uint64_t coarse_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Reading a chunk of input for longer than this sends what was read and
 * lets the engine deliver ready results before reading on. */
#define SLOW_INPUT_NS 2000000u

/* ------------------------------------------------------------------------ */
/* MapIter.                                                                 */

typedef struct InputReader InputReader; /* input_thread.c */

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
                              map starts: every worker, replacements too,
                              reads the items as they were then) */
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
    long oom_base;         /* OOM kills counted when the map started (see
                              oom_kills), -1 when unknown */
} MapIter;

/* hooks.route: a compact record with a route table, being assembled: its
 * 'B' values' data goes straight into fresh bytes objects (one copy, from
 * the ring).  Anything else, or no memory, routes nothing (the data is
 * then assembled and copied as for 'b'). */
static int route_cb(void *ctx, const void *head, size_t n, pm_span *spans,
                    void **owner)
{
    const unsigned char *h = head;
    int task = getpid() != ((MapIter *)ctx)->parent_pid; /* else a result */
    size_t at = task ? 1 : REC_HDR;
    if (h[0] != (task ? (TASK_COMPACT | TASK_ROUTES) : (REC_COMPACT | REC_ROUTES)))
        return 0;
    int count = h[at];
    if (count < 1 || count > PM_ROUTE_MAX || at + 1 + 16 * (size_t)count > n)
        return 0;
    if (in_worker)
        gil_take();
    Routed *rt = PyMem_RawCalloc(1, sizeof *rt);
    if (!rt)
        return 0;
    for (int i = 0; i < count; i++) {
        uint64_t off, len;
        memcpy(&off, h + at + 1 + 16 * i, 8);
        memcpy(&len, h + at + 9 + 16 * i, 8);
        PyObject *o = len <= PY_SSIZE_T_MAX
                          ? PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len)
                          : NULL;
        if (!o) {
            PyErr_Clear();
            release_routed(ctx, rt);
            return 0;
        }
        rt->objs[rt->n++] = o;
        rt->total += len;
        spans[i] = (pm_span){off, len, PyBytes_AS_STRING(o)};
    }
    *owner = rt;
    return count;
}

/* --- engine callbacks, parent side --- */

/*
 * Replaces each item of a task that cannot be pickled by an _Unsent marker
 * carrying an ItemPicklingError that names it: the worker raises that error
 * in the item's place, so it follows `exception` like any other.
 */
static int mark_unsendable(MapIter *self, PyObject *items)
{
    PyObject *cls = errors_attr("ItemPicklingError");
    if (!cls)
        return -1;
    int ret = 0;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(items) && ret == 0; k++) {
        PyObject *item = PyList_GET_ITEM(items, k);
        PyObject *t = dumps(item);
        if (t) {
            Py_DECREF(t);
            continue;
        }
        PyObject *et, *ev, *etb;
        PyErr_Fetch(&et, &ev, &etb);
        PyErr_NormalizeException(&et, &ev, &etb);
        PyObject *exc = PyObject_CallFunction(
            cls, "N",
            PyUnicode_FromFormat("item %zd: cannot pickle the item (type %s) "
                                 "to send it to a worker process: %S",
                                 self->next_index + k, Py_TYPE(item)->tp_name,
                                 ev ? ev : Py_None));
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(etb);
        PyObject *marker = exc ? PyObject_CallOneArg(unsent_type, exc) : NULL;
        Py_XDECREF(exc);
        if (!marker)
            ret = -1;
        else
            PyList_SetItem(items, k, marker); /* steals marker */
    }
    Py_DECREF(cls);
    return ret;
}

/* How many items the next task carries: the fixed chunksize, or (adaptive)
 * enough items for about TARGET_TASK_NS of work as measured by the workers,
 * at most doubling from one task to the next, small enough that a result
 * stays within TARGET_TASK_BYTES, and small near the end of known input. */
#define TARGET_TASK_NS 2000000.0
#define TARGET_TASK_BYTES 262144.0

static Py_ssize_t next_chunk_size(MapIter *self)
{
    if (!self->adaptive)
        return self->chunksize;
    double size = 1.0;
    if (self->ns_per_item > 0.0) {
        size = TARGET_TASK_NS / (self->ns_per_item > 20.0 ? self->ns_per_item : 20.0);
        /* Bytes per item, whichever way is larger: results or items. */
        double bpi = self->bytes_per_item > self->in_bytes_per_item
                         ? self->bytes_per_item : self->in_bytes_per_item;
        double bcap = TARGET_TASK_BYTES / (bpi > 1.0 ? bpi : 1.0);
        if (size > bcap)
            size = bcap;
        double grow = 2.0 * (double)self->last_chunk;
        if (size > grow)
            size = grow;
    }
    if (self->length > self->next_index) {
        /* Keep at least four tasks per thread for the rest of the input so
         * the last tasks finish together.  (A len() that proved too small
         * is only a hint: past it, no cap.) */
        double left = (double)(self->length - self->next_index);
        double cap = left / (4.0 * self->opt.nproc * self->opt.nthreads);
        if (size > cap)
            size = cap;
    }
    Py_ssize_t n = size < 1.0 ? 1 : (Py_ssize_t)size;
    if (n > 1 << 20)
        n = 1 << 20;
    /* max_tasks_per_worker: the task that reaches it is a worker's last, so
     * a worker runs fewer than twice as many items. */
    if (self->opt.max_items_per_worker &&
        (uint64_t)n > self->opt.max_items_per_worker)
        n = (Py_ssize_t)self->opt.max_items_per_worker;
    self->last_chunk = n;
    return n;
}

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

static void release_pieces(void *ctx, void *owner)
{
    (void)ctx;
    Pieces *t = owner;
    for (Py_ssize_t i = 0; i < t->nviews; i++)
        PyBuffer_Release(&t->views[i]);
    PyMem_Free(t->views);
    Py_XDECREF(t->keep[0]);
    Py_XDECREF(t->keep[1]);
    buf_free(&t->head);
    PyMem_Free(t);
}

static Pieces *pieces_new(int niov)
{
    Pieces *t = PyMem_Calloc(1, sizeof *t + (size_t)niov * sizeof(pm_iov));
    if (!t)
        PyErr_NoMemory();
    return t;
}

/*
 * An out-of-band record (see loads_oob) as pieces: the prefix bytes (the
 * record's own header) and the lengths, then the pickle `pick` and every
 * buffer of `bufs` in place, held (references taken) until released.
 */
static Pieces *oob_pieces(const void *prefix, size_t nprefix, PyObject *pick,
                          PyObject *bufs)
{
    static const unsigned char zeros[16];
    Py_ssize_t nb = PyList_GET_SIZE(bufs);
    Pieces *t = pieces_new(2 + 2 * (int)nb);
    if (!t)
        return NULL;
    Py_INCREF(pick);
    Py_INCREF(bufs);
    t->keep[0] = pick;
    t->keep[1] = bufs;
    if (!(t->views = PyMem_Calloc((size_t)nb, sizeof *t->views))) {
        PyErr_NoMemory();
        goto fail;
    }
    for (; t->nviews < nb; t->nviews++)
        if (PyObject_GetBuffer(PyList_GET_ITEM(bufs, t->nviews),
                               &t->views[t->nviews], PyBUF_CONTIG_RO) < 0)
            goto fail;
    uint64_t meta[2] = {(uint64_t)nb, (uint64_t)PyBytes_GET_SIZE(pick)};
    if (buf_put(&t->head, prefix, nprefix) < 0 ||
        buf_put(&t->head, meta, sizeof meta) < 0)
        goto fail;
    for (Py_ssize_t i = 0; i < nb; i++) {
        uint64_t l = (uint64_t)t->views[i].len;
        if (buf_put(&t->head, &l, 8) < 0)
            goto fail;
    }
    if (buf_put(&t->head, zeros, pad16(t->head.len)) < 0)
        goto fail;
    size_t off = t->head.len + (size_t)meta[1];
    t->iov[0] = (pm_iov){t->head.p, t->head.len};
    t->iov[1] = (pm_iov){PyBytes_AS_STRING(pick), (size_t)meta[1]};
    t->niov = 2;
    for (Py_ssize_t i = 0; i < nb; i++) {
        size_t pad = pad16(off);
        t->iov[t->niov++] = (pm_iov){zeros, pad};
        t->iov[t->niov++] = (pm_iov){t->views[i].buf, (size_t)t->views[i].len};
        off += pad + (size_t)t->views[i].len;
    }
    return t;
fail:
    release_pieces(NULL, t);
    return NULL;
}

/* A compact task that refers to large bytes items: the engine writes them
 * from the items (kept alive), the encoder's buffer is handed over. */
static Pieces *spliced_task(buf_t *enc, PyObject *items)
{
    Pieces *t = pieces_new(2 * enc->nsp + 2);
    if (!t)
        return NULL;
    Py_INCREF(items);
    t->keep[0] = items;
    t->head = *enc;
    memset(enc, 0, sizeof *enc);
    enc->splice = 1;
    /* The first byte with the flag, the route table, then the encoding
     * after its own first byte. */
    t->table[0] = TASK_COMPACT | TASK_ROUTES;
    size_t n = 1 + route_table(&t->head, 1, 1, t->table + 1);
    t->iov[0] = (pm_iov){t->table, n};
    t->niov = 1 + buf_pieces(&t->head, t->iov + 1);
    t->iov[1].base = (const unsigned char *)t->iov[1].base + 1;
    t->iov[1].len -= 1;
    return t;
}

/*
 * The input raised: keeps an Exception in self->input_exc (with its
 * traceback) to raise after the results of the items read before it, and
 * returns 0.  A BaseException that is not an Exception (KeyboardInterrupt,
 * SystemExit...) stays set and -1 is returned: it ends the map at once, as
 * it would a plain loop.
 */
static int input_error_defer(MapIter *self)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyErr_NormalizeException(&et, &ev, &etb);
    if (etb && ev)
        PyException_SetTraceback(ev, etb);
    Py_XDECREF(et);
    Py_XDECREF(etb);
    Py_XSETREF(self->input_exc, ev);
    return 0;
}

/* Raises the input's deferred exception, if any (once); returns -1 then,
 * else 0. */
static int input_error_raise(MapIter *self)
{
    PyObject *ev = self->input_exc;
    if (!ev)
        return 0;
    self->input_exc = NULL;
    PyObject *etb = PyException_GetTraceback(ev);
    Py_INCREF(Py_TYPE(ev));
    PyErr_Restore((PyObject *)Py_TYPE(ev), ev, etb);
    return -1;
}

#include "input_thread.c"

/* gather_cb with the input read in its own thread: never blocks. */
static int gather_read(MapIter *self, pm_task *task, const pm_iov **iov,
                       int *niov, void **owner)
{
    InputReader *r = self->reader;
    ReadTask t; /* a copy: the reader may reuse the entry */
    int rc = reader_take(r, &t);
    if (rc == 0) {
        self->input_done = 1;
        if (r->exc) {
            Py_XSETREF(self->input_exc, r->exc);
            r->exc = NULL;
        }
    }
    if (rc != 1)
        return rc;
    if (t.pieces) {
        *iov = t.pieces->iov;
        *niov = t.pieces->niov;
        *owner = t.pieces;
    } else { /* small: copied (the engine copies what it cannot write) */
        buf_clear(&self->enc);
        if (buf_put(&self->enc, t.small, t.bytes) < 0)
            return PM_ECALLBACK;
        self->iov1 = (pm_iov){self->enc.p, self->enc.len};
        *iov = &self->iov1;
        *niov = 1;
    }
    task->first = t.first;
    task->count = t.count;
    self->next_index = (Py_ssize_t)(t.first + t.count);
    if (self->adaptive) {
        double b = (double)t.bytes / (double)t.count;
        self->in_bytes_per_item = self->in_bytes_per_item > 0.0
                                      ? 0.7 * self->in_bytes_per_item + 0.3 * b
                                      : b;
    }
    r->want = next_chunk_size(self);
    return 1 | t.flags;
}

static int gather_cb(void *ctx, pm_task *task, const pm_iov **iov, int *niov,
                     void **owner)
{
    MapIter *self = ctx;
    if (self->reader)
        return gather_read(self, task, iov, niov, owner);
    buf_t *enc = &self->enc;
    Py_ssize_t want = next_chunk_size(self);
    buf_clear(enc);
    enc->splice = 1;
    Pieces *pieces = NULL;
    size_t total;

    if (self->index_seq) {
        /* Index dispatch: the workers read their inherited copy. */
        Py_ssize_t left = self->length - self->next_index;
        if (left <= 0)
            return 0;
        Py_ssize_t n = want < left ? want : left;
        if (buf_tag(enc, TASK_INDEX) < 0)
            return PM_ECALLBACK;
        task->first = (uint64_t)self->next_index;
        task->count = (uint32_t)n;
        self->next_index += n;
        self->iov1 = (pm_iov){enc->p, enc->len};
        *iov = &self->iov1;
        *niov = 1;
        return 1;
    }

    if (self->input_done)
        return 0;
    PyObject *items = PyList_New(0);
    if (!items)
        return PM_ECALLBACK;
    uint64_t t0 = coarse_ns();
    int slow = 0, volatile_pieces = 0;
    for (Py_ssize_t k = 0; k < want; k++) {
        /* A slow input: send what was read (after 1, 2, 4... items, a
         * coarse clock says whether reading took SLOW_INPUT_NS already). */
        if (k && !(k & (k - 1)) && coarse_ns() - t0 >= SLOW_INPUT_NS) {
            slow = 1;
            break;
        }
        PyObject *x = PyIter_Next(self->it);
        if (!x) {
            /* The input is finished at its first StopIteration, as for
             * map(); an Exception it raises ends it too, but is raised
             * only after the results of the items read before it. */
            self->input_done = 1;
            if (PyErr_Occurred() && input_error_defer(self) < 0) {
                Py_DECREF(items);
                return PM_ECALLBACK;
            }
            break;
        }
        int rc = PyList_Append(items, x);
        Py_DECREF(x);
        if (rc < 0) {
            Py_DECREF(items);
            return PM_ECALLBACK;
        }
    }
    Py_ssize_t n = PyList_GET_SIZE(items);
    if (n == 0) {
        Py_DECREF(items);
        return 0;
    }
    int rc = buf_tag(enc, TASK_COMPACT);
    if (rc == 0)
        rc = enc_value(enc, items, 0);
    if (rc == 0 && enc->nsp) {
        if (!(pieces = spliced_task(enc, items)))
            rc = -1;
    } else if (rc == ENC_UNSUPPORTED) {
        /* Pickle: the prefix byte, then the pickle of the list, its large
         * buffers out of band. */
        PyObject *bufs = NULL;
        PyObject *b = dumps_oob(items, &bufs);
        if (!b) {
            PyErr_Clear();
            if (mark_unsendable(self, items) < 0) {
                Py_DECREF(items);
                return PM_ECALLBACK;
            }
            b = dumps_oob(items, &bufs);
            if (!b) {
                Py_DECREF(items);
                return PM_ECALLBACK;
            }
        }
        buf_clear(enc);
        if (bufs) {
            static const unsigned char tag = TASK_PICKLE | TASK_OOB;
            rc = (pieces = oob_pieces(&tag, 1, b, bufs)) ? 0 : -1;
            /* Buffers of mutable objects (arrays, bytearrays) that the
             * input may reuse for its next items. */
            volatile_pieces = 1;
            Py_DECREF(bufs);
        } else {
            rc = buf_tag(enc, TASK_PICKLE);
            if (rc == 0)
                rc = buf_put(enc, PyBytes_AS_STRING(b),
                             (size_t)PyBytes_GET_SIZE(b));
        }
        Py_DECREF(b);
    }
    Py_DECREF(items);
    if (rc < 0)
        return PM_ECALLBACK;
    if (pieces) {
        total = 0;
        for (int i = 0; i < pieces->niov; i++)
            total += pieces->iov[i].len;
        *iov = pieces->iov;
        *niov = pieces->niov;
        *owner = pieces;
    } else {
        total = enc->len;
        self->iov1 = (pm_iov){enc->p, enc->len};
        *iov = &self->iov1;
        *niov = 1;
    }
    if (self->adaptive) {
        double b = (double)total / (double)n;
        self->in_bytes_per_item = self->in_bytes_per_item > 0.0
                                      ? 0.7 * self->in_bytes_per_item + 0.3 * b
                                      : b;
    }
    task->first = (uint64_t)self->next_index;
    task->count = (uint32_t)n;
    self->next_index += n;
    /* Slow: the engine delivers a ready result before asking again.
     * Volatile: it writes the buffers whole before the input is read on. */
    return (slow || coarse_ns() - t0 >= SLOW_INPUT_NS ? PM_PRODUCED_SLOW : 1) |
           (volatile_pieces ? PM_PRODUCED_VOLATILE : 0);
}

static void hook_before_fork(void *ctx)
{
    (void)ctx;
    PyOS_BeforeFork();
}

static void hook_after_fork_parent(void *ctx)
{
    (void)ctx;
    PyOS_AfterFork_Parent();
}

static void gil_drop(void);

/*
 * A worker makes and frees its large objects over and over: the result it
 * has just sent, the function's temporaries.  glibc serves blocks from
 * 128 KB up (the threshold grows on its own only after some are freed) with
 * a fresh mmap and gives them back at free, so every 8 MB result costs 2048
 * page faults of zeroed memory, about 5 ms of kernel time here, more than
 * the copy into the ring.  Workers are short-lived processes of one map:
 * serve blocks up to glibc's ceiling (32 MB) from the heap and keep up to
 * 64 MB of freed memory at its top for reuse (what a worker may hold beyond
 * its live data: 64 MB x N at most); the caller is not touched.
 */
static void worker_malloc_policy(void)
{
#ifdef __GLIBC__
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
#endif
}

static void hook_after_fork_child(void *ctx, int worker)
{
    MapIter *self = ctx;
    PyOS_AfterFork_Child();
    worker_malloc_policy();
    /* Standard streams of its own: a thread of the caller may have held
     * the inherited ones' locks at the fork (parmapper/_worker.py). */
    PyObject *f = fresh_stdio ? PyObject_CallNoArgs(fresh_stdio) : NULL;
    if (!f)
        PyErr_Clear();
    Py_XDECREF(f);
    /* Everything inherited goes to the permanent generation: a collection
     * in the worker then never walks the caller's objects, whose headers it
     * would write to, copying the caller's heap page by page (a full
     * collection over 1 GB of objects: ~1.2 s and ~0.7 GB copied per worker).
     * O(1), and the caller's own gc is untouched. */
    PyObject *r = gc_freeze ? PyObject_CallNoArgs(gc_freeze) : NULL;
    if (!r)
        PyErr_Clear();
    Py_XDECREF(r);
    /* numpy's global random state re-seeded, the worker named for
     * multiprocessing and logging (parmapper._worker.after_fork). */
    PyObject *setup = worker_attr("after_fork");
    r = setup ? PyObject_CallFunction(setup, "i", worker) : NULL;
    if (!r)
        PyErr_Clear();
    Py_XDECREF(r);
    Py_XDECREF(setup);
    in_worker = self->daemon ? 1 : 2;
    worker_interp = PyThreadState_Get()->interp;
    /* The GIL is never held while the worker waits for a task (worker_wait
     * hooks), so threads the user's function starts keep running between
     * tasks.  With several threads the main thread only joins them: it lets
     * the GIL go for good. */
    tls_tstate = PyThreadState_Get();
    tls_holds_gil = 1;
    if (self->opt.nthreads > 1)
        gil_drop();
}

static void flush_std(void)
{
    static const char *names[] = {"stdout", "stderr"};
    for (int i = 0; i < 2; i++) {
        PyObject *f = PySys_GetObject(names[i]);
        if (f && f != Py_None) {
            PyObject *r = PyObject_CallMethod(f, "flush", NULL);
            if (!r)
                PyErr_Clear();
            Py_XDECREF(r);
        }
    }
}

static void gil_take(void)
{
    if (tls_holds_gil)
        return;
    if (!tls_tstate)
        tls_tstate = PyThreadState_New(worker_interp);
    PyEval_RestoreThread(tls_tstate);
    tls_holds_gil = 1;
}

static void gil_drop(void)
{
    if (!tls_holds_gil)
        return;
    tls_tstate = PyEval_SaveThread();
    tls_holds_gil = 0;
}

static void hook_worker_idle(void *ctx)
{
    (void)ctx;
    gil_drop(); /* taken back by the next work_cb or write_record */
}

static void hook_worker_exit(void *ctx)
{
    (void)ctx;
    /* Flush only what this worker wrote: the parent flushed its own buffers
     * before forking, so nothing of the parent's is written twice. */
    gil_take();
    flush_std();
}

static void hook_wait_begin(void *ctx)
{
    MapIter *self = ctx;
    self->save = PyEval_SaveThread();
}

static void hook_wait_end(void *ctx)
{
    MapIter *self = ctx;
    PyEval_RestoreThread(self->save);
    self->save = NULL;
}

static int hook_check(void *ctx)
{
    (void)ctx;
    return PyErr_CheckSignals() < 0 ? PM_ECALLBACK : 0;
}

/* --- engine callbacks, worker side --- */

/* Prints the exception being handled, with its traceback, and clears it.
 * Unlike PyErr_Print this never acts on a SystemExit (which would run the
 * interpreter's finalization and atexit handlers, inherited from the
 * caller, inside a worker): a worker only ever ends with _exit. */
static void print_error(void)
{
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    if (!et)
        return;
    PyErr_NormalizeException(&et, &ev, &etb);
    if (etb && ev)
        PyException_SetTraceback(ev, etb);
    PyErr_Display(et, ev, etb);
    Py_XDECREF(et);
    Py_XDECREF(ev);
    Py_XDECREF(etb);
    PyErr_Clear();
}

/* exception='proc': the worker writes the exception being handled, with
 * its traceback, to its own sys.stderr (what a notebook shows, unlike a
 * process's excepthook) and leaves the text for the caller's
 * WorkerDiedError (parmapper._worker.proc_error); clears it. */
static void proc_error(MapIter *self)
{
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyErr_NormalizeException(&et, &ev, &etb);
    if (etb && ev)
        PyException_SetTraceback(ev, etb);
    PyObject *f = ev ? worker_attr("proc_error") : NULL;
    PyObject *r = f ? PyObject_CallFunctionObjArgs(
                          f, ev, self->proc_log ? self->proc_log : Py_None,
                          NULL)
                    : NULL;
    Py_XDECREF(f);
    if (r) {
        Py_DECREF(r);
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(etb);
        return;
    }
    PyErr_Clear();
    PyErr_Restore(et, ev, etb);
    print_error();
}

/* Names the item in the exception being handled, which stays set: its
 * index and, when short, its repr, as a note the user reads with the
 * traceback (parmapper._worker.note_item).  Only on an item's failure. */
static void note_failed_item(MapIter *self, Py_ssize_t idx, PyObject *item)
{
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyErr_NormalizeException(&et, &ev, &etb);
    if (etb && ev)
        PyException_SetTraceback(ev, etb);
    PyObject *f = ev && item ? worker_attr("note_item") : NULL;
    PyObject *r = f ? PyObject_CallFunction(f, "OnOi", ev, idx, item,
                                            self->caller->star >= 0)
                    : NULL;
    if (!r)
        PyErr_Clear();
    Py_XDECREF(r);
    Py_XDECREF(f);
    PyErr_Restore(et, ev, etb);
}

/* Describes the exception being handled as an error entry
 * (exc or None, type name, message, traceback text, kind); clears it. */
static PyObject *error_entry(Py_ssize_t idx, int kind)
{
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyErr_NormalizeException(&et, &ev, &etb);
    if (etb && ev)
        PyException_SetTraceback(ev, etb);
    PyObject *tname = NULL, *msg = NULL, *tb = NULL, *entry = NULL;
    PyObject *exc = ev ? ev : Py_None;
    Py_INCREF(exc);
    tname = PyUnicode_FromString(et ? ((PyTypeObject *)et)->tp_name : "?");
    msg = ev ? PyObject_Str(ev) : PyUnicode_FromString("");
    if (!msg) {
        PyErr_Clear();
        msg = PyUnicode_FromString("<exception str() failed>");
    }
    /* The worker's traceback, as text: tracebacks cannot be pickled.  With
     * its notes (the item's, note_failed_item) also before Python 3.11. */
    PyObject *fmt = ev ? worker_attr("format_error") : NULL;
    if (fmt) {
        tb = PyObject_CallOneArg(fmt, ev);
        Py_DECREF(fmt);
        if (tb && !PyUnicode_Check(tb))
            Py_CLEAR(tb);
    }
    if (!tb) {
        PyErr_Clear();
        tb = PyUnicode_FromString("");
    }
    /* An exception that does not survive a pickle round trip is sent as its
     * type name and message only. */
    if (exc != Py_None) {
        PyObject *b = dumps(exc);
        PyObject *back = b ? PyObject_CallOneArg(pickle_loads, b) : NULL;
        if (!back) {
            PyErr_Clear();
            Py_DECREF(exc);
            exc = Py_None;
            Py_INCREF(exc);
        }
        Py_XDECREF(back);
        Py_XDECREF(b);
    }
    if (tname && msg && tb)
        entry = Py_BuildValue("(OOOOi)", exc, tname, msg, tb, kind);
    Py_DECREF(exc);
    Py_XDECREF(tname);
    Py_XDECREF(msg);
    Py_XDECREF(tb);
    Py_XDECREF(et);
    Py_XDECREF(ev);
    Py_XDECREF(etb);
    (void)idx;
    return entry;
}

/* Replaces each result that cannot be pickled by an error naming it. */
static int sanitize_results(PyObject *results, PyObject **errors,
                            Py_ssize_t first)
{
    Py_ssize_t n = PyList_GET_SIZE(results);
    for (Py_ssize_t j = 0; j < n; j++) {
        PyObject *r = PyList_GET_ITEM(results, j);
        if (*errors) {
            PyObject *pj = PyLong_FromSsize_t(j);
            int has = pj ? PyDict_Contains(*errors, pj) : -1;
            Py_XDECREF(pj);
            if (has)
                continue;
        }
        PyObject *b = dumps(r);
        if (b) {
            Py_DECREF(b);
            continue;
        }
        PyObject *et, *ev, *etb;
        PyErr_Fetch(&et, &ev, &etb);
        PyErr_NormalizeException(&et, &ev, &etb);
        PyObject *cls = errors_attr("ResultPicklingError");
        if (!cls)
            return -1;
        PyObject *exc = PyObject_CallFunction(
            cls, "N",
            PyUnicode_FromFormat("item %zd: the result (type %s) cannot be "
                                 "pickled to send it back from the worker: %S",
                                 first + j, Py_TYPE(r)->tp_name,
                                 ev ? ev : Py_None));
        Py_DECREF(cls);
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(etb);
        if (!exc)
            return -1;
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
        PyObject *entry = error_entry(first + j, ERR_CALL);
        if (!entry)
            return -1;
        if (!*errors && !(*errors = PyDict_New())) {
            Py_DECREF(entry);
            return -1;
        }
        PyObject *pj = PyLong_FromSsize_t(j);
        int rc = pj ? PyDict_SetItem(*errors, pj, entry) : -1;
        Py_XDECREF(pj);
        Py_DECREF(entry);
        if (rc < 0)
            return -1;
        Py_INCREF(Py_None);
        PyList_SetItem(results, j, Py_None);
    }
    return 0;
}

/* Worker side: the item at index i of the inherited input (new reference). */
/*
 * An item of the inherited sequence.  Taking a reference writes to the
 * object's header, and the first write to one of the caller's pages costs
 * the worker a page fault and a copy of the page (copy-on-write): for a
 * list of a million ints, ~8000 faults, ~25 ms.  An int or a float is
 * rebuilt from its value instead (read only, a few ns); anything else is
 * the inherited object itself.
 */
static PyObject *inherited_item(PyObject *x)
{
    if (PyLong_CheckExact(x)) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(x, &overflow);
        if (!overflow)
            return PyLong_FromLongLong(v);
    } else if (PyFloat_CheckExact(x)) {
        return PyFloat_FromDouble(PyFloat_AS_DOUBLE(x));
    }
    Py_INCREF(x);
    return x;
}

static PyObject *index_item(MapIter *self, Py_ssize_t i)
{
    PyObject *s = self->index_seq;
    if (PyList_CheckExact(s) && i < PyList_GET_SIZE(s))
        return inherited_item(PyList_GET_ITEM(s, i));
    if (PyTuple_CheckExact(s) && i < PyTuple_GET_SIZE(s))
        return inherited_item(PyTuple_GET_ITEM(s, i));
    return PySequence_GetItem(s, i);
}

/* Thread-local encoder for results in a worker. */
static __thread buf_t tls_enc;

/* Writes one result record: the prefix, the elapsed time, the data. */
static int write_record(pm_writer *out, unsigned char kind, uint64_t elapsed,
                        const void *data, size_t n)
{
    unsigned char hdr[REC_HDR];
    hdr[0] = kind;
    memcpy(hdr + 1, &elapsed, 8);
    /* pm_write releases the GIL (worker_idle hook) if the ring is full. */
    int rc = pm_write(out, hdr, sizeof hdr);
    if (rc == 0)
        rc = pm_write(out, data, n);
    gil_take();
    return rc;
}

/* Writes a record given as pieces after its header (pm_write releases the
 * GIL if the ring is full; the pieces' objects are held meanwhile). */
static int write_pieces(pm_writer *out, const unsigned char *hdr, size_t nhdr,
                        const pm_iov *iov, int niov)
{
    int rc = nhdr ? pm_write(out, hdr, nhdr) : 0;
    for (int i = 0; i < niov && rc == 0; i++)
        rc = pm_write(out, iov[i].base, iov[i].len);
    gil_take();
    return rc;
}

/* Writes a compact record whose large bytes results are spliced in: each
 * goes from the object's memory straight into the ring (the results list
 * keeps them alive; bytes never change).  Returns 0 or negative. */
static int write_record_spliced(pm_writer *out, uint64_t elapsed,
                                const buf_t *enc)
{
    unsigned char hdr[REC_HDR + ROUTE_TABLE_MAX];
    hdr[0] = REC_COMPACT | REC_ROUTES;
    memcpy(hdr + 1, &elapsed, 8);
    size_t n = REC_HDR + route_table(enc, REC_HDR, 0, hdr + REC_HDR);
    pm_iov *iov = PyMem_Malloc((2 * (size_t)enc->nsp + 1) * sizeof *iov);
    if (!iov) {
        PyErr_NoMemory();
        return -1;
    }
    int rc = write_pieces(out, hdr, n, iov, buf_pieces(enc, iov));
    PyMem_Free(iov);
    return rc;
}

/* Writes a REC_OOB record: the header, the lengths, the pickle, then every
 * buffer straight from the object's memory.  Returns 0 or negative. */
static int write_record_oob(pm_writer *out, unsigned char kind,
                            uint64_t elapsed, PyObject *pick, PyObject *bufs)
{
    unsigned char hdr[REC_HDR];
    hdr[0] = kind | REC_OOB;
    memcpy(hdr + 1, &elapsed, 8);
    Pieces *t = oob_pieces(hdr, sizeof hdr, pick, bufs);
    if (!t)
        return -1;
    int rc = write_pieces(out, NULL, 0, t->iov, t->niov);
    release_pieces(NULL, t);
    return rc;
}

/*
 * fun called fork() and this child came back from it with value r (NULL:
 * an exception is set).  It is not the worker and must not touch the rings
 * it shares with the worker: it ends as a program whose main was fun would,
 * without running the rest of the task or the worker loop: exit status 0
 * for a return, the code of a SystemExit, 1 after printing any other
 * exception.  Its own output is flushed; atexit handlers are not run (they
 * are the caller's, inherited).
 */
static void copy_exit(PyObject *r) __attribute__((noreturn));
static void copy_exit(PyObject *r)
{
    int code = 0;
    if (!r && PyErr_ExceptionMatches(PyExc_SystemExit)) {
        PyObject *et, *ev, *etb;
        PyErr_Fetch(&et, &ev, &etb);
        PyErr_NormalizeException(&et, &ev, &etb);
        PyObject *c = ev ? PyObject_GetAttrString(ev, "code") : NULL;
        if (!c || c == Py_None) {
            code = 0;
        } else if (PyLong_Check(c)) {
            code = (int)PyLong_AsLong(c);
        } else {
            PySys_FormatStderr("%S\n", c);
            code = 1;
        }
        Py_XDECREF(c);
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(etb);
        PyErr_Clear();
    } else if (!r) {
        print_error();
        code = 1;
    }
    flush_std();
    _exit(code);
}

/* Runs one task in a worker.  Returns 0, or -1 when the worker must stop
 * (exception='proc', or the results cannot be sent at all). */
static int work_run(MapIter *self, const pm_task *task, const void *in,
                    size_t len, pm_writer *out)
{
    int ret = -1;
    PyObject *items = NULL, *results = NULL, *errors = NULL, *payload = NULL;
    PyObject *b = NULL, *bufs = NULL;
    Py_ssize_t first = (Py_ssize_t)task->first;
    const unsigned char *p = in;
    Py_ssize_t n = (Py_ssize_t)task->count;
    int rescued = 0; /* items that could not be rebuilt here are _Unsent */

    if (len < 1)
        goto fatal;
    if (p[0] == TASK_COMPACT)
        items = dec_record(p + 1, len - 1, NULL);
    else if (p[0] == (TASK_COMPACT | TASK_ROUTES))
        items = dec_routed(p, len, 1, pm_writer_take_routed(out));
    else if (p[0] == TASK_PICKLE)
        items = loads_rescued("rescue_items", p + 1, len - 1, first,
                              &rescued);
    else if (p[0] == (TASK_PICKLE | TASK_OOB))
        /* The buffers' objects are built on the memory the task was
         * assembled in (or on one copy of it when read in the ring). */
        items = loads_oob(pm_writer_take_input(out), p, len, 1,
                          "rescue_items", first, &rescued);
    else if (p[0] != TASK_INDEX || !self->index_seq)
        goto fatal;
    if (p[0] != TASK_INDEX && !items && PyErr_Occurred())
        print_error(); /* a corrupt task: say why before the worker dies */
    if (p[0] != TASK_INDEX &&
        (!items || !PyList_Check(items) || PyList_GET_SIZE(items) != n))
        goto fatal;
    results = PyList_New(n);
    if (!results)
        goto fatal;
    uint64_t t0 = mono_ns();
    for (Py_ssize_t j = 0; j < n; j++) {
        int shape = 0;
        PyObject *item = items ? PyList_GET_ITEM(items, j) : index_item(self, first + j);
        PyObject *r;
        int unsent = item && Py_TYPE(item) == (PyTypeObject *)unsent_type;
        if (!item) {
            r = NULL;
        } else if (unsent) {
            /* The parent could not pickle this item, or (bytes: its
             * pickle, input_thread.c) this worker cannot unpickle it:
             * raise its error here. */
            PyObject *err = PyObject_GetAttrString(item, "error");
            if (err && PyBytes_Check(err)) {
                static PyObject *salvage_module; /* parmapper._salvage */
                PyObject *fn = module_attr(&salvage_module, "parmapper._salvage",
                                           "item_error");
                Py_SETREF(err, fn ? PyObject_CallFunction(fn, "On", err,
                                                          first + j)
                                  : NULL);
                Py_XDECREF(fn);
            }
            if (err) {
                PyErr_SetObject((PyObject *)Py_TYPE(err), err);
                Py_DECREF(err);
            }
            r = NULL;
        } else {
            r = caller_call(self->caller, first + j, item, &shape);
            if (pm_forked_copy())
                copy_exit(r); /* fun forked and this is the child */
        }
        if (!r && !shape && !unsent)
            note_failed_item(self, first + j, item);
        if (!items)
            Py_XDECREF(item);
        if (!r) {
            if (self->mode == MODE_PROC && !shape && !unsent) {
                /* The original's debugging mode: the exception propagates
                 * in the worker, which prints it and dies; the parent names
                 * the item. */
                proc_error(self);
                goto fatal;
            }
            /* A BaseException that is not an Exception stops its task
             * where it was raised, as it stops a serial loop; the caller
             * raises it when it reaches this item, so the items after it
             * in the task (given the same entry) are never handed out. */
            int base = !shape && !PyErr_ExceptionMatches(PyExc_Exception);
            PyObject *entry = error_entry(first + j, shape ? ERR_SHAPE
                                                     : base ? ERR_BASE
                                                            : ERR_CALL);
            if (!entry)
                goto fatal;
            if (!errors && !(errors = PyDict_New())) {
                Py_DECREF(entry);
                goto fatal;
            }
            int rc = 0;
            for (Py_ssize_t k = j; k < (base ? n : j + 1) && rc == 0; k++) {
                PyObject *pk = PyLong_FromSsize_t(k);
                rc = pk ? PyDict_SetItem(errors, pk, entry) : -1;
                Py_XDECREF(pk);
                if (k > j && rc == 0) {
                    Py_INCREF(Py_None);
                    PyList_SET_ITEM(results, k, Py_None);
                }
            }
            Py_DECREF(entry);
            if (rc < 0)
                goto fatal;
            r = Py_None;
            Py_INCREF(r);
            if (base) {
                PyList_SET_ITEM(results, j, r);
                break;
            }
        }
        PyList_SET_ITEM(results, j, r);
    }
    uint64_t elapsed = mono_ns() - t0;
    if (!errors) {
        buf_t *enc = &tls_enc;
        buf_clear(enc);
        enc->splice = 1;
        int rc = enc_value(enc, results, 0);
        if (rc < 0)
            goto fatal;
        if (rc == 0) {
            rc = enc->nsp ? write_record_spliced(out, elapsed, enc)
                          : write_record(out, REC_COMPACT, elapsed, enc->p,
                                         enc->len);
            ret = rc < 0 ? -1 : 0;
            goto done;
        }
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        if (errors)
            payload = PyTuple_Pack(2, results, errors);
        else {
            payload = results;
            Py_INCREF(payload);
        }
        if (!payload)
            goto fatal;
        Py_CLEAR(bufs);
        b = dumps_oob(payload, &bufs);
        Py_CLEAR(payload);
        if (b)
            break;
        if (attempt == 1)
            goto fatal;
        PyErr_Clear();
        if (sanitize_results(results, &errors, first) < 0)
            goto fatal;
    }
    if (bufs)
        ret = write_record_oob(out, errors ? REC_ERRORS : REC_PLAIN, elapsed,
                               b, bufs) < 0 ? -1 : 0;
    else
        ret = write_record(out, errors ? REC_ERRORS : REC_PLAIN, elapsed,
                           PyBytes_AS_STRING(b),
                           (size_t)PyBytes_GET_SIZE(b)) < 0 ? -1 : 0;
    goto done;
fatal:
    if (PyErr_Occurred())
        print_error();
done:
    Py_XDECREF(items);
    Py_XDECREF(results);
    Py_XDECREF(errors);
    Py_XDECREF(b);
    Py_XDECREF(bufs);
    return ret;
}

static int work_cb(void *ctx, const pm_task *task, const void *in, size_t len,
                   pm_writer *out)
{
    gil_take(); /* a no-op while tasks flow: the GIL is kept between them */
    int rc = work_run((MapIter *)ctx, task, in, len, out);
    if (rc < 0)
        flush_std(); /* the process exits next: keep its traceback */
    return rc;
}

/* --- the iterator --- */

static void map_teardown(MapIter *self)
{
    if (self->reader) { /* before the map goes: it is told no more */
        reader_close(self->reader);
        Py_CLEAR(self->reader);
    }
    if (self->map) {
        pm_map *m = self->map;
        self->map = NULL;
        pm_map_destroy(m);
    }
    self->finished = 1;
}

/* Teardown that keeps the exception being raised. */
static void map_teardown_keep_error(MapIter *self)
{
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    map_teardown(self);
    PyErr_Restore(et, ev, etb);
}

static PyObject *format_range_list(const pm_death *d, PyObject **indices)
{
    *indices = PyList_New(0);
    if (!*indices)
        return NULL;
    PyObject *parts = PyList_New(0);
    if (!parts)
        return NULL;
    for (size_t i = 0; i < d->nlost; i++) {
        uint64_t a = d->lost[i].first, n = d->lost[i].count;
        for (uint64_t k = 0; k < n; k++) {
            PyObject *v = PyLong_FromUnsignedLongLong(a + k);
            if (!v || PyList_Append(*indices, v) < 0) {
                Py_XDECREF(v);
                Py_DECREF(parts);
                return NULL;
            }
            Py_DECREF(v);
        }
        if (i == 8) {
            PyObject *s = PyUnicode_FromFormat("... (%zu tasks in all)", d->nlost);
            if (!s || PyList_Append(parts, s) < 0) {
                Py_XDECREF(s);
                Py_DECREF(parts);
                return NULL;
            }
            Py_DECREF(s);
        }
        if (i >= 8)
            continue;
        PyObject *s = n == 1 ? PyUnicode_FromFormat("%llu", (unsigned long long)a)
                             : PyUnicode_FromFormat("%llu-%llu",
                                                    (unsigned long long)a,
                                                    (unsigned long long)(a + n - 1));
        if (!s || PyList_Append(parts, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(parts);
            return NULL;
        }
        Py_DECREF(s);
    }
    PyObject *sep = PyUnicode_FromString(", ");
    PyObject *joined = sep ? PyUnicode_Join(sep, parts) : NULL;
    Py_XDECREF(sep);
    Py_DECREF(parts);
    return joined;
}

static const char *signal_name(int sig)
{
    switch (sig) {
    case SIGKILL: return "SIGKILL";
    case SIGSEGV: return "SIGSEGV";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGHUP: return "SIGHUP";
    case SIGPIPE: return "SIGPIPE";
    case SIGQUIT: return "SIGQUIT";
    default: return "signal";
    }
}

/*
 * The kernel's count of OOM kills that would include a worker of this
 * process: the oom_kill line of its memory cgroup (v2 memory.events, v1
 * memory.oom_control; the workers share the caller's cgroup), else the
 * machine's (/proc/vmstat).  Returns it and names the file in src, or -1.
 * Read at the start of a map and when a worker died of SIGKILL: never on
 * the per-item path.
 */
static long oom_kills(char *src, size_t n)
{
    char line[512], path[600];
    long v = -1;
    FILE *f = fopen("/proc/self/cgroup", "re");
    while (f && v < 0 && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        const char *cg = NULL, *file = NULL, *root = NULL;
        if (strncmp(line, "0::", 3) == 0) {
            cg = line + 3;
            root = "/sys/fs/cgroup";
            file = "memory.events";
        } else {
            char *c = strchr(line, ':');
            char *c2 = c ? strchr(c + 1, ':') : NULL;
            if (c2 && c2 - c == 7 && strncmp(c + 1, "memory", 6) == 0) {
                cg = c2 + 1;
                root = "/sys/fs/cgroup/memory";
                file = "memory.oom_control";
            }
        }
        if (!cg)
            continue;
        snprintf(path, sizeof path, "%s%s/%s", root,
                 strcmp(cg, "/") == 0 ? "" : cg, file);
        FILE *g = fopen(path, "re");
        char key[64];
        long x;
        while (g && fscanf(g, "%63s %ld", key, &x) == 2)
            if (strcmp(key, "oom_kill") == 0) {
                v = x;
                snprintf(src, n, "%s", path);
            }
        if (g)
            fclose(g);
    }
    if (f)
        fclose(f);
    if (v < 0 && (f = fopen("/proc/vmstat", "re"))) {
        char key[64];
        long x;
        while (fscanf(f, "%63s %ld", key, &x) == 2)
            if (strcmp(key, "oom_kill") == 0) {
                v = x;
                snprintf(src, n, "/proc/vmstat");
            }
        fclose(f);
    }
    return v;
}

/* Why a worker died of SIGKILL: the engine sends it only for a timeout (or
 * a broken ring), reported otherwise; so the kernel's OOM killer, told by
 * its counter, or probably. */
static PyObject *sigkill_reason(MapIter *self)
{
    char src[600] = "";
    long now = oom_kills(src, sizeof src);
    if (now >= 0 && self->oom_base >= 0 && now > self->oom_base)
        return PyUnicode_FromFormat(
            "was killed by signal %d (SIGKILL): the kernel's OOM killer "
            "killed it for memory (oom_kill in %s rose by %ld during the "
            "map; workers volunteer first, oom_score_adj 1000),",
            SIGKILL, src, now - self->oom_base);
    if (self->opt.max_rss_bytes)
        /* check_memory kills a worker over the limit that runs no item,
         * and gives up after three in a row. */
        return PyUnicode_FromFormat(
            "was killed by signal %d (SIGKILL): by parmapper for growing "
            "past max_memory=%llu bytes while it ran no item (e.g. memory "
            "taken at its start), or by the kernel's OOM killer,", SIGKILL,
            (unsigned long long)self->opt.max_rss_bytes);
    return PyUnicode_FromFormat(
        "was killed by signal %d (SIGKILL), probably by the kernel's OOM "
        "killer for memory (or by a kill -9 from outside),", SIGKILL);
}

/* Sets the Python exception for an engine error code. */
static void raise_engine_error(MapIter *self, int rc)
{
    if (rc == PM_ECALLBACK) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_SystemError,
                            "parmapper: callback failed without an exception");
        return;
    }
    /* A worker that broke its rings (pm_map_death names it): killed, and
     * reported like a death, as a ParmapperError. */
    int corrupt = rc == PM_ECORRUPT && pm_map_death(self->map);
    if (rc == PM_EWORKERDIED || corrupt) {
        const pm_death *d = pm_map_death(self->map);
        PyObject *cls = errors_attr(corrupt ? "ParmapperError" : "WorkerDiedError");
        if (!cls || !d) {
            Py_XDECREF(cls);
            return;
        }
        PyObject *indices = NULL;
        PyObject *items = format_range_list(d, &indices);
        PyObject *how;
        if (corrupt) {
            how = PyUnicode_FromString(
                "wrote a malformed record into its ring (a wild write in "
                "the worker, e.g. by a C extension or ctypes, over the "
                "engine's shared memory) and was killed,");
        } else if (d->signal == SIGKILL) {
            how = sigkill_reason(self);
        } else if (d->signal) {
            how = PyUnicode_FromFormat("was killed by signal %d (%s)",
                                       d->signal, signal_name(d->signal));
        } else if (d->exit_code == PM_EXIT_UNKNOWN) {
            how = PyUnicode_FromString(
                "ended with status unknown (reaped elsewhere: SIGCHLD is "
                "ignored or the program waits for any child)");
        } else {
            how = d->exit_code == PM_EXIT_NO_THREADS
                      ? PyUnicode_FromFormat(
                            "exited with code %d: it could not start its "
                            "threads (pthread_create failed: the limit on "
                            "threads and processes, RLIMIT_NPROC, ulimit -u; "
                            "the stack size, RLIMIT_STACK, ulimit -s; or "
                            "memory)", d->exit_code)
                      : PyUnicode_FromFormat("exited with code %d",
                                             d->exit_code);
        }
        PyObject *what =
            d->nlost ? PyUnicode_FromFormat("with item%s %S in flight on it (lost)",
                                            (d->nlost == 1 && d->lost[0].count == 1) ? "" : "s",
                                            items)
                     : PyUnicode_FromString(corrupt ? "with no item in flight"
                                                    : "with no item in flight, and no "
                                                      "worker is left to finish the map");
        char retried[96] = "";
        if (self->opt.retries > 0)
            snprintf(retried, sizeof retried,
                     corrupt ? " (retries=%d used up)"
                             : " (retries=%d used up: the item kept killing its worker)",
                     self->opt.retries);
        const char *hint =
            self->opt.retries > 0 ? retried :
            (self->mode == MODE_PROC && d->exit_code == 70)
                ? " (exception='proc': the exception propagated inside the "
                  "worker, which printed its traceback to its stderr)"
                : "";
        PyObject *msg = (how && what)
            ? PyUnicode_FromFormat("parmap worker process %d %S %S%s",
                                   (int)d->pid, how, what, hint)
            : NULL;
        PyObject *exc = msg ? PyObject_CallOneArg(cls, msg) : NULL;
        if (exc && self->proc_log && self->mode == MODE_PROC &&
            d->exit_code == 70) {
            /* The traceback the worker printed, carried by the error too
             * (parmapper._worker.ProcLog.attach). */
            PyObject *r = PyObject_CallMethod(self->proc_log, "attach", "Oi",
                                              exc, (int)d->pid);
            if (!r)
                PyErr_Clear();
            Py_XDECREF(r);
        }
        if (exc) {
            PyObject *v;
            v = PyLong_FromLong(d->pid);
            if (v) { PyObject_SetAttrString(exc, "pid", v); Py_DECREF(v); }
            if (d->signal || d->exit_code == PM_EXIT_UNKNOWN) { v = Py_None; Py_INCREF(v); }
            else v = PyLong_FromLong(d->exit_code);
            if (v) { PyObject_SetAttrString(exc, "exitcode", v); Py_DECREF(v); }
            v = d->signal ? PyLong_FromLong(d->signal) : (Py_INCREF(Py_None), Py_None);
            if (v) { PyObject_SetAttrString(exc, "signal", v); Py_DECREF(v); }
            PyObject_SetAttrString(exc, "seq_indices", indices);
            if (PyList_GET_SIZE(indices) > 0)
                PyObject_SetAttrString(exc, "seq_index",
                                       PyList_GET_ITEM(indices, 0));
            PyErr_SetObject(cls, exc);
            Py_DECREF(exc);
        }
        Py_XDECREF(msg);
        Py_XDECREF(how);
        Py_XDECREF(what);
        Py_XDECREF(items);
        Py_XDECREF(indices);
        Py_DECREF(cls);
        return;
    }
    PyObject *cls = errors_attr("ParmapperError");
    if (!cls)
        return;
    /* A resource failure says which call failed, for which worker, and the
     * limit most likely reached. */
    const char *why = pm_map_why(self->map);
    if (why && why[0])
        PyErr_Format(cls, "parmap engine: %s", why);
    else if (rc > -4000 && rc < 0)
        PyErr_Format(cls, "parmap engine: %s (errno %d)", pm_strerror(rc), -rc);
    else
        PyErr_Format(cls, "parmap engine: %s", pm_strerror(rc));
    Py_DECREF(cls);
}

/* Builds the exception an error entry describes, with seq_index and the
 * remote traceback as its cause.  Returns a new reference; *kind is set. */
static PyObject *entry_exception(PyObject *entry, Py_ssize_t idx, int *kind)
{
    PyObject *exc, *tname, *msg, *tb;
    if (!PyArg_ParseTuple(entry, "OOOOi", &exc, &tname, &msg, &tb, kind))
        return NULL;
    if (exc == Py_None) {
        PyObject *cls = errors_attr("RemoteError");
        if (!cls)
            return NULL;
        exc = PyObject_CallFunction(
            cls, "NOO",
            PyUnicode_FromFormat("%U: %U (the original exception could not "
                                 "be pickled)",
                                 tname, msg),
            tname, msg);
        Py_DECREF(cls);
        if (!exc)
            return NULL;
    } else {
        Py_INCREF(exc);
    }
    PyObject *pi = PyLong_FromSsize_t(idx);
    if (!pi || PyObject_SetAttrString(exc, "seq_index", pi) < 0)
        PyErr_Clear(); /* an exception type with __slots__: keep going */
    Py_XDECREF(pi);
    if (PyUnicode_GET_LENGTH(tb) > 0) {
        PyObject *cls = errors_attr("RemoteTraceback");
        PyObject *cause = cls ? PyObject_CallOneArg(cls, tb) : NULL;
        Py_XDECREF(cls);
        if (!cause) {
            Py_DECREF(exc);
            return NULL;
        }
        PyException_SetCause(exc, cause); /* steals */
    }
    return exc;
}

/* Sets errors[j] to the error entry of exc (an ERR_CALL of type tname, with
 * no traceback), which it steals; exc NULL (its making failed) gives -1.
 * Returns 0, or -1 with an exception set. */
static int put_error_entry(PyObject *errors, Py_ssize_t j, PyObject *exc,
                           const char *tname)
{
    PyObject *entry = exc ? Py_BuildValue("(Osssi)", exc, tname, "", "",
                                          ERR_CALL)
                          : NULL;
    Py_XDECREF(exc);
    PyObject *pj = entry ? PyLong_FromSsize_t(j) : NULL;
    int rc = pj ? PyDict_SetItem(errors, pj, entry) : -1;
    Py_XDECREF(entry);
    Py_XDECREF(pj);
    return rc;
}

/* A task that ran past the timeout: every item of it gets a TimeoutError. */
static int decode_timeout(MapIter *self, const pm_result *res)
{
    Py_ssize_t n = (Py_ssize_t)res->task.count;
    PyObject *results = PyList_New(n);
    PyObject *errors = PyDict_New();
    if (!results || !errors)
        goto fail;
    for (Py_ssize_t j = 0; j < n; j++) {
        Py_INCREF(Py_None);
        PyList_SET_ITEM(results, j, Py_None);
        PyObject *msg = PyUnicode_FromFormat(
            "item %zd: timed out after %S s; its worker process was killed "
            "and replaced",
            (Py_ssize_t)res->task.first + j, self->timeout_obj);
        PyObject *exc = msg ? PyObject_CallOneArg(PyExc_TimeoutError, msg) : NULL;
        Py_XDECREF(msg);
        if (put_error_entry(errors, j, exc, "TimeoutError") < 0)
            goto fail;
    }
    Py_XSETREF(self->chunk, results);
    Py_XSETREF(self->chunk_errors, errors);
    self->chunk_pos = 0;
    self->chunk_first = (Py_ssize_t)res->task.first;
    return 0;
fail:
    Py_XDECREF(results);
    Py_XDECREF(errors);
    return -1;
}

/*
 * A result record the caller cannot read (a worker that wrote over its own
 * memory): ParmapperError naming the items it answers, with seq_index (the
 * first) and seq_indices.  A MemoryError is left as it is.  Returns -1.
 */
static int bad_record(const pm_result *res, const char *what)
{
    if (PyErr_Occurred() && !PyErr_ExceptionMatches(PyExc_RuntimeError))
        return -1;
    PyErr_Clear();
    PyObject *cls = errors_attr("ParmapperError");
    if (!cls)
        return -1;
    Py_ssize_t first = (Py_ssize_t)res->task.first;
    Py_ssize_t n = (Py_ssize_t)res->task.count;
    PyObject *exc = PyObject_CallFunction(
        cls, "N",
        n == 1 ? PyUnicode_FromFormat(
                     "parmapper: a worker sent a malformed result record (%s) "
                     "for item %zd; its memory may have been overwritten "
                     "(a stray write of a C extension?)", what, first)
               : PyUnicode_FromFormat(
                     "parmapper: a worker sent a malformed result record (%s) "
                     "for items %zd to %zd; its memory may have been "
                     "overwritten (a stray write of a C extension?)",
                     what, first, first + n - 1));
    Py_DECREF(cls);
    if (!exc)
        return -1;
    PyObject *pi = PyLong_FromSsize_t(first);
    PyObject *range = PyObject_CallFunction((PyObject *)&PyRange_Type, "nn",
                                            first, first + n);
    PyObject *idx = range ? PySequence_List(range) : NULL;
    if (!pi || !idx || PyObject_SetAttrString(exc, "seq_index", pi) < 0 ||
        PyObject_SetAttrString(exc, "seq_indices", idx) < 0)
        PyErr_Clear();
    Py_XDECREF(pi);
    Py_XDECREF(range);
    Py_XDECREF(idx);
    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
    Py_DECREF(exc);
    return -1;
}

/* A task whose worker passed max_memory (the engine killed and replaced
 * it): every item of it (one: max_memory makes tasks of one item) gets a
 * WorkerMemoryError with seq_index, limit and rss. */
static int decode_memory(MapIter *self, const pm_result *res)
{
    Py_ssize_t n = (Py_ssize_t)res->task.count;
    unsigned long long rss = pm_map_result_rss(self->map);
    unsigned long long limit = self->opt.max_rss_bytes;
    PyObject *cls = errors_attr("WorkerMemoryError");
    PyObject *results = PyList_New(n);
    PyObject *errors = PyDict_New();
    if (!cls || !results || !errors)
        goto fail;
    for (Py_ssize_t j = 0; j < n; j++) {
        Py_INCREF(Py_None);
        PyList_SET_ITEM(results, j, Py_None);
        Py_ssize_t idx = (Py_ssize_t)res->task.first + j;
        PyObject *msg = PyUnicode_FromFormat(
            "item %zd: its worker process grew by %llu bytes (%llu MiB) of "
            "resident memory, past max_memory=%llu bytes (%llu MiB); it was "
            "killed and replaced",
            idx, rss, rss >> 20, limit, limit >> 20);
        PyObject *exc = msg ? PyObject_CallOneArg(cls, msg) : NULL;
        Py_XDECREF(msg);
        if (exc) {
            PyObject *v = PyLong_FromSsize_t(idx);
            if (!v || PyObject_SetAttrString(exc, "seq_index", v) < 0)
                Py_CLEAR(exc);
            Py_XDECREF(v);
        }
        if (exc) {
            PyObject *v = PyLong_FromUnsignedLongLong(limit);
            if (!v || PyObject_SetAttrString(exc, "limit", v) < 0)
                Py_CLEAR(exc);
            Py_XDECREF(v);
        }
        if (exc) {
            PyObject *v = PyLong_FromUnsignedLongLong(rss);
            if (!v || PyObject_SetAttrString(exc, "rss", v) < 0)
                Py_CLEAR(exc);
            Py_XDECREF(v);
        }
        if (put_error_entry(errors, j, exc, "WorkerMemoryError") < 0)
            goto fail;
    }
    Py_DECREF(cls);
    Py_XSETREF(self->chunk, results);
    Py_XSETREF(self->chunk_errors, errors);
    self->chunk_pos = 0;
    self->chunk_first = (Py_ssize_t)res->task.first;
    return 0;
fail:
    Py_XDECREF(cls);
    Py_XDECREF(results);
    Py_XDECREF(errors);
    return -1;
}

static int decode_result(MapIter *self, const pm_result *res)
{
    if (res->status == PM_RESULT_TIMEDOUT)
        return decode_timeout(self, res);
    if (res->status == PM_RESULT_MEMORY)
        return decode_memory(self, res);
    const unsigned char *p = res->data;
    if (res->len < REC_HDR)
        return bad_record(res, "shorter than its header");
    /* Routed values only where the record has a route table. */
    Routed *rt = p[0] == (REC_COMPACT | REC_ROUTES)
                     ? pm_map_take_routed(self->map) : NULL;
    if (self->adaptive && res->task.count > 0) {
        /* Feed the chunk-size estimate: time and bytes per item. */
        uint64_t elapsed;
        memcpy(&elapsed, p + 1, 8);
        double k = (double)res->task.count;
        double ns = (double)elapsed / k;
        double bytes = (double)(res->len + (rt ? rt->total : 0)) / k;
        if (self->ns_per_item <= 0.0) {
            self->ns_per_item = ns;
            self->bytes_per_item = bytes;
        } else {
            self->ns_per_item = 0.7 * self->ns_per_item + 0.3 * ns;
            self->bytes_per_item = 0.7 * self->bytes_per_item + 0.3 * bytes;
        }
    }
    int kind = p[0] & ~(REC_OOB | REC_ROUTES);
    Py_ssize_t first = (Py_ssize_t)res->task.first;
    int rescued = 0; /* the pickle failed and was loaded item by item */
    PyObject *obj = p[0] & REC_OOB ? loads_oob(pm_map_take_result(self->map),
                                               p, res->len, REC_HDR, "rescue",
                                               first, &rescued)
                    : p[0] == REC_COMPACT
                        ? dec_record(p + REC_HDR, res->len - REC_HDR, NULL)
                    : kind == REC_COMPACT
                        ? dec_routed(p, res->len, REC_HDR, rt)
                        : loads_rescued("rescue", p + REC_HDR,
                                        res->len - REC_HDR, first, &rescued);
    if (!obj)
        return kind == REC_COMPACT ? bad_record(res, "undecodable values") : -1;
    if (rescued)
        kind = REC_ERRORS;
    PyObject *results = obj, *errors = NULL;
    if (kind == REC_ERRORS) {
        if (!PyTuple_Check(obj) || PyTuple_GET_SIZE(obj) != 2) {
            Py_DECREF(obj);
            return bad_record(res, "not a (results, errors) pair");
        }
        results = PyTuple_GET_ITEM(obj, 0);
        errors = PyTuple_GET_ITEM(obj, 1);
        Py_INCREF(results);
        Py_INCREF(errors);
        Py_DECREF(obj);
    }
    if (!PyList_Check(results) ||
        PyList_GET_SIZE(results) != (Py_ssize_t)res->task.count) {
        Py_DECREF(results);
        Py_XDECREF(errors);
        return bad_record(res, "not one result per item");
    }
    Py_XSETREF(self->chunk, results);
    Py_XSETREF(self->chunk_errors, errors);
    self->chunk_pos = 0;
    self->chunk_first = (Py_ssize_t)res->task.first;
    return 0;
}

/*
 * Index dispatch reads the items in the workers, from the input they
 * inherited at fork.  A worker forked later (a replacement, after a death or
 * a timeout) must read the same items, not what the caller has put in the
 * list since: a list is replaced by a tuple of its items now (a pointer per
 * item); a numpy array by a copy, when the map can replace
 * workers to run tasks again (retries or a timeout).  Tuples and ranges
 * cannot change.  Sets self->length, the true length.  Returns 0, or -1
 * with an exception set.
 */
static int index_snapshot(MapIter *self)
{
    PyObject *s = self->index_seq, *snap = NULL;
    if (PyList_CheckExact(s)) {
        snap = PyList_AsTuple(s);
        if (!snap)
            return -1;
    } else if (!PyTuple_CheckExact(s) && !PyRange_Check(s) &&
               (self->opt.retries > 0 || self->opt.timeout_ms > 0)) {
        /* A numpy array: copied whatever its flags say (a read-only view
         * of a writable array changes with it). */
        if (!(snap = PyObject_CallMethod(s, "copy", NULL)))
            return -1;
    }
    if (snap)
        Py_SETREF(self->index_seq, snap);
    self->length = PyObject_Length(self->index_seq);
    return self->length < 0 ? -1 : 0;
}

/* Creates the map and forks the workers.  Returns 0, 1 when there is
 * nothing to run (an empty list), or -1 with an exception set. */
static int map_begin(MapIter *self)
{
    if (!unsent_type && !(unsent_type = errors_attr("_Unsent")))
        return -1;
    if (!gc_freeze) {
        PyObject *gc = PyImport_ImportModule("gc");
        gc_freeze = gc ? PyObject_GetAttrString(gc, "freeze") : NULL;
        Py_XDECREF(gc);
        if (!gc_freeze)
            return -1;
    }
    if (!fresh_stdio && !(fresh_stdio = worker_attr("fresh_stdio")))
        return -1;
    if (self->index_seq) {
        if (index_snapshot(self) < 0)
            return -1;
        if (self->length == 0)
            return 1; /* an empty list (at the first next()): nothing to run */
    }
    self->parent_pid = getpid();
    pm_hooks hooks = {
        .ctx = self,
        .before_fork = hook_before_fork,
        .after_fork_parent = hook_after_fork_parent,
        .after_fork_child = hook_after_fork_child,
        .worker_exit = hook_worker_exit,
        .worker_idle = hook_worker_idle,
        .wait_begin = hook_wait_begin,
        .wait_end = hook_wait_end,
        .check = hook_check,
        .route = route_cb,
        .route_release = release_routed,
    };
    int rc = pm_map_create_gather(&self->map, &self->opt, gather_cb,
                                  release_pieces, self, work_cb, self, &hooks);
    if (rc < 0) {
        raise_engine_error(self, rc);
        return -1;
    }
    char src[600];
    self->oom_base = oom_kills(src, sizeof src);
    /* Children must not inherit unflushed output they would write again. */
    flush_std();
    rc = pm_map_start(self->map);
    if (rc < 0) {
        raise_engine_error(self, rc);
        return -1;
    }
    /* An iterator: read in a thread of its own, started after the first
     * forks (the workers never see it). */
    if (!self->index_seq && self->input_thread &&
        !(self->reader = reader_start(self->it, self->map,
                                      next_chunk_size(self))))
        return -1;
    return 0;
}

static PyObject *MapIter_next(MapIter *self)
{
    if (self->running) {
        PyErr_SetString(PyExc_ValueError, "parmap iterator already executing");
        return NULL;
    }
    for (;;) {
        if (self->chunk && self->chunk_pos < PyList_GET_SIZE(self->chunk)) {
            Py_ssize_t j = self->chunk_pos++;
            if (self->chunk_errors) {
                PyObject *pj = PyLong_FromSsize_t(j);
                PyObject *entry = pj ? PyDict_GetItemWithError(self->chunk_errors, pj) : NULL;
                Py_XDECREF(pj);
                if (entry) {
                    int kind = ERR_CALL;
                    PyObject *exc = entry_exception(entry, self->chunk_first + j, &kind);
                    if (!exc)
                        return NULL;
                    if (self->mode == MODE_RETURN && kind == ERR_CALL)
                        return exc;
                    map_teardown(self);
                    if (PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_StopIteration)) {
                        /* Out of __next__ it would end the results. */
                        PyObject *wrap = errors_attr("item_stop_iteration");
                        PyObject *e2 = wrap ? PyObject_CallFunction(
                                                  wrap, "On", exc,
                                                  self->chunk_first + j)
                                            : NULL;
                        Py_XDECREF(wrap);
                        Py_DECREF(exc);
                        if (!e2)
                            return NULL;
                        exc = e2;
                    }
                    PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
                    Py_DECREF(exc);
                    return NULL;
                }
                if (PyErr_Occurred())
                    return NULL;
            }
            PyObject *r = PyList_GET_ITEM(self->chunk, j);
            Py_INCREF(r);
            return r;
        }
        Py_CLEAR(self->chunk);
        Py_CLEAR(self->chunk_errors);
        if (self->finished)
            return NULL;
        self->running = 1;
        if (!self->started) {
            self->started = 1;
            int rc = map_begin(self);
            if (rc != 0) {
                self->running = 0;
                if (rc < 0)
                    map_teardown_keep_error(self);
                else
                    map_teardown(self);
                return NULL;
            }
        }
        pm_result res;
        int rc = pm_map_next(self->map, &res);
        if (rc == 1) {
            rc = decode_result(self, &res);
            self->running = 0;
            if (rc < 0) {
                map_teardown_keep_error(self);
                return NULL;
            }
            continue;
        }
        self->running = 0;
        if (rc == 0) {
            map_teardown(self);
            input_error_raise(self);
            return NULL;
        }
        raise_engine_error(self, rc);
        map_teardown_keep_error(self);
        return NULL;
    }
}

static PyObject *MapIter_close(MapIter *self, PyObject *unused)
{
    (void)unused;
    if (self->running) {
        PyErr_SetString(PyExc_ValueError, "parmap iterator already executing");
        return NULL;
    }
    map_teardown(self);
    Py_CLEAR(self->chunk);
    Py_CLEAR(self->chunk_errors);
    Py_RETURN_NONE;
}

static PyObject *MapIter_pids(MapIter *self, PyObject *unused)
{
    (void)unused;
    PyObject *l = PyList_New(0);
    if (!l || !self->map)
        return l;
    int n;
    const pid_t *p = pm_map_pids(self->map, &n);
    for (int i = 0; i < n; i++) {
        if (!p[i])
            continue;
        PyObject *v = PyLong_FromLong(p[i]);
        if (!v || PyList_Append(l, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(l);
            return NULL;
        }
        Py_DECREF(v);
    }
    return l;
}

static int MapIter_init(MapIter *self, PyObject *a, PyObject *k)
{
    static char *kwlist[] = {"caller", "seq",   "nproc",  "nthreads",
                             "chunksize", "ordered", "mode", "daemon",
                             "window", "ring_bytes", "retries", "timeout",
                             "index", "length", "proc_log", "max_tasks",
                             "max_memory", "input_thread", NULL};
    PyObject *caller, *seq, *timeout = Py_None, *proc_log = Py_None;
    int nproc, nthreads, ordered, mode, daemon, window = 0, retries = 0;
    int index = 0, input_thread = 0;
    Py_ssize_t chunksize, ring = 0, length = -1;
    unsigned long long max_tasks = 0, max_memory = 0;
    if (!PyArg_ParseTupleAndKeywords(a, k, "O!Oiinpip|iniOpnOKKp", kwlist, &CallerType,
                                     &caller, &seq, &nproc, &nthreads,
                                     &chunksize, &ordered, &mode, &daemon,
                                     &window, &ring, &retries, &timeout,
                                     &index, &length, &proc_log, &max_tasks,
                                     &max_memory, &input_thread))
        return -1;
    if (index && length < 0) {
        PyErr_SetString(PyExc_ValueError, "MapIter: index dispatch needs the length");
        return -1;
    }
    double tsec = 0.0;
    if (timeout != Py_None) {
        tsec = PyFloat_AsDouble(timeout);
        if (tsec == -1.0 && PyErr_Occurred())
            return -1;
    }
    if (nproc < 1 || nthreads < 1 || chunksize < 0 ||
        (uint64_t)chunksize > PM_TASK_MAX_COUNT || mode < 0 || mode > 2 ||
        window < 0 || ring < 0 || retries < 0 || tsec < 0) {
        PyErr_SetString(PyExc_ValueError, "MapIter: bad option");
        return -1;
    }
    PyObject *it = PyObject_GetIter(seq);
    if (!it)
        return -1;
    Py_INCREF(caller);
    Py_XSETREF(self->caller, (Caller *)caller);
    Py_XSETREF(self->it, it);
    pm_options_init(&self->opt);
    self->opt.nproc = nproc;
    self->opt.nthreads = nthreads;
    self->opt.ordered = ordered;
    self->opt.window = window;
    self->opt.ring_bytes = (size_t)ring;
    self->opt.retries = retries;
    self->opt.max_items_per_worker = max_tasks;
    self->opt.max_rss_bytes = max_memory;
    self->opt.timeout_ms = timeout != Py_None ? (int64_t)(tsec * 1000.0 + 0.5) : 0;
    if (timeout != Py_None && self->opt.timeout_ms < 1)
        self->opt.timeout_ms = 1;
    Py_INCREF(timeout);
    Py_XSETREF(self->timeout_obj, timeout);
    if (proc_log != Py_None)
        Py_INCREF(proc_log);
    Py_XSETREF(self->proc_log, proc_log == Py_None ? NULL : proc_log);
    self->chunksize = chunksize;
    self->adaptive = chunksize == 0;
    self->length = length;
    if (index) {
        Py_INCREF(seq);
        Py_XSETREF(self->index_seq, seq);
    }
    /* Tasks in flight per slot.  Adaptive tasks last ~2 ms: 8 of them keep
     * a worker busy.  A fixed chunksize can make tasks of a microsecond,
     * which a window of 32 drains faster than a time slice of the parent's:
     * up to 256 of them (at most ~4096 items read ahead per slot). */
    if (window == 0) {
        Py_ssize_t w = 4096 / (chunksize > 0 ? chunksize : 1);
        self->opt.window = self->adaptive ? 8 : w > 256 ? 256 : w < 32 ? 32 : (int)w;
    }
    self->mode = mode;
    self->daemon = daemon;
    self->input_thread = input_thread;
    return 0;
}

static int MapIter_traverse(MapIter *self, visitproc visit, void *arg)
{
    Py_VISIT(self->caller);
    Py_VISIT(self->it);
    Py_VISIT(self->chunk);
    Py_VISIT(self->chunk_errors);
    Py_VISIT(self->index_seq);
    Py_VISIT(self->input_exc);
    Py_VISIT(self->proc_log);
    Py_VISIT(self->reader);
    return 0;
}

static int MapIter_clear(MapIter *self)
{
    Py_CLEAR(self->caller);
    Py_CLEAR(self->it);
    Py_CLEAR(self->chunk);
    Py_CLEAR(self->chunk_errors);
    Py_CLEAR(self->timeout_obj);
    Py_CLEAR(self->index_seq);
    Py_CLEAR(self->input_exc);
    Py_CLEAR(self->proc_log);
    if (self->reader) {
        reader_close(self->reader);
        Py_CLEAR(self->reader);
    }
    return 0;
}

static void MapIter_dealloc(MapIter *self)
{
    PyObject_GC_UnTrack(self);
    /* Garbage collection of a half-consumed iterator stops its workers. */
    if (self->map)
        map_teardown_keep_error(self);
    MapIter_clear(self);
    buf_free(&self->enc);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef MapIter_methods[] = {
    {"close", (PyCFunction)MapIter_close, METH_NOARGS,
     "Stop the workers now and release everything; iteration ends."},
    {"_pids", (PyCFunction)MapIter_pids, METH_NOARGS,
     "Process ids of the running workers (diagnostics)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject MapIterType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "parmapper._core.MapIter",
    .tp_basicsize = sizeof(MapIter),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Iterator over the results of a map run by forked workers.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)MapIter_init,
    .tp_iter = PyObject_SelfIter,
    .tp_iternext = (iternextfunc)MapIter_next,
    .tp_methods = MapIter_methods,
    .tp_traverse = (traverseproc)MapIter_traverse,
    .tp_clear = (inquiry)MapIter_clear,
    .tp_dealloc = (destructor)MapIter_dealloc,
};

/* ------------------------------------------------------------------------ */
/* Module.                                                                  */

static PyObject *mod_in_worker(PyObject *m, PyObject *unused)
{
    (void)m;
    (void)unused;
    return PyLong_FromLong(in_worker);
}

static PyMethodDef module_methods[] = {
    {"in_worker", mod_in_worker, METH_NOARGS,
     "0 in the caller's process, 1 in a worker of a daemon map, 2 in a "
     "worker of a map with daemon=False."},
    {NULL, NULL, 0, NULL},
};

static int add_object(PyObject *m, const char *name, PyObject *o)
{
    Py_INCREF(o);
    if (PyModule_AddObject(m, name, o) < 0) {
        Py_DECREF(o);
        return -1;
    }
    return 0;
}

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT, "parmapper._core",
    "The CPython binding of the parmapper C engine.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__core(void)
{
    PyObject *m = PyModule_Create(&moduledef);
    if (!m)
        return NULL;
    PyObject *pickle = PyImport_ImportModule("pickle");
    if (!pickle)
        goto fail;
    pickle_dumps = PyObject_GetAttrString(pickle, "dumps");
    pickle_loads = PyObject_GetAttrString(pickle, "loads");
    protocol = PyObject_GetAttrString(pickle, "HIGHEST_PROTOCOL");
    Py_DECREF(pickle);
    kw_buffer_callback = Py_BuildValue("(s)", "buffer_callback");
    kw_buffers = Py_BuildValue("(s)", "buffers");
    if (!pickle_dumps || !pickle_loads || !protocol || !kw_buffer_callback ||
        !kw_buffers || PyType_Ready(&BlockType) < 0)
        goto fail;
    ItemShapeError = PyErr_NewExceptionWithDoc(
        "parmapper.ItemShapeError",
        "An item does not have the shape star/kwstar asks for; a TypeError "
        "that names the item's index (seq_index).",
        PyExc_TypeError, NULL);
    if (!ItemShapeError || add_object(m, "ItemShapeError", ItemShapeError) < 0)
        goto fail;
    if (PyType_Ready(&CallerType) < 0 || PyType_Ready(&MapIterType) < 0 ||
        PyType_Ready(&InputReaderType) < 0)
        goto fail;
    PyObject *max_items = PyLong_FromUnsignedLongLong(PM_TASK_MAX_COUNT);
    int bad = !max_items || add_object(m, "TASK_MAX_ITEMS", max_items) < 0;
    Py_XDECREF(max_items);
    if (bad ||
        PyModule_AddIntConstant(m, "MAX_WORKERS", PM_MAX_NPROC) < 0 ||
        PyModule_AddIntConstant(m, "MAX_RETRIES", INT_MAX) < 0 ||
        PyModule_AddIntConstant(m, "READ_AHEAD_TASKS", READ_AHEAD_TASKS) < 0)
        goto fail;
    if (add_object(m, "Caller", (PyObject *)&CallerType) < 0 ||
        add_object(m, "MapIter", (PyObject *)&MapIterType) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
