/*
 * binding/hooks.c -- the engine's hooks: fork, the GIL of worker threads,
 * the parent's wait, and signal checks.
 */
#include "core.h" /* not compiled alone: _core.c includes this file */

/* Another thread of this interpreter at the fork (taken with the GIL held,
 * under which no thread state is unlinked): only such a thread can hold a
 * standard stream's lock that the fork inherits locked, so only then does
 * the worker need streams of its own (fresh_stdio, ~0.6 ms per worker).
 * Otherwise the worker keeps the caller's streams, flushed just before
 * the fork so that nothing buffered is written twice. */
static int fork_other_threads;

static void flush_std(void);

static int other_threads(void)
{
    PyThreadState *t = PyInterpreterState_ThreadHead(
        PyThreadState_GetInterpreter(PyThreadState_Get()));
    return t && PyThreadState_Next(t) != NULL;
}

/*
 * The caller's collector is off from just before each fork until the
 * parent's at-fork handlers have run, and in the worker until everything
 * it inherited is frozen.  Otherwise an allocation in the child's at-fork
 * handlers (threading's, say) can start a collection of the young
 * generations, which hold whatever the caller made last: the input list
 * and its snapshot.  That walks and writes every object of theirs before
 * the worker's first task (a list of 10^6 ints: ~40 ms in each worker,
 * measured with perf).  gc_off returns whether it was on.
 */
static int gc_off(void)
{
#if PY_VERSION_HEX >= 0x030A0000
    return PyGC_Disable();
#else
    PyObject *r = PyObject_CallMethod(gc_module, "isenabled", NULL);
    int on = r ? PyObject_IsTrue(r) : 0;
    Py_XDECREF(r);
    r = on > 0 ? PyObject_CallMethod(gc_module, "disable", NULL) : NULL;
    Py_XDECREF(r);
    PyErr_Clear();
    return on > 0;
#endif
}

static void gc_on(void)
{
#if PY_VERSION_HEX >= 0x030A0000
    PyGC_Enable();
#else
    PyObject *r = PyObject_CallMethod(gc_module, "enable", NULL);
    if (!r)
        PyErr_Clear();
    Py_XDECREF(r);
#endif
}

/*
 * The pauses nest: the parent's at-fork handlers run Python code, which
 * may let another thread of the caller fork for a map of its own, or
 * start a map itself, while the collector is paused.  Only the first pause
 * reads the user's setting and only the last resume restores it (a pause
 * that saved "off" because another fork had paused the collector left it
 * off for good).
 */
static void gc_pause(void)
{
    if (gc_pauses++ == 0)
        gc_was_on = gc_off();
}

static void gc_resume(void)
{
    if (gc_pauses > 0 && --gc_pauses == 0 && gc_was_on)
        gc_on();
}

static void hook_before_fork(void *ctx)
{
    (void)ctx;
    fork_other_threads = other_threads();
    PyOS_BeforeFork();
    if (!fork_other_threads)
        flush_std(); /* after the at-fork handlers, which may print */
    gc_pause();
}

static void hook_after_fork_parent(void *ctx)
{
    (void)ctx;
    PyOS_AfterFork_Parent();
    gc_resume();
}

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
    if (fork_other_threads) {
        PyObject *f = fresh_stdio ? PyObject_CallNoArgs(fresh_stdio) : NULL;
        if (!f)
            PyErr_Clear();
        Py_XDECREF(f);
    }
    /* Everything inherited goes to the permanent generation (the collector
     * is still off: gc_pause): a collection in the worker then never walks
     * the caller's objects, whose headers it would write to, copying the
     * caller's heap page by page (a full collection over 1 GB of objects:
     * ~1.2 s and ~0.7 GB copied per worker).  O(1), and the caller's own
     * generations are untouched. */
    PyObject *r = PyObject_CallMethod(gc_module, "freeze", NULL);
    if (!r)
        PyErr_Clear();
    Py_XDECREF(r);
    /* Only this thread is left: the other pauses in progress were other
     * threads' forks (or the caller's, around this one). */
    gc_pauses = 0;
    if (gc_was_on)
        gc_on();
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
