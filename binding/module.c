/*
 * binding/module.c -- the module parmapper._core: its lazily imported Python
 * helpers, its functions and constants, and its init.
 */
#include "core.h" /* not compiled alone: _core.c includes this file */

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
static PyObject *worker_attr(const char *name)
{
    return module_attr(&worker_module, "parmapper._worker", name);
}

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
    if (pthread_atfork(NULL, NULL, count_fork) != 0) {
        PyErr_SetString(PyExc_RuntimeError, "pthread_atfork failed");
        goto fail;
    }
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
    /* The one definition of the kinds of error entries and the exception
     * modes (core.h), for the Python package's own paths (_api.py's
     * threads, _cluster.py's executors, _salvage.py). */
    if (PyModule_AddIntConstant(m, "ERR_CALL", ERR_CALL) < 0 ||
        PyModule_AddIntConstant(m, "ERR_SHAPE", ERR_SHAPE) < 0 ||
        PyModule_AddIntConstant(m, "ERR_BASE", ERR_BASE) < 0 ||
        PyModule_AddIntConstant(m, "MODE_RAISE", MODE_RAISE) < 0 ||
        PyModule_AddIntConstant(m, "MODE_RETURN", MODE_RETURN) < 0 ||
        PyModule_AddIntConstant(m, "MODE_PROC", MODE_PROC) < 0)
        goto fail;
    if (add_object(m, "Caller", (PyObject *)&CallerType) < 0 ||
        add_object(m, "MapIter", (PyObject *)&MapIterType) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
