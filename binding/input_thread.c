/*
 * binding/input_thread.c -- reads a map's input in a thread of its own, so
 * that results never wait for an input that blocks.
 *
 * Included by _core.c (one translation unit) after tasks.c: gather_cb hands
 * the engine the tasks made here (gather_read), mapiter.c starts and stops
 * the thread (reader_start, reader_close).
 *
 * Why a thread: the caller's thread cannot deliver a result while it is
 * inside the input's next() (a generator waiting on a socket, a source that
 * yields five items then pauses).  multiprocessing's Pool reads its input in
 * a task-handler thread for the same reason.
 *
 * The rules it keeps, the same as when the caller's thread reads:
 *  - Each item is encoded (copied into bytes) before the input is asked for
 *    the next one: an input that refills one buffer or mutates one object
 *    for every item sends each item as it was when it was yielded.  Items go
 *    one by one into an open task in the compact codec; an item the codec
 *    cannot hold is pickled alone into it ('p': the pickle of [item]), or,
 *    when it has large
 *    buffers (a numpy array), becomes a task of its own written from its
 *    memory, and the input is not read on until that task is in the ring
 *    (`hold`).
 *  - The input ends at its first StopIteration; an Exception it raises is
 *    delivered after the results of the items before it (the map's
 *    input_exc); a BaseException that is not an Exception, or a failure to
 *    encode (MemoryError), ends the map when the caller reaches it.
 *
 * Hand-over, all under the GIL (no lock of its own): the reader publishes a
 * task into `q` when it holds `want` items; gather_cb takes the oldest
 * published task, or, when there is none, the open task as it is (its items
 * are encoded already), or returns PM_NO_TASK_YET and sets main_waiting, on
 * which the reader calls pm_map_wake() after its next item.  The reader
 * sleeps on `wake` (a lock it holds while awake) when READ_AHEAD_TASKS tasks
 * wait or a task of its own buffers is being written.
 *
 * The map's end (close, an error, garbage collection) sets `closed`: the
 * reader stops before its next read, or after the read it is blocked in
 * returns (a running next() cannot be stopped; the thread is a daemon).
 * The reader and the map each hold a reference to the InputReader, which
 * frees what is left when both are done.
 */

/* Tasks made ahead of the map's asking, at most: READ_AHEAD_TASKS - 1, or
 * READ_AHEAD_BYTES of them (and one task more).  The reader, once asleep,
 * is woken when half of either is left (fewer wake-ups: a futex each). */
#define READ_AHEAD_TASKS 64
#define READ_AHEAD_BYTES (4u << 20)

/* A task this small is copied into its queue entry, not handed over as
 * pieces: no allocation per task (chunksize=1, the first adaptive tasks). */
#define READ_SMALL_TASK 240

typedef struct {
    Pieces *pieces;    /* the task's bytes, handed to the engine as owner,
                          or NULL: they are in `small` */
    uint64_t first;
    uint32_t count;
    int flags;         /* PM_PRODUCED_VOLATILE: written from an item's memory */
    size_t bytes;
    unsigned char small[READ_SMALL_TASK];
} ReadTask;

struct InputReader {
    PyObject_HEAD
    PyObject *it;
    PyThread_type_lock wake; /* held by the reader while it is awake */
    int sleeping;          /* the reader waits for `wake` */
    int closed;            /* the map is over: read no more */
    int done;              /* the reader has stopped */
    PyObject *exc;         /* the Exception that ended the input */
    PyObject *fatal;       /* an error that ends the map where it is reached */
    pm_map *map;           /* woken on main_waiting; NULL once the map ends */
    int main_waiting;      /* gather_cb returned PM_NO_TASK_YET */
    int hold;              /* 1: a task written from an item's memory is
                              published, 2: taken by the engine (written
                              before gather_cb is called again) */
    Py_ssize_t want;       /* items per task, set by the map */
    Py_ssize_t next_index; /* the index of the next item read */
    /* The open task: its items encoded so far. */
    buf_t open;
    PyObject *keep;        /* its large bytes items (spliced), or NULL */
    Py_ssize_t open_n, open_first;
    ReadTask q[READ_AHEAD_TASKS];
    int qhead, qn;
    size_t qbytes;         /* of the tasks in q */
};

static void reader_sleep(InputReader *r)
{
    r->sleeping = 1;
    Py_BEGIN_ALLOW_THREADS
    PyThread_acquire_lock(r->wake, WAIT_LOCK);
    Py_END_ALLOW_THREADS
}

static void reader_wake(InputReader *r)
{
    if (r->sleeping) {
        r->sleeping = 0;
        PyThread_release_lock(r->wake);
    }
}

