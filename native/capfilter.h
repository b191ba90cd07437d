/*
 * One interface's filter, compiled exactly as `tcpdump -r FILE EXPR` compiles it (plain C, no Python).
 *
 * libpcap compiles a filter for a savefile differently from a dead handle: on DLT_NULL/DLT_LOOP, IPv6 is
 * any of the BSD AF_INET6 values (24, 28, 30) instead of this host's only (10 on Linux); for a byte-swapped
 * file the DLT_NULL/DLT_ENC address family is compared swapped; and `inbound`/`outbound` on a link type that carries no direction are refused ("not
 * supported ... when reading savefiles") instead of compiling to a Linux ancillary load that matches
 * nothing. So each filter is compiled on a real savefile handle: a 24-byte pcap header with the
 * interface's link type, snapshot length and the byte order of its file or section, opened from memory.
 * The netmask is 0, as tcpdump's when it reads a file (`ip broadcast` then means 0.0.0.0 or
 * 255.255.255.255); optimisation on, as tcpdump's default.
 *
 * The same handle gives libpcap's snapshot length for the interface (0 or larger than the link type's
 * maximum -> the maximum), to which records are cut before the filter runs.
 */
#ifndef OSSENSOR_CAPFILTER_H
#define OSSENSOR_CAPFILTER_H

#include <pcap/pcap.h>
#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t linktype; /* as in the file: a pcap header's 32-bit field, or an IDB's 16-bit link type */
    uint32_t snaplen;  /* as in the file */
    int swap;          /* the file or section is in the other byte order */
    uint32_t snapshot; /* libpcap's snapshot length for it: records are cut to this */
    uint32_t max_caplen; /* libpcap's largest sane captured length for the link type */
    int dlt;           /* libpcap's DLT_ value */
    int accept_all;    /* empty expression */
    struct bpf_program prog;
} CapFilter;

/* Compile `expr` for one interface. 0, or -1 with libpcap's message in msg. */
int capfilter_compile(CapFilter *f, const char *expr, uint32_t linktype, uint32_t snaplen, int swap, char *msg,
                      size_t msglen);
/* Whether a record passes: data holds caplen bytes (already cut to the snapshot), wirelen on the wire. */
static inline int capfilter_match(const CapFilter *f, const uint8_t *data, uint32_t wirelen, uint32_t caplen)
{
    return f->accept_all || bpf_filter(f->prog.bf_insns, data, wirelen, caplen) != 0;
}
void capfilter_free(CapFilter *f);

#endif
