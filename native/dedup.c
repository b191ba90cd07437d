/* Duplicate suppression: the identity of a packet and the table of recent ones (dedup.h). */
#include "dedup.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define LT_ETHERNET 1
#define LT_RAW 101
#define LT_IPV4 228
#define LT_IPV6 229

struct dd_table *dd_new(unsigned window_ms)
{
    void *p = NULL;
    if (posix_memalign(&p, 64, sizeof(struct dd_table))) { /* sets on cache lines */
        errno = ENOMEM;
        return NULL;
    }
    struct dd_table *t = memset(p, 0, sizeof *t);
    t->window_t = (uint32_t)(((uint64_t)window_ms * 1000000ull) >> DD_TICK_SHIFT);
    t->refs = 1;
    return t;
}

struct dd_table *dd_share(struct dd_table *t)
{
    __atomic_add_fetch(&t->refs, 1, __ATOMIC_ACQ_REL);
    __atomic_store_n(&t->shared, 1, __ATOMIC_RELEASE);
    return t;
}

void dd_release(struct dd_table *t)
{
    if (t && __atomic_sub_fetch(&t->refs, 1, __ATOMIC_ACQ_REL) == 0)
        free(t);
}

/* The hash: wyhash's 64x64->128 multiply-fold over 16-byte steps, the length folded in last. */
#define K0 0xa0761d6478bd642full
#define K1 0xe7037ed1a0b428dbull
#define K2 0x8ebc6af09c88c6e3ull

