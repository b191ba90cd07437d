/*
 * Duplicate suppression for live capture (issue 19): on a node, one packet crosses several
 * selected interfaces (a pod's veth, the bridge, the uplink after routing). Each copy after the
 * first, captured on a *different* interface within the window, is counted, not written.
 *
 * Identity: the IP packet with what forwarding changes masked (IPv4 TTL and header checksum,
 * IPv6 hop limit), the link-layer header ignored, so bridged and routed copies match; frames
 * without IP compare whole. The same identity again on the interface of the first copy is a
 * new packet (a retransmission, a repeated datagram): the entry then restarts from it.
 *
 * The table is fixed: DD_SETS sets of DD_WAYS entries (8,192 entries of 16 bytes, 128 KiB: it
 * stays in the L2 cache while batches stream through the others), each set kept in the order its
 * entries were written, the least recently written replaced. The copies of one packet cross a
 * node within microseconds, so an entry needs to outlive only the few packets captured
 * meanwhile; the table holds about the last 8,000. An entry holds a 64-bit hash of the identity
 * (its length folded in), so an overrun table only ever misses duplicates (more copies kept),
 * never suppresses a distinct packet short of a 64-bit hash collision between two packets on
 * different interfaces within the window.
 *
 * The hash is keyed with a secret drawn from the kernel for each table: with public constants
 * anyone could craft two distinct packets with one identity offline (a multiply by zero erases
 * everything hashed before it), and hide the second behind the first. Keyed, a collision has to
 * be guessed. It is a fast hash (wyhash's multiply-fold), not a MAC.
 *
 * The readers of a fanout group share one table (dd_share): then every set is taken under a
 * spinlock (one of DD_LOCKS stripes); a table with one reader takes no lock. No Python here.
 * The per-packet functions are inline: ring.c calls them for every packet.
 */
#ifndef OSSENSOR_DEDUP_H
#define OSSENSOR_DEDUP_H

#include <stdint.h>
#include <string.h>

#include "l3.h"

#define DD_SETS (1u << 11)
#define DD_WAYS 4u /* 4 x 16 bytes: a set is one cache line */
#define DD_LOCKS 256u
#define DD_TICK_SHIFT 10 /* entry times in units of 1.024 us, 32 bits: they wrap every 73 minutes */
#define DD_KEYS 8u

struct dd_entry {
    uint64_t key;    /* hash of the identity (its length folded in) */
    uint32_t t;      /* capture time of the copy that made (or renewed) the entry, in ticks; 0: empty */
    int32_t ifindex; /* interface of that copy */
};

struct dd_table {
    struct dd_entry set[DD_SETS][DD_WAYS] __attribute__((aligned(64)));
    uint64_t secret[DD_KEYS]; /* the hash's keys (random, per table) */
    uint32_t window_t;        /* the window, in ticks */
    int refs;                 /* rings using the table (atomic) */
    int shared;               /* more than one reader: take the stripe locks */
    uint8_t locks[DD_LOCKS];
};

/* A table with one reference and fresh keys; NULL (errno set: ENOMEM, or the kernel's error
 * when it gives no random bytes) on failure. */
struct dd_table *dd_new(unsigned window_ms);
/* Another reference, for a second reader: from now on the table is taken under its locks.
 * Call before that reader reads. */
struct dd_table *dd_share(struct dd_table *t);
/* Drop a reference; the last one frees the table. NULL is fine. */
void dd_release(struct dd_table *t);

/* --- the identity: a keyed multiply-fold hash (wyhash's `mum`) --- */

static inline uint64_t dd_mum(uint64_t a, uint64_t b)
{
    __uint128_t r = (__uint128_t)a * b;
    return (uint64_t)r ^ (uint64_t)(r >> 64);
}

static inline uint64_t dd_load64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

/* Bytes [0, n) of p, bytes of the first 16 masked by m0, m1 (little-endian words), and `len`
 * (the length on the wire) hashed with the keys s. Every lane has its own pair of keys, so
 * moving bytes from one lane to another changes the hash. */
