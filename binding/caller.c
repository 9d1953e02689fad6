/*
 * binding/caller.c -- the argument table (Caller): how the user's function
 * is called on one item under star/kwstar/args/kwargs.
 */
#include "core.h" /* not compiled alone: _core.c includes this file */

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
 * kwstar=True with star not None: the item is a pair (vals, kwvals).  Sets
 * *pair (new reference, a tuple of two) and points *vals and *kwvals into
 * it.  Returns 0, or -1 with an exception set (*shape 1 when the item is
 * not a pair).
 */
static int kwstar_pair(Py_ssize_t idx, PyObject *item, PyObject **pair,
                       PyObject **vals, PyObject **kwvals, int *shape)
{
    if (PyTuple_CheckExact(item)) {
        *pair = item;
        Py_INCREF(item);
    } else {
        *pair = PySequence_Tuple(item);
        if (!*pair) {
            if (!PyErr_ExceptionMatches(PyExc_TypeError))
                return -1;
            PyErr_Clear();
        }
    }
    if (!*pair || PyTuple_GET_SIZE(*pair) != 2) {
        shape_error(idx,
                    "item %lld: kwstar=True expects a pair (vals, "
                    "kwvals), got %s",
                    item);
        *shape = 1;
        return -1;
    }
    *vals = PyTuple_GET_ITEM(*pair, 0);
    *kwvals = PyTuple_GET_ITEM(*pair, 1);
    return 0;
}

/* The positional arguments for the item's values `vals`: a new tuple, or
 * NULL with an exception set (*shape 1 for a star item that is not an
 * iterable). */
static PyObject *call_positional(Caller *c, Py_ssize_t idx, PyObject *vals,
                                 int *shape)
{
    Py_ssize_t nargs = PyTuple_GET_SIZE(c->args);
    if (c->star == 1) {
        PyObject *t = star_values(idx, vals);
        if (!t) {
            *shape = PyErr_ExceptionMatches(ItemShapeError);
            return NULL;
        }
        if (!nargs)
            return t;
        PyObject *pos = PySequence_Concat(t, c->args);
        Py_DECREF(t);
        return pos;
    }
    if (c->star == 0) {
        PyObject *pos = PyTuple_New(1 + nargs);
        if (!pos)
            return NULL;
        Py_INCREF(vals);
        PyTuple_SET_ITEM(pos, 0, vals);
        for (Py_ssize_t i = 0; i < nargs; i++) {
            PyObject *a = PyTuple_GET_ITEM(c->args, i);
            Py_INCREF(a);
            PyTuple_SET_ITEM(pos, i + 1, a);
        }
        return pos;
    }
    Py_INCREF(c->args);
    return c->args;
}

/* The keyword arguments: kwargs updated with the item's kwvals (which win),
 * a new dict.  NULL with an exception set (*shape 1 when kwvals is not a
 * mapping with string keys). */
static PyObject *call_keywords(Caller *c, Py_ssize_t idx, PyObject *kwvals,
                               int *shape)
{
    if (!PyDict_Check(kwvals) && !PyMapping_Check(kwvals)) {
        shape_error(idx,
                    "item %lld: kwstar=True expects a mapping of keyword "
                    "arguments (kwvals), got %s",
                    kwvals);
        *shape = 1;
        return NULL;
    }
    PyObject *kw = c->kwargs ? PyDict_Copy(c->kwargs) : PyDict_New();
    if (!kw)
        return NULL;
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
        Py_DECREF(kw);
        return NULL;
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
            Py_DECREF(kw);
            return NULL;
        }
    }
    return kw;
}

/* fun's vectorcall function, looked up on every call (an object may
 * change it), or NULL; PyVectorcall_Function inline (it is a function call
 * from 3.11 on). */
static inline vectorcallfunc vectorcall_of(PyObject *fun)
{
    PyTypeObject *tp = Py_TYPE(fun);
    if (!PyType_HasFeature(tp, Py_TPFLAGS_HAVE_VECTORCALL))
        return NULL;
    vectorcallfunc f;
    memcpy(&f, (char *)fun + tp->tp_vectorcall_offset, sizeof f);
    return f;
}

/* CPython's word in the messages below. */
#if PY_VERSION_HEX >= 0x030A0000
#define CALL_ERROR_WORD "exception"
#else
#define CALL_ERROR_WORD "error" /* 3.9's wording */
#endif

/*
 * A vectorcall function broke the protocol: r is NULL with no exception
 * set, or a result with an exception set.  Raises the SystemError CPython
 * raises there (_Py_CheckFunctionResult: the exception that was set, if
 * any, as its cause) and returns NULL.
 */
static PyObject *bad_call_result(PyObject *fun, PyObject *r)
{
    if (!r) {
        PyErr_Format(PyExc_SystemError,
                     "%R returned NULL without setting an " CALL_ERROR_WORD,
                     fun);
        return NULL;
    }
    Py_DECREF(r);
    PyObject *ev = take_exception();
    PyErr_Format(PyExc_SystemError,
                 "%R returned a result with an " CALL_ERROR_WORD " set", fun);
    if (!ev)
        return NULL;
    PyObject *st, *sv, *stb;
    PyErr_Fetch(&st, &sv, &stb);
    PyErr_NormalizeException(&st, &sv, &stb);
    if (sv) {
        Py_INCREF(ev);
        PyException_SetCause(sv, ev); /* steals a reference */
        PyException_SetContext(sv, ev); /* steals the other */
    } else {
        Py_DECREF(ev);
    }
    PyErr_Restore(st, sv, stb);
    return NULL;
}

static PyObject *caller_call_general(Caller *c, Py_ssize_t idx,
                                     PyObject *item, int *shape);

/*
 * Calls the function on one item.  Returns a new reference, or NULL with an
 * exception set; *shape is set to 1 when the item itself had the wrong shape
 * (the function was not called).  The common case, fun(item), calls fun's
 * vectorcall function directly (what PyObject_CallOneArg does, without its
 * thread state look-up and out-of-line checks) and checks its result as
 * CPython does.
 */
static inline PyObject *caller_call(Caller *c, Py_ssize_t idx, PyObject *item,
                                    int *shape)
{
    *shape = 0;
    if (!c->plain)
        return caller_call_general(c, idx, item, shape);
    vectorcallfunc f = vectorcall_of(c->fun);
    if (!f)
        return PyObject_CallOneArg(c->fun, item); /* tp_call */
    PyObject *args[2] = {NULL, item}; /* args[0]: the callee may use it */
    PyObject *r = f(c->fun, args + 1, 1 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                    NULL);
    if ((r != NULL) == (PyErr_Occurred() != NULL))
        return bad_call_result(c->fun, r);
    return r;
}

/* caller_call under star, kwstar, args or kwargs. */
static PyObject *caller_call_general(Caller *c, Py_ssize_t idx,
                                     PyObject *item, int *shape)
{
    PyObject *vals = item, *kwvals = NULL, *pair = NULL;
    PyObject *pos = NULL, *kw = NULL, *res = NULL;
    if (c->kwstar) {
        if (c->star == -1) {
            vals = NULL;
            kwvals = item;
        } else if (kwstar_pair(idx, item, &pair, &vals, &kwvals, shape) < 0) {
            goto done;
        }
    }
    if (!(pos = call_positional(c, idx, vals, shape)))
        goto done;
    if (kwvals) {
        if (!(kw = call_keywords(c, idx, kwvals, shape)))
            goto done;
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
    self->plain = 0; /* until every field is set */
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
    self->plain = self->star == 0 && !kwstar && PyTuple_GET_SIZE(t) == 0 &&
                  !d;
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
