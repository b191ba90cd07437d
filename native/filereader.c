/*
 * ossensor._filereader: capture files -> pcapng EPBs in batch buffers (`ossensor replay`).
 *
 * Reads classic pcap (micro- and nanosecond, both byte orders) and pcapng (little- and
 * big-endian sections, several sections, IDBs with if_tsresol/if_tsoffset, EPB, SPB and
 * the obsolete PB; every other block is skipped), applies the user's BPF per link type
 * with libpcap's bpf_filter() exactly as `tcpdump -r FILE EXPR` does, and writes one
 * pcapng Enhanced Packet Block per passing packet straight into a batch buffer, like
 * native/ring.c: Reader.take() hands the bytes object to Python, shrunk in place.
 * Python never sees a packet.
 *
 * Every length read from the file is checked against the block or record that holds it,
 * and against the end of the file. A damaged file stops the reader with an error
 * (byte offset, reason); what was read before it stays in the batch buffer.
 *
 * Interfaces get global ids in order of discovery (an IDB that repeats an earlier one's
 * name and link type, e.g. in a later section, reuses its id), so a batch's IDB list only
 * grows and ids stay stable within a batch.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <pcap/pcap.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "epb.h"

#define READ_CHUNK (1u << 20)
#define MAX_RECORD (16u << 20) /* largest pcap record / pcapng block accepted (libpcap: 16 MiB) */
#define MAX_IFS 65535u
#define NAME_MAX_LEN 255u

#define BT_SHB 0x0A0D0D0Au
#define BT_IDB 1u
#define BT_PB 2u /* obsolete Packet Block */
#define BT_SPB 3u
#define BT_EPB 6u
#define BOM 0x1A2B3C4Du

enum { FMT_UNKNOWN, FMT_PCAP, FMT_PCAPNG };
enum { ST_MORE, ST_FULL, ST_WAIT, ST_EOF, ST_ERROR };

typedef struct {
    uint32_t linktype;
    char name[NAME_MAX_LEN + 1];
    int filt; /* index into filters, -1: no filter */
    uint64_t packets, bytes; /* since the last take() */
} GlobalIf;

typedef struct {
    unsigned gid;
    uint32_t snaplen;
    int res_pow2; /* resolution 2^-res (1) or 10^-res (0) */
    unsigned res;
    int64_t offset_s; /* if_tsoffset */
} SecIf;

typedef struct {
    uint32_t dlt;
    int accept_all; /* empty filter */
    int reject_all; /* libpcap: "expression rejects all packets" for this link type */
    struct bpf_program prog;
} Filter;

typedef struct {
    PyObject_HEAD
    int fd;
    char *filter_expr;
    unsigned snaplen;
    unsigned id_base; /* added to the interface id written in each EPB */
    char prefix[64];

    /* input buffer: in[in_pos .. in_len) holds file bytes starting at file offset in_base + in_pos */
    uint8_t *in;
    size_t in_cap, in_pos, in_len;
    uint64_t in_base;
    int in_eof;

    int fmt, swap;
    uint32_t pcap_ts_scale, pcap_linktype, pcap_gid;

    GlobalIf *ifs;
    unsigned n_ifs, cap_ifs;
    SecIf *sifs;
    unsigned n_sifs, cap_sifs;
    int in_section;

    Filter *filters;
    unsigned n_filters;

    PyObject *buf;
    size_t buf_cap, buf_len;
    uint64_t batch_packets, first_ns, last_ns;

    int state;
    int busy;
    uint64_t err_offset;
    char err_reason[256];
    char err_kind[16];
    uint64_t next_ts; /* ST_WAIT: the next packet's time */

    uint64_t packets_read, bytes_read, packets_passed, bytes_passed, truncated_by_snaplen;
} Reader;

/* ---------------------------------------------------------------- helpers */

static inline uint16_t rd16(const Reader *r, const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return r->swap ? __builtin_bswap16(v) : v;
}
static inline uint32_t rd32(const Reader *r, const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return r->swap ? __builtin_bswap32(v) : v;
}
static inline uint64_t cur_off(const Reader *r)
{
    return r->in_base + r->in_pos;
}

static PyObject *FileFormatError; /* ValueError subclass: offset, reason, kind attributes */

static int fail(Reader *r, uint64_t off, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(Reader *r, uint64_t off, const char *kind, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err_reason, sizeof r->err_reason, fmt, ap);
    va_end(ap);
    snprintf(r->err_kind, sizeof r->err_kind, "%s", kind);
    r->err_offset = off;
    r->state = ST_ERROR;
    return -1;
}

