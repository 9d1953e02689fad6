/*
 * binding/worker.c -- the worker's side of a task: decode its items, call
 * the function on each, and write the result record.
 */
#include "core.h" /* not compiled alone: _core.c includes this file */

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

/*
 * An int item is made afresh in the worker (inherited_item, below), and
 * freed after the call.  When the function kept no reference to it (its
 * count is back to the worker's own one), its object is kept as the map's
 * spare and the next such item is written into it: nobody else can see an
 * object only the worker holds, so this is a fresh int without a malloc
 * and a free (~100 instructions of the ~800 a worker spends per int item
 * of a list; benchmarks.md).  Only ints of exactly one digit (|v| < 2**30)
 * outside CPython's cached small ints, whose layout each version's header
 * gives: Py_SIZE and ob_digit before 3.12, long_value.lv_tag (digit count
 * above _PyLong_NON_SIZE_BITS, the sign in the low bits, and from 3.13 an
 * immortality bit, kept) from 3.12 on.
 */
/* Only where the layout and the reference count were read from the headers
 * and tested (3.9-3.13 with the GIL; a free-threaded build splits the count
 * and runs the worker's threads at once). */
#if PY_VERSION_HEX < 0x030E0000 && !defined(Py_GIL_DISABLED)
#define SPARE_INT 1
#else
#define SPARE_INT 0
#endif

static inline int one_digit(long long v)
{
    return SPARE_INT && v >= -(long long)PyLong_MASK &&
           v <= (long long)PyLong_MASK && (v < -5 || v > 256);
}

static inline int spare_ok(PyObject *o)
{
    if (!SPARE_INT || Py_REFCNT(o) != 1 || !PyLong_CheckExact(o))
        return 0;
#if PY_VERSION_HEX >= 0x030C0000
    return (((PyLongObject *)o)->long_value.lv_tag >> _PyLong_NON_SIZE_BITS) == 1;
#else
    return Py_SIZE(o) == 1 || Py_SIZE(o) == -1;
#endif
}

static inline PyObject *spare_set(PyObject *o, long long v)
{
    digit d = (digit)(v < 0 ? -v : v);
#if PY_VERSION_HEX >= 0x030C0000
    PyLongObject *l = (PyLongObject *)o;
    l->long_value.lv_tag = ((uintptr_t)1 << _PyLong_NON_SIZE_BITS) |
                           (l->long_value.lv_tag & 4) | (v < 0 ? 2 : 0);
    l->long_value.ob_digit[0] = d;
#else
    Py_SET_SIZE(o, v < 0 ? -1 : 1);
    ((PyLongObject *)o)->ob_digit[0] = d;
#endif
    return o;
}

/* The int v, new or in the spare (new reference). */
static inline PyObject *new_int(MapIter *self, long long v)
{
    if (self->spare_int && one_digit(v)) {
        PyObject *o = self->spare_int;
        self->spare_int = NULL;
        return spare_set(o, v);
    }
    return PyLong_FromLongLong(v);
}

/* Worker side: the item at index i of the inherited input (new reference). */
/*
 * An item of the inherited sequence.  Taking a reference writes to the
 * object's header, and the first write to one of the caller's pages costs
 * the worker a page fault and a copy of the page (copy-on-write): for a
 * list of a million ints, ~8000 faults, ~25 ms.  An int or a float is
 * rebuilt from its value instead (read only, a few ns; an int into the
 * spare when there is one); anything else is the inherited object itself.
 */
static inline PyObject *inherited_item(MapIter *self, PyObject *x)
{
    if (PyLong_CheckExact(x)) {
        long long v;
        int overflow = 0;
        if (!long_compact(x, &v))
            v = PyLong_AsLongLongAndOverflow(x, &overflow);
        if (!overflow)
            return new_int(self, v);
    } else if (PyFloat_CheckExact(x)) {
        return PyFloat_FromDouble(PyFloat_AS_DOUBLE(x));
    }
    Py_INCREF(x);
    return x;
}

