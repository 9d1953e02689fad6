/*
 * binding/mapiter.c -- the iterator type MapIter: options, starting the map,
 * handing out results, teardown.
 */
#include "core.h" /* not compiled alone: _core.c includes this file */

static void map_teardown(MapIter *self)
{
    self->rec_end = NULL; /* the streamed record's memory goes with the map */
    self->rec_left = 0;
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

/* Creates the map and forks the workers.  Returns 0, 1 when there is
 * nothing to run (an empty list), or -1 with an exception set. */
static int map_begin(MapIter *self)
{
    if (!unsent_type && !(unsent_type = errors_attr("_Unsent")))
        return -1;
    if (!gc_module && !(gc_module = PyImport_ImportModule("gc")))
        return -1;
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

/*
 * Item j of the chunk failed (entry, its error entry): returns the
 * exception for exception='return' (ERR_CALL only), else ends the map and
 * raises it (NULL).  A StopIteration is wrapped: out of __next__ it would end
 * the results.
 */
static PyObject *deliver_error(MapIter *self, PyObject *entry, Py_ssize_t j)
{
    int kind = ERR_CALL;
    PyObject *exc = entry_exception(entry, self->chunk_first + j, &kind);
    if (!exc)
        return NULL;
    if (self->mode == MODE_RETURN && kind == ERR_CALL)
        return exc;
    map_teardown(self);
    if (PyObject_TypeCheck(exc, (PyTypeObject *)PyExc_StopIteration)) {
        PyObject *wrap = errors_attr("item_stop_iteration");
        PyObject *e2 = wrap ? PyObject_CallFunction(wrap, "On", exc,
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

/* The next value of the chunk being handed out (its result, or its error
 * as deliver_error says).  Call only while the chunk has one left. */
static inline PyObject *deliver(MapIter *self)
{
    Py_ssize_t j = self->chunk_pos++;
    if (self->chunk_errors) {
        PyObject *pj = PyLong_FromSsize_t(j);
        PyObject *entry = pj ? PyDict_GetItemWithError(self->chunk_errors, pj)
                             : NULL;
        Py_XDECREF(pj);
        if (entry)
            return deliver_error(self, entry, j);
        if (PyErr_Occurred())
            return NULL;
    }
    /* Handed over: the chunk keeps no result alive once it is
     * delivered. */
    PyObject *r = PyList_GET_ITEM(self->chunk, j);
    PyList_SET_ITEM(self->chunk, j, NULL);
    return r;
}

/*
 * Waits for the next result record and decodes it into the chunk (starting
 * the map on the first call).  Returns 1 with a new chunk; 0 at the end (the
 * map torn down, the input's deferred error raised, if any); -1 with an
 * exception set and the map torn down.
 */
static int next_chunk(MapIter *self)
{
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
            return rc < 0 ? -1 : 0;
        }
    }
    pm_result res;
    int rc = pm_map_next(self->map, &res);
    if (rc == 1) {
        rc = decode_result(self, &res);
        self->running = 0;
        if (rc < 0) {
            map_teardown_keep_error(self);
            return -1;
        }
        return 1;
    }
    self->running = 0;
    if (rc == 0) {
        map_teardown(self);
        return input_error_raise(self);
    }
    raise_engine_error(self, rc);
    map_teardown_keep_error(self);
    return -1;
}

/* The next value of a streamed record (results.c) when it is an int or a
 * float: returns 1 with *r the value (NULL with a MemoryError set: the value
 * stays the next one).  Returns 0 for any other value, a process forked
 * since the record was read (its memory may not be mapped there: tested
 * before reading it), a re-entered __next__, or no record. */
static inline int record_number(MapIter *self, PyObject **r)
{
    const unsigned char *p = self->rec_p;
    if (!self->rec_left || self->running || self->rec_forks != fork_count ||
        self->rec_end - p < 9 || (*p != 'i' && *p != 'f'))
        return 0;
    *r = dec_number(p + 1, *p);
    if (*r) {
        self->rec_p = p + 9;
        self->rec_left--;
    }
    return 1;
}

/* __next__ but for the fast path: the next chunk, record value or error;
 * out of line, so that the fast path's frame stays small. */
static __attribute__((noinline)) PyObject *next_slow(MapIter *self)
{
    if (self->running) {
        PyErr_SetString(PyExc_ValueError, "parmap iterator already executing");
        return NULL;
    }
    for (;;) {
        if (self->rec_left)
            return record_value(self);
        if (self->rec_end && record_end(self) < 0)
            return NULL;
        if (self->chunk && self->chunk_pos < PyList_GET_SIZE(self->chunk))
            return deliver(self);
        Py_CLEAR(self->chunk);
        Py_CLEAR(self->chunk_errors);
        if (self->finished)
            return NULL;
        if (next_chunk(self) <= 0)
            return NULL;
        PyObject *r;
        if (record_number(self, &r))
            return r;
    }
}

/* The fast path: record_number; the rest in next_slow. */
static PyObject *MapIter_next(MapIter *self)
{
    PyObject *r;
    if (record_number(self, &r))
        return r;
    return next_slow(self);
}

/* For list(), tuple() and the like: the number of results when the input is
 * indexed (its length is true; an iterator's len() is only a hint, and may
 * be huge) and nothing was handed out yet: one allocation instead of
 * growing the list.  NotImplemented otherwise (no hint). */
static PyObject *MapIter_length_hint(MapIter *self, PyObject *unused)
{
    (void)unused;
    if (self->started || !self->index_seq || self->length < 0)
        Py_RETURN_NOTIMPLEMENTED;
    return PyLong_FromSsize_t(self->length);
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

/* The timeout option in seconds, a float (any number Python converts).
 * Returns 0, or -1 with an exception set. */
static int timeout_seconds(PyObject *timeout, double *tsec)
{
    *tsec = PyFloat_AsDouble(timeout);
    return *tsec == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* Tasks in flight per slot.  Adaptive tasks (chunksize 0) last ~2 ms: 8 of
 * them keep a worker busy.  A fixed chunksize can make tasks of a
 * microsecond, which a window of 32 drains faster than a time slice of the
 * parent's: up to 256 of them (at most ~4096 items read ahead per slot). */
static int default_window(Py_ssize_t chunksize)
{
    if (chunksize == 0)
        return 8;
    Py_ssize_t w = 4096 / chunksize;
    return w > 256 ? 256 : w < 32 ? 32 : (int)w;
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
    if (timeout != Py_None && timeout_seconds(timeout, &tsec) < 0)
        return -1;
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
    if (window == 0)
        self->opt.window = default_window(chunksize);
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
    Py_CLEAR(self->spare_int);
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
    {"__length_hint__", (PyCFunction)MapIter_length_hint, METH_NOARGS,
     "The number of results while none was handed out, when the input's "
     "length is known (operator.length_hint)."},
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