/* After anything the map may take: wakes it if it waits for input. */
static void reader_tell_map(InputReader *r)
{
    if (r->main_waiting && r->map) {
        r->main_waiting = 0;
        pm_map_wake(r->map);
    }
}

static ReadTask *reader_push(InputReader *r, Pieces *t, Py_ssize_t first,
                             Py_ssize_t count, int flags)
{
    size_t bytes = 0;
    for (int i = 0; t && i < t->niov; i++)
        bytes += t->iov[i].len;
    ReadTask *e = &r->q[(r->qhead + r->qn++) % READ_AHEAD_TASKS];
    e->pieces = t;
    e->first = (uint64_t)first;
    e->count = (uint32_t)count;
    e->flags = flags;
    e->bytes = bytes;
    r->qbytes += bytes;
    return e;
}

/* Closes the open task (there is room in q): its list's count written, its
 * buffer handed to the pieces. */
static int reader_publish(InputReader *r)
{
    uint32_t n32 = (uint32_t)r->open_n;
    memcpy(r->open.p + 2, &n32, 4); /* tag, 'l', then the count */
    if (!r->open.nsp && r->open.len <= READ_SMALL_TASK) {
        ReadTask *e = reader_push(r, NULL, r->open_first, r->open_n, 0);
        memcpy(e->small, r->open.p, r->open.len);
        e->bytes = r->open.len;
        r->qbytes += e->bytes;
        r->open_n = 0; /* the buffer stays, for the next task */
        return 0;
    }
    Pieces *t;
    if (r->open.nsp) {
        t = spliced_task(&r->open, r->keep);
    } else if ((t = pieces_new(1))) {
        t->head = r->open;
        memset(&r->open, 0, sizeof r->open);
        t->iov[0] = (pm_iov){t->head.p, t->head.len};
        t->niov = 1;
    }
    Py_CLEAR(r->keep);
    r->open.splice = 1;
    if (!t)
        return -1;
    reader_push(r, t, r->open_first, r->open_n, 0);
    r->open_n = 0;
    return 0;
}

/* Item x cannot be pickled: the marker the worker raises in its place. */
static PyObject *reader_unsent(InputReader *r, PyObject *x)
{
    PyObject *et, *ev, *etb; /* why pickling failed: taken first */
    PyErr_Fetch(&et, &ev, &etb);
    PyErr_NormalizeException(&et, &ev, &etb);
    PyObject *cls = errors_attr("ItemPicklingError");
    if (!cls) {
        Py_XDECREF(et);
        Py_XDECREF(ev);
        Py_XDECREF(etb);
        return NULL;
    }
    PyObject *exc = PyObject_CallFunction(
        cls, "N",
        PyUnicode_FromFormat("item %zd: cannot pickle the item (type %s) to "
                             "send it to a worker process: %S",
                             r->next_index, Py_TYPE(x)->tp_name,
                             ev ? ev : Py_None));
    Py_XDECREF(et);
    Py_XDECREF(ev);
    Py_XDECREF(etb);
    Py_DECREF(cls);
    PyObject *marker = exc ? PyObject_CallOneArg(unsent_type, exc) : NULL;
    Py_XDECREF(exc);
    return marker;
}

/* An item with large buffers: a task of its own, written from them (b:
 * the pickle of the one-item list, bufs: its out-of-band buffers). */
static int reader_own_task(InputReader *r, PyObject *b, PyObject *bufs)
{
    if (r->open_n && reader_publish(r) < 0)
        return -1;
    static const unsigned char tag = TASK_PICKLE | TASK_OOB;
    Pieces *t = oob_pieces(&tag, 1, b, bufs);
    if (!t)
        return -1;
    reader_push(r, t, r->next_index, 1, PM_PRODUCED_VOLATILE);
    r->hold = 1;
    return 0;
}

/* Pickles the one-item list [x] (so a 'p' value and a task of its own are
 * the same pickle, and x's __reduce__ runs once): new reference, or NULL
 * with an exception set; *bufs: its out-of-band buffers, if any. */
static PyObject *reader_pickle(PyObject *x, PyObject **bufs)
{
    PyObject *one = PyList_New(1);
    if (!one)
        return NULL;
    Py_INCREF(x);
    PyList_SET_ITEM(one, 0, x);
    PyObject *p = dumps_oob(one, bufs);
    Py_DECREF(one);
    return p;
}

/* Starts the open task if none is open. */
static int reader_open(InputReader *r)
{
    static const unsigned char head[6] = {TASK_COMPACT, 'l', 0, 0, 0, 0};
    if (r->open_n)
        return 0;
    buf_clear(&r->open);
    r->open_first = r->next_index;
    return buf_put(&r->open, head, sizeof head);
}

