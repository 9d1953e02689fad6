/*
 * _core.c -- the one CPython binding of the parmapper engine, built as one
 * translation unit from the files of this folder.
 *
 * It plugs Python into the engine (engine/include/pm.h).  In the parent,
 * gather_cb (tasks.c) reads items from the input and writes each task as
 * an index range of the inherited sequence, a record of the compact codec
 * (codec.c), or, as the fallback, a pickle (pickle.c).  In a forked worker,
 * work_cb (worker.c) decodes the task, calls the user's function on each
 * item through the argument table (caller.c) and writes the results back the
 * same ways; the parent decodes them (results.c) and the iterator (mapiter.c)
 * hands them out.  The function itself is never pickled: the worker
 * inherits it with the rest of the parent's memory at fork.
 *
 * The engine returns negative codes and never touches Python; every Python
 * exception is made here (core.h states the conventions and the wire format).
 *
 * The files are included here, lowest layer first, rather than compiled
 * apart: the compiler then sees the whole per-item path at once and inlines
 * across files as it did when the binding was one file (setup.py compiles
 * this file only and lists the others as its dependencies).
 */
#include "core.h"

#include "codec.c"      /* compact codec: buf_t, enc_value, dec_value */
#include "pickle.c"     /* pickle transport, out-of-band buffers, rescue */
#include "routes.c"     /* route tables and routed values */
#include "caller.c"     /* the argument table (Caller) */
#include "hooks.c"      /* fork, GIL, wait and check hooks */
#include "errors.c"     /* error entries, made in a worker, read in the caller */
#include "engine_error.c" /* engine codes and worker deaths as exceptions */
#include "tasks.c"      /* the parent's side of a task (gather_cb) */
#include "input_thread.c" /* the input read in a thread of its own */
#include "worker.c"     /* the worker's side of a task (work_cb) */
#include "results.c"    /* the parent's side of a result (decode_result) */
#include "mapiter.c"    /* the iterator type MapIter */
#include "module.c"     /* the module: helpers, constants, init */
