/* The pcapng Enhanced Packet Block as both native writers lay it out (ring.c: live capture,
 * filereader.c: replay): one definition of the bytes the vSensor and every pcapng reader parse.
 *
 *   type 6 | total length | interface id | timestamp high | low | captured len | wire len |
 *   data, zero-padded to 4 bytes | total length
 *
 * Host byte order: a section's byte order is the SHB's, and ours is written on this host. */
#ifndef OSSENSOR_EPB_H
#define OSSENSOR_EPB_H

#include <stdint.h>
#include <string.h>

#define EPB_TYPE 6u
#define EPB_OVERHEAD 32u /* block header 8 + fixed fields 20 + trailer 4 */

/* Bytes an EPB carrying `outlen` captured bytes takes. */
static inline uint32_t epb_total(uint32_t outlen)
{
    return EPB_OVERHEAD + ((outlen + 3u) & ~3u);
}

static inline void epb_put64(uint8_t *p, uint32_t lo, uint32_t hi)
{
    uint64_t v = (uint64_t)hi << 32 | lo; /* host order: lo first on little-endian hosts */
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = (uint64_t)lo << 32 | hi;
#endif
    memcpy(p, &v, 8);
}

/* Write the fixed part at p (nanosecond timestamps: every IDB we write says if_tsresol 9);
 * the `outlen` data bytes go at the returned pointer, then epb_finish(). The fields go straight
 * to p in word stores: a struct built on the stack and copied with 16-byte loads stalled every
 * packet on store forwarding (the loads span several 4-byte stores; perf: most of drain's time). */
static inline uint8_t *epb_start(uint8_t *p, uint32_t total, uint32_t if_id, uint64_t ns, uint32_t outlen,
                                 uint32_t wirelen)
{
    epb_put64(p, EPB_TYPE, total);
    epb_put64(p + 8, if_id, (uint32_t)(ns >> 32));
    epb_put64(p + 16, (uint32_t)ns, outlen);
    memcpy(p + 24, &wirelen, 4);
    return p + 28;
}

/* Zero the 0-3 padding bytes after the data at `data` with one word store (the trailing length,
 * written next, covers the rest of that word), not a memset call per packet; then the trailing length. */
static inline void epb_finish(uint8_t *data, uint32_t outlen, uint32_t total)
{
    uint32_t zero = 0;
    memcpy(data + outlen, &zero, 4);
    memcpy(data + ((outlen + 3u) & ~3u), &total, 4);
}

#endif