/* Make n bytes available at in_pos. 1: yes; 0: the file ends first; -1: I/O error (state set). */
static int need(Reader *r, size_t n)
{
    while (r->in_len - r->in_pos < n) {
        if (r->in_eof)
            return 0;
        if (r->in_pos) { /* keep only the unconsumed tail */
            memmove(r->in, r->in + r->in_pos, r->in_len - r->in_pos);
            r->in_len -= r->in_pos;
            r->in_base += r->in_pos;
            r->in_pos = 0;
        }
        if (n > r->in_cap || r->in_cap - r->in_len < READ_CHUNK / 4) {
            size_t want = r->in_cap;
            while (want < n || want - r->in_len < READ_CHUNK / 4)
                want *= 2;
            uint8_t *p = realloc(r->in, want);
            if (!p)
                return fail(r, cur_off(r), "memory", "out of memory for a %zu-byte record", n);
            r->in = p;
            r->in_cap = want;
        }
        ssize_t got = read(r->fd, r->in + r->in_len, r->in_cap - r->in_len);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return fail(r, cur_off(r), "io", "read error: %s", strerror(errno));
        }
        if (got == 0)
            r->in_eof = 1;
        r->in_len += (size_t)got;
    }
    return 1;
}

/* ---------------------------------------------------------------- interfaces and filters */

static uint32_t linktype_to_dlt(uint32_t lt)
{
    switch (lt) { /* the LINKTYPE_ values that differ from the DLT_ ones (libpcap pcap-common.c) */
    case 100: return 11;  /* ATM_RFC1483 */
    case 101: return 12;  /* RAW */
    case 102: return 15;  /* SLIP_BSDOS */
    case 103: return 16;  /* PPP_BSDOS */
    case 106: return 19;  /* ATM_CLIP */
    default: return lt;
    }
}

/* The filter for a link type, compiled on first use. Returns its index, or -1 (state set). */
static int filter_for(Reader *r, uint32_t linktype, uint64_t off)
{
    uint32_t dlt = linktype_to_dlt(linktype);
    for (unsigned i = 0; i < r->n_filters; i++)
        if (r->filters[i].dlt == dlt)
            return (int)i;
    Filter *nf = realloc(r->filters, (r->n_filters + 1) * sizeof *nf);
    if (!nf)
        return fail(r, off, "memory", "out of memory");
    r->filters = nf;
    Filter *f = &r->filters[r->n_filters];
    memset(f, 0, sizeof *f);
    f->dlt = dlt;
    if (!r->filter_expr[0]) {
        f->accept_all = 1;
    } else {
        pcap_t *p = pcap_open_dead((int)dlt, 262144);
        if (!p)
            return fail(r, off, "memory", "pcap_open_dead failed");
        if (pcap_compile(p, &f->prog, r->filter_expr, 1, PCAP_NETMASK_UNKNOWN) < 0) {
            const char *msg = pcap_geterr(p);
            if (strstr(msg, "rejects all packets")) {
                f->reject_all = 1;
            } else {
                fail(r, off, "filter", "BPF does not compile for link type %u: %s", linktype, msg);
                pcap_close(p);
                return -1;
            }
        }
        pcap_close(p);
    }
    return (int)r->n_filters++;
}

/* A global interface id for (name, linktype): an earlier one with both equal is reused. */
static int global_if(Reader *r, const char *name, uint32_t linktype, uint64_t off, unsigned *gid)
{
    for (unsigned i = 0; i < r->n_ifs; i++) {
        if (r->ifs[i].linktype == linktype && name[0] && !strcmp(r->ifs[i].name, name)) {
            *gid = i;
            return 0;
        }
    }
    if (r->n_ifs >= MAX_IFS)
        return fail(r, off, "format", "more than %u interfaces", MAX_IFS);
    int filt = filter_for(r, linktype, off);
    if (filt < 0)
        return -1;
    if (r->n_ifs == r->cap_ifs) {
        unsigned nc = r->cap_ifs ? r->cap_ifs * 2 : 8;
        GlobalIf *n = realloc(r->ifs, nc * sizeof *n);
        if (!n)
            return fail(r, off, "memory", "out of memory");
        r->ifs = n;
        r->cap_ifs = nc;
    }
    GlobalIf *g = &r->ifs[r->n_ifs];
    memset(g, 0, sizeof *g);
    g->linktype = linktype;
    g->filt = filt;
    if (name[0])
        snprintf(g->name, sizeof g->name, "%s", name);
    else if (r->fmt == FMT_PCAP)
        snprintf(g->name, sizeof g->name, "%s", r->prefix);
    else
        snprintf(g->name, sizeof g->name, "%s-if%u", r->prefix, r->n_ifs);
    *gid = r->n_ifs++;
    return 0;
}

/* ---------------------------------------------------------------- output */

