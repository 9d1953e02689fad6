/*
 * binding/results.c -- the parent's side of a result: a result record (or a
 * timeout, or a memory kill) decoded into the chunk of results and error
 * entries the iterator hands out.
 */
#include "core.h" /* not compiled alone: _core.c includes this file */

/* Makes `results` (and `errors`, or NULL; both references stolen) the chunk
 * the iterator hands out next, for the items of res's task. */
static inline void set_chunk(MapIter *self, PyObject *results,
                             PyObject *errors, const pm_result *res)
{
    Py_XSETREF(self->chunk, results);
    Py_XSETREF(self->chunk_errors, errors);
    self->rec_end = NULL;
    self->rec_left = 0;
    self->chunk_pos = 0;
    self->chunk_first = (Py_ssize_t)res->task.first;
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
    set_chunk(self, results, errors, res);
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
    set_chunk(self, results, errors, res);
    return 0;
fail:
    Py_XDECREF(cls);
    Py_XDECREF(results);
    Py_XDECREF(errors);
    return -1;
}

/* Adaptive chunksize: feeds the moving averages of time and bytes per item
 * (next_chunk_size) with a result record's (the worker's elapsed time is
 * in its header; routed bytes count too). */
static void feed_estimate(MapIter *self, const pm_result *res,
                          const Routed *rt)
{
    const unsigned char *p = res->data;
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

/* Forks seen by this process (a pthread_atfork child handler, module.c):
 * a streamed record belongs to the process that read it. */
static volatile unsigned long fork_count;

static void count_fork(void)
{
    fork_count++;
}

/* A compact record that is a list of exactly its task's count of values
 * (no route table) is not decoded into a list: MapIter_next hands its
 * values out one by one, decoding each as it is asked for (the int and the
 * float inline, record_value the rest), from where the engine holds the
 * record until the next pm_map_next.  Building, filling and emptying a list
 * per task cost the caller ~70 instructions per item at default settings,
 * ~240 per task at chunksize=1.  Returns 1 when res is such a record, 0
 * when not (nothing done). */
static int stream_record(MapIter *self, const pm_result *res)
{
    const unsigned char *p = res->data + REC_HDR, *end = res->data + res->len;
    uint32_t n;
    if (end - p < 5 || p[0] != 'l')
        return 0;
    memcpy(&n, p + 1, 4);
    if (n != res->task.count || (size_t)(end - p - 5) < n)
        return 0; /* decode_result names what is wrong */
    Py_CLEAR(self->chunk);
    Py_CLEAR(self->chunk_errors);
    self->rec_p = p + 5;
    self->rec_end = end;
    self->rec_left = (Py_ssize_t)n;
    self->rec_count = (Py_ssize_t)n;
    self->rec_forks = fork_count;
    self->chunk_first = (Py_ssize_t)res->task.first;
    return 1;
}

/* The streamed record's values cannot be read (or a value could not be
 * made): bad_record naming its items, the map torn down.  Returns NULL. */
static PyObject *record_failed(MapIter *self)
{
    pm_result res;
    memset(&res, 0, sizeof res);
    res.task.first = (uint64_t)self->chunk_first;
    res.task.count = (uint64_t)self->rec_count;
    bad_record(&res, "undecodable values");
    map_teardown_keep_error(self); /* the record goes with the map */
    return NULL;
}

/* The next value of the streamed record, of any kind (MapIter_next makes
 * the ints and floats itself), or NULL with an exception set and the map
 * torn down. */
static PyObject *record_value(MapIter *self)
{
    if (self->rec_forks != fork_count) {
        /* A copy fork() made of the caller: the record is in memory the
         * caller's process releases and the workers write again.  Let go
         * of it before anything runs that could ask for a value again. */
        self->rec_end = NULL;
        self->rec_left = 0;
        raise_engine_error(self, PM_ENOTOWNER);
        map_teardown_keep_error(self);
        return NULL;
    }
    const unsigned char *p = self->rec_p;
    self->running = 1; /* a pickled value runs Python code */
    PyObject *x = dec_value(&p, self->rec_end, 1, NULL);
    self->running = 0;
    if (!x)
        return record_failed(self);
    self->rec_p = p;
    self->rec_left--;
    return x;
}

/* Ends the streamed record once its values are out: it must end where its
 * last value ends.  Returns 0, or -1 with an exception set and the map torn
 * down. */
static int record_end(MapIter *self)
{
    if (self->rec_p != self->rec_end) {
        record_failed(self);
        return -1;
    }
    self->rec_end = NULL;
    return 0;
}

/* A result (pm_map_next's) into self->chunk and self->chunk_errors: a
 * record in any of its layouts (core.h), or a timeout or a memory kill of
 * its task.  Returns 0, or -1 with an exception set (bad_record for a record
 * that cannot be read). */
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
    if (self->adaptive && res->task.count > 0)
        feed_estimate(self, res, rt);
    if (p[0] == REC_COMPACT && stream_record(self, res))
        return 0;
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
    set_chunk(self, results, errors, res);
    return 0;
}