static inline uint64_t dd_hash(const uint8_t *p, uint32_t n, uint64_t m0, uint64_t m1, uint64_t len,
                               const uint64_t *s)
{
    if (n >= 32 && n <= 64) {
        /* Small packets (a 64-byte frame's 50-byte IP packet): four independent 16-byte lanes, [0, 16)
         * masked, [16, 32), [c, c + 16) and [n - 16, n) (from byte 16 on: never the masked bytes
         * unmasked), which together cover every byte; their multiplies overlap, then one more. */
        uint32_t c = n >= 48 ? n - 32 : 16;
        uint64_t a = dd_mum((dd_load64(p) & m0) ^ s[0], (dd_load64(p + 8) & m1) ^ s[1] ^ len);
        uint64_t b = dd_mum(dd_load64(p + 16) ^ s[2], dd_load64(p + 24) ^ s[3]);
        uint64_t d = dd_mum(dd_load64(p + c) ^ s[4], dd_load64(p + c + 8) ^ s[5]);
        uint64_t e = dd_mum(dd_load64(p + n - 16) ^ s[6], dd_load64(p + n - 8) ^ s[7]);
        return dd_mum(a ^ d ^ s[1], b ^ e ^ s[2]);
    }
    uint64_t h = s[0] ^ len;
    uint32_t i = 0;
    if (n >= 16) {
        h = dd_mum((dd_load64(p) & m0) ^ s[1], (dd_load64(p + 8) & m1) ^ h);
        i = 16;
        if (n - i >= 48) {
            /* three independent lanes of 16 bytes per 48-byte round: a 1500-byte packet is not one
             * chain of 93 dependent multiplies */
            uint64_t h2 = h ^ s[6], h3 = h ^ s[7];
            for (; i + 48 <= n; i += 48) {
                h = dd_mum(dd_load64(p + i) ^ s[2], dd_load64(p + i + 8) ^ h);
                h2 = dd_mum(dd_load64(p + i + 16) ^ s[3], dd_load64(p + i + 24) ^ h2);
                h3 = dd_mum(dd_load64(p + i + 32) ^ s[4], dd_load64(p + i + 40) ^ h3);
            }
            h ^= h2 ^ h3;
        }
        for (; i + 16 <= n; i += 16)
            h = dd_mum(dd_load64(p + i) ^ s[5], dd_load64(p + i + 8) ^ h);
    }
    if (i < n && n >= 32) { /* the last 16 bytes, overlapping what came before (not the masked first 16) */
        h = dd_mum(dd_load64(p + n - 16) ^ s[6], dd_load64(p + n - 8) ^ h);
    } else if (i < n) {
        uint8_t tail[16] = {0};
        memcpy(tail, p + i, n - i);
        uint64_t a = dd_load64(tail), b = dd_load64(tail + 8);
        if (i == 0) {
            a &= m0;
            b &= m1;
        }
        h = dd_mum(a ^ s[6], b ^ h);
    }
    return dd_mum(h ^ s[7], (uint64_t)n ^ s[3]);
}

/* The identity of a packet of `caplen` captured bytes (wirelen on the wire) at `data`, of pcapng
 * link type `linktype` (l3.h: the IP packet of Ethernet and raw-IP frames; any other compares whole). */
static inline uint64_t dd_identity(const struct dd_table *t, const uint8_t *data, uint32_t caplen,
                                   uint32_t wirelen, int linktype)
{
    uint32_t off;
    int ip = l3_find(data, caplen, linktype, &off);
    if (ip == 4 && caplen >= off + 20) /* TTL (byte 8), checksum (10, 11) */
        return dd_hash(data + off, caplen - off, ~0ull, ~0x00000000ffff00ffull, wirelen - off, t->secret);
    if (ip == 6 && caplen >= off + 40) /* hop limit (byte 7) */
        return dd_hash(data + off, caplen - off, ~(0xffull << 56), ~0ull, wirelen - off, t->secret);
    return dd_hash(data, caplen, ~0ull, ~0ull, (uint64_t)wirelen | (uint64_t)1 << 40, t->secret);
}

/* Ask for the table's set of `key` now (a cache line), so that dd_check() for it, a few packets
 * later, does not wait for memory: ring.c hashes a chunk of packets ahead and prefetches their sets. */
static inline void dd_prefetch(const struct dd_table *t, uint64_t key)
{
    __builtin_prefetch(t->set[(unsigned)(key >> 32) & (DD_SETS - 1)], 1, 3);
}

/* --- the table --- */

static inline void dd_lock(struct dd_table *t, unsigned s)
{
    while (__atomic_test_and_set(&t->locks[s], __ATOMIC_ACQUIRE)) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
}

/* 1 when the packet is a copy of one captured on another interface within the window (do not
 * write it); 0 when it is a new packet (it is remembered).
 *
 * A set is kept in the order its entries were written, the newest first: a new packet goes in
 * front and the last way (the least recently written, or an empty one: empties are at the end)
 * drops out; no ages to compare on the common path, a distinct packet, which costs only the four
 * key comparisons and a 48-byte shift within one cache line. */
_Static_assert(DD_WAYS == 4, "dd_check() shifts a set of 4 ways");

static inline int dd_check(struct dd_table *t, uint64_t key, uint64_t ns, int ifindex)
{
    unsigned s = (unsigned)(key >> 32) & (DD_SETS - 1);
    uint32_t now = (uint32_t)(ns >> DD_TICK_SHIFT) | 1; /* never 0: that marks an empty entry */
    int shared = __atomic_load_n(&t->shared, __ATOMIC_RELAXED);
    if (shared)
        dd_lock(t, s % DD_LOCKS);
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
        __atomic_clear(&t->locks[s % DD_LOCKS], __ATOMIC_RELEASE);
    return dup;
}

#endif