/* 1: handled (written or filtered out); 0: does not fit, batch full (nothing consumed). */
static int emit(Reader *r, unsigned gid, uint64_t ns, const uint8_t *data, uint32_t caplen, uint32_t wirelen)
{
    GlobalIf *g = &r->ifs[gid];
    Filter *f = &r->filters[g->filt];
    uint32_t outlen = caplen < r->snaplen ? caplen : r->snaplen;
    uint32_t total = epb_total(outlen);
    if (r->buf_len + total > r->buf_cap)
        return 0;
    r->packets_read++;
    r->bytes_read += caplen;
    if (f->reject_all || (!f->accept_all && !bpf_filter(f->prog.bf_insns, data, wirelen, caplen)))
        return 1;
    if (outlen < caplen)
        r->truncated_by_snaplen++;
    uint8_t *p = epb_start((uint8_t *)PyBytes_AS_STRING(r->buf) + r->buf_len, total, gid + r->id_base, ns,
                           outlen, wirelen);
    memcpy(p, data, outlen);
    epb_finish(p, outlen, total);
    r->buf_len += total;
    if (!r->batch_packets)
        r->first_ns = ns;
    r->last_ns = ns;
    r->batch_packets++;
    r->packets_passed++;
    r->bytes_passed += outlen;
    g->packets++;
    g->bytes += outlen;
    return 1;
}

/* Before consuming a packet of time ns: stop when pacing says it is not due yet. */
static inline int due(Reader *r, uint64_t ns, uint64_t until)
{
    if (ns > until) {
        r->next_ts = ns;
        r->state = ST_WAIT;
        return 0;
    }
    return 1;
}

/* ---------------------------------------------------------------- classic pcap */

static int pcap_header(Reader *r)
{
    int ok = need(r, 24);
    if (ok < 0)
        return -1;
    if (!ok)
        return fail(r, r->in_len, "format", "truncated pcap file header (%zu of 24 bytes)", r->in_len);
    const uint8_t *h = r->in;
    uint32_t magic;
    memcpy(&magic, h, 4);
    r->swap = 0;
    if (magic == 0xD4C3B2A1u || magic == 0x4D3CB2A1u) {
        r->swap = 1;
        magic = __builtin_bswap32(magic);
    }
    r->pcap_ts_scale = magic == 0xA1B2C3D4u ? 1000u : 1u;
    uint16_t major = rd16(r, h + 4);
    if (major != 2)
        return fail(r, 4, "format", "unsupported pcap version %u (expected 2)", major);
    r->pcap_linktype = rd32(r, h + 20) & 0xFFFFu; /* as libpcap: upper bits are reserved / FCS length */
    r->in_pos = 24;
    unsigned gid;
    if (global_if(r, "", r->pcap_linktype, 20, &gid) < 0)
        return -1;
    r->pcap_gid = gid;
    return 0;
}

static int pcap_step(Reader *r, uint64_t until)
{
    int ok = need(r, 16);
    if (ok < 0)
        return -1;
    if (!ok) {
        if (r->in_len == r->in_pos) {
            r->state = ST_EOF;
            return 0;
        }
        return fail(r, cur_off(r), "format", "truncated packet record header (%zu of 16 bytes)",
                    r->in_len - r->in_pos);
    }
    const uint8_t *h = r->in + r->in_pos;
    uint32_t sec = rd32(r, h), frac = rd32(r, h + 4), caplen = rd32(r, h + 8), wirelen = rd32(r, h + 12);
    if (caplen > MAX_RECORD)
        return fail(r, cur_off(r), "format", "implausible captured length %u", caplen);
    ok = need(r, 16u + caplen);
    if (ok < 0)
        return -1;
    if (!ok)
        return fail(r, cur_off(r), "format", "truncated packet: record of %u bytes, file ends after %zu",
                    caplen, r->in_len - r->in_pos - 16);
    h = r->in + r->in_pos;
    uint64_t ns = (uint64_t)sec * 1000000000ull + (uint64_t)frac * r->pcap_ts_scale;
    if (!due(r, ns, until))
        return 0;
    if (!emit(r, r->pcap_gid, ns, h + 16, caplen, wirelen)) {
        r->state = ST_FULL;
        return 0;
    }
    r->in_pos += 16u + caplen;
    return 1;
}

/* ---------------------------------------------------------------- pcapng */