/* Encodes item x into the open task (or a task of its own).  0, or -1 with
 * an error set. */
static int reader_add(InputReader *r, PyObject *x)
{
    buf_t *b = &r->open;
    if (reader_open(r) < 0)
        return -1;
    size_t at = b->len;
    int nsp = b->nsp;
    b->nseen = 0; /* sharing is looked for within one item */
    /* The codec runs no Python code: the open task stays the reader's. */
    int rc = enc_value(b, x, 1);
    if (rc == 0 && b->nsp > nsp) {
        /* Large bytes are written from the item itself: keep it. */
        if ((!r->keep && !(r->keep = PyList_New(0))) ||
            PyList_Append(r->keep, x) < 0)
            rc = -1;
    }
    if (rc == 0) {
        r->open_n++;
        r->next_index++;
        return 0;
    }
    b->len = at;
    buf_drop_splices(b, nsp);
    if (rc < 0)
        return -1;
    /* Pickled.  From here Python code runs (__reduce__), the GIL may pass
     * and the map may take the open task: it is looked at again after. */
    PyObject *bufs = NULL;
    PyObject *p = reader_pickle(x, &bufs);
    if (p && bufs) {
        rc = reader_own_task(r, p, bufs);
        Py_DECREF(p);
        Py_DECREF(bufs);
        if (rc < 0)
            return -1;
        r->next_index++;
        return 0;
    }
    if (!p) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            return -1;
        PyObject *marker = reader_unsent(r, x);
        p = marker ? reader_pickle(marker, &bufs) : NULL;
        Py_XDECREF(marker);
        Py_CLEAR(bufs);
        if (!p)
            return -1;
    }
    uint64_t n = (uint64_t)PyBytes_GET_SIZE(p);
    rc = reader_open(r);
    if (rc == 0)
        rc = buf_reserve(b, 9 + (size_t)n);
    if (rc == 0) {
        b->p[b->len] = 'p';
        memcpy(b->p + b->len + 1, &n, 8);
        memcpy(b->p + b->len + 9, PyBytes_AS_STRING(p), (size_t)n);
        b->len += 9 + (size_t)n;
        r->open_n++;
        r->next_index++;
    }
    Py_DECREF(p);
    return rc;
}

/* Moves the pending error into `where` (a new reference), with a note
 * that the input's thread met it (parmapper._input.note_input_thread). */
static void reader_keep_error(PyObject **where)
{
    static PyObject *input_module; /* parmapper._input */
    PyObject *ev = take_exception();
    PyObject *fn = ev ? module_attr(&input_module, "parmapper._input",
                                    "note_input_thread")
                      : NULL;
    PyObject *ok = fn ? PyObject_CallOneArg(fn, ev) : NULL;
    if (!ok)
        PyErr_Clear();
    Py_XDECREF(ok);
    Py_XDECREF(fn);
    Py_XSETREF(*where, ev);
}

/* The thread's body (parmapper._input.start_reader runs it). */
static PyObject *InputReader_run(InputReader *r, PyObject *unused)
{
    (void)unused;
    while (!r->closed) {
        /* Room for two tasks: the open one and an item's own. */
        if (r->hold || r->qn >= READ_AHEAD_TASKS - 1 ||
            r->qbytes >= READ_AHEAD_BYTES) {
            reader_sleep(r);
            continue;
        }
        if (r->open_n >= r->want) {
            if (reader_publish(r) < 0) {
                reader_keep_error(&r->fatal);
                break;
            }
            reader_tell_map(r);
        }
        PyObject *x = PyIter_Next(r->it);
        if (r->closed) {
            Py_XDECREF(x);
            PyErr_Clear();
            break;
        }
        if (!x) {
            if (PyErr_Occurred())
                reader_keep_error(
                    PyErr_ExceptionMatches(PyExc_Exception) ? &r->exc
                                                            : &r->fatal);
            break;
        }
        int rc = reader_add(r, x);
        Py_DECREF(x);
        if (rc < 0) {
            reader_keep_error(&r->fatal);
            break;
        }
        reader_tell_map(r);
    }
    /* What was read before the end stays for the map to take. */
    r->done = 1;
    reader_tell_map(r);
    Py_RETURN_NONE;
}

/* gather_cb's source when the input has a thread: the oldest task made,
 * else the open task as it is, else the input's end, else PM_NO_TASK_YET. */
