/*
 * binding/errors.c -- error entries: a worker's exception described as an
 * entry that crosses to the caller, and rebuilt there.
 */
#include "core.h" /* not compiled alone: _core.c includes this file */

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