static int add_section_if(Reader *r, const uint8_t *body, uint32_t blen, uint64_t off)
{
    if (!r->in_section)
        return fail(r, off, "format", "Interface Description Block before any Section Header Block");
    if (blen < 8)
        return fail(r, off, "format", "Interface Description Block too short (%u bytes)", blen + 12);
    uint32_t linktype = rd16(r, body);
    uint32_t snaplen = rd32(r, body + 4);
    char name[NAME_MAX_LEN + 1] = "";
    unsigned res = 6;
    int pow2 = 0;
    int64_t offset_s = 0;
    uint32_t o = 8;
    while (o + 4 <= blen) {
        uint16_t code = rd16(r, body + o), len = rd16(r, body + o + 2);
        if (code == 0)
            break;
        uint32_t padded = ((uint32_t)len + 3u) & ~3u;
        if (o + 4 + padded > blen)
            return fail(r, off + 8 + o, "format", "interface option %u of %u bytes overruns its block", code,
                        len);
        const uint8_t *v = body + o + 4;
        if (code == 2) { /* if_name */
            size_t n = len < NAME_MAX_LEN ? len : NAME_MAX_LEN;
            memcpy(name, v, n);
            name[n] = 0;
            for (size_t i = 0; i < n; i++) /* one line in logs, valid C string */
                if (name[i] < 0x20 || name[i] == 0x7f)
                    name[i] = '?';
        } else if (code == 9 && len == 1) { /* if_tsresol */
            pow2 = (v[0] & 0x80) != 0;
            res = v[0] & 0x7f;
            if ((pow2 && res > 63) || (!pow2 && res > 19))
                return fail(r, off + 8 + o, "format", "if_tsresol %s%u out of range", pow2 ? "2^-" : "10^-",
                            res);
        } else if (code == 14 && len == 8) { /* if_tsoffset, seconds */
            uint64_t x;
            memcpy(&x, v, 8);
            offset_s = (int64_t)(r->swap ? __builtin_bswap64(x) : x);
        }
        o += 4 + padded;
    }
    if (r->n_sifs >= MAX_IFS)
        return fail(r, off, "format", "more than %u interfaces in a section", MAX_IFS);
    unsigned gid;
    if (global_if(r, name, linktype, off, &gid) < 0)
        return -1;
    if (r->n_sifs == r->cap_sifs) {
        unsigned nc = r->cap_sifs ? r->cap_sifs * 2 : 8;
        SecIf *n = realloc(r->sifs, nc * sizeof *n);
        if (!n)
            return fail(r, off, "memory", "out of memory");
        r->sifs = n;
        r->cap_sifs = nc;
    }
    SecIf *s = &r->sifs[r->n_sifs++];
    s->gid = gid;
    s->snaplen = snaplen;
    s->res_pow2 = pow2;
    s->res = res;
    s->offset_s = offset_s;
    return 0;
}

static inline uint64_t to_ns(const SecIf *s, uint64_t ts)
{
    uint64_t ns;
    if (s->res_pow2) {
        ns = (uint64_t)(((unsigned __int128)ts * 1000000000u) >> s->res);
    } else if (s->res <= 9) {
        static const uint64_t mul[10] = {1000000000ull, 100000000ull, 10000000ull, 1000000ull, 100000ull,
                                         10000ull,      1000ull,      100ull,      10ull,      1ull};
        ns = ts * mul[s->res];
    } else {
        uint64_t div = 1;
        for (unsigned i = 9; i < s->res; i++)
            div *= 10;
        ns = ts / div;
    }
    return ns + (uint64_t)s->offset_s * 1000000000ull;
}