static PyObject *index_item(MapIter *self, Py_ssize_t i)
{
    if (self->range_fast && i < self->length) /* no overflow: tasks.c */
        return new_int(self, self->range_start +
                                 (long long)i * self->range_step);
    /* The caller's list as it was at the fork (a tuple of its items when
     * the map may fork replacements: index_snapshot). */
    PyObject *s = self->index_seq;
    if (PyList_CheckExact(s)) {
        if (i < PyList_GET_SIZE(s))
            return inherited_item(self, PyList_GET_ITEM(s, i));
        /* It had self->length items at the fork. */
        return PyErr_Format(
            PyExc_IndexError,
            "parmap: item %zd of the input list is gone: the list was "
            "shortened in this worker (by fun?).  Each worker reads the "
            "list in its own copy of the caller's memory: fun must not "
            "change it (or pass a tuple)",
            i);
    }
    if (PyTuple_CheckExact(s) && i < PyTuple_GET_SIZE(s))
        return inherited_item(self, PyTuple_GET_ITEM(s, i));
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

/*
 * The items of a task: *items gets the decoded list of task->count items
 * (new reference), or NULL under index dispatch (run_item reads them from the
 * inherited input).  Items the parent could not pickle, or this worker could
 * not rebuild, are _Unsent markers.  Returns 0, or -1 for a task that cannot
 * be read (the worker must stop; a corrupt record's error is printed here).
 */
static int task_items(MapIter *self, const pm_task *task,
                      const unsigned char *p, size_t len, pm_writer *out,
                      PyObject **items)
{
    Py_ssize_t first = (Py_ssize_t)task->first;
    int rescued = 0; /* items that could not be rebuilt here are _Unsent */
    *items = NULL;
    if (len < 1)
        return -1;
    if (p[0] == TASK_INDEX)
        return self->index_seq ? 0 : -1;
    if (p[0] == TASK_COMPACT)
        *items = dec_record(p + 1, len - 1, NULL);
    else if (p[0] == (TASK_COMPACT | TASK_ROUTES))
        *items = dec_routed(p, len, 1, pm_writer_take_routed(out));
    else if (p[0] == TASK_PICKLE)
        *items = loads_rescued("rescue_items", p + 1, len - 1, first,
                               &rescued);
    else if (p[0] == (TASK_PICKLE | TASK_OOB))
        /* The buffers' objects are built on the memory the task was
         * assembled in (or on one copy of it when read in the ring). */
        *items = loads_oob(pm_writer_take_input(out), p, len, 1,
                           "rescue_items", first, &rescued);
    else
        return -1;
    if (!*items && PyErr_Occurred())
        print_error(); /* a corrupt task: say why before the worker dies */
    if (!*items || !PyList_Check(*items) ||
        PyList_GET_SIZE(*items) != (Py_ssize_t)task->count) {
        Py_CLEAR(*items);
        return -1;
    }
    return 0;
}

/*
 * run_item's rare case: the item could not be had (item NULL, its error
 * set) or is an _Unsent marker, the parent could not pickle it or (bytes:
 * its pickle, input_thread.c) this worker cannot unpickle it: its error is
 * raised here.  Returns NULL.
 */
static PyObject *item_not_run(MapIter *self, PyObject *item, Py_ssize_t idx,
                              int *unsent)
{
    *unsent = item != NULL;
    if (!item) {
        note_failed_item(self, idx, NULL);
        return NULL;
    }
    PyObject *err = PyObject_GetAttrString(item, "error");
    if (err && PyBytes_Check(err)) {
        static PyObject *salvage_module; /* parmapper._salvage */
        PyObject *fn = module_attr(&salvage_module, "parmapper._salvage",
                                   "item_error");
        Py_SETREF(err, fn ? PyObject_CallFunction(fn, "On", err, idx) : NULL);
        Py_XDECREF(fn);
    }
    if (err) {
        PyErr_SetObject((PyObject *)Py_TYPE(err), err);
        Py_DECREF(err);
    }
    return NULL;
}

/*
 * Calls the function on item j of the task (index idx): its result (new
 * reference), or NULL with the item's exception set, named by a note when
 * the function raised it.  *shape: the item had the wrong shape for
 * star/kwstar; *unsent: the item could not be sent (its error is raised).
 * The per-item path: one call and nothing else when the item succeeds.
 */
static inline PyObject *run_item(MapIter *self, PyObject *items,
                                 Py_ssize_t j, Py_ssize_t idx, int *shape,
                                 int *unsent)
{
    PyObject *item = items ? PyList_GET_ITEM(items, j) : index_item(self, idx);
    PyObject *r;
    *shape = 0;
    if (item && Py_TYPE(item) != (PyTypeObject *)unsent_type) {
        *unsent = 0;
        r = caller_call(self->caller, idx, item, shape);
        if (pm_forked_copy())
            copy_exit(r); /* fun forked and this is the child */
        if (!r && !*shape)
            note_failed_item(self, idx, item);
    } else {
        r = item_not_run(self, item, idx, unsent);
    }
    if (!items) {
        if (item && !self->spare_int && spare_ok(item))
            self->spare_int = item; /* the worker's only reference */
        else
            Py_XDECREF(item);
    }
    return r;
}

/*
 * Item j of n failed (its exception is set, and is cleared here): its error
 * entry goes into *errors (made on first use) and None into results[j].  A
 * BaseException that is not an Exception stops its task where it was
 * raised, as it stops a serial loop: the caller raises it when it reaches
 * this item, so the items after it (given the same entry and None) are never
 * handed out.  Returns 0 to go on, 1 when the task stops here, -1 when the
 * worker must stop (exception='proc', or no memory).
 */
static int item_failed(MapIter *self, PyObject *results, PyObject **errors,
                       Py_ssize_t first, Py_ssize_t j, Py_ssize_t n,
                       int shape, int unsent)
{
    if (self->mode == MODE_PROC && !shape && !unsent) {
        /* The original's debugging mode: the exception propagates in the
         * worker, which prints it and dies; the parent names the item. */
        proc_error(self);
        return -1;
    }
    int base = !shape && !PyErr_ExceptionMatches(PyExc_Exception);
    PyObject *entry = error_entry(first + j, shape  ? ERR_SHAPE
                                             : base ? ERR_BASE
                                                    : ERR_CALL);
    if (!entry)
        return -1;
    if (!*errors && !(*errors = PyDict_New())) {
        Py_DECREF(entry);
        return -1;
    }
    int rc = 0;
    for (Py_ssize_t k = j; k < (base ? n : j + 1) && rc == 0; k++) {
        PyObject *pk = PyLong_FromSsize_t(k);
        rc = pk ? PyDict_SetItem(*errors, pk, entry) : -1;
        Py_XDECREF(pk);
        if (k > j && rc == 0) {
            Py_INCREF(Py_None);
            PyList_SET_ITEM(results, k, Py_None);
        }
    }
    Py_DECREF(entry);
    if (rc < 0)
        return -1;
    Py_INCREF(Py_None);
    PyList_SET_ITEM(results, j, Py_None);
    return base;
}

/* The results in the compact codec when they all encode: returns 0 when
 * written, ENC_UNSUPPORTED when they must be pickled, -1 when the worker
 * must stop (the error, if any, printed). */
static int send_compact(PyObject *results, uint64_t elapsed, pm_writer *out)
{
    buf_t *enc = &tls_enc;
    buf_clear(enc);
    enc->splice = 1;
    int rc = enc_seq(enc, results, 1, 0); /* an exact list, depth 0 */
    if (rc < 0) {
        if (PyErr_Occurred())
            print_error();
        return -1;
    }
    if (rc == ENC_UNSUPPORTED)
        return rc;
    rc = enc->nsp ? write_record_spliced(out, elapsed, enc)
                  : write_record(out, REC_COMPACT, elapsed, enc->p, enc->len);
    buf_drop_splices(enc, 0); /* written: the results may go */
    return rc < 0 ? -1 : 0;
}

/* The results pickled, with their error entries (*errors) when there are
 * any, large buffers out of band; results that cannot be pickled become
 * errors (sanitize_results, which may make *errors).  Returns 0, or -1 when
 * the worker must stop (the error, if any, printed). */
static int send_pickled(PyObject *results, PyObject **errors,
                        Py_ssize_t first, uint64_t elapsed, pm_writer *out)
{
    int ret = -1;
    PyObject *b = NULL, *bufs = NULL, *payload;
    for (int attempt = 0; attempt < 2; attempt++) {
        if (*errors)
            payload = PyTuple_Pack(2, results, *errors);
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
        if (sanitize_results(results, errors, first) < 0)
            goto fatal;
    }
    unsigned char kind = *errors ? REC_ERRORS : REC_PLAIN;
    if (bufs)
        ret = write_record_oob(out, kind, elapsed, b, bufs) < 0 ? -1 : 0;
    else
        ret = write_record(out, kind, elapsed, PyBytes_AS_STRING(b),
                           (size_t)PyBytes_GET_SIZE(b)) < 0 ? -1 : 0;
    goto done;
fatal:
    if (PyErr_Occurred())
        print_error();
done:
    Py_XDECREF(b);
    Py_XDECREF(bufs);
    return ret;
}

/* Runs one task in a worker: its items, the function on each, the result
 * record.  Returns 0, or -1 when the worker must stop (exception='proc', or
 * the results cannot be sent at all). */
static int work_run(MapIter *self, const pm_task *task, const void *in,
                    size_t len, pm_writer *out)
{
    int ret = -1;
    PyObject *items = NULL, *results = NULL, *errors = NULL;
    Py_ssize_t first = (Py_ssize_t)task->first;
    Py_ssize_t n = (Py_ssize_t)task->count;

    int rc_items = task_items(self, task, in, len, out, &items);
    if (pm_forked_copy()) /* an item's unpickling forked: this is the copy */
        copy_exit(Py_None); /* the worker, not the copy, runs the task */
    if (rc_items < 0)
        goto fatal;
    results = PyList_New(n);
    if (!results)
        goto fatal;
    /* The time only feeds the adaptive chunk size (two clock reads per
     * task, ~50 instructions, at chunksize=1 one per item). */
    uint64_t t0 = self->adaptive ? mono_ns() : 0;
    for (Py_ssize_t j = 0; j < n; j++) {
        int shape, unsent;
        PyObject *r = run_item(self, items, j, first + j, &shape, &unsent);
        if (r) {
            PyList_SET_ITEM(results, j, r);
            continue;
        }
        int rc = item_failed(self, results, &errors, first, j, n, shape,
                             unsent);
        if (rc < 0)
            goto fatal;
        if (rc)
            break;
    }
    uint64_t elapsed = self->adaptive ? mono_ns() - t0 : 0;
    ret = errors ? ENC_UNSUPPORTED : send_compact(results, elapsed, out);
    if (ret == ENC_UNSUPPORTED)
        ret = send_pickled(results, &errors, first, elapsed, out);
    goto done;
fatal:
    if (PyErr_Occurred())
        print_error();
done:
    Py_XDECREF(items);
    Py_XDECREF(results);
    Py_XDECREF(errors);
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
