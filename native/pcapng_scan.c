/*
 * ossensor._pcapngscan: the reference vSensor's per-batch pcapng walk, in C.
 *
 * scan(buffer) checks that the buffer is exactly one well-formed little-endian pcapng section,
 * with the same checks, in the same order and with the same messages as the pure-Python reference
 * (ossensor/vsensor/store.py parse_batch_py), in one pass with the GIL released. It returns
 * (packets, blocks): the number of Enhanced Packet Blocks and, for every other block (SHB, IDB,
 * ISB: a handful per batch), a (type, offset, length) tuple; Python reads those few blocks' options.
 * A malformation raises ScanError(offset, reason).
 *
 * split(buffer, group_of, new_id, ngroups) copies the EPBs and ISBs of an already scanned section
 * into one bytes object per group (group_of[if_id]), in order, with the interface id rewritten to
 * new_id[if_id]; SHBs and IDBs are left out. Used when a batch's interfaces go to several files.
 *
 * sync_file_range(fd, offset, nbytes, flags) wraps sync_file_range(2) for the store's drop-behind.
 *
 * The input is network data (authenticated, still treated as hostile): every length is checked
 * against the buffer before it is used, offsets are 64-bit, nothing is read past the end.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BT_SHB 0x0A0D0D0Au
#define BT_IDB 1u
#define BT_ISB 5u
#define BT_EPB 6u
#define BOM 0x1A2B3C4Du
/* What libpcap (tcpdump) and wiretap (tshark) refuse is refused here (store.py has the same constants). */
#define MAX_BLOCK (16u << 20)  /* libpcap INITIAL_MAX_BLOCKSIZE */
#define MAX_SHB (1u << 20)     /* libpcap BT_SHB_INSANE_MAX */
#define MAX_SNAPLEN 262144u    /* max_snaplen_for_dlt, WTAP_MAX_PACKET_SIZE_STANDARD */
#define OPT_END 0u
#define IF_TSRESOL 9u
#define IF_TSOFFSET 14u

static PyObject *ScanError;

static inline uint32_t rd32(const unsigned char *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v; /* little-endian host (x86-64, aarch64); checked at import */
}

static inline uint16_t rd16(const unsigned char *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return v;
}

typedef struct {
    uint32_t type;
    size_t offset, length;
} Rec;

typedef struct {
    /* result */
    uint64_t packets;
    Rec *recs;
    size_t nrecs, cap;
    uint32_t *snaps; /* per interface: its snapshot length as libpcap adjusts it */
    size_t snaps_cap;
    /* error */
    int failed; /* 1: malformed (offset, msg); 2: out of memory */
    size_t err_offset;
    char msg[160];
} Scan;

static int push(Scan *s, uint32_t type, size_t off, size_t len)
{
    if (s->nrecs == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 16;
        Rec *r = realloc(s->recs, cap * sizeof(Rec));
        if (!r) {
            s->failed = 2;
            return -1;
        }
        s->recs = r;
        s->cap = cap;
    }
    s->recs[s->nrecs].type = type;
    s->recs[s->nrecs].offset = off;
    s->recs[s->nrecs].length = len;
    s->nrecs++;
    return 0;
}

#define FAIL(off, ...)                                              \
    do {                                                            \
        s->failed = 1;                                              \
        s->err_offset = (off);                                      \
        snprintf(s->msg, sizeof(s->msg), __VA_ARGS__);              \
        return;                                                     \
    } while (0)

static const char *block_name(uint32_t btype)
{
    switch (btype) {
    case BT_SHB:
        return "Section Header Block";
    case BT_IDB:
        return "Interface Description Block";
    case BT_EPB:
        return "Enhanced Packet Block";
    default:
        return "Interface Statistics Block";
    }
}

/* store.py _option_length_rule: the length wiretap (tshark) insists on for this option, or NULL. */
static const char *option_length_rule(uint32_t btype, unsigned code, unsigned length, unsigned first)
{
    if (code == 2988 || code == 2989 || code == 19372 || code == 19373)
        return length < 4 ? "at least 4" : NULL;
    if (btype != BT_EPB)
        return NULL;
    if (code == 2 || code == 6)
        return length != 4 ? "4" : NULL;
    if (code == 4 || code == 5)
        return length != 8 ? "8" : NULL;
    if (code == 7) {
        if (length < 1)
            return "at least 1";
        return (first == 1 || first == 2) && length != 9 ? "9" : NULL;
    }
    return NULL;
}

