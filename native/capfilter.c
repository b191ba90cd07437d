/* One interface's filter, compiled on a savefile handle as `tcpdump -r` does (see capfilter.h). */
#define _GNU_SOURCE /* fmemopen */
#include "capfilter.h"

#include <stdio.h>
#include <string.h>

/* libpcap's max_snaplen_for_dlt() (pcap-common.c, 1.10): not exported, three exceptions to 262144. */
static uint32_t max_snaplen_for_dlt(int dlt)
{
    switch (dlt) {
    case 231: return 128u << 20; /* DLT_DBUS */
    case 279: return 8u << 20;   /* DLT_EBHSCR */
    case 249: return 1u << 20;   /* DLT_USBPCAP */
    default: return 262144u;
    }
}

static uint32_t order(uint32_t v, int swap)
{
    return swap ? __builtin_bswap32(v) : v;
}

int capfilter_compile(CapFilter *f, const char *expr, uint32_t linktype, uint32_t snaplen, int swap, char *msg,
                      size_t msglen)
{
    memset(f, 0, sizeof *f);
    f->linktype = linktype;
    f->snaplen = snaplen;
    f->swap = swap;
    /* a classic pcap file header, version 2.4, in the file's byte order */
    uint8_t hdr[24];
    uint32_t magic = order(0xA1B2C3D4u, swap), zero = 0, sn = order(snaplen, swap), lt = order(linktype, swap);
    uint16_t major = 2, minor = 4;
    if (swap) {
        major = __builtin_bswap16(major);
        minor = __builtin_bswap16(minor);
    }
    memcpy(hdr, &magic, 4);
    memcpy(hdr + 4, &major, 2);
    memcpy(hdr + 6, &minor, 2);
    memcpy(hdr + 8, &zero, 4);
    memcpy(hdr + 12, &zero, 4);
    memcpy(hdr + 16, &sn, 4);
    memcpy(hdr + 20, &lt, 4);
    FILE *fp = fmemopen(hdr, sizeof hdr, "rb");
    if (!fp) {
        snprintf(msg, msglen, "fmemopen failed");
        return -1;
    }
    char errbuf[PCAP_ERRBUF_SIZE] = "";
    pcap_t *p = pcap_fopen_offline_with_tstamp_precision(fp, PCAP_TSTAMP_PRECISION_NANO, errbuf);
    if (!p) {
        fclose(fp);
        snprintf(msg, msglen, "%s", errbuf[0] ? errbuf : "libpcap cannot open a file of this link type");
        return -1;
    }
    f->dlt = pcap_datalink(p);
    int snap = pcap_snapshot(p);
    f->snapshot = snap > 0 ? (uint32_t)snap : 262144u;
    f->max_caplen = max_snaplen_for_dlt(f->dlt);
    int rc = 0;
    if (!expr[0]) {
        f->accept_all = 1;
    } else if (pcap_compile(p, &f->prog, expr, 1, 0) < 0) {
        snprintf(msg, msglen, "%s", pcap_geterr(p));
        memset(&f->prog, 0, sizeof f->prog);
        rc = -1;
    }
    pcap_close(p); /* closes fp */
    return rc;
}

void capfilter_free(CapFilter *f)
{
    if (!f->accept_all && f->prog.bf_insns)
        pcap_freecode(&f->prog);
    f->prog.bf_insns = NULL;
}
