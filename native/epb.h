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

struct epb_head {
    uint32_t type, total, if_id, ts_hi, ts_lo, caplen, wirelen;
};

/* Bytes an EPB carrying `outlen` captured bytes takes. */
static inline uint32_t epb_total(uint32_t outlen)
{
    return EPB_OVERHEAD + ((outlen + 3u) & ~3u);
}

/* Write the fixed part at p (nanosecond timestamps: every IDB we write says if_tsresol 9);
 * the `outlen` data bytes go at the returned pointer, then epb_finish(). */
static inline uint8_t *epb_start(uint8_t *p, uint32_t total, uint32_t if_id, uint64_t ns, uint32_t outlen,
                                 uint32_t wirelen)
{
    struct epb_head eh = {EPB_TYPE, total, if_id, (uint32_t)(ns >> 32), (uint32_t)ns, outlen, wirelen};
    memcpy(p, &eh, sizeof eh);
    return p + sizeof eh;
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