static inline uint64_t mum(uint64_t a, uint64_t b)
{
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static inline uint64_t load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Bytes [0, n) of p, where bytes of the first 16 are masked by m0, m1 (little-endian words). Three
 * independent lanes of 16 bytes per 48-byte round (as wyhash): the multiplies overlap, so a 1500-byte
 * packet is not one chain of 93 dependent multiplies. */
static uint64_t hash_masked(const uint8_t *p, uint32_t n, uint64_t m0, uint64_t m1, uint64_t seed)
{
    uint64_t h = seed ^ K0;
    if (n >= 32 && n <= 64) {
        /* Small packets (a 64-byte frame's 50-byte IP packet): four independent 16-byte lanes, [0, 16)
         * masked, [16, 32), [n - 32, n - 16) (from byte 16 on: never the masked bytes unmasked) and
         * [n - 16, n), which together cover every byte; their multiplies overlap, then two more. */
        uint32_t c = n >= 48 ? n - 32 : 16;
        uint64_t a = mum((load64(p) & m0) ^ K1, (load64(p + 8) & m1) ^ h);
        uint64_t b = mum(load64(p + 16) ^ K2, load64(p + 24) ^ h);
        uint64_t d = mum(load64(p + c) ^ K0, load64(p + c + 8) ^ K1 ^ h);
        uint64_t e = mum(load64(p + n - 16) ^ K1, load64(p + n - 8) ^ K2 ^ h);
        return mum(mum(a ^ K2, b ^ d) ^ e ^ K0, (uint64_t)n ^ K1);
    }
    uint32_t i = 0;
    uint8_t tail[16];
    if (n >= 16) {
        h = mum((load64(p) & m0) ^ K1, (load64(p + 8) & m1) ^ h);
        i = 16;
        if (n - i >= 48) {
            uint64_t h2 = h, h3 = h;
            for (; i + 48 <= n; i += 48) {
                h = mum(load64(p + i) ^ K1, load64(p + i + 8) ^ h);
                h2 = mum(load64(p + i + 16) ^ K2, load64(p + i + 24) ^ h2);
                h3 = mum(load64(p + i + 32) ^ K0, load64(p + i + 40) ^ h3);
            }
            h ^= h2 ^ h3;
        }
        for (; i + 16 <= n; i += 16)
            h = mum(load64(p + i) ^ K1, load64(p + i + 8) ^ h);
    }
    if (i < n && n >= 32) { /* the last 16 bytes, overlapping what came before (not the masked first 16):
                              * no copy; n is hashed too */
        h = mum(load64(p + n - 16) ^ K1, load64(p + n - 8) ^ h);
    } else if (i < n) {
        memset(tail, 0, sizeof tail);
        memcpy(tail, p + i, n - i);
        uint64_t a = load64(tail), b = load64(tail + 8);
        if (i == 0) {
            a &= m0;
            b &= m1;
        }
        h = mum(a ^ K1, b ^ h);
    }
    return mum(h ^ K2, (uint64_t)n ^ K1);
}

uint64_t dd_identity(const uint8_t *data, uint32_t caplen, uint32_t wirelen, int linktype)
{
    uint32_t off = 0;
    int ip = 0; /* 4 or 6 */
    if (linktype == LT_ETHERNET && caplen >= 14) {
        uint16_t et = (uint16_t)(data[12] << 8 | data[13]);
        off = 14;
        while ((et == 0x8100 || et == 0x88a8) && caplen >= off + 4) { /* tags left in the frame */
            et = (uint16_t)(data[off + 2] << 8 | data[off + 3]);
            off += 4;
        }
        ip = et == 0x0800 ? 4 : et == 0x86dd ? 6 : 0;
    } else if ((linktype == LT_RAW || linktype == LT_IPV4 || linktype == LT_IPV6) && caplen >= 1) {
        ip = data[0] >> 4;
    }
    if (ip == 4 && caplen >= off + 20 && (data[off] >> 4) == 4) {
        /* TTL (byte 8) and header checksum (10, 11): in the second word */
        return hash_masked(data + off, caplen - off, ~0ull, ~0x00000000ffff00ffull, wirelen - off);
    }
    if (ip == 6 && caplen >= off + 40 && (data[off] >> 4) == 6) {
        /* hop limit (byte 7): the first word's top byte */
        return hash_masked(data + off, caplen - off, ~(0xffull << 56), ~0ull, wirelen - off);
    }
    return hash_masked(data, caplen, ~0ull, ~0ull, (uint64_t)wirelen | (uint64_t)1 << 40);
}

static inline void lock(struct dd_table *t, unsigned s)
{
    while (__atomic_test_and_set(&t->locks[s], __ATOMIC_ACQUIRE)) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
}

static inline void unlock(struct dd_table *t, unsigned s)
{
    __atomic_clear(&t->locks[s], __ATOMIC_RELEASE);
}

/* A set is kept in the order its entries were written, the newest first: a new packet goes in
 * front and the last way (the least recently written, or an empty one: empties are at the end)
 * drops out; no ages to compare on the common path, a distinct packet, which costs only the four
 * key comparisons and a 48-byte shift within one cache line. */
_Static_assert(DD_WAYS == 4, "dd_check() shifts a set of 4 ways");

int dd_check(struct dd_table *t, uint64_t key, uint64_t ns, int ifindex)
{
    unsigned s = (unsigned)(key >> 32) & (DD_SETS - 1);
    uint32_t now = (uint32_t)(ns >> DD_TICK_SHIFT) | 1; /* never 0: that marks an empty entry */
    int shared = __atomic_load_n(&t->shared, __ATOMIC_RELAXED);
    if (shared)
        lock(t, s % DD_LOCKS);
    struct dd_entry *set = t->set[s];
    unsigned w = set[0].key == key   ? 0
                 : set[1].key == key ? 1
                 : set[2].key == key ? 2
                 : set[3].key == key ? 3
                                     : DD_WAYS;
    int dup = 0;
    if (w < DD_WAYS && set[w].t) {
        int32_t d = (int32_t)(now - set[w].t); /* copies may be read out of order (several readers) */
        uint32_t age = (uint32_t)(d < 0 ? -d : d);
        if (age <= t->window_t && set[w].ifindex != ifindex) {
            dup = 1; /* a copy: the entry stays the first copy's */
            goto out;
        }
        /* the same interface again, or too old: a new packet, renews the entry (to the front) */
        for (; w > 0; w--)
            set[w] = set[w - 1];
    } else { /* not there (or it matched an empty way: all after it are empty too): the last way goes */
        set[3] = set[2];
        set[2] = set[1];
        set[1] = set[0];
    }
    set[0].key = key;
    set[0].t = now;
    set[0].ifindex = ifindex;
out:
    if (shared)
        unlock(t, s % DD_LOCKS);
    return dup;
}