static int pcapng_step(Reader *r, uint64_t until)
{
    int ok = need(r, 12);
    if (ok < 0)
        return -1;
    uint64_t off = cur_off(r);
    if (!ok) {
        if (r->in_len == r->in_pos) {
            r->state = ST_EOF;
            return 0;
        }
        return fail(r, off, "format", "truncated block header (%zu of 12 bytes)", r->in_len - r->in_pos);
    }
    const uint8_t *b = r->in + r->in_pos;
    uint32_t btype;
    memcpy(&btype, b, 4);
    if (btype == BT_SHB) {
        uint32_t bom;
        memcpy(&bom, b + 8, 4);
        if (bom == BOM)
            r->swap = 0;
        else if (bom == __builtin_bswap32(BOM))
            r->swap = 1;
        else
            return fail(r, off + 8, "format", "bad byte-order magic 0x%08x in Section Header Block", bom);
        r->in_section = 1;
        r->n_sifs = 0; /* interface ids are per section */
    } else {
        btype = rd32(r, b);
        if (!r->in_section)
            return fail(r, off, "format", "block before the first Section Header Block");
    }
    uint32_t total = rd32(r, b + 4);
    if (total < 12 || total % 4)
        return fail(r, off + 4, "format", "bad block length %u (block type 0x%08x)", total, btype);
    if (total > MAX_RECORD)
        return fail(r, off + 4, "format", "implausible block length %u (block type 0x%08x)", total, btype);
    ok = need(r, total);
    if (ok < 0)
        return -1;
    if (!ok)
        return fail(r, off, "format", "truncated block: type 0x%08x of %u bytes, file ends after %zu", btype,
                    total, r->in_len - r->in_pos);
    b = r->in + r->in_pos;
    if (rd32(r, b + total - 4) != total)
        return fail(r, off + total - 4, "format", "block trailer length %u does not match header length %u",
                    rd32(r, b + total - 4), total);
    const uint8_t *body = b + 8;
    uint32_t blen = total - 12;

    switch (btype) {
    case BT_SHB: {
        if (blen < 16)
            return fail(r, off, "format", "Section Header Block too short (%u bytes)", total);
        uint16_t major = rd16(r, body + 4);
        if (major != 1)
            return fail(r, off + 12, "format", "unsupported pcapng version %u (expected 1)", major);
        break;
    }
    case BT_IDB:
        if (add_section_if(r, body, blen, off) < 0)
            return -1;
        break;
    case BT_EPB:
    case BT_PB: {
        if (blen < 20)
            return fail(r, off, "format", "packet block too short (%u bytes)", total);
        uint32_t if_id, caplen = rd32(r, body + 12), wirelen = rd32(r, body + 16);
        if (btype == BT_EPB)
            if_id = rd32(r, body);
        else
            if_id = rd16(r, body);
        if (if_id >= r->n_sifs)
            return fail(r, off + 8, "format", "packet refers to undeclared interface %u", if_id);
        if (caplen > blen - 20)
            return fail(r, off + 20, "format", "captured length %u exceeds its block (%u bytes of data)", caplen,
                        blen - 20);
        const SecIf *s = &r->sifs[if_id];
        uint64_t ns = to_ns(s, ((uint64_t)rd32(r, body + 4) << 32) | rd32(r, body + 8));
        if (!due(r, ns, until))
            return 0;
        if (!emit(r, s->gid, ns, body + 20, caplen, wirelen)) {
            r->state = ST_FULL;
            return 0;
        }
        break;
    }
    case BT_SPB: {
        if (blen < 4)
            return fail(r, off, "format", "Simple Packet Block too short (%u bytes)", total);
        if (r->n_sifs < 1)
            return fail(r, off, "format", "Simple Packet Block without an interface");
        const SecIf *s = &r->sifs[0];
        uint32_t wirelen = rd32(r, body), caplen = wirelen;
        if (s->snaplen && caplen > s->snaplen)
            caplen = s->snaplen;
        if (caplen > blen - 4)
            caplen = blen - 4;
        if (!due(r, 0, until))
            return 0;
        if (!emit(r, s->gid, 0, body + 4, caplen, wirelen)) {
            r->state = ST_FULL;
            return 0;
        }
        break;
    }
    default: /* ISB, NRB, DSB, custom blocks, comments: not packets */
        break;
    }
    r->in_pos += total;
    return 1;
}

/* ---------------------------------------------------------------- the type */

static PyObject *new_buffer(Reader *r)
{
    PyObject *b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)r->buf_cap);
    if (!b)
        return NULL;
    r->buf = b;
    r->buf_len = 0;
    r->batch_packets = 0;
    r->first_ns = r->last_ns = 0;
    return b;
}

static void release(Reader *r)
{
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
    free(r->in);
    r->in = NULL;
    for (unsigned i = 0; i < r->n_filters; i++)
        if (!r->filters[i].accept_all && !r->filters[i].reject_all)
            pcap_freecode(&r->filters[i].prog);
    free(r->filters);
    r->filters = NULL;
    r->n_filters = 0;
}

static PyObject *Reader_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    Reader *r = (Reader *)type->tp_alloc(type, 0);
    if (r)
        r->fd = -1;
    return (PyObject *)r;
}

static void Reader_dealloc(Reader *r)
{
    release(r);
    free(r->ifs);
    free(r->sifs);
    PyMem_Free(r->filter_expr);
    Py_XDECREF(r->buf);
    Py_TYPE(r)->tp_free((PyObject *)r);
}

static int Reader_init(Reader *r, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"path", "filter", "snaplen", "batch_bytes", "name", "id_base", NULL};
    PyObject *path_obj;
    const char *expr = "", *name = "file0";
    unsigned snaplen = 262144;
    unsigned long long batch_bytes = 4ull << 20;
    unsigned id_base = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O&|sIKsI", kwlist, PyUnicode_FSConverter, &path_obj, &expr,
                                     &snaplen, &batch_bytes, &name, &id_base))
        return -1;
    if (r->in || r->buf) {
        Py_DECREF(path_obj);
        PyErr_SetString(PyExc_RuntimeError, "Reader already initialised");
        return -1;
    }
    if (snaplen < 1 || snaplen > 262144) {
        Py_DECREF(path_obj);
        PyErr_SetString(PyExc_ValueError, "snaplen must be 1-262144");
        return -1;
    }
    r->snaplen = snaplen;
    r->id_base = id_base;
    r->buf_cap = batch_bytes < snaplen + 1024u ? snaplen + 1024u : (size_t)batch_bytes;
    r->buf_cap = (r->buf_cap + 3) & ~(size_t)3;
    snprintf(r->prefix, sizeof r->prefix, "%s", name);
    size_t n = strlen(expr);
    r->filter_expr = PyMem_Malloc(n + 1);
    if (!r->filter_expr) {
        Py_DECREF(path_obj);
        PyErr_NoMemory();
        return -1;
    }
    memcpy(r->filter_expr, expr, n + 1);
    r->in_cap = 4u << 20;
    r->in = malloc(r->in_cap);
    if (!r->in) {
        Py_DECREF(path_obj);
        PyErr_NoMemory();
        return -1;
    }
    const char *path = PyBytes_AS_STRING(path_obj);
    Py_BEGIN_ALLOW_THREADS
    r->fd = open(path, O_RDONLY | O_CLOEXEC);
    Py_END_ALLOW_THREADS
    if (r->fd < 0) {
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path_obj);
        Py_DECREF(path_obj);
        return -1;
    }
    struct stat st;
    if (fstat(r->fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        errno = EISDIR;
        PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path_obj);
        Py_DECREF(path_obj);
        return -1;
    }
    Py_DECREF(path_obj);
