/*
 * binding/codec.c -- the compact codec: the common scalar types, tuples and
 * lists encoded into a buf_t and decoded back without pickle (the tags are
 * in core.h).
 */
#include "core.h" /* not compiled alone: _core.c includes this file */

/* Forgets the splices from the from-th on (their references). */
static void buf_drop_splices(buf_t *b, int from)
{
    while (b->nsp > from)
        Py_DECREF(b->sp[--b->nsp].obj);
}

static void buf_clear(buf_t *b)
{
    b->len = 0;
    buf_drop_splices(b, 0);
}

static void buf_free(buf_t *b)
{
    buf_drop_splices(b, 0);
    PyMem_RawFree(b->p);
    PyMem_RawFree(b->sp);
    memset(b, 0, sizeof *b);
}

/* Describes the record as 2 * nsp + 1 pieces: iov must have room. */
static int buf_pieces(const buf_t *b, pm_iov *iov)
{
    size_t at = 0;
    int k = 0;
    for (int i = 0; i < b->nsp; i++) {
        iov[k].base = b->p + at;
        iov[k++].len = b->sp[i].at - at;
        iov[k].base = b->sp[i].p;
        iov[k++].len = b->sp[i].n;
        at = b->sp[i].at;
    }
    iov[k].base = b->p + at;
    iov[k++].len = b->len - at;
    return k;
}

/* buf_reserve when the buffer must grow (out of line). */
static int buf_grow(buf_t *b, size_t extra)
{
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + extra)
        cap *= 2;
    unsigned char *p = PyMem_RawRealloc(b->p, cap);
    if (!p) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

/* Makes room for extra more bytes: 0, or -1 with MemoryError set. */
static inline int buf_reserve(buf_t *b, size_t extra)
{
    if (b->len + extra <= b->cap)
        return 0;
    return buf_grow(b, extra);
}

/* A tag and 8 bytes (an 'i' or 'f' value). */
static inline int buf_put9(buf_t *b, unsigned char tag, const void *eight)
{
    if (buf_reserve(b, 9) < 0)
        return -1;
    b->p[b->len] = tag;
    memcpy(b->p + b->len + 1, eight, 8);
    b->len += 9;
    return 0;
}

/*
 * The value of an exact int of at most one digit (|v| < 2**30), read from
 * the object: 1, or 0 for a larger int (PyLong_AsLongLongAndOverflow then).
 * From 3.12 on, CPython's own inline test; before, the digit count is
 * Py_SIZE (negative for a negative int) and 0 has no digit.
 */
static inline int long_compact(PyObject *o, long long *v)
{
#if PY_VERSION_HEX >= 0x030C0000
    if (!PyUnstable_Long_IsCompact((PyLongObject *)o))
        return 0;
    *v = PyUnstable_Long_CompactValue((PyLongObject *)o);
#else
    Py_ssize_t size = Py_SIZE(o);
    if (size < -1 || size > 1)
        return 0;
    *v = size ? size * (long long)((PyLongObject *)o)->ob_digit[0] : 0;
#endif
    return 1;
}

static inline int buf_put(buf_t *b, const void *src, size_t n)
{
    if (buf_reserve(b, n) < 0)
        return -1;
    memcpy(b->p + b->len, src, n);
    b->len += n;
    return 0;
}

static inline int buf_tag(buf_t *b, unsigned char tag)
{
    return buf_put(b, &tag, 1);
}

/* A large bytes value: its header is encoded, its data referred to (the
 * caller keeps the object alive until the record is written).  The first
 * PM_ROUTE_MAX of a record are tagged 'B' and listed in its route table:
 * where the receiver assembles the record, their data goes straight into
 * the bytes objects it decodes them as (route_cb), and is not in the
 * assembled record; anywhere else 'B' is read as 'b'. */
static int enc_bytes_spliced(buf_t *b, PyObject *o)
{
    uint64_t n = (uint64_t)PyBytes_GET_SIZE(o);
    if (b->nsp == b->spcap) {
        int cap = b->spcap ? 2 * b->spcap : 4;
        splice_t *sp = PyMem_RawRealloc(b->sp, (size_t)cap * sizeof *sp);
        if (!sp) {
            PyErr_NoMemory();
            return -1;
        }
        b->sp = sp;
        b->spcap = cap;
    }
    if (buf_reserve(b, 9) < 0)
        return -1;
    b->p[b->len] = b->nsp < PM_ROUTE_MAX ? 'B' : 'b';
    memcpy(b->p + b->len + 1, &n, 8);
    b->len += 9;
    Py_INCREF(o);
    b->sp[b->nsp++] = (splice_t){b->len, PyBytes_AS_STRING(o), (size_t)n, o};
    return 0;
}