/* store.py check_options: the options of the block at p (total bytes, at batch offset off) from
 * `start` to its trailer lie within it; an end-of-options has length 0 and comes last; in an IDB,
 * if_tsresol and if_tsoffset appear at most once, with their lengths and a usable resolution.
 * Returns 0, or -1 with s->failed set. */
static int check_options(const unsigned char *p, size_t total, size_t start, uint32_t btype, size_t off,
                         Scan *s)
{
    const char *name = block_name(btype);
    size_t end = total - 4, pos = start;
    int seen_tsresol = 0, seen_tsoffset = 0;
#define OFAIL(...)                                                  \
    do {                                                            \
        s->failed = 1;                                              \
        s->err_offset = off;                                        \
        snprintf(s->msg, sizeof(s->msg), __VA_ARGS__);              \
        return -1;                                                  \
    } while (0)
    while (pos < end) {
        if (end - pos < 4)
            OFAIL("%s: option header overruns the block", name);
        unsigned code = rd16(p + pos), length = rd16(p + pos + 2);
        size_t padded = ((size_t)length + 3u) & ~(size_t)3u;
        if (padded > end - pos - 4)
            OFAIL("%s: option %u (length %u) overruns the block", name, code, length);
        if (code == OPT_END) {
            if (length)
                OFAIL("%s: end-of-options option with length %u", name, length);
            if (pos + 4 != end)
                OFAIL("%s: data after the end-of-options option", name);
            return 0;
        }
        const char *want = option_length_rule(btype, code, length, length ? p[pos + 4] : 0);
        if (want)
            OFAIL("%s: option %u with length %u (readers need %s)", name, code, length, want);
        if (btype == BT_IDB && code == IF_TSRESOL) {
            if (length != 1)
                OFAIL("%s: if_tsresol option with length %u != 1", name, length);
            if (seen_tsresol)
                OFAIL("%s: more than one if_tsresol option", name);
            seen_tsresol = 1;
            unsigned res = p[pos + 4];
            if ((res & 0x80) ? (res & 0x7F) > 63 : res > 19)
                OFAIL("%s: if_tsresol 0x%02x is too fine", name, res);
        } else if (btype == BT_IDB && code == IF_TSOFFSET) {
            if (length != 8)
                OFAIL("%s: if_tsoffset option with length %u != 8", name, length);
            if (seen_tsoffset)
                OFAIL("%s: more than one if_tsoffset option", name);
            seen_tsoffset = 1;
        }
        pos += 4 + padded;
    }
#undef OFAIL
    return 0;
}