#ifdef POSIX_FADV_SEQUENTIAL
    posix_fadvise(r->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
    if (!new_buffer(r))
        return -1;
    r->state = ST_MORE;
    return 0;
}

static int detect(Reader *r)
{
    int ok = need(r, 4);
    if (ok < 0)
        return -1;
    if (!ok) {
        if (r->in_len == 0)
            return fail(r, 0, "format", "empty file");
        return fail(r, 0, "format", "too short to be a pcap or pcapng file (%zu bytes)", r->in_len);
    }
    uint32_t magic;
    memcpy(&magic, r->in, 4);
    if (magic == BT_SHB) {
        r->fmt = FMT_PCAPNG;
        return 0;
    }
    if (magic == 0xA1B2C3D4u || magic == 0xA1B23C4Du || magic == 0xD4C3B2A1u || magic == 0x4D3CB2A1u) {
        r->fmt = FMT_PCAP;
        return pcap_header(r);
    }
    return fail(r, 0, "format", "not a pcap or pcapng file (starts with 0x%02x%02x%02x%02x)", r->in[0], r->in[1],
                r->in[2], r->in[3]);
}

/* A Reader can be used: initialised and not being read by another thread. */
static int check_ready(Reader *r)
{
    if (!r->buf) {
        PyErr_SetString(PyExc_ValueError, "Reader is not initialised");
        return -1;
    }
    if (r->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Reader is being read by another thread");
        return -1;
    }
    return 0;
}

/* read(until_ns=-1) -> packets appended to the batch. Stops when the batch is full, the file
 * ends, an error occurs (state 'error', `error` = (offset, reason, kind); the packets before it
 * are in the batch; the next read() raises FileFormatError), or (pacing) the next packet is
 * later than until_ns. */
static PyObject *Reader_read(Reader *r, PyObject *args)
{
    unsigned long long until = ~0ull;
    long long until_in = -1;
    if (!PyArg_ParseTuple(args, "|L", &until_in))
        return NULL;
    if (until_in >= 0)
        until = (unsigned long long)until_in;
    if (check_ready(r) < 0)
        return NULL;
    if (r->state == ST_ERROR) {
        /* The read that met the damage returned what came before it; asking again raises. */
        PyObject *exc = PyObject_CallFunction(FileFormatError, "s", "");
        if (!exc)
            return NULL;
        PyObject *msg = PyUnicode_FromFormat("at byte %llu: %s", (unsigned long long)r->err_offset, r->err_reason);
        PyObject *off = PyLong_FromUnsignedLongLong(r->err_offset);
        PyObject *rsn = PyUnicode_FromString(r->err_reason);
        PyObject *knd = PyUnicode_FromString(r->err_kind);
        PyObject *args = msg ? PyTuple_Pack(1, msg) : NULL;
        if (args && off && rsn && knd && PyObject_SetAttrString(exc, "args", args) == 0 &&
            PyObject_SetAttrString(exc, "offset", off) == 0 && PyObject_SetAttrString(exc, "reason", rsn) == 0 &&
            PyObject_SetAttrString(exc, "kind", knd) == 0)
            PyErr_SetObject(FileFormatError, exc);
        Py_XDECREF(args);
        Py_XDECREF(msg);
        Py_XDECREF(off);
        Py_XDECREF(rsn);
        Py_XDECREF(knd);
        Py_DECREF(exc);
        return NULL;
    }
    if (r->state == ST_EOF || (r->state == ST_FULL && r->batch_packets))
        return PyLong_FromLong(0);
    uint64_t before = r->batch_packets;
    r->busy = 1;
    r->state = ST_MORE;
    Py_BEGIN_ALLOW_THREADS
    if (r->fmt == FMT_UNKNOWN)
        detect(r);
    while (r->state == ST_MORE) {
        int rc = r->fmt == FMT_PCAP ? pcap_step(r, until) : pcapng_step(r, until);
        if (rc <= 0)
            break;
    }
    if (r->state == ST_FULL && !r->batch_packets) /* a single packet larger than the buffer: cannot be */
        fail(r, cur_off(r), "internal", "batch buffer smaller than one packet");
    Py_END_ALLOW_THREADS
    r->busy = 0;
    if (r->state == ST_EOF || r->state == ST_ERROR) { /* nothing more to read: free the input buffer */
        release(r);
    }
    return PyLong_FromUnsignedLongLong(r->batch_packets - before);
}