static int reader_take(InputReader *r, ReadTask *out)
{
    if (r->hold == 2) { /* written: the engine asks only after that */
        r->hold = 0;
        reader_wake(r);
    }
    if (!r->qn && r->open_n && reader_publish(r) < 0)
        return PM_ECALLBACK;
    if (r->qn) {
        *out = r->q[r->qhead];
        r->qhead = (r->qhead + 1) % READ_AHEAD_TASKS;
        r->qn--;
        r->qbytes -= out->bytes;
        if (out->flags & PM_PRODUCED_VOLATILE)
            r->hold = 2;
        if (r->qn <= READ_AHEAD_TASKS / 2 && r->qbytes < READ_AHEAD_BYTES / 2)
            reader_wake(r);
        return 1;
    }
    if (!r->done) {
        r->main_waiting = 1;
        return PM_NO_TASK_YET;
    }
    if (r->fatal) {
        PyObject *ev = r->fatal;
        r->fatal = NULL;
        PyErr_Restore((PyObject *)Py_TYPE(ev), ev,
                      PyException_GetTraceback(ev));
        Py_INCREF(Py_TYPE(ev));
        return PM_ECALLBACK;
    }
    return 0;
}

/* The map is over: the reader stops at its next look. */
static void reader_close(InputReader *r)
{
    r->closed = 1;
    r->map = NULL;
    r->main_waiting = 0;
    reader_wake(r);
}

static int InputReader_traverse(InputReader *r, visitproc visit, void *arg)
{
    Py_VISIT(r->it);
    Py_VISIT(r->exc);
    Py_VISIT(r->fatal);
    Py_VISIT(r->keep);
    return 0;
}

static int InputReader_clear(InputReader *r)
{
    Py_CLEAR(r->it);
    Py_CLEAR(r->exc);
    Py_CLEAR(r->fatal);
    Py_CLEAR(r->keep);
    return 0;
}

static void InputReader_dealloc(InputReader *r)
{
    PyObject_GC_UnTrack(r);
    InputReader_clear(r);
    while (r->qn) {
        if (r->q[r->qhead].pieces)
            release_pieces(NULL, r->q[r->qhead].pieces);
        r->qhead = (r->qhead + 1) % READ_AHEAD_TASKS;
        r->qn--;
    }
    buf_free(&r->open);
    if (r->wake) {
        if (!r->sleeping) /* held by the reader while awake */
            PyThread_release_lock(r->wake);
        PyThread_free_lock(r->wake);
    }
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static PyMethodDef InputReader_methods[] = {
    {"run", (PyCFunction)InputReader_run, METH_NOARGS,
     "Reads the input until it ends or the map does (the thread's body)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject InputReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "parmapper._core.InputReader",
    .tp_basicsize = sizeof(InputReader),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A map's input, read in a thread of its own.",
    .tp_methods = InputReader_methods,
    .tp_traverse = (traverseproc)InputReader_traverse,
    .tp_clear = (inquiry)InputReader_clear,
    .tp_dealloc = (destructor)InputReader_dealloc,
};

/* A reader of `it` for map m, its thread started.  NULL with an error. */
static InputReader *reader_start(PyObject *it, pm_map *m, Py_ssize_t want)
{
    static PyObject *input_module; /* parmapper._input */
    PyObject *fn = module_attr(&input_module, "parmapper._input", "start_reader");
    if (!fn)
        return NULL;
    InputReader *r = PyObject_GC_New(InputReader, &InputReaderType);
    if (!r) {
        Py_DECREF(fn);
        return NULL;
    }
    memset((char *)r + sizeof(PyObject), 0, sizeof *r - sizeof(PyObject));
    Py_INCREF(it);
    r->it = it;
    r->map = m;
    r->want = want;
    r->open.splice = 1;
    r->wake = PyThread_allocate_lock();
    if (!r->wake || !PyThread_acquire_lock(r->wake, NOWAIT_LOCK)) {
        PyErr_SetString(PyExc_RuntimeError, "parmap: cannot make a lock");
        Py_DECREF(fn);
        Py_DECREF(r);
        return NULL;
    }
    PyObject_GC_Track(r);
    PyObject *run = PyObject_GetAttrString((PyObject *)r, "run");
    PyObject *ok = run ? PyObject_CallOneArg(fn, run) : NULL;
    Py_XDECREF(run);
    Py_DECREF(fn);
    if (!ok) {
        r->closed = 1;
        Py_DECREF(r);
        return NULL;
    }
    Py_DECREF(ok);
    return r;
}

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
    note_task_bytes(self, t.bytes, t.count);
    r->want = next_chunk_size(self);
    return 1 | t.flags;
}