/* The walk; no Python API (runs without the GIL). */
static void walk(const unsigned char *buf, size_t end, Scan *s)
{
    size_t off = 0;
    uint64_t nidbs = 0;
    int have_shb = 0;
    if (end == 0)
        FAIL(0, "empty body");
    while (off < end) {
        /* pcapng.iter_blocks */
        if (end - off < 12)
            FAIL(off, "truncated block header");
        const unsigned char *p = buf + off;
        uint32_t btype = rd32(p), total = rd32(p + 4);
        if (btype == BT_SHB && rd32(p + 8) != BOM)
            FAIL(off, "section is not little-endian");
        if (total < 12 || total % 4 || total > end - off)
            FAIL(off, "bad block length %u", total);
        if (rd32(p + total - 4) != total)
            FAIL(off, "block trailer length does not match");
        /* parse_batch */
        if (total > MAX_BLOCK)
            FAIL(off, "block of %u bytes (more than %u MiB)", total, MAX_BLOCK >> 20);
        if (btype == BT_EPB) {
            if (total < 32)
                FAIL(off, "Enhanced Packet Block too short");
            uint32_t if_id = rd32(p + 8), caplen = rd32(p + 20);
            if ((uint64_t)if_id >= nidbs)
                FAIL(off, "packet refers to undeclared interface %u", if_id);
            if (28u + (uint64_t)caplen + 4u > total)
                FAIL(off, "captured length exceeds block");
            if (caplen > s->snaps[if_id])
                FAIL(off, "captured length %u exceeds the interface's snapshot length %u", caplen,
                     s->snaps[if_id]);
            if (check_options(p, total, 28u + ((caplen + 3u) & ~3u), btype, off, s))
                return;
            s->packets++;
        } else if (btype == BT_SHB) {
            if (have_shb)
                FAIL(off, "a batch must be one section (second Section Header Block)");
            if (total < 28)
                FAIL(off, "Section Header Block too short");
            uint16_t major = rd16(p + 12), minor = rd16(p + 14);
            if (major != 1)
                FAIL(off, "unsupported pcapng major version %u", (unsigned)major);
            if (minor != 0 && minor != 2)
                FAIL(off, "unsupported pcapng version 1.%u (libpcap reads 1.0 and 1.2)", (unsigned)minor);
            if (total > MAX_SHB)
                FAIL(off, "Section Header Block of %u bytes (more than 1 MiB)", total);
            if (check_options(p, total, 24, btype, off, s))
                return;
            have_shb = 1;
            if (push(s, btype, off, total))
                return;
        } else if (!have_shb) {
            FAIL(off, "body does not start with a Section Header Block");
        } else if (btype == BT_IDB) {
            if (total < 20)
                FAIL(off, "Interface Description Block too short");
            if (check_options(p, total, 16, btype, off, s))
                return;
            if (nidbs == s->snaps_cap) {
                size_t cap = s->snaps_cap ? s->snaps_cap * 2 : 16;
                uint32_t *n = realloc(s->snaps, cap * sizeof(uint32_t));
                if (!n) {
                    s->failed = 2;
                    return;
                }
                s->snaps = n;
                s->snaps_cap = cap;
            }
            uint32_t snaplen = rd32(p + 12);
            s->snaps[nidbs] = (snaplen && snaplen <= MAX_SNAPLEN) ? snaplen : MAX_SNAPLEN;
            nidbs++;
            if (push(s, btype, off, total))
                return;
        } else if (btype == BT_ISB) {
            if (total < 24)
                FAIL(off, "Interface Statistics Block too short");
            uint32_t if_id = rd32(p + 8);
            if ((uint64_t)if_id >= nidbs)
                FAIL(off, "statistics refer to undeclared interface %u", if_id);
            if (check_options(p, total, 20, btype, off, s))
                return;
            if (push(s, btype, off, total))
                return;
        } else {
            FAIL(off, "unsupported block type 0x%08x (a batch holds IDB, EPB and ISB)", btype);
        }
        off += total;
    }
    if (!have_shb)
        FAIL(0, "no Section Header Block");
}

static PyObject *scan(PyObject *self, PyObject *arg)
{
    (void)self;
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Scan s;
    memset(&s, 0, sizeof(s));
    Py_BEGIN_ALLOW_THREADS
    walk((const unsigned char *)view.buf, (size_t)view.len, &s);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    PyObject *result = NULL, *blocks = NULL;
    if (s.failed == 2) {
        PyErr_NoMemory();
        goto out;
    }
    if (s.failed) {
        PyObject *args = Py_BuildValue("(ns)", (Py_ssize_t)s.err_offset, s.msg);
        if (args) {
            PyErr_SetObject(ScanError, args);
            Py_DECREF(args);
        }
        goto out;
    }
    blocks = PyTuple_New((Py_ssize_t)s.nrecs);
    if (!blocks)
        goto out;
    for (size_t i = 0; i < s.nrecs; i++) {
        PyObject *t = Py_BuildValue("(knn)", (unsigned long)s.recs[i].type, (Py_ssize_t)s.recs[i].offset,
                                    (Py_ssize_t)s.recs[i].length);
        if (!t)
            goto out;
        PyTuple_SET_ITEM(blocks, (Py_ssize_t)i, t);
    }
    result = Py_BuildValue("(KO)", (unsigned long long)s.packets, blocks);
out:
    Py_XDECREF(blocks);
    free(s.recs);
    free(s.snaps);
    return result;
}

