/*
 * binding/pickle.c -- pickle transport: dumps/loads, out-of-band buffers
 * (protocol 5) and the records and task pieces they make, and the
 * item-by-item rescue of a pickle that does not load.
 */
#include "core.h" /* not compiled alone: _core.c includes this file */

static PyObject *dumps(PyObject *obj)
{
    PyObject *argv[2] = {obj, protocol};
    return PyObject_Vectorcall(pickle_dumps, argv, 2, NULL);
}

/* pickle.loads of the n bytes at p, copied first into a bytes object
 * (*data, a new reference, when data is not NULL): p may lie in a ring, and
 * the unpickler runs Python code (a __reduce__'s callable) that may fork;
 * the fork has no ring (MADV_DONTFORK), and an unpickler reading on there
 * would fault.  The copy costs a memcpy per pickled record or 'p' value,
 * small beside the unpickling. */
static PyObject *loads_mem(const void *p, size_t n, PyObject **data)
{
    PyObject *b = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
    if (!b)
        return NULL;
    PyObject *r = PyObject_CallOneArg(pickle_loads, b);
    if (data)
        *data = b;
    else
        Py_DECREF(b);
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

/* A 'p' value of the compact codec at *pp (after its tag): an item that the
 * input's thread pickled alone, as the one-item list [item]
 * (input_thread.c).  When it cannot be unpickled here, the item fails, not
 * the task: an _Unsent marker holding its bytes, from which run_item names
 * it (_salvage.item_error). */
static PyObject *dec_pickled(const unsigned char **pp, const unsigned char *end)
{
    const unsigned char *p = *pp;
    uint64_t n;
    if (end - p < 8)
        return dec_corrupt();
    memcpy(&n, p, 8);
    p += 8;
    if ((uint64_t)(end - p) < n)
        return dec_corrupt();
    PyObject *data = NULL;
    PyObject *one = loads_mem(p, (size_t)n, &data), *r = NULL;
    if (one) {
        if (!PyList_CheckExact(one) || PyList_GET_SIZE(one) != 1) {
            Py_DECREF(one);
            return dec_corrupt();
        }
        r = PyList_GET_ITEM(one, 0);
        Py_INCREF(r);
        Py_DECREF(one);
    } else if (data && PyErr_ExceptionMatches(PyExc_Exception) &&
               !PyErr_ExceptionMatches(PyExc_MemoryError) && unsent_type) {
        PyErr_Clear();
        r = PyObject_CallOneArg(unsent_type, data);
    }
    Py_XDECREF(data);
    *pp = p + n;
    return r;
}

/* loads_mem for a result record or a task: rescued item by item when it
 * fails (*rescued set to 1; see rescue_loads). */
static PyObject *loads_rescued(const char *how, const void *p, size_t n,
                               Py_ssize_t first, int *rescued)
{
    PyObject *data = NULL;
    PyObject *r = loads_mem(p, n, &data);
    if (r || !data) {
        Py_XDECREF(data);
        return r; /* or the copy's MemoryError */
    }
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
