/* asm.c -- assembling fragmented messages, routing ranges to the caller. */
/* GNU and POSIX interfaces under any -std (builds may -D it too). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <string.h>

#include "asm.h"
#include "internal.h"

static int put(pm_asm *a, const unsigned char *p, size_t n)
{
    if (pm__grow(&a->buf, &a->cap, a->len + n) < 0)
        return -ENOMEM;
    memcpy(a->buf + a->len, p, n);
    a->len += n;
    return 0;
}

static void release(pm_asm *a, const pm_hooks *h)
{
    if (a->owner && h->route_release)
        h->route_release(h->ctx, a->owner);
    a->owner = NULL;
    a->nspans = a->k = 0;
}

#define HDR sizeof(pm_msg_hdr) /* the engine's header: not routed, not seen
                                 by the hook, not counted in span offsets */

static size_t min_size(size_t x, size_t y)
{
    return x < y ? x : y;
}

/* Bytes p[0 .. n-1] at message position a->pos: into the current span's
 * memory, or the buffer. */
static int route_bytes(pm_asm *a, const unsigned char *p, size_t n)
{
    while (n > 0) {
        size_t take;
        pm_span *s = a->k < a->nspans ? &a->spans[a->k] : NULL;
        size_t at = a->pos - HDR;
        if (a->pos < HDR || !s || at < s->off) {
            take = a->pos < HDR ? min_size(n, HDR - a->pos)
                   : s          ? min_size(n, s->off - at)
                                : n;
            if (put(a, p, take) < 0)
                return -ENOMEM;
        } else {
            size_t in = at - s->off;
            take = min_size(n, s->len - in);
            memcpy((unsigned char *)s->dst + in, p, take);
            if (in + take == s->len)
                a->k++;
        }
        a->pos += take;
        p += take;
        n -= take;
    }
    return 0;
}

static int spans_valid(const pm_span *sp, int n)
{
    size_t end = 0;
    for (int i = 0; i < n; i++) {
        if (sp[i].len == 0 || !sp[i].dst || sp[i].off < end ||
            sp[i].off + sp[i].len < sp[i].off)
            return 0;
        end = sp[i].off + sp[i].len;
    }
    return 1;
}

/* The first HDR + PM_ROUTE_HEAD bytes are in the buffer, and more are
 * coming: asks the hook, then passes those bytes again through the ranges
 * it named. */
static int ask(pm_asm *a, const pm_hooks *h)
{
    a->asked = 1;
    void *owner = NULL;
    int k = h->route(h->ctx, a->buf + HDR, PM_ROUTE_HEAD, a->spans, &owner);
    a->owner = owner;
    if (k <= 0) {
        release(a, h); /* routes nothing */
        return 0;
    }
    if (k > PM_ROUTE_MAX || !spans_valid(a->spans, k)) {
        release(a, h);
        return -EINVAL;
    }
    a->nspans = k;
    unsigned char head[HDR + PM_ROUTE_HEAD];
    memcpy(head, a->buf, sizeof head);
    a->len = a->pos = 0;
    return route_bytes(a, head, sizeof head);
}

int pm__asm_add(pm_asm *a, const pm_hooks *h, const pm_frag *f)
{
    int first = (f->flags & PM_FRAG_FIRST) != 0;
    int last = (f->flags & PM_FRAG_LAST) != 0;
    if (first == a->active)
        return PM_ECORRUPT;
    if (first) {
        a->len = a->pos = 0;
        a->asked = h->route == NULL;
    }
    a->active = 1;
    const unsigned char *piece[2] = {f->p1, f->p2};
    size_t left[2] = {f->n1, f->p2 ? f->n2 : 0};
    int rc = 0;
    for (int i = 0; i < 2 && rc == 0; i++) {
        const unsigned char *p = piece[i];
        size_t n = left[i];
        while (n > 0 && rc == 0) {
            size_t take = n;
            if (!a->asked && a->pos == HDR + PM_ROUTE_HEAD) {
                rc = ask(a, h); /* more is coming: worth routing */
                continue;
            }
            if (!a->asked) {
                take = min_size(n, HDR + PM_ROUTE_HEAD - a->pos);
                rc = put(a, p, take);
                a->pos += take;
            } else {
                rc = route_bytes(a, p, take);
            }
            p += take;
            n -= take;
        }
    }
    if (rc == 0 && last && a->k < a->nspans)
        rc = PM_ECORRUPT; /* the message ended inside or before a range */
    if (rc < 0) {
        pm__asm_reset(a, h);
        return rc;
    }
    a->active = !last;
    return last;
}

unsigned char *pm__asm_take_buf(pm_asm *a)
{
    unsigned char *p = a->buf;
    a->buf = NULL;
    a->cap = a->len = 0;
    return p;
}

void *pm__asm_take_owner(pm_asm *a)
{
    void *o = a->owner;
    a->owner = NULL;
    a->nspans = a->k = 0;
    return o;
}

void pm__asm_reset(pm_asm *a, const pm_hooks *h)
{
    release(a, h);
    a->active = 0;
    a->len = a->pos = 0;
}

void pm__asm_free(pm_asm *a, const pm_hooks *h)
{
    pm__asm_reset(a, h);
    free(a->buf);
    a->buf = NULL;
    a->cap = 0;
}