/* Reads a sequence of non-negative ints into a new array of n uint32 (NULL + exception on error). */
static uint32_t *int_array(PyObject *seq, Py_ssize_t *n, const char *what)
{
    PyObject *fast = PySequence_Fast(seq, what);
    if (!fast)
        return NULL;
    *n = PySequence_Fast_GET_SIZE(fast);
    uint32_t *out = PyMem_Malloc((size_t)(*n ? *n : 1) * sizeof(uint32_t));
    if (!out) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < *n; i++) {
        unsigned long v = PyLong_AsUnsignedLong(PySequence_Fast_GET_ITEM(fast, i));
        if (v == (unsigned long)-1 && PyErr_Occurred()) {
            PyMem_Free(out);
            Py_DECREF(fast);
            return NULL;
        }
        if (v > UINT32_MAX) {
            PyMem_Free(out);
            Py_DECREF(fast);
            PyErr_Format(PyExc_ValueError, "%s: value out of range", what);
            return NULL;
        }
        out[i] = (uint32_t)v;
    }
    Py_DECREF(fast);
    return out;
}

/* One pass over the blocks: sizes per group (dst == NULL) or copies (dst != NULL).
 * Returns 0, or -1 with *err_off set (a block that does not fit or names an unknown interface). */
static int route(const unsigned char *buf, size_t end, const uint32_t *group_of, const uint32_t *new_id,
                 size_t nifs, size_t *sizes, unsigned char **dst, size_t *err_off)
{
    size_t off = 0;
    while (off < end) {
        if (end - off < 12)
            goto bad;
        const unsigned char *p = buf + off;
        uint32_t btype = rd32(p), total = rd32(p + 4);
        if (total < 12 || total % 4 || total > end - off)
            goto bad;
        if (btype == BT_EPB || btype == BT_ISB) {
            if (total < 16)
                goto bad;
            uint32_t if_id = rd32(p + 8);
            if ((size_t)if_id >= nifs)
                goto bad;
            uint32_t g = group_of[if_id];
            if (dst) {
                if (total > sizes[g])
                    goto bad; /* the buffer changed between the passes */
                memcpy(dst[g], p, total);
                uint32_t id = new_id[if_id];
                memcpy(dst[g] + 8, &id, 4);
                dst[g] += total;
                sizes[g] -= total;
            } else {
                sizes[g] += total;
            }
        }
        off += total;
    }
    return 0;
bad:
    *err_off = off;
    return -1;
}

/* One pass of route() without the GIL; a malformed block raises ValueError. 0 on success. */
static int route_or_raise(const Py_buffer *view, const uint32_t *group_of, const uint32_t *new_id, size_t nifs,
                          size_t *sizes, unsigned char **dst)
{
    size_t err_off = 0;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = route(view->buf, (size_t)view->len, group_of, new_id, nifs, sizes, dst, &err_off);
    Py_END_ALLOW_THREADS
    if (rc)
        PyErr_Format(PyExc_ValueError, "split: malformed block at byte %zu", err_off);
    return rc;
}

