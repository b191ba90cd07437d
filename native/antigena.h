/*
 * Antigena matching on the capture path (included by ring.c after the Ring struct).
 *
 * Python installs a small rule table (Ring.set_rules): one TCP connection (5-tuple,
 * either direction), all traffic between two addresses, or all traffic of one
 * address; IPv4 or IPv6. write_epb() calls ag_match() only when the table is not
 * empty. A packet that matches a rule and can be reset (TCP without RST: our own
 * resets are never answered) is copied - its first AG_HIT_BYTES, enough for the
 * link, IP and TCP headers - into a bounded hit buffer with its ifindex, link type
 * and packet type; Python drains it with Ring.take_hits() after each read and sends
 * the resets from another thread. When the buffer is full, hits are counted as
 * overflow (the next packet of the flow is a new chance). Python never sees the
 * packets that do not match.
 */
#ifndef OSSENSOR_ANTIGENA_H
#define OSSENSOR_ANTIGENA_H

#include "l3.h"

#define AG_MAX_RULES 4096u
#define AG_MAX_HITS 512u
#define AG_HIT_BYTES 192u

#define AG_CONN 1 /* a: src addr, pa: src port, b: dst addr, pb: dst port (either direction) */
#define AG_PAIR 2 /* a <-> b */
#define AG_HOST 3 /* a, either side */

typedef struct {
    uint32_t id;
    uint8_t kind;
    uint8_t family; /* 4 or 6 */
    uint16_t pa, pb; /* host byte order */
    uint8_t a[16], b[16];
} AgRule;

typedef struct {
    uint32_t rule_id;
    int32_t ifindex;
    uint16_t linktype;
    uint8_t pkttype;
    uint16_t len;
    uint8_t data[AG_HIT_BYTES];
} AgHit;

struct ag_table {
    AgRule *rules;
    unsigned n;
    unsigned n_hits;
    uint64_t matched;  /* packets that matched a rule */
    uint64_t hits;     /* handed to Python */
    uint64_t overflow; /* matched and resettable, but the hit buffer was full */
    uint64_t skipped;  /* matched but not resettable: not TCP, a RST, a later fragment */
    AgHit hit[AG_MAX_HITS];
};

static inline uint16_t ag_be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

/* Called from write_epb (GIL released) with the frame as written into the batch. */
static void ag_match(struct ag_table *t, const uint8_t *f, uint32_t len, int ifindex, int linktype,
                     int pkttype)
{
    uint32_t off;
    int ip = l3_find(f, len, linktype, &off);
    if (!ip)
        return;
    const uint8_t *src, *dst;
    unsigned family, alen, proto;
    uint32_t l4;
    int ports = 1;
    if (ip == 4) {
        if (off + 20 > len)
            return;
        unsigned ihl = (f[off] & 15u) * 4u;
        if (ihl < 20)
            return;
        family = 4;
        alen = 4;
        proto = f[off + 9];
        src = f + off + 12;
        dst = f + off + 16;
        l4 = off + ihl;
        if (ag_be16(f + off + 6) & 0x1fff) /* not the first fragment: no TCP header */
            ports = 0;
    } else { /* 6 */
        if (off + 40 > len)
            return;
        family = 6;
        alen = 16;
        proto = f[off + 6];
        src = f + off + 8;
        dst = f + off + 24;
        l4 = off + 40;
        for (int i = 0; i < 4; i++) { /* hop-by-hop, routing, destination options, fragment */
            if (proto == 0 || proto == 43 || proto == 60) {
                if (l4 + 8 > len) {
                    ports = 0;
                    break;
                }
                proto = f[l4];
                l4 += (f[l4 + 1] + 1u) * 8u;
            } else if (proto == 44) {
                if (l4 + 8 > len) {
                    ports = 0;
                    break;
                }
                if (ag_be16(f + l4 + 2) & 0xfff8)
                    ports = 0;
                proto = f[l4];
                l4 += 8;
            } else {
                break;
            }
        }
    }
    int tcp = proto == 6 && ports && l4 + 20 <= len;
    uint16_t sp = tcp ? ag_be16(f + l4) : 0, dp = tcp ? ag_be16(f + l4 + 2) : 0;

    for (unsigned i = 0; i < t->n; i++) {
        const AgRule *r = &t->rules[i];
        if (r->family != family)
            continue;
        int hit;
        if (r->kind == AG_HOST)
            hit = !memcmp(src, r->a, alen) || !memcmp(dst, r->a, alen);
        else if (r->kind == AG_PAIR)
            hit = (!memcmp(src, r->a, alen) && !memcmp(dst, r->b, alen)) ||
                  (!memcmp(src, r->b, alen) && !memcmp(dst, r->a, alen));
        else
            hit = tcp && ((sp == r->pa && dp == r->pb && !memcmp(src, r->a, alen) && !memcmp(dst, r->b, alen)) ||
                          (sp == r->pb && dp == r->pa && !memcmp(src, r->b, alen) && !memcmp(dst, r->a, alen)));
        if (!hit)
            continue;
        t->matched++;
        if (!tcp || (f[l4 + 13] & 0x04)) {
            t->skipped++;
            return;
        }
        if (t->n_hits >= AG_MAX_HITS) {
            t->overflow++;
            return;
        }
        AgHit *h = &t->hit[t->n_hits++];
        h->rule_id = r->id;
        h->ifindex = ifindex;
        h->linktype = (uint16_t)linktype;
        h->pkttype = (uint8_t)pkttype;
        h->len = (uint16_t)(len < AG_HIT_BYTES ? len : AG_HIT_BYTES);
        memcpy(h->data, f, h->len);
        t->hits++;
        return;
    }
}

