/*
 * binding/routes.c -- routed values: route tables of a compact record's
 * large bytes values, which the receiver assembles straight into bytes
 * objects.
 */
#include "core.h" /* not compiled alone: _core.c includes this file */

/*
 * Route tables.  A compact record with large bytes values ('B') carries,
 * right after its first byte (task) or header (result), u8 count then
 * count x {u64 offset in the message, u64 length} of their data, so that
 * the receiver can route them from the first PM_ROUTE_HEAD bytes alone.
 */

/* Writes the table of enc's 'B' values into out (ROUTE_TABLE_MAX bytes);
 * before: bytes of the message ahead of the table; skip: bytes at the
 * start of enc that are not sent after it (a task's own first byte).
 * Returns its length. */
static size_t route_table(const buf_t *enc, size_t before, size_t skip,
                          unsigned char *out)
{
    int count = enc->nsp < PM_ROUTE_MAX ? enc->nsp : PM_ROUTE_MAX;
    size_t len = 1 + 16 * (size_t)count;
    size_t spliced = 0; /* data of the earlier splices, also in the message */
    out[0] = (unsigned char)count;
    for (int i = 0; i < count; i++) {
        uint64_t off = before + len + enc->sp[i].at - skip + spliced;
        uint64_t n = enc->sp[i].n;
        memcpy(out + 1 + 16 * i, &off, 8);
        memcpy(out + 9 + 16 * i, &n, 8);
        spliced += enc->sp[i].n;
    }
    return len;
}

static void release_routed(void *ctx, void *owner)
{
    (void)ctx;
    Routed *rt = owner;
    if (!rt)
        return;
    if (in_worker)
        gil_take();
    for (int i = 0; i < rt->n; i++)
        Py_XDECREF(rt->objs[i]);
    PyMem_RawFree(rt);
}

/* Decodes the compact record rec[0..n) whose list starts at `at`, after
 * the route table when rec[0] has the flag (0x40 for tasks and results);
 * rt (released here) holds its routed values. */
static PyObject *dec_routed(const unsigned char *rec, size_t n, size_t at,
                            Routed *rt)
{
    PyObject *r = NULL;
    if (rec[0] & 0x40) {
        if (at >= n || at + 1 + 16 * (size_t)rec[at] > n) {
            r = dec_corrupt();
            goto done;
        }
        at += 1 + 16 * (size_t)rec[at];
    }
    r = dec_record(rec + at, n - at, rt);
done:
    release_routed(NULL, rt);
    return r;
}

/* hooks.route: a compact record with a route table, being assembled: its
 * 'B' values' data goes straight into fresh bytes objects (one copy, from
 * the ring).  Anything else, or no memory, routes nothing (the data is
 * then assembled and copied as for 'b'). */
static int route_cb(void *ctx, const void *head, size_t n, pm_span *spans,
                    void **owner)
{
    const unsigned char *h = head;
    int task = getpid() != ((MapIter *)ctx)->parent_pid; /* else a result */
    size_t at = task ? 1 : REC_HDR;
    if (h[0] != (task ? (TASK_COMPACT | TASK_ROUTES) : (REC_COMPACT | REC_ROUTES)))
        return 0;
    int count = h[at];
    if (count < 1 || count > PM_ROUTE_MAX || at + 1 + 16 * (size_t)count > n)
        return 0;
    if (in_worker)
        gil_take();
    Routed *rt = PyMem_RawCalloc(1, sizeof *rt);
    if (!rt)
        return 0;
    for (int i = 0; i < count; i++) {
        uint64_t off, len;
        memcpy(&off, h + at + 1 + 16 * i, 8);
        memcpy(&len, h + at + 9 + 16 * i, 8);
        PyObject *o = len <= PY_SSIZE_T_MAX
                          ? PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len)
                          : NULL;
        if (!o) {
            PyErr_Clear();
            release_routed(ctx, rt);
            return 0;
        }
        rt->objs[rt->n++] = o;
        rt->total += len;
        spans[i] = (pm_span){off, len, PyBytes_AS_STRING(o)};
    }
    *owner = rt;
    return count;
}
