/*
 * The kernel side of live capture: one AF_PACKET socket with a TPACKET_V3 receive ring.
 *
 * One short function per kernel step, in the order they run (after netsniff-ng's ring_rx.c):
 * open the socket, size the ring, map it, attach the filter, bind to every interface, join a
 * fanout group; then, per read: wait, walk a ready block, release it; read the statistics; close.
 * No Python here: each step returns -1 with errno set, and ring.c turns that into an exception.
 */
#ifndef OSSENSOR_RING_RX_H
#define OSSENSOR_RING_RX_H

#include <linux/filter.h>
#include <linux/if_packet.h>
#include <stddef.h>
#include <stdint.h>

#define RX_MIN_BLOCKS 2u

struct rx_ring {
    int fd;       /* the AF_PACKET socket, -1 once closed */
    int wake_fd;  /* eventfd: rx_wake() ends a wait in rx_wait() at once (any thread) */
    uint8_t *map; /* the ring, block_nr blocks of block_size bytes */
    size_t map_len;
    unsigned block_size;
    unsigned block_nr;
    unsigned block_cur; /* the next block to read */
    int started;        /* bound: packets flow */
};

/* Socket (protocol 0: nothing is received before rx_bind_all) and the wake-up eventfd. */
int rx_open(struct rx_ring *r);
/* PACKET_VERSION TPACKET_V3 and PACKET_RX_RING: ring_bytes in blocks of block_size, halved on
 * ENOMEM down to RX_MIN_BLOCKS (r->block_nr says what was obtained). */
int rx_size_ring(struct rx_ring *r, unsigned long long ring_bytes, unsigned block_size, unsigned timeout_ms);
/* Map the ring (locked when RLIMIT_MEMLOCK allows, populated). */
int rx_mmap(struct rx_ring *r);
/* SO_ATTACH_FILTER: replaces the previous program atomically. */
int rx_attach_filter(struct rx_ring *r, struct sock_filter *ins, unsigned short n);
/* Bind to every interface (ifindex 0, ETH_P_ALL): reception begins. */
int rx_bind_all(struct rx_ring *r);
/* PACKET_FANOUT group with the kernel defragmenting first (fragments follow their flow). */
int rx_join_fanout(struct rx_ring *r, unsigned group, unsigned mode);
/* Sleep up to ms, ended early by rx_wake(); returns 1 when woken. */
int rx_sleep(struct rx_ring *r, int ms);
/* Wait up to ms for a block or a wake-up; returns 1 when woken, 0 otherwise, -1 on error. */
int rx_wait(struct rx_ring *r, int ms);
/* Consume a pending wake-up so the next wait waits again. */
void rx_clear_wake(struct rx_ring *r);
/* End the reader's current or next wait (any thread). */
int rx_wake(struct rx_ring *r);
/* Blocks the kernel has handed over and the reader has not released yet (from block_cur on). */
unsigned rx_ready_blocks(const struct rx_ring *r);
/* PACKET_STATISTICS (the kernel resets them on every read: callers accumulate). */
int rx_stats(struct rx_ring *r, struct tpacket_stats_v3 *st);
/* Unmap the ring, close both descriptors. Safe to call twice. */
void rx_close(struct rx_ring *r);

/* Walking the ring, inline: it runs per block on the hot path. */
static inline struct tpacket_block_desc *rx_block(const struct rx_ring *r, unsigned i)
{
    return (struct tpacket_block_desc *)(r->map + (size_t)i * r->block_size);
}

/* The current block, when the kernel has handed it to us; NULL otherwise. */
static inline struct tpacket_block_desc *rx_block_ready(const struct rx_ring *r)
{
    struct tpacket_block_desc *bd = rx_block(r, r->block_cur);
    return (__atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER) ? bd : NULL;
}

static inline struct tpacket3_hdr *rx_first_packet(struct tpacket_block_desc *bd)
{
    return (struct tpacket3_hdr *)((uint8_t *)bd + bd->hdr.bh1.offset_to_first_pkt);
}

static inline struct tpacket3_hdr *rx_next_packet(struct tpacket3_hdr *h)
{
    return (struct tpacket3_hdr *)((uint8_t *)h + h->tp_next_offset);
}

/* Hand the current block back to the kernel and move on to the next. */
static inline void rx_block_release(struct rx_ring *r, struct tpacket_block_desc *bd)
{
    __atomic_store_n(&bd->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
    r->block_cur = (r->block_cur + 1) % r->block_nr;
}

#endif
