/*
 * Capture files read into pcapng Enhanced Packet Blocks: the file side of `ossensor replay`, in plain C
 * (no Python here; native/filereader.c is the Python type around it).
 *
 * Reads classic pcap (micro- and nanosecond, both byte orders) and pcapng (little- and big-endian
 * sections, several sections, IDBs with if_tsresol/if_tsoffset, EPB, SPB and the obsolete PB; every
 * other block is skipped), cuts each record to its interface's snapshot length and applies the user's BPF
 * compiled for that interface (link type, snapshot length, byte order: native/capfilter.c) exactly as
 * `tcpdump -r FILE EXPR` does, and writes one EPB per passing packet into the caller's output buffer.
 * Versions are checked as libpcap checks them (pcap 2.0-2.4 and 543.0; pcapng 1.0 and 1.2).
 *
 * Every length read from the file is checked against the block or record that holds it, and against
 * the end of the file. A damaged file stops the reader with an error (byte offset, reason); what was
 * read before it stays in the output buffer.
 *
 * Interfaces get global ids in order of discovery (an IDB that repeats an earlier one's name, link
 * type and snapshot length, e.g. in a later section, reuses its id), so a batch's IDB list only grows and ids stay stable.
 */
#ifndef OSSENSOR_CAPFILE_H
#define OSSENSOR_CAPFILE_H

#include <stddef.h>
#include <stdint.h>

#include "capfilter.h"

#define CF_NAME_MAX 255u

enum { FMT_UNKNOWN, FMT_PCAP, FMT_PCAPNG };
/* more: keep reading; full: the output buffer is full; wait: the next packet is not due yet (pacing);
 * eof: the file ended cleanly; error: damaged or unreadable (err_* say where and why) */
enum { ST_MORE, ST_FULL, ST_WAIT, ST_EOF, ST_ERROR };

typedef struct {
    uint32_t linktype;
    uint32_t snaplen;        /* libpcap's snapshot length: records were cut to it */
    char name[CF_NAME_MAX + 1];
    uint64_t packets, bytes; /* since the last batch reset */
} GlobalIf;

typedef struct {
    unsigned gid;
    int filt; /* index into filters */
    int res_pow2; /* resolution 2^-res (1) or 10^-res (0) */
    unsigned res;
    int64_t offset_s; /* if_tsoffset */
} SecIf;

struct capfile {
    int fd;
    char *filter_expr;
    unsigned snaplen;
    unsigned id_base; /* added to the interface id written in each EPB */
    char prefix[64];  /* names interfaces that have none: "<prefix>" (pcap), "<prefix>-ifN" (pcapng) */

    /* input buffer: in[in_pos .. in_len) holds file bytes starting at file offset in_base + in_pos */
    uint8_t *in;
    size_t in_cap, in_pos, in_len;
    uint64_t in_base;
    int in_eof;

    int fmt, swap;
    uint32_t pcap_ts_scale, pcap_linktype, pcap_gid;
    int pcap_filt;
    int pcap_lengths; /* caplen and len in the other order: 0 no, 1 yes (pcap < 2.3, 543.0), 2 when caplen > len (2.3) */
    int sections;     /* Section Header Blocks seen */

    GlobalIf *ifs;
    unsigned n_ifs, cap_ifs;
    SecIf *sifs;
    unsigned n_sifs, cap_sifs;
    int in_section;

    CapFilter *filters; /* one per (link type, snaplen, byte order) met */
    unsigned n_filters;

    /* output: the caller's buffer, EPBs appended at out_len */
    uint8_t *out;
    size_t out_cap, out_len;
    uint64_t batch_packets, first_ns, last_ns;

    int state;
    uint64_t err_offset;
    char err_reason[256];
    char err_kind[16];
    uint64_t next_ts; /* ST_WAIT: the next packet's time */

    uint64_t packets_read, bytes_read, packets_passed, bytes_passed, truncated_by_snaplen;
    uint64_t cut_to_file_snaplen; /* pcap records longer than the file's snapshot length, cut to it (libpcap) */
};

/* Open `path` for reading (-1 with errno: EISDIR for a directory). The filter is copied. */
int cf_open(struct capfile *c, const char *path, const char *filter, unsigned snaplen, unsigned id_base,
            const char *name);
/* Read records into the output buffer until it is full, the file ends, an error, or (pacing) the next
 * packet is later than `until` ns. Never blocks on anything but the file. */
void cf_read(struct capfile *c, uint64_t until);
/* The output buffer is empty again (the caller took or wrote the batch). */
void cf_batch_reset(struct capfile *c);
/* File offset of the next record. */
static inline uint64_t cf_offset(const struct capfile *c)
{
    return c->in_base + c->in_pos;
}
/* Close the file and free the input buffer and the filters (at EOF or error: nothing more to read). */
void cf_release(struct capfile *c);
/* Everything cf_release frees and the interface tables and the filter text. */
void cf_free(struct capfile *c);

#endif