/* set_rules([(id, kind, family, a: bytes, b: bytes, pa, pb), ...]): replaces the table.
 * An empty list turns matching off (one branch per packet). Call from the reader thread. */
static PyObject *Ring_set_rules(Ring *self, PyObject *arg)
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Ring is being read by another thread");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(arg, "rules must be a sequence of (id, kind, family, a, b, pa, pb)");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if ((size_t)n > AG_MAX_RULES) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "at most %u rules", AG_MAX_RULES);
        return NULL;
    }
    AgRule *rules = PyMem_Calloc(n ? (size_t)n : 1, sizeof *rules);
    if (!rules) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned long id;
        int kind, family, pa, pb;
        const char *a, *b;
        Py_ssize_t alen, blen;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "kiiy#y#ii", &id, &kind, &family, &a, &alen, &b,
                              &blen, &pa, &pb))
            goto bad;
        size_t want = family == 4 ? 4 : 16;
        if (id > 0xffffffffUL || kind < AG_CONN || kind > AG_HOST || (family != 4 && family != 6) ||
            (size_t)alen != want || (kind != AG_HOST && (size_t)blen != want) || pa < 0 || pa > 65535 || pb < 0 ||
            pb > 65535) {
            PyErr_Format(PyExc_ValueError, "rule %zd is malformed", i);
            goto bad;
        }
        rules[i].id = (uint32_t)id;
        rules[i].kind = (uint8_t)kind;
        rules[i].family = (uint8_t)family;
        rules[i].pa = (uint16_t)pa;
        rules[i].pb = (uint16_t)pb;
        memcpy(rules[i].a, a, want);
        if (kind != AG_HOST)
            memcpy(rules[i].b, b, want);
    }
    Py_DECREF(seq);
    if (!self->ag) {
        if (!n) {
            PyMem_Free(rules);
            Py_RETURN_NONE;
        }
        self->ag = PyMem_Calloc(1, sizeof *self->ag);
        if (!self->ag) {
            PyMem_Free(rules);
            return PyErr_NoMemory();
        }
    }
    PyMem_Free(self->ag->rules);
    self->ag->rules = rules;
    self->ag->n = (unsigned)n;
    self->n_rules = (unsigned)n;
    Py_RETURN_NONE;
bad:
    PyMem_Free(rules);
    Py_DECREF(seq);
    return NULL;
}

/* take_hits() -> [(rule_id, ifindex, linktype, pkttype, headers: bytes), ...] and empties the buffer. */
static PyObject *Ring_take_hits(Ring *self, PyObject *Py_UNUSED(ignored))
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Ring is being read by another thread");
        return NULL;
    }
    unsigned n = self->ag ? self->ag->n_hits : 0;
    PyObject *out = PyList_New(n);
    if (!out)
        return NULL;
    for (unsigned i = 0; i < n; i++) {
        const AgHit *h = &self->ag->hit[i];
        PyObject *t = Py_BuildValue("(kiiiy#)", (unsigned long)h->rule_id, (int)h->ifindex, (int)h->linktype,
                                    (int)h->pkttype, (const char *)h->data, (Py_ssize_t)h->len);
        if (!t) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, t);
    }
    if (self->ag)
        self->ag->n_hits = 0;
    return out;
}

/* antigena_stats() -> (rules, matched, hits, overflow, skipped), cumulative. */
static PyObject *Ring_antigena_stats(Ring *self, PyObject *Py_UNUSED(ignored))
{
    struct ag_table *t = self->ag;
    return Py_BuildValue("(IKKKK)", self->n_rules, (unsigned long long)(t ? t->matched : 0),
                         (unsigned long long)(t ? t->hits : 0), (unsigned long long)(t ? t->overflow : 0),
                         (unsigned long long)(t ? t->skipped : 0));
}

static void ag_free(Ring *self)
{
    if (self->ag) {
        PyMem_Free(self->ag->rules);
        PyMem_Free(self->ag);
        self->ag = NULL;
    }
    self->n_rules = 0;
}

#endif
