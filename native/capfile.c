/* Capture files read into pcapng EPBs (see capfile.h): the file formats, one step per record. */
#include "capfile.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "epb.h"

#define READ_CHUNK (1u << 20)
#define MAX_RECORD (16u << 20) /* largest pcap record / pcapng block accepted (libpcap: 16 MiB) */
#define MAX_IFS 65535u

#define BT_SHB 0x0A0D0D0Au
#define BT_IDB 1u
#define BT_PB 2u /* obsolete Packet Block */
#define BT_SPB 3u
#define BT_EPB 6u
#define BOM 0x1A2B3C4Du

/* ---------------------------------------------------------------- helpers */

static inline uint16_t rd16(const struct capfile *r, const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, 2);
    return r->swap ? __builtin_bswap16(v) : v;
}
static inline uint32_t rd32(const struct capfile *r, const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, 4);
    return r->swap ? __builtin_bswap32(v) : v;
}

static int fail(struct capfile *r, uint64_t off, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(struct capfile *r, uint64_t off, const char *kind, const char *fmt, ...)
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
static int need(struct capfile *r, size_t n)
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
                return fail(r, cf_offset(r), "memory", "out of memory for a %zu-byte record", n);
            r->in = p;
            r->in_cap = want;
        }
        ssize_t got = read(r->fd, r->in + r->in_len, r->in_cap - r->in_len);
        if (got < 0) {
            if (errno == EINTR)
                continue;
            return fail(r, cf_offset(r), "io", "read error: %s", strerror(errno));
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

/* The filter for an interface (link type and snaplen as in the file, the byte order of its file or
 * section), compiled on first use; `label` names the interface in the error. Returns its index, or -1
 * (state set: a filter that does not compile for one interface is an error, as in tcpdump). */
static int filter_for(struct capfile *r, uint32_t linktype, uint32_t snaplen, const char *label, uint64_t off)
{
    for (unsigned i = 0; i < r->n_filters; i++) {
        const CapFilter *f = &r->filters[i];
        if (f->linktype == linktype && f->snaplen == snaplen && f->swap == r->swap)
            return (int)i;
    }
    CapFilter *nf = realloc(r->filters, (r->n_filters + 1) * sizeof *nf);
    if (!nf)
        return fail(r, off, "memory", "out of memory");
    r->filters = nf;
    char msg[PCAP_ERRBUF_SIZE + 64];
    if (capfilter_compile(&nf[r->n_filters], r->filter_expr, linktype, snaplen, r->swap, msg, sizeof msg) < 0) {
        const char *lt_name = pcap_datalink_val_to_name((int)linktype_to_dlt(linktype & 0xFFFFu));
        return fail(r, off, "filter", "does not compile for interface %s (link type %u%s%s): %s", label,
                    linktype & 0xFFFFu, lt_name ? " " : "", lt_name ? lt_name : "", msg);
    }
    return (int)r->n_filters++;
}

/* A global interface id for (name, linktype, snapshot): an earlier one with all equal is reused. */
static int global_if(struct capfile *r, const char *name, uint32_t linktype, uint32_t snapshot, uint64_t off,
                     unsigned *gid)
{
    for (unsigned i = 0; i < r->n_ifs; i++) {
        if (r->ifs[i].linktype == linktype && r->ifs[i].snaplen == snapshot && name[0] &&
            !strcmp(r->ifs[i].name, name)) {
            *gid = i;
            return 0;
        }
    }
    if (r->n_ifs >= MAX_IFS)
        return fail(r, off, "format", "more than %u interfaces", MAX_IFS);
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
    g->snaplen = snapshot;
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

/* 1: handled (written or filtered out); 0: does not fit, batch full (nothing consumed). caplen is
 * already cut to the interface's snapshot length (filt's), as libpcap cuts it before filtering. */
static int emit(struct capfile *r, unsigned gid, int filt, uint64_t ns, const uint8_t *data, uint32_t caplen,
                uint32_t wirelen)
{
    GlobalIf *g = &r->ifs[gid];
    const CapFilter *f = &r->filters[filt];
    uint32_t outlen = caplen < r->snaplen ? caplen : r->snaplen;
    uint32_t total = epb_total(outlen);
    if (r->out_len + total > r->out_cap)
        return 0;
    r->packets_read++;
    r->bytes_read += caplen;
    if (!capfilter_match(f, data, wirelen, caplen))
        return 1;
    if (outlen < caplen)
        r->truncated_by_snaplen++;
    uint8_t *p = epb_start(r->out + r->out_len, total, gid + r->id_base, ns, outlen, wirelen);
    memcpy(p, data, outlen);
    epb_finish(p, outlen, total);
    r->out_len += total;
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
static inline int due(struct capfile *r, uint64_t ns, uint64_t until)
{
    if (ns > until) {
        r->next_ts = ns;
        r->state = ST_WAIT;
        return 0;
    }
    return 1;
}

/* ---------------------------------------------------------------- classic pcap */

static int pcap_header(struct capfile *r)
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
    uint16_t major = rd16(r, h + 4), minor = rd16(r, h + 6);
    /* libpcap's checks (sf-pcap.c): 2.0-2.4, and 543.0 (DG/UX tcpdump) */
    if (major < 2)
        return fail(r, 4, "format", "archaic pcap savefile format (version %u.%u)", major, minor);
    if (!((major == 2 && minor <= 4) || (major == 543 && minor == 0)))
        return fail(r, 4, "format", "unsupported pcap savefile version %u.%u (libpcap reads 2.0-2.4)", major,
                    minor);
    /* before 2.3 (and in 543.0) the record header has the lengths the other way round; 2.3 files exist
     * with both orders (libpcap: swapped when caplen > len) */
    r->pcap_lengths = major == 543 || minor < 3 ? 1 : minor == 3 ? 2 : 0;
    uint32_t linktype = rd32(r, h + 20), snaplen = rd32(r, h + 16);
    r->pcap_linktype = linktype & 0xFFFFu; /* as libpcap: upper bits are reserved / FCS length */
    r->in_pos = 24;
    int filt = filter_for(r, linktype, snaplen, r->prefix, 20);
    if (filt < 0)
        return -1;
    r->pcap_filt = filt;
    unsigned gid;
    if (global_if(r, "", r->pcap_linktype, r->filters[filt].snapshot, 20, &gid) < 0)
        return -1;
    r->pcap_gid = gid;
    return 0;
}

static int pcap_step(struct capfile *r, uint64_t until)
{
    int ok = need(r, 16);
    if (ok < 0)
        return -1;
    if (!ok) {
        if (r->in_len == r->in_pos) {
            r->state = ST_EOF;
            return 0;
        }
        return fail(r, cf_offset(r), "format", "truncated packet record header (%zu of 16 bytes)",
                    r->in_len - r->in_pos);
    }
    const uint8_t *h = r->in + r->in_pos;
    uint32_t sec = rd32(r, h), frac = rd32(r, h + 4), caplen = rd32(r, h + 8), wirelen = rd32(r, h + 12);
    if (r->pcap_lengths == 1 || (r->pcap_lengths == 2 && caplen > wirelen)) {
        uint32_t t = caplen;
        caplen = wirelen;
        wirelen = t;
    }
    const CapFilter *f = &r->filters[r->pcap_filt];
    if (caplen > f->max_caplen) /* as libpcap: a damaged record, not one to cut */
        return fail(r, cf_offset(r), "format", "invalid packet capture length %u, bigger than %s of %u", caplen,
                    caplen > f->snapshot ? "snaplen" : "maximum", caplen > f->snapshot ? f->snapshot : f->max_caplen);
    ok = need(r, 16u + caplen);
    if (ok < 0)
        return -1;
    if (!ok)
        return fail(r, cf_offset(r), "format", "truncated packet: record of %u bytes, file ends after %zu",
                    caplen, r->in_len - r->in_pos - 16);
    h = r->in + r->in_pos;
    uint64_t ns = (uint64_t)sec * 1000000000ull + (uint64_t)frac * r->pcap_ts_scale;
    if (!due(r, ns, until))
        return 0;
    /* longer than the file's snapshot length: cut to it before the filter, as libpcap does */
    uint32_t cut = caplen > f->snapshot ? f->snapshot : caplen;
    if (!emit(r, r->pcap_gid, r->pcap_filt, ns, h + 16, cut, wirelen)) {
        r->state = ST_FULL;
        return 0;
    }
    if (cut < caplen)
        r->cut_to_file_snaplen++;
    r->in_pos += 16u + caplen;
    return 1;
}

/* ---------------------------------------------------------------- pcapng */

static int add_section_if(struct capfile *r, const uint8_t *body, uint32_t blen, uint64_t off)
{
    if (!r->in_section)
        return fail(r, off, "format", "Interface Description Block before any Section Header Block");
    if (blen < 8)
        return fail(r, off, "format", "Interface Description Block too short (%u bytes)", blen + 12);
    uint32_t linktype = rd16(r, body);
    uint32_t snaplen = rd32(r, body + 4);
    char name[CF_NAME_MAX + 1] = "";
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
            size_t n = len < CF_NAME_MAX ? len : CF_NAME_MAX;
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
    char label[CF_NAME_MAX + 80];
    if (name[0])
        snprintf(label, sizeof label, "%s", name);
    else
        snprintf(label, sizeof label, "%s-if%u", r->prefix, r->n_ifs);
    int filt = filter_for(r, linktype, snaplen, label, off);
    if (filt < 0)
        return -1;
    unsigned gid;
    if (global_if(r, name, linktype, r->filters[filt].snapshot, off, &gid) < 0)
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
    s->filt = filt;
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

static int pcapng_step(struct capfile *r, uint64_t until)
{
    int ok = need(r, 12);
    if (ok < 0)
        return -1;
    uint64_t off = cf_offset(r);
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
        uint16_t major = rd16(r, body + 4), minor = rd16(r, body + 6);
        /* libpcap's checks (sf-pcapng.c): the first section 1.0 or 1.2, later ones any 1.x */
        if (!r->sections++ && !(major == 1 && (minor == 0 || minor == 2)))
            return fail(r, off + 12, "format", "unsupported pcapng savefile version %u.%u (libpcap reads 1.0 and "
                        "1.2)", major, minor);
        if (major != 1)
            return fail(r, off + 12, "format", "unknown pcapng savefile major version number %u", major);
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
        if (caplen > r->filters[s->filt].snapshot) /* libpcap refuses it (sf-pcapng.c) */
            return fail(r, off + 20, "format", "invalid packet capture length %u, bigger than snaplen of %u",
                        caplen, r->filters[s->filt].snapshot);
        uint64_t ns = to_ns(s, ((uint64_t)rd32(r, body + 4) << 32) | rd32(r, body + 8));
        if (!due(r, ns, until))
            return 0;
        if (!emit(r, s->gid, s->filt, ns, body + 20, caplen, wirelen)) {
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
        uint32_t wirelen = rd32(r, body), caplen = wirelen, snapshot = r->filters[s->filt].snapshot;
        if (caplen > snapshot)
            caplen = snapshot;
        if (caplen > blen - 4)
            caplen = blen - 4;
        if (!due(r, 0, until))
            return 0;
        if (!emit(r, s->gid, s->filt, 0, body + 4, caplen, wirelen)) {
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

static int detect(struct capfile *r)
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

/* ---------------------------------------------------------------- the reader's life */

int cf_open(struct capfile *c, const char *path, const char *filter, unsigned snaplen, unsigned id_base,
            const char *name)
{
    c->fd = -1;
    c->snaplen = snaplen;
    c->id_base = id_base;
    snprintf(c->prefix, sizeof c->prefix, "%s", name);
    c->filter_expr = strdup(filter);
    c->in_cap = 4u << 20;
    c->in = malloc(c->in_cap);
    if (!c->filter_expr || !c->in) {
        errno = ENOMEM;
        return -1;
    }
    c->fd = open(path, O_RDONLY | O_CLOEXEC);
    if (c->fd < 0)
        return -1;
    struct stat st;
    if (fstat(c->fd, &st) == 0 && S_ISDIR(st.st_mode)) {
        errno = EISDIR;
        return -1;
    }
#ifdef POSIX_FADV_SEQUENTIAL
    posix_fadvise(c->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
    c->state = ST_MORE;
    return 0;
}

void cf_read(struct capfile *c, uint64_t until)
{
    c->state = ST_MORE;
    if (c->fmt == FMT_UNKNOWN)
        detect(c);
    while (c->state == ST_MORE) {
        int rc = c->fmt == FMT_PCAP ? pcap_step(c, until) : pcapng_step(c, until);
        if (rc <= 0)
            break;
    }
    if (c->state == ST_FULL && !c->batch_packets) /* a single packet larger than the buffer: cannot be */
        fail(c, cf_offset(c), "internal", "batch buffer smaller than one packet");
}

void cf_batch_reset(struct capfile *c)
{
    c->out_len = 0;
    c->batch_packets = 0;
    c->first_ns = c->last_ns = 0;
    for (unsigned i = 0; i < c->n_ifs; i++)
        c->ifs[i].packets = c->ifs[i].bytes = 0;
    if (c->state == ST_FULL)
        c->state = ST_MORE;
}

void cf_release(struct capfile *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    free(c->in);
    c->in = NULL;
    for (unsigned i = 0; i < c->n_filters; i++)
        capfilter_free(&c->filters[i]);
    free(c->filters);
    c->filters = NULL;
    c->n_filters = 0;
}

void cf_free(struct capfile *c)
{
    cf_release(c);
    free(c->ifs);
    c->ifs = NULL;
    free(c->sifs);
    c->sifs = NULL;
    free(c->filter_expr);
    c->filter_expr = NULL;
}
