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
 * meanwhile; the table holds about the last 8,000. An
 * entry holds a 64-bit hash of the identity (its length folded in), so an overrun table only
 * ever misses duplicates (more copies kept), never suppresses a distinct packet short of a
 * 64-bit hash collision between two packets on different interfaces within the window.
 *
 * The readers of a fanout group share one table (dd_share): then every set is taken under a
 * spinlock (one of DD_LOCKS stripes); a table with one reader takes no lock. No Python here.
 */
#ifndef OSSENSOR_DEDUP_H
#define OSSENSOR_DEDUP_H

#include <stdint.h>

#define DD_SETS (1u << 11)
#define DD_WAYS 4u /* 4 x 16 bytes: a set is one cache line */
#define DD_LOCKS 256u
#define DD_TICK_SHIFT 10 /* entry times in units of 1.024 us, 32 bits: they wrap every 73 minutes */

struct dd_entry {
    uint64_t key;    /* hash of the identity (its length folded in) */
    uint32_t t;      /* capture time of the copy that made (or renewed) the entry, in ticks; 0: empty */
    int32_t ifindex; /* interface of that copy */
};

struct dd_table {
    struct dd_entry set[DD_SETS][DD_WAYS] __attribute__((aligned(64)));
    uint32_t window_t; /* the window, in ticks */
    int refs;   /* rings using the table (atomic) */
    int shared; /* more than one reader: take the stripe locks */
    uint8_t locks[DD_LOCKS];
};

/* A table with one reference; NULL (errno ENOMEM) when memory is short. */
struct dd_table *dd_new(unsigned window_ms);
/* Another reference, for a second reader: from now on the table is taken under its locks.
 * Call before that reader reads. */
struct dd_table *dd_share(struct dd_table *t);
/* Drop a reference; the last one frees the table. NULL is fine. */
void dd_release(struct dd_table *t);

/* The identity hash of a packet of `caplen` captured bytes (wirelen on the wire) at `data`, of
 * pcapng link type `linktype`. */
uint64_t dd_identity(const uint8_t *data, uint32_t caplen, uint32_t wirelen, int linktype);

/* Ask for the table's set of `key` now (a cache line), so that dd_check() for it, a few packets
 * later, does not wait for memory: ring.c hashes a chunk of packets ahead and prefetches their sets. */
static inline void dd_prefetch(const struct dd_table *t, uint64_t key)
{
    __builtin_prefetch(t->set[(unsigned)(key >> 32) & (DD_SETS - 1)], 1, 3);
}

/* 1 when the packet is a copy of one captured on another interface within the window (do not
 * write it); 0 when it is a new packet (it is remembered). */
int dd_check(struct dd_table *t, uint64_t key, uint64_t ns, int ifindex);

#endif