/*
 * A list inside an item that something else references too (refcount > 1;
 * a list built for the item alone has 1) may be held twice in the item,
 * as in [a, a]: the codec would rebuild two lists where pickle keeps one.
 * Returns 1 when `o` was met before in this item, or when there are more
 * such lists than ENC_SEEN_MAX (the item is then pickled), else records it
 * and returns 0.  Borrowed pointers, compared only while encoding.
 */
static int enc_shared(buf_t *b, PyObject *o)
{
    for (int i = 0; i < b->nseen; i++)
        if (b->seen[i] == o)
            return 1;
    if (b->nseen == ENC_SEEN_MAX)
        return 1;
    b->seen[b->nseen++] = o;
    return 0;
}

static int enc_value(buf_t *b, PyObject *o, int depth);

/* The common scalars, inline where values are encoded one after another:
 * an exact int of one digit or an exact float.  Returns 0, -1 with an
 * exception set, or ENC_OTHER for any other value (enc_value encodes it;
 * a bool, an int or float subclass or a larger int are among them). */
static inline int enc_fast(buf_t *b, PyObject *o)
{
    PyTypeObject *t = Py_TYPE(o);
    long long v;
    if (t == &PyLong_Type && long_compact(o, &v))
        return buf_put9(b, 'i', &v);
    if (t == &PyFloat_Type) {
        double d = PyFloat_AS_DOUBLE(o);
        return buf_put9(b, 'f', &d);
    }
    return ENC_OTHER;
}

/* A str: 's', u32 length, UTF-8.  Lone surrogates and strings of 4 GB or
 * more are left to pickle (ENC_UNSUPPORTED). */
static int enc_str(buf_t *b, PyObject *o)
{
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(o, &n);
    if (!s) { /* lone surrogates: let pickle handle them */
        PyErr_Clear();
        return ENC_UNSUPPORTED;
    }
    if ((size_t)n > 0xffffffffu)
        return ENC_UNSUPPORTED;
    uint32_t n32 = (uint32_t)n;
    if (buf_reserve(b, 5 + (size_t)n) < 0)
        return -1;
    b->p[b->len] = 's';
    memcpy(b->p + b->len + 1, &n32, 4);
    memcpy(b->p + b->len + 5, s, (size_t)n);
    b->len += 5 + (size_t)n;
    return 0;
}

/* A bytes: 'b', u64 length, the data; or spliced when large (see
 * enc_bytes_spliced). */
static int enc_bytes(buf_t *b, PyObject *o)
{
    uint64_t n = (uint64_t)PyBytes_GET_SIZE(o);
    if (b->splice && n >= OOB_MIN)
        return enc_bytes_spliced(b, o);
    if (buf_reserve(b, 9 + (size_t)n) < 0)
        return -1;
    b->p[b->len] = 'b';
    memcpy(b->p + b->len + 1, &n, 8);
    memcpy(b->p + b->len + 9, PyBytes_AS_STRING(o), (size_t)n);
    b->len += 9 + (size_t)n;
    return 0;
}

/* A tuple or a list: 't' or 'l', u32 count, the values.  Depth 0 is the
 * record's list of items (or results): each of its values is one item,
 * within which shared lists are looked for (enc_shared). */
static int enc_seq(buf_t *b, PyObject *o, int is_list, int depth)
{
    if (depth >= ENC_MAX_DEPTH)
        return ENC_UNSUPPORTED;
    if (is_list && depth >= 2 && Py_REFCNT(o) > 1 && enc_shared(b, o))
        return ENC_UNSUPPORTED; /* held twice in one item: pickle it */
    Py_ssize_t n = is_list ? PyList_GET_SIZE(o) : PyTuple_GET_SIZE(o);
    if ((size_t)n > 0xffffffffu)
        return ENC_UNSUPPORTED;
    uint32_t n32 = (uint32_t)n;
    if (buf_reserve(b, 5) < 0)
        return -1;
    b->p[b->len] = is_list ? 'l' : 't';
    memcpy(b->p + b->len + 1, &n32, 4);
    b->len += 5;
    unsigned mut = b->nmut;
    b->nmut += is_list;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *x = is_list ? PyList_GET_ITEM(o, i) : PyTuple_GET_ITEM(o, i);
        int rc = enc_fast(b, x); /* the common scalars: nothing else runs */
        if (rc == ENC_OTHER) {
            if (depth == 0)
                b->nseen = 0; /* sharing is looked for within one item */
            rc = enc_value(b, x, depth + 1);
            /* A list may change size while a value in it is encoded only
             * through __del__ tricks: then it is pickled as it is. */
            if (rc == 0 && is_list && PyList_GET_SIZE(o) != n)
                rc = ENC_UNSUPPORTED;
        }
        if (rc)
            return rc;
    }
    /* A tuple held twice that holds a list or a dict (t = ([],); [t, t]):
     * the codec would rebuild two containers where pickle keeps one.  A
     * tuple of scalars may be repeated freely. */
    if (!is_list && depth >= 2 && b->nmut != mut && Py_REFCNT(o) > 1 &&
        enc_shared(b, o))
        return ENC_UNSUPPORTED;
    return 0;
}

