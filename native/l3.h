/* The link types (pcapng LINKTYPE_ values) the native code reads, and where a frame's IP header starts:
 * one parse for duplicate suppression (dedup.h) and Antigena's rules (antigena.h). */
#ifndef OSSENSOR_L3_H
#define OSSENSOR_L3_H

#include <stdint.h>

#define LINKTYPE_ETHERNET 1
#define LINKTYPE_RAW 101 /* IPv4 or IPv6, by the version nibble */
#define LINKTYPE_IPV4 228
#define LINKTYPE_IPV6 229

/* The IP version (4 or 6) of the frame at f (len captured bytes, of link type linktype), its IP header
 * at *off: after the Ethernet header and any 802.1Q / 802.1ad tags left in the frame. 0 when it carries
 * no IP, or its first byte is not the version the link type or EtherType says. Callers check that the
 * header bytes they read were captured. */
static inline int l3_find(const uint8_t *f, uint32_t len, int linktype, uint32_t *off)
{
    int v;
    *off = 0;
    if (linktype == LINKTYPE_ETHERNET) {
        if (len < 14)
            return 0;
        uint16_t et = (uint16_t)(f[12] << 8 | f[13]);
        uint32_t o = 14;
        while ((et == 0x8100 || et == 0x88a8) && o + 4 <= len) {
            et = (uint16_t)(f[o + 2] << 8 | f[o + 3]);
            o += 4;
        }
        *off = o;
        v = et == 0x0800 ? 4 : et == 0x86dd ? 6 : 0;
    } else if (linktype == LINKTYPE_RAW) {
        v = len ? f[0] >> 4 : 0;
    } else if (linktype == LINKTYPE_IPV4) {
        v = 4;
    } else if (linktype == LINKTYPE_IPV6) {
        v = 6;
    } else {
        return 0;
    }
    return (v == 4 || v == 6) && *off < len && (f[*off] >> 4) == v ? v : 0;
}

#endif
