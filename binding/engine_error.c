/*
 * binding/engine_error.c -- an engine error code as a Python exception: a
 * worker's death (WorkerDiedError, with why it died and which items it held)
 * or a ParmapperError.
 */
#include "core.h" /* not compiled alone: _core.c includes this file */

static PyObject *format_range_list(const pm_death *d, PyObject **indices)
{
    *indices = PyList_New(0);
    if (!*indices)
        return NULL;
    PyObject *parts = PyList_New(0);
    if (!parts)
        return NULL;
    for (size_t i = 0; i < d->nlost; i++) {
        uint64_t a = d->lost[i].first, n = d->lost[i].count;
        for (uint64_t k = 0; k < n; k++) {
            PyObject *v = PyLong_FromUnsignedLongLong(a + k);
            if (!v || PyList_Append(*indices, v) < 0) {
                Py_XDECREF(v);
                Py_DECREF(parts);
                return NULL;
            }
            Py_DECREF(v);
        }
        if (i == 8) {
            PyObject *s = PyUnicode_FromFormat("... (%zu tasks in all)", d->nlost);
            if (!s || PyList_Append(parts, s) < 0) {
                Py_XDECREF(s);
                Py_DECREF(parts);
                return NULL;
            }
            Py_DECREF(s);
        }
        if (i >= 8)
            continue;
        PyObject *s = n == 1 ? PyUnicode_FromFormat("%llu", (unsigned long long)a)
                             : PyUnicode_FromFormat("%llu-%llu",
                                                    (unsigned long long)a,
                                                    (unsigned long long)(a + n - 1));
        if (!s || PyList_Append(parts, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(parts);
            return NULL;
        }
        Py_DECREF(s);
    }
    PyObject *sep = PyUnicode_FromString(", ");
    PyObject *joined = sep ? PyUnicode_Join(sep, parts) : NULL;
    Py_XDECREF(sep);
    Py_DECREF(parts);
    return joined;
}

static const char *signal_name(int sig)
{
    switch (sig) {
    case SIGKILL: return "SIGKILL";
    case SIGSEGV: return "SIGSEGV";
    case SIGABRT: return "SIGABRT";
    case SIGBUS: return "SIGBUS";
    case SIGFPE: return "SIGFPE";
    case SIGILL: return "SIGILL";
    case SIGTERM: return "SIGTERM";
    case SIGINT: return "SIGINT";
    case SIGHUP: return "SIGHUP";
    case SIGPIPE: return "SIGPIPE";
    case SIGQUIT: return "SIGQUIT";
    default: return "signal";
    }
}

/*
 * The kernel's count of OOM kills that would include a worker of this
 * process: the oom_kill line of its memory cgroup (v2 memory.events, v1
 * memory.oom_control; the workers share the caller's cgroup), else the
 * machine's (/proc/vmstat).  Returns it and names the file in src, or -1.
 * Read at the start of a map and when a worker died of SIGKILL: never on
 * the per-item path.
 */
static long oom_kills(char *src, size_t n)
{
    char line[512], path[600];
    long v = -1;
    FILE *f = fopen("/proc/self/cgroup", "re");
    while (f && v < 0 && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        const char *cg = NULL, *file = NULL, *root = NULL;
        if (strncmp(line, "0::", 3) == 0) {
            cg = line + 3;
            root = "/sys/fs/cgroup";
            file = "memory.events";
        } else {
            char *c = strchr(line, ':');
            char *c2 = c ? strchr(c + 1, ':') : NULL;
            if (c2 && c2 - c == 7 && strncmp(c + 1, "memory", 6) == 0) {
                cg = c2 + 1;
                root = "/sys/fs/cgroup/memory";
                file = "memory.oom_control";
            }
        }
        if (!cg)
            continue;
        snprintf(path, sizeof path, "%s%s/%s", root,
                 strcmp(cg, "/") == 0 ? "" : cg, file);
        FILE *g = fopen(path, "re");
        char key[64];
        long x;
        while (g && fscanf(g, "%63s %ld", key, &x) == 2)
            if (strcmp(key, "oom_kill") == 0) {
                v = x;
                snprintf(src, n, "%s", path);
            }
        if (g)
            fclose(g);
    }
    if (f)
        fclose(f);
    if (v < 0 && (f = fopen("/proc/vmstat", "re"))) {
        char key[64];
        long x;
        while (fscanf(f, "%63s %ld", key, &x) == 2)
            if (strcmp(key, "oom_kill") == 0) {
                v = x;
                snprintf(src, n, "/proc/vmstat");
            }
        fclose(f);
    }
    return v;
}

/* Why a worker died of SIGKILL: the engine sends it only for a timeout (or
 * a broken ring), reported otherwise; so the kernel's OOM killer, told by
 * its counter, or probably. */
static PyObject *sigkill_reason(MapIter *self)
{
    char src[600] = "";
    long now = oom_kills(src, sizeof src);
    if (now >= 0 && self->oom_base >= 0 && now > self->oom_base)
        return PyUnicode_FromFormat(
            "was killed by signal %d (SIGKILL): the kernel's OOM killer "
            "killed it for memory (oom_kill in %s rose by %ld during the "
            "map; workers volunteer first, oom_score_adj 1000),",
            SIGKILL, src, now - self->oom_base);
    if (self->opt.max_rss_bytes)
        /* check_memory kills a worker over the limit that runs no item,
         * and gives up after three in a row. */
        return PyUnicode_FromFormat(
            "was killed by signal %d (SIGKILL): by parmapper for growing "
            "past max_memory=%llu bytes while it ran no item (e.g. memory "
            "taken at its start), or by the kernel's OOM killer,", SIGKILL,
            (unsigned long long)self->opt.max_rss_bytes);
    return PyUnicode_FromFormat(
        "was killed by signal %d (SIGKILL), probably by the kernel's OOM "
        "killer for memory (or by a kill -9 from outside),", SIGKILL);
}

/* How worker d died, as the middle of WorkerDiedError's message ("was
 * killed by signal 11 (SIGSEGV)"...); corrupt: it broke its rings and the
 * engine killed it.  A new str, or NULL with an exception set. */
static PyObject *death_how(MapIter *self, const pm_death *d, int corrupt)
{
    if (corrupt)
        return PyUnicode_FromString(
            "wrote a malformed record into its ring (a wild write in "
            "the worker, e.g. by a C extension or ctypes, over the "
            "engine's shared memory) and was killed,");
    if (d->signal == SIGKILL)
        return sigkill_reason(self);
    if (d->signal)
        return PyUnicode_FromFormat("was killed by signal %d (%s)",
                                    d->signal, signal_name(d->signal));
    if (d->exit_code == PM_EXIT_UNKNOWN)
        return PyUnicode_FromString(
            "ended with status unknown (reaped elsewhere: SIGCHLD is "
            "ignored or the program waits for any child)");
    if (d->exit_code == PM_EXIT_NO_THREADS)
        return PyUnicode_FromFormat(
            "exited with code %d: it could not start its "
            "threads (pthread_create failed: the limit on "
            "threads and processes, RLIMIT_NPROC, ulimit -u; "
            "the stack size, RLIMIT_STACK, ulimit -s; or "
            "memory)", d->exit_code);
    return PyUnicode_FromFormat("exited with code %d", d->exit_code);
}

/* The whole message of a worker's death: who, how, which items it held
 * (items: their ranges as text), and a hint.  A new str, or NULL with an
 * exception set. */
static PyObject *death_message(MapIter *self, const pm_death *d, int corrupt,
                               PyObject *items)
{
    PyObject *msg = NULL, *how = death_how(self, d, corrupt);
    PyObject *what =
        d->nlost ? PyUnicode_FromFormat("with item%s %S in flight on it (lost)",
                                        (d->nlost == 1 && d->lost[0].count == 1) ? "" : "s",
                                        items)
                 : PyUnicode_FromString(corrupt ? "with no item in flight"
                                                : "with no item in flight, and no "
                                                  "worker is left to finish the map");
    char retried[96] = "";
    if (self->opt.retries > 0)
        snprintf(retried, sizeof retried,
                 corrupt ? " (retries=%d used up)"
                         : " (retries=%d used up: the item kept killing its worker)",
                 self->opt.retries);
    const char *hint =
        self->opt.retries > 0 ? retried :
        (self->mode == MODE_PROC && d->exit_code == 70)
            ? " (exception='proc': the exception propagated inside the "
              "worker, which printed its traceback to its stderr)"
            : "";
    if (how && what)
        msg = PyUnicode_FromFormat("parmap worker process %d %S %S%s",
                                   (int)d->pid, how, what, hint);
    Py_XDECREF(how);
    Py_XDECREF(what);
    return msg;
}

/* The attributes of a death's exception: pid, exitcode (None when killed
 * or unknown), signal (None when it exited), seq_indices (every lost item)
 * and seq_index (the first). */
static void set_death_attrs(PyObject *exc, const pm_death *d,
                            PyObject *indices)
{
    PyObject *v;
    v = PyLong_FromLong(d->pid);
    if (v) { PyObject_SetAttrString(exc, "pid", v); Py_DECREF(v); }
    if (d->signal || d->exit_code == PM_EXIT_UNKNOWN) { v = Py_None; Py_INCREF(v); }
    else v = PyLong_FromLong(d->exit_code);
    if (v) { PyObject_SetAttrString(exc, "exitcode", v); Py_DECREF(v); }
    v = d->signal ? PyLong_FromLong(d->signal) : (Py_INCREF(Py_None), Py_None);
    if (v) { PyObject_SetAttrString(exc, "signal", v); Py_DECREF(v); }
    PyObject_SetAttrString(exc, "seq_indices", indices);
    if (PyList_GET_SIZE(indices) > 0)
        PyObject_SetAttrString(exc, "seq_index", PyList_GET_ITEM(indices, 0));
}

/* A worker died (or broke its rings, corrupt): raises WorkerDiedError (or
 * ParmapperError) naming it, how it died and the items it held. */
static void raise_death(MapIter *self, int corrupt)
{
    const pm_death *d = pm_map_death(self->map);
    PyObject *cls = errors_attr(corrupt ? "ParmapperError" : "WorkerDiedError");
    if (!cls || !d) {
        Py_XDECREF(cls);
        return;
    }
    PyObject *indices = NULL;
    PyObject *items = format_range_list(d, &indices);
    PyObject *msg = death_message(self, d, corrupt, items);
    PyObject *exc = msg ? PyObject_CallOneArg(cls, msg) : NULL;
    if (exc && self->proc_log && self->mode == MODE_PROC &&
        d->exit_code == 70) {
        /* The traceback the worker printed, carried by the error too
         * (parmapper._worker.ProcLog.attach). */
        PyObject *r = PyObject_CallMethod(self->proc_log, "attach", "Oi",
                                          exc, (int)d->pid);
        if (!r)
            PyErr_Clear();
        Py_XDECREF(r);
    }
    if (exc) {
        set_death_attrs(exc, d, indices);
        PyErr_SetObject(cls, exc);
        Py_DECREF(exc);
    }
    Py_XDECREF(msg);
    Py_XDECREF(items);
    Py_XDECREF(indices);
    Py_DECREF(cls);
}

/* Sets the Python exception for an engine error code. */
static void raise_engine_error(MapIter *self, int rc)
{
    if (rc == PM_ECALLBACK) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_SystemError,
                            "parmapper: callback failed without an exception");
        return;
    }
    /* A worker that broke its rings (pm_map_death names it): killed, and
     * reported like a death, as a ParmapperError. */
    int corrupt = rc == PM_ECORRUPT && pm_map_death(self->map);
    if (rc == PM_EWORKERDIED || corrupt) {
        raise_death(self, corrupt);
        return;
    }
    PyObject *cls = errors_attr("ParmapperError");
    if (!cls)
        return;
    /* A resource failure says which call failed, for which worker, and the
     * limit most likely reached. */
    const char *why = pm_map_why(self->map);
    if (why && why[0])
        PyErr_Format(cls, "parmap engine: %s", why);
    else if (rc > -4000 && rc < 0)
        PyErr_Format(cls, "parmap engine: %s (errno %d)", pm_strerror(rc), -rc);
    else
        PyErr_Format(cls, "parmap engine: %s", pm_strerror(rc));
    Py_DECREF(cls);
}