/* An exact dict: 'd', u32 count, then each key and its value, in the dict's
 * order.  Exact keys and values only: no __hash__ or __eq__ of the user's
 * runs, so the dict cannot change while it is read. */
static int enc_dict(buf_t *b, PyObject *o, int depth)
{
    if (depth >= ENC_MAX_DEPTH)
        return ENC_UNSUPPORTED;
    if (depth >= 2 && Py_REFCNT(o) > 1 && enc_shared(b, o))
        return ENC_UNSUPPORTED; /* held twice in one item: pickle it */
    Py_ssize_t n = PyDict_GET_SIZE(o);
    if ((size_t)n > 0xffffffffu)
        return ENC_UNSUPPORTED;
    uint32_t n32 = (uint32_t)n;
    if (buf_reserve(b, 5) < 0)
        return -1;
    b->p[b->len] = 'd';
    memcpy(b->p + b->len + 1, &n32, 4);
    b->len += 5;
    b->nmut++;
    Py_ssize_t pos = 0, k = 0;
    PyObject *key, *val;
    while (PyDict_Next(o, &pos, &key, &val)) {
        if (++k > n)
            return ENC_UNSUPPORTED;
        int rc = enc_value(b, key, depth + 1);
        if (rc == 0)
            rc = enc_value(b, val, depth + 1);
        if (rc)
            return rc;
    }
    return k == n ? 0 : ENC_UNSUPPORTED;
}

/* An exact int of more than one digit: 'i' when it fits in 64 bits, else
 * left to pickle. */
static int enc_long(buf_t *b, PyObject *o)
{
    int overflow;
    long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow)
        return ENC_UNSUPPORTED;
    if (v == -1 && PyErr_Occurred())
        return -1;
    return buf_put9(b, 'i', &v);
}

/* Encodes one value into b.  Returns 0, ENC_UNSUPPORTED (nothing is raised:
 * the record is pickled instead), or -1 with an exception set.  The common
 * scalars first: this runs once per item and per result. */
static int enc_value(buf_t *b, PyObject *o, int depth)
{
    int rc = enc_fast(b, o);
    if (rc != ENC_OTHER)
        return rc;
    PyTypeObject *t = Py_TYPE(o);
    if (t == &PyLong_Type)
        return enc_long(b, o);
    if (o == Py_None)
        return buf_tag(b, 'N');
    if (o == Py_True)
        return buf_tag(b, 'T');
    if (o == Py_False)
        return buf_tag(b, 'F');
    if (t == &PyUnicode_Type)
        return enc_str(b, o);
    if (t == &PyBytes_Type)
        return enc_bytes(b, o);
    if (t == &PyTuple_Type || t == &PyList_Type)
        return enc_seq(b, o, t == &PyList_Type, depth);
    if (t == &PyDict_Type)
        return enc_dict(b, o, depth);
    return ENC_UNSUPPORTED;
}

static PyObject *dec_corrupt(void)
{
    PyErr_SetString(PyExc_RuntimeError, "parmapper: corrupt compact record");
    return NULL;
}

static PyObject *dec_value(const unsigned char **pp, const unsigned char *end,
                           int depth, Routed *rt);

/* The data of a 'b' or 'B' value at *pp (after its tag): a bytes object
 * read from the record, or for 'B' the next routed one (rt).  NULL with an
 * exception set. */
static PyObject *dec_bytes(const unsigned char **pp, const unsigned char *end,
                           unsigned char tag, Routed *rt)
{
    const unsigned char *p = *pp;
    uint64_t n;
    PyObject *r;
    if (end - p < 8)
        return dec_corrupt();
    memcpy(&n, p, 8);
    p += 8;
    if (tag == 'B' && rt) {
        if (rt->k == rt->n || (uint64_t)PyBytes_GET_SIZE(rt->objs[rt->k]) != n)
            return dec_corrupt();
        r = rt->objs[rt->k]; /* the reference moves to the result */
        rt->objs[rt->k++] = NULL;
    } else {
        if ((uint64_t)(end - p) < n)
            return dec_corrupt();
        r = PyBytes_FromStringAndSize((const char *)p, (Py_ssize_t)n);
        p += n;
    }
    *pp = p;
    return r;
}

/* The 8 bytes after an 'i' or 'f' tag at p (the caller checked they are
 * there): a new int or float. */
static inline PyObject *dec_number(const unsigned char *p, unsigned char tag)
{
    if (tag == 'i') {
        long long v;
        memcpy(&v, p, 8);
        return PyLong_FromLongLong(v);
    }
    double v;
    memcpy(&v, p, 8);
    return PyFloat_FromDouble(v);
}