static PyObject *batch_counts(Reader *r);

static PyObject *Reader_take(Reader *r, PyObject *Py_UNUSED(ignored))
{
    if (check_ready(r) < 0)
        return NULL;
    PyObject *per_if = batch_counts(r);
    if (!per_if)
        return NULL;
    PyObject *data = r->buf;
    r->buf = NULL;
    if (_PyBytes_Resize(&data, (Py_ssize_t)r->buf_len) < 0) {
        Py_DECREF(per_if);
        new_buffer(r);
        return NULL;
    }
    unsigned long long pk = r->batch_packets, f = r->first_ns, l = r->last_ns;
    if (!new_buffer(r)) {
        Py_DECREF(per_if);
        Py_DECREF(data);
        return NULL;
    }
    for (unsigned i = 0; i < r->n_ifs; i++)
        r->ifs[i].packets = r->ifs[i].bytes = 0;
    if (r->state == ST_FULL)
        r->state = ST_MORE;
    return Py_BuildValue("(NKKKN)", data, pk, f, l, per_if);
}

/* Per-interface (packets, bytes) of the batch being filled, and a reset for the next batch. */
static PyObject *batch_counts(Reader *r)
{
    PyObject *per_if = PyList_New(r->n_ifs);
    if (!per_if)
        return NULL;
    for (unsigned i = 0; i < r->n_ifs; i++) {
        PyObject *t = Py_BuildValue("(KK)", (unsigned long long)r->ifs[i].packets,
                                    (unsigned long long)r->ifs[i].bytes);
        if (!t) {
            Py_DECREF(per_if);
            return NULL;
        }
        PyList_SET_ITEM(per_if, i, t);
    }
    return per_if;
}

/* write_to(fd) -> (bytes_written, packets, first_ns, last_ns, per_if): like take(), but the EPBs go
 * straight from the batch buffer to a file descriptor and the buffer is reused (no new memory to
 * fault in, no copy through Python): the --out path. */
static PyObject *Reader_write_to(Reader *r, PyObject *arg)
{
    int fd = PyObject_AsFileDescriptor(arg);
    if (fd < 0)
        return NULL;
    if (check_ready(r) < 0)
        return NULL;
    PyObject *per_if = batch_counts(r);
    if (!per_if)
        return NULL;
    const uint8_t *p = (const uint8_t *)PyBytes_AS_STRING(r->buf);
    size_t left = r->buf_len;
    int err = 0;
    r->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    while (left) {
        ssize_t n = write(fd, p, left);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            err = errno;
            break;
        }
        p += n;
        left -= (size_t)n;
    }
    Py_END_ALLOW_THREADS
    r->busy = 0;
    if (err) {
        Py_DECREF(per_if);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    PyObject *res = Py_BuildValue("(nKKKN)", (Py_ssize_t)r->buf_len, (unsigned long long)r->batch_packets,
                                  (unsigned long long)r->first_ns, (unsigned long long)r->last_ns, per_if);
    if (!res)
        return NULL;
    r->buf_len = 0;
    r->batch_packets = 0;
    r->first_ns = r->last_ns = 0;
    for (unsigned i = 0; i < r->n_ifs; i++)
        r->ifs[i].packets = r->ifs[i].bytes = 0;
    if (r->state == ST_FULL)
        r->state = ST_MORE;
    return res;
}

static PyObject *Reader_get_interfaces(Reader *r, void *Py_UNUSED(c))
{
    PyObject *out = PyList_New(r->n_ifs);
    if (!out)
        return NULL;
    for (unsigned i = 0; i < r->n_ifs; i++) {
        PyObject *t = Py_BuildValue("(NI)", PyUnicode_DecodeUTF8(r->ifs[i].name, strlen(r->ifs[i].name), "replace"),
                                    (unsigned)r->ifs[i].linktype);
        if (!t) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, t);
    }
    return out;
}

static PyObject *Reader_get_state(Reader *r, void *Py_UNUSED(c))
{
    static const char *names[] = {"more", "full", "wait", "eof", "error"};
    return PyUnicode_FromString(names[r->state]);
}

