/*
 * binding/tasks.c -- the parent's side of a task: chunk sizing, reading the
 * input, encoding a task (index, compact, pickle) in gather_cb, input
 * errors, and the snapshot of an indexed input.
 */
#include "core.h" /* not compiled alone: _core.c includes this file */

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
        if (!PyErr_ExceptionMatches(PyExc_Exception)) {
            ret = -1; /* KeyboardInterrupt...: raised, not an item's error */
            break;
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

/* A task of n items and `total` bytes was sent: the moving average of the
 * bytes per item (adaptive chunking keeps tasks within TARGET_TASK_BYTES). */
static inline void note_task_bytes(MapIter *self, size_t total, size_t n)
{
    if (!self->adaptive)
        return;
    double b = (double)total / (double)n;
    self->in_bytes_per_item = self->in_bytes_per_item > 0.0
                                  ? 0.7 * self->in_bytes_per_item + 0.3 * b
                                  : b;
}

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

/* Takes the pending exception: its value (new reference), with its
 * traceback attached, to be raised later (input_error_raise). */
static PyObject *take_exception(void)
{
    PyObject *et, *ev, *etb;
    PyErr_Fetch(&et, &ev, &etb);
    PyErr_NormalizeException(&et, &ev, &etb);
    if (etb && ev)
        PyException_SetTraceback(ev, etb);
    Py_XDECREF(et);
    Py_XDECREF(etb);
    return ev;
}

static int input_error_defer(MapIter *self)
{
    if (!PyErr_ExceptionMatches(PyExc_Exception))
        return -1;
    Py_XSETREF(self->input_exc, take_exception());
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

/* Index dispatch: a task is the range of the next `want` indices, which the
 * workers read from their inherited copy of the input.  Returns 1, or 0
 * when the input is used up. */
static int gather_index(MapIter *self, Py_ssize_t want, pm_task *task,
                        const pm_iov **iov, int *niov)
{
    static const unsigned char index_task = TASK_INDEX; /* the whole message */
    Py_ssize_t left = self->length - self->next_index;
    if (left <= 0)
        return 0;
    Py_ssize_t n = want < left ? want : left;
    task->first = (uint64_t)self->next_index;
    task->count = (uint32_t)n;
    self->next_index += n;
    self->iov1 = (pm_iov){&index_task, 1};
    *iov = &self->iov1;
    *niov = 1;
    return 1;
}

/*
 * Reads up to `want` items from the input into a new list (NULL with an
 * exception set).  A slow input: what was read is sent (*slow set) once
 * reading took SLOW_INPUT_NS (after 1, 2, 4... items a coarse clock says).
 * The input is finished at its first StopIteration, as for map(); an
 * Exception it raises ends it too, but is raised only after the results of
 * the items read before it (input_error_defer).
 */
static PyObject *read_items(MapIter *self, Py_ssize_t want, uint64_t t0,
                            int *slow)
{
    PyObject *items = PyList_New(0);
    if (!items)
        return NULL;
    for (Py_ssize_t k = 0; k < want; k++) {
        if (k && !(k & (k - 1)) && coarse_ns() - t0 >= SLOW_INPUT_NS) {
            *slow = 1;
            break;
        }
        PyObject *x = PyIter_Next(self->it);
        if (!x) {
            self->input_done = 1;
            if (PyErr_Occurred() && input_error_defer(self) < 0) {
                Py_DECREF(items);
                return NULL;
            }
            break;
        }
        int rc = PyList_Append(items, x);
        Py_DECREF(x);
        if (rc < 0) {
            Py_DECREF(items);
            return NULL;
        }
    }
    return items;
}

/*
 * Pickles a task's items (those that cannot be pickled are replaced by
 * _Unsent markers first): into self->enc after the prefix byte, or, with
 * large buffers out of band, as *pieces (*volatile_pieces set: buffers of
 * mutable objects that the input may reuse for its next items).  Returns
 * 0, or -1 with an exception set.
 */
static int pickle_task(MapIter *self, PyObject *items, Pieces **pieces,
                       int *volatile_pieces)
{
    buf_t *enc = &self->enc;
    PyObject *bufs = NULL;
    PyObject *b = dumps_oob(items, &bufs);
    if (!b) {
        /* A BaseException that is not an Exception (KeyboardInterrupt in a
         * __reduce__) ends the map, as from the input's thread. */
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return -1;
        PyErr_Clear();
        if (mark_unsendable(self, items) < 0)
            return -1;
        if (!(b = dumps_oob(items, &bufs)))
            return -1;
    }
    int rc;
    buf_clear(enc);
    if (bufs) {
        static const unsigned char tag = TASK_PICKLE | TASK_OOB;
        rc = (*pieces = oob_pieces(&tag, 1, b, bufs)) ? 0 : -1;
        *volatile_pieces = 1;
        Py_DECREF(bufs);
    } else {
        rc = buf_tag(enc, TASK_PICKLE);
        if (rc == 0)
            rc = buf_put(enc, PyBytes_AS_STRING(b),
                         (size_t)PyBytes_GET_SIZE(b));
    }
    Py_DECREF(b);
    return rc;
}

/*
 * Encodes a task's items: the compact codec into self->enc (large bytes
 * items spliced in as *pieces), else pickle_task.  Returns 0, or -1 with an
 * exception set.
 */
static int encode_task(MapIter *self, PyObject *items, Pieces **pieces,
                       int *volatile_pieces)
{
    buf_t *enc = &self->enc;
    int rc = buf_tag(enc, TASK_COMPACT);
    if (rc == 0)
        rc = enc_value(enc, items, 0);
    if (rc == 0 && enc->nsp)
        return (*pieces = spliced_task(enc, items)) ? 0 : -1;
    if (rc == ENC_UNSUPPORTED)
        return pickle_task(self, items, pieces, volatile_pieces);
    return rc;
}

/*
 * The engine's gather callback (pm.h): the next task, items
 * next_index..next_index+n of the input, as the pieces *iov (owned by
 * *owner, released by release_pieces, when not self's own buffer).
 * Returns 1 (with PM_PRODUCED_SLOW / PM_PRODUCED_VOLATILE), 0 when the input
 * is finished, or PM_ECALLBACK with an exception set.
 */
static int gather_cb(void *ctx, pm_task *task, const pm_iov **iov, int *niov,
                     void **owner)
{
    MapIter *self = ctx;
    if (self->reader)
        return gather_read(self, task, iov, niov, owner);
    if (self->index_seq)
        return gather_index(self, next_chunk_size(self), task, iov, niov);
    buf_t *enc = &self->enc;
    Py_ssize_t want = next_chunk_size(self);
    buf_clear(enc);
    enc->splice = 1;
    if (self->input_done)
        return 0;

    uint64_t t0 = coarse_ns();
    int slow = 0, volatile_pieces = 0;
    PyObject *items = read_items(self, want, t0, &slow);
    if (!items)
        return PM_ECALLBACK;
    Py_ssize_t n = PyList_GET_SIZE(items);
    if (n == 0) {
        Py_DECREF(items);
        return 0;
    }
    Pieces *pieces = NULL;
    int rc = encode_task(self, items, &pieces, &volatile_pieces);
    Py_DECREF(items);
    if (rc < 0)
        return PM_ECALLBACK;
    size_t total;
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
    note_task_bytes(self, total, (size_t)n);
    task->first = (uint64_t)self->next_index;
    task->count = (uint32_t)n;
    self->next_index += n;
    /* Slow: the engine delivers a ready result before asking again.
     * Volatile: it writes the buffers whole before the input is read on. */
    return (slow || coarse_ns() - t0 >= SLOW_INPUT_NS ? PM_PRODUCED_SLOW : 1) |
           (volatile_pieces ? PM_PRODUCED_VOLATILE : 0);
}

/* A range whose every item fits in a long long: the worker computes item i
 * as range_start + i * range_step (index_item) instead of CPython's
 * range_item, which does it in Python ints (~650 instructions an item). */
static int range_fast_path(MapIter *self)
{
    static const char *names[2] = {"start", "step"};
    long long v[2];
    for (int k = 0; k < 2; k++) {
        PyObject *o = PyObject_GetAttrString(self->index_seq, names[k]);
        if (!o)
            return -1;
        int overflow;
        v[k] = PyLong_AsLongLongAndOverflow(o, &overflow);
        Py_DECREF(o);
        if (v[k] == -1 && PyErr_Occurred())
            return -1;
        if (overflow)
            return 0;
    }
    long long last;
    if (self->length > 0 &&
        (__builtin_mul_overflow(v[1], (long long)(self->length - 1), &last) ||
         __builtin_add_overflow(v[0], last, &last)))
        return 0;
    self->range_start = v[0];
    self->range_step = v[1];
    self->range_fast = 1;
    return 0;
}

/*
 * Index dispatch reads the items in the workers, from the input they
 * inherited at fork.  A worker forked later (a replacement: retries,
 * timeout, max_memory, max_tasks_per_worker, pm_options_respawn) must read
 * the same items, not what the caller has put in the list or array since:
 * such a map copies a list into a tuple of its items (a pointer and a
 * reference per item) and a numpy array with its copy().  Other maps copy
 * nothing (but a list when the caller has other threads, below): their
 * workers are all forked by pm_map_start, before the caller's code runs
 * again, and each reads its own copy of the caller's memory.  (The copy of
 * a list of 10^6 ints cost ~7 ms before the forks, and its references
 * written to every item ~10^4 page faults more in the caller; measured in
 * benchmarks.md.)  Tuples and ranges cannot change.  Sets self->length,
 * the true length.  Returns 0, or -1 with an exception set.
 */
static int index_snapshot(MapIter *self)
{
    PyObject *s = self->index_seq, *snap = NULL;
    /* Another thread of the caller can run while the workers fork (the
     * at-fork handlers run Python code, the import lock and the flush of
     * the standard streams let the GIL go): it could change a list between
     * two forks, and the workers would not read the same items.  A list
     * is copied then too (a numpy array is not: see docs/api.md). */
    int copy = pm_options_respawn(&self->opt) ||
               (PyList_CheckExact(s) && other_threads());
    if (copy && !PyTuple_CheckExact(s) && !PyRange_Check(s)) {
        /* A numpy array is copied whatever its flags say (a read-only
         * view of a writable array changes with it). */
        snap = PyList_CheckExact(s) ? PyList_AsTuple(s)
                                    : PyObject_CallMethod(s, "copy", NULL);
        if (!snap)
            return -1;
        Py_SETREF(self->index_seq, snap); /* s may be freed */
    }
    self->length = PyObject_Length(self->index_seq);
    if (self->length < 0)
        return -1;
    return PyRange_Check(self->index_seq) ? range_fast_path(self) : 0;
}