static PyObject *split(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *data, *group_seq, *id_seq;
    Py_ssize_t ngroups;
    if (!PyArg_ParseTuple(args, "OOOn:split", &data, &group_seq, &id_seq, &ngroups))
        return NULL;
    if (ngroups < 1 || ngroups > 65536) {
        PyErr_SetString(PyExc_ValueError, "split: ngroups out of range");
        return NULL;
    }
    Py_ssize_t n1, n2;
    PyObject *result = NULL, *list = NULL;
    size_t *sizes = NULL;
    unsigned char **dst = NULL;
    uint32_t *new_id = NULL, *group_of = int_array(group_seq, &n1, "split: group_of");
    if (!group_of)
        return NULL;
    new_id = int_array(id_seq, &n2, "split: new_id");
    if (!new_id)
        goto out_ids;
    if (n1 != n2) {
        PyErr_SetString(PyExc_ValueError, "split: group_of and new_id differ in length");
        goto out_ids;
    }
    for (Py_ssize_t i = 0; i < n1; i++) {
        if ((Py_ssize_t)group_of[i] >= ngroups) {
            PyErr_SetString(PyExc_ValueError, "split: group index out of range");
            goto out_ids;
        }
    }
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        goto out_ids;
    sizes = PyMem_Calloc((size_t)ngroups, sizeof(size_t));
    dst = PyMem_Calloc((size_t)ngroups, sizeof(unsigned char *));
    if (!sizes || !dst) {
        PyErr_NoMemory();
        goto out;
    }
    if (route_or_raise(&view, group_of, new_id, (size_t)n1, sizes, NULL)) /* sizes per group */
        goto out;
    list = PyList_New(ngroups);
    if (!list)
        goto out;
    for (Py_ssize_t g = 0; g < ngroups; g++) {
        PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)sizes[g]);
        if (!b)
            goto out;
        PyList_SET_ITEM(list, g, b);
        dst[g] = (unsigned char *)PyBytes_AS_STRING(b);
    }
    if (route_or_raise(&view, group_of, new_id, (size_t)n1, sizes, dst)) /* the copy */
        goto out;
    for (Py_ssize_t g = 0; g < ngroups; g++) {
        if (sizes[g] != 0) {
            PyErr_SetString(PyExc_ValueError, "split: the buffer changed during the copy");
            goto out;
        }
    }
    result = list;
    list = NULL;
out:
    Py_XDECREF(list);
    PyMem_Free(sizes);
    PyMem_Free(dst);
    PyBuffer_Release(&view);
out_ids:
    PyMem_Free(group_of);
    PyMem_Free(new_id);
    return result;
}

/* sync_file_range(2) (os has no wrapper): the store starts the writeback of what it appended and,
 * some MiB behind, waits for it, then drops those pages (posix_fadvise): its page cache stays small. */
static PyObject *py_sync_file_range(PyObject *self, PyObject *args)
{
    (void)self;
    int fd;
    long long offset, nbytes;
    unsigned int flags;
    if (!PyArg_ParseTuple(args, "iLLI:sync_file_range", &fd, &offset, &nbytes, &flags))
        return NULL;
    if (offset < 0 || nbytes < 0) {
        PyErr_SetString(PyExc_ValueError, "sync_file_range: negative offset or length");
        return NULL;
    }
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = sync_file_range(fd, (off64_t)offset, (off64_t)nbytes, flags);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"sync_file_range", py_sync_file_range, METH_VARARGS,
     "sync_file_range(fd, offset, nbytes, flags): sync_file_range(2), GIL released; OSError on failure."},
    {"scan", scan, METH_O,
     "scan(buffer) -> (packets, ((type, offset, length), ...) for every non-EPB block).\n"
     "Checks one little-endian pcapng section; raises ScanError(offset, reason)."},
    {"split", split, METH_VARARGS,
     "split(buffer, group_of, new_id, ngroups) -> [bytes per group]: the EPBs and ISBs of a scanned\n"
     "section, per group_of[if_id], with their interface id rewritten to new_id[if_id]."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ossensor._pcapngscan", "pcapng section scan for the reference vSensor", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__pcapngscan(void)
{
    const uint32_t one = 1;
    unsigned char first;
    memcpy(&first, &one, 1);
    if (first != 1) {
        PyErr_SetString(PyExc_ImportError, "ossensor._pcapngscan: needs a little-endian host");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (!m)
        return NULL;
    ScanError = PyErr_NewExceptionWithDoc("ossensor._pcapngscan.ScanError",
                                          "A malformed section: args are (offset, reason).", PyExc_ValueError,
                                          NULL);
    if (!ScanError || PyModule_AddObjectRef(m, "ScanError", ScanError) < 0 ||
        PyModule_AddIntConstant(m, "SYNC_FILE_RANGE_WAIT_BEFORE", SYNC_FILE_RANGE_WAIT_BEFORE) < 0 ||
        PyModule_AddIntConstant(m, "SYNC_FILE_RANGE_WRITE", SYNC_FILE_RANGE_WRITE) < 0 ||
        PyModule_AddIntConstant(m, "SYNC_FILE_RANGE_WAIT_AFTER", SYNC_FILE_RANGE_WAIT_AFTER) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