/* The count and values of a 't' or 'l' value at *pp (after its tag): a new
 * tuple or list, or NULL with an exception set. */
static PyObject *dec_seq(const unsigned char **pp, const unsigned char *end,
                         unsigned char tag, int depth, Routed *rt)
{
    const unsigned char *p = *pp;
    uint32_t n;
    if (end - p < 4)
        return dec_corrupt();
    memcpy(&n, p, 4);
    p += 4;
    if ((size_t)(end - p) < n) /* every value takes at least a byte */
        return dec_corrupt();
    PyObject *r = tag == 'l' ? PyList_New(n) : PyTuple_New(n);
    if (!r)
        return NULL;
    int atomic = 1; /* every value an int or a float */
    for (uint32_t i = 0; i < n; i++) {
        PyObject *x;
        /* The common scalars inline (the cheap test first), the rest by
         * dec_value. */
        if (p < end && (*p == 'i' || *p == 'f') && end - p >= 9) {
            x = dec_number(p + 1, *p);
            p += 9;
        } else {
            atomic = 0;
            x = dec_value(&p, end, depth + 1, rt);
        }
        if (!x) {
            Py_DECREF(r);
            return NULL;
        }
        if (tag == 'l')
            PyList_SET_ITEM(r, i, x);
        else
            PyTuple_SET_ITEM(r, i, x);
    }
    /* A tuple of numbers can hold no cycle: the collector need not track
     * it (as it would find itself, later, at a cost per collection). */
    if (tag == 't' && atomic && n)
        PyObject_GC_UnTrack(r);
    *pp = p;
    return r;
}

/* The count and pairs of a 'd' value at *pp (after its tag): a new dict, or
 * NULL with an exception set. */
static PyObject *dec_dict(const unsigned char **pp, const unsigned char *end,
                          int depth, Routed *rt)
{
    const unsigned char *p = *pp;
    uint32_t n;
    if (end - p < 4)
        return dec_corrupt();
    memcpy(&n, p, 4);
    p += 4;
    if ((size_t)(end - p) / 2 < n) /* a key and a value take 2 bytes */
        return dec_corrupt();
    PyObject *r = PyDict_New();
    if (!r)
        return NULL;
    for (uint32_t i = 0; i < n; i++) {
        PyObject *k = dec_value(&p, end, depth + 1, rt);
        PyObject *v = k ? dec_value(&p, end, depth + 1, rt) : NULL;
        int rc = v ? PyDict_SetItem(r, k, v) : -1;
        Py_XDECREF(k);
        Py_XDECREF(v);
        if (rc < 0) {
            Py_DECREF(r);
            return NULL;
        }
    }
    *pp = p;
    return r;
}

/* Decodes one value at *p (advanced past it).  NULL with an error set. */
static PyObject *dec_value(const unsigned char **pp, const unsigned char *end,
                           int depth, Routed *rt)
{
    const unsigned char *p = *pp;
    if (p >= end || depth > ENC_MAX_DEPTH)
        return dec_corrupt();
    unsigned char tag = *p++;
    PyObject *r = NULL;
    switch (tag) {
    case 'N':
        r = Py_None;
        Py_INCREF(r);
        break;
    case 'T':
        r = Py_True;
        Py_INCREF(r);
        break;
    case 'F':
        r = Py_False;
        Py_INCREF(r);
        break;
    case 'i':
    case 'f':
        if (end - p < 8)
            return dec_corrupt();
        r = dec_number(p, tag);
        p += 8;
        break;
    case 's': {
        uint32_t n;
        if (end - p < 4)
            return dec_corrupt();
        memcpy(&n, p, 4);
        p += 4;
        if ((size_t)(end - p) < n)
            return dec_corrupt();
        r = PyUnicode_DecodeUTF8((const char *)p, (Py_ssize_t)n, NULL);
        p += n;
        break;
    }
    case 'B':
    case 'b':
        r = dec_bytes(&p, end, tag, rt);
        break;
    case 't':
    case 'l':
        r = dec_seq(&p, end, tag, depth, rt);
        break;
    case 'd':
        r = dec_dict(&p, end, depth, rt);
        break;
    case 'p':
        r = dec_pickled(&p, end);
        break;
    default:
        return dec_corrupt();
    }
    *pp = p;
    return r;
}

/* Decodes a whole record that must be exactly one value; rt: where its
 * 'B' values went, when the record was routed. */
static PyObject *dec_record(const unsigned char *p, size_t n, Routed *rt)
{
    const unsigned char *end = p + n;
    PyObject *r = dec_value(&p, end, 0, rt);
    if (r && (p != end || (rt && rt->k != rt->n))) {
        Py_DECREF(r);
        return dec_corrupt();
    }
    return r;
}