static PyObject *Reader_get_error(Reader *r, void *Py_UNUSED(c))
{
    if (r->state != ST_ERROR)
        Py_RETURN_NONE;
    return Py_BuildValue("(Kss)", (unsigned long long)r->err_offset, r->err_reason, r->err_kind);
}

static PyObject *Reader_get_format(Reader *r, void *Py_UNUSED(c))
{
    return PyUnicode_FromString(r->fmt == FMT_PCAP ? "pcap" : r->fmt == FMT_PCAPNG ? "pcapng" : "unknown");
}

#define U64_GETTER(field)                                                                                     \
    static PyObject *Reader_get_##field(Reader *r, void *Py_UNUSED(c))                                        \
    {                                                                                                         \
        return PyLong_FromUnsignedLongLong(r->field);                                                         \
    }
U64_GETTER(packets_read)
U64_GETTER(bytes_read)
U64_GETTER(packets_passed)
U64_GETTER(bytes_passed)
U64_GETTER(truncated_by_snaplen)
U64_GETTER(batch_packets)
U64_GETTER(next_ts)

static PyObject *Reader_get_offset(Reader *r, void *Py_UNUSED(c))
{
    return PyLong_FromUnsignedLongLong(cur_off(r));
}
static PyObject *Reader_get_batch_bytes(Reader *r, void *Py_UNUSED(c))
{
    return PyLong_FromSize_t(r->buf_len);
}

static PyGetSetDef Reader_getset[] = {
    {"interfaces", (getter)Reader_get_interfaces, NULL, "[(name, linktype)] by global interface id", NULL},
    {"state", (getter)Reader_get_state, NULL, "'more' | 'full' | 'wait' | 'eof' | 'error'", NULL},
    {"error", (getter)Reader_get_error, NULL, "None, or (byte offset, reason, kind) once state is 'error'", NULL},
    {"format", (getter)Reader_get_format, NULL, "'pcap' | 'pcapng' | 'unknown' (before the first read)", NULL},
    {"packets_read", (getter)Reader_get_packets_read, NULL, "packet records read from the file", NULL},
    {"bytes_read", (getter)Reader_get_bytes_read, NULL, "captured bytes of the packets read", NULL},
    {"packets_passed", (getter)Reader_get_packets_passed, NULL, "packets that passed the filter", NULL},
    {"bytes_passed", (getter)Reader_get_bytes_passed, NULL, "bytes written of the packets that passed", NULL},
    {"truncated_by_snaplen", (getter)Reader_get_truncated_by_snaplen, NULL, "packets cut to snaplen", NULL},
    {"batch_packets", (getter)Reader_get_batch_packets, NULL, "packets in the batch being filled", NULL},
    {"batch_bytes", (getter)Reader_get_batch_bytes, NULL, "bytes in the batch being filled", NULL},
    {"next_ts", (getter)Reader_get_next_ts, NULL, "state 'wait': time (ns) of the next packet", NULL},
    {"offset", (getter)Reader_get_offset, NULL, "file offset of the next record", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Reader_methods[] = {
    {"read", (PyCFunction)Reader_read, METH_VARARGS, "read(until_ns=-1) -> packets appended to the batch"},
    {"take", (PyCFunction)Reader_take, METH_NOARGS, "take() -> (epbs, packets, first_ns, last_ns, per_if)"},
    {"write_to", (PyCFunction)Reader_write_to, METH_O,
     "write_to(fd) -> (bytes, packets, first_ns, last_ns, per_if): the batch's EPBs written to fd, buffer reused"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ossensor._filereader.Reader",
    .tp_doc = "Reader(path, filter='', snaplen=262144, batch_bytes=4 MiB, name='file0', id_base=0): pcap/pcapng file "
              "-> pcapng EPBs in batch buffers, filtered by BPF",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Reader_new,
    .tp_init = (initproc)Reader_init,
    .tp_dealloc = (destructor)Reader_dealloc,
    .tp_methods = Reader_methods,
    .tp_getset = Reader_getset,
};

static struct PyModuleDef filereader_module = {
    PyModuleDef_HEAD_INIT, "ossensor._filereader", "pcap/pcapng file reader for ossensor replay", -1, NULL, NULL,
    NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__filereader(void)
{
    if (PyType_Ready(&ReaderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&filereader_module);
    if (!m)
        return NULL;
    FileFormatError = PyErr_NewExceptionWithDoc(
        "ossensor._filereader.FileFormatError",
        "A damaged or unsupported capture file: attributes offset (byte), reason, kind ('format', 'filter', "
        "'io', 'memory').",
        PyExc_ValueError, NULL);
    if (!FileFormatError || PyModule_AddObjectRef(m, "FileFormatError", FileFormatError) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&ReaderType);
    if (PyModule_AddObject(m, "Reader", (PyObject *)&ReaderType) < 0) {
        Py_DECREF(&ReaderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
