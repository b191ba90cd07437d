/* bench/dedup_cost.py compiles this against native/dedup.c: the per-packet cost of duplicate
 * suppression on a model of the capture path (ring.c's drain/write_epb), without the kernel.
 *
 * A "ring" of random SIZE-byte IPv4/UDP frames, one per slot spaced as TPACKET_V3 lays them out,
 * from two interfaces in alternating runs of 50, is copied packet by packet into a 4 MiB batch
 * buffer as EPBs, in bursts of BURST packets (a wake-up's worth at 200 kpps with a 10 ms block
 * timeout); between bursts EVICT bytes of other memory are written (the kernel, the generator and
 * other processes use the caches in between), so the table starts each burst as cold as it does
 * in a live capture. Only the bursts are timed.
 *
 *   dedup_cost SIZE PACKETS MODE   MODE: copy (no dedup) | hash (the identity alone, no table) |
 *                                  inline (hash + look-up per packet) | ahead (as ring.c: hash and
 *                                  prefetch a chunk of CHUNK packets, then copy + look-up each)
 * NOEVICT=1 in the environment: the table stays warm (and callgrind counts no memset).
 * prints `ns_per_pkt=X dups=N` (dups is 0: every frame is distinct). Under callgrind the
 * instructions per packet are Ir / PACKETS (the setup is the same in every mode: subtract copy's). */
#include "dedup.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BURST 2000u
#define EVICT (8u << 20)
#define CHUNK 32u /* ring.c's DD_AHEAD, DD_AHEAD_BYTES */
#define AHEAD_BYTES 4096u

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    unsigned size = argc > 1 ? (unsigned)atoi(argv[1]) : 64;
    unsigned npk = argc > 2 ? (unsigned)atoi(argv[2]) : 600000;
    const char *mode = argc > 3 ? argv[3] : "inline";
    int dd = strcmp(mode, "copy") != 0, ahead = strcmp(mode, "ahead") == 0, hashonly = strcmp(mode, "hash") == 0;
    uint64_t sink = 0;
    unsigned slot = (size + 80 + 15) & ~15u; /* tpacket3_hdr + sockaddr_ll + the frame, 16-aligned */
    uint8_t *ring = aligned_alloc(64, ((size_t)slot * npk + 63) & ~(size_t)63);
    size_t outcap = 4u << 20;
    uint8_t *out = aligned_alloc(64, outcap);
    uint8_t *evict = aligned_alloc(64, EVICT);
    int *ifx = malloc(sizeof(int) * npk);
    for (unsigned i = 0; i < npk; i++) {
        uint8_t *f = ring + (size_t)i * slot;
        for (unsigned k = 0; k < size; k += 8) {
            uint64_t r = rnd();
            memcpy(f + k, &r, size - k < 8 ? size - k : 8);
        }
        f[12] = 0x08, f[13] = 0x00, f[14] = 0x45;
        ifx[i] = (i / 50) % 2 ? 2 : 3;
    }
    memset(out, 0, outcap);
    struct dd_table *t = dd_new(20);
    uint64_t ns = 1000000000ull, dups = 0;
    size_t olen = 0;
    double spent = 0;
    uint64_t keys[CHUNK];
    for (unsigned b = 0; b < npk; b += BURST) {
        if (!getenv("NOEVICT"))
            memset(evict, (int)b, EVICT);
        unsigned end = b + BURST < npk ? b + BURST : npk;
        double t0 = now_ns();
        for (unsigned c = b, n; c < end; c += n) {
            n = end - c < CHUNK ? end - c : CHUNK;
            if (ahead) { /* as ring.c's hash_ahead(): at most CHUNK packets, AHEAD_BYTES bytes */
                unsigned bytes = 0;
                for (unsigned i = 0; i < n; i++) {
                    keys[i] = dd_identity(t, ring + (size_t)(c + i) * slot, size, size, 1);
                    dd_prefetch(t, keys[i]);
                    if ((bytes += size) >= AHEAD_BYTES) {
                        n = i + 1;
                        break;
                    }
                }
            }
            for (unsigned i = 0; i < n; i++) {
                const uint8_t *f = ring + (size_t)(c + i) * slot;
                __builtin_prefetch(f + slot);
                ns += 500;
                if (dd) {
                    uint64_t key = ahead ? keys[i] : dd_identity(t, f, size, size, 1);
                    if (hashonly)
                        sink ^= key;
                    else if (dd_check(t, key, ns, ifx[c + i])) {
                        dups++;
                        continue;
                    }
                }
                uint32_t total = 32 + ((size + 3) & ~3u);
                if (olen + total > outcap)
                    olen = 0;
                uint32_t hdr[7] = {6, total, 0, (uint32_t)(ns >> 32), (uint32_t)ns, size, size};
                memcpy(out + olen, hdr, sizeof hdr);
                memcpy(out + olen + 28, f, size);
                memcpy(out + olen + total - 4, &total, 4);
                olen += total;
            }
        }
        spent += now_ns() - t0;
    }
    printf("ns_per_pkt=%.2f dups=%llu\n", spent / npk, (unsigned long long)(dups + (sink == 42)));
    dd_release(t);
    free(ring), free(out), free(evict), free(ifx);
    return 0;
}
