/* The kernel side of live capture (see ring_rx.h): one short function per kernel step. */
#include "ring_rx.h"

#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <poll.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

int rx_open(struct rx_ring *r)
{
    memset(r, 0, sizeof *r);
    r->fd = r->wake_fd = -1;
    r->fd = socket(AF_PACKET, SOCK_RAW, 0);
    if (r->fd < 0)
        return -1;
    r->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    return r->wake_fd < 0 ? -1 : 0;
}

int rx_size_ring(struct rx_ring *r, unsigned long long ring_bytes, unsigned block_size, unsigned timeout_ms)
{
    int ver = TPACKET_V3;
    if (setsockopt(r->fd, SOL_PACKET, PACKET_VERSION, &ver, sizeof ver) < 0)
        return -1;
    unsigned nr = (unsigned)(ring_bytes / block_size);
    if (nr < RX_MIN_BLOCKS)
        nr = RX_MIN_BLOCKS;
    for (;;) {
        struct tpacket_req3 req;
        memset(&req, 0, sizeof req);
        req.tp_block_size = block_size;
        req.tp_block_nr = nr;
        req.tp_frame_size = TPACKET_ALIGNMENT << 7; /* 2048: only used for the frame count */
        req.tp_frame_nr = (block_size / req.tp_frame_size) * nr;
        req.tp_retire_blk_tov = timeout_ms;
        if (setsockopt(r->fd, SOL_PACKET, PACKET_RX_RING, &req, sizeof req) == 0)
            break;
        /* Busy nodes may not have that much contiguous memory: halve and retry; Python reports
         * the size obtained. */
        if (errno != ENOMEM || nr <= RX_MIN_BLOCKS)
            return -1;
        nr /= 2;
        if (nr < RX_MIN_BLOCKS)
            nr = RX_MIN_BLOCKS;
    }
    r->block_size = block_size;
    r->block_nr = nr;
    r->map_len = (size_t)block_size * nr;
    return 0;
}

int rx_mmap(struct rx_ring *r)
{
    void *m = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_LOCKED | MAP_POPULATE, r->fd, 0);
    if (m == MAP_FAILED) /* MAP_LOCKED may exceed RLIMIT_MEMLOCK: fall back to unlocked */
        m = mmap(NULL, r->map_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, 0);
    if (m == MAP_FAILED)
        return -1;
    r->map = m;
    return 0;
}

int rx_attach_filter(struct rx_ring *r, struct sock_filter *ins, unsigned short n)
{
    struct sock_fprog prog = {.len = n, .filter = ins};
    return setsockopt(r->fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog);
}

int rx_bind_all(struct rx_ring *r)
{
    struct sockaddr_ll sll;
    memset(&sll, 0, sizeof sll);
    sll.sll_family = AF_PACKET;
    sll.sll_protocol = htons(ETH_P_ALL);
    sll.sll_ifindex = 0;
    if (bind(r->fd, (struct sockaddr *)&sll, sizeof sll) < 0)
        return -1;
    r->started = 1;
    return 0;
}

int rx_join_fanout(struct rx_ring *r, unsigned group, unsigned mode)
{
    int val = (int)((group & 0xffffu) | ((mode | PACKET_FANOUT_FLAG_DEFRAG) << 16));
    return setsockopt(r->fd, SOL_PACKET, PACKET_FANOUT, &val, sizeof val);
}

int rx_sleep(struct rx_ring *r, int ms)
{
    struct pollfd pfd = {.fd = r->wake_fd, .events = POLLIN, .revents = 0};
    return poll(&pfd, 1, ms) > 0 && (pfd.revents & POLLIN);
}

int rx_wait(struct rx_ring *r, int ms)
{
    struct pollfd pfd[2] = {{.fd = r->wake_fd, .events = POLLIN, .revents = 0},
                            {.fd = r->fd, .events = POLLIN | POLLERR, .revents = 0}};
    if (poll(pfd, 2, ms) < 0)
        return errno == EINTR ? 0 : -1;
    return (pfd[0].revents & POLLIN) != 0;
}

void rx_clear_wake(struct rx_ring *r)
{
    uint64_t v;
    ssize_t got = read(r->wake_fd, &v, sizeof v); /* EAGAIN: another read took it */
    (void)got;
}

int rx_wake(struct rx_ring *r)
{
    if (r->wake_fd < 0)
        return 0;
    uint64_t one = 1;
    return write(r->wake_fd, &one, sizeof one) < 0 && errno != EAGAIN ? -1 : 0;
}

unsigned rx_ready_blocks(const struct rx_ring *r)
{
    unsigned n = 0;
    while (n < r->block_nr) {
        struct tpacket_block_desc *bd = rx_block(r, (r->block_cur + n) % r->block_nr);
        if (!(__atomic_load_n(&bd->hdr.bh1.block_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER))
            break;
        n++;
    }
    return n;
}

int rx_stats(struct rx_ring *r, struct tpacket_stats_v3 *st)
{
    socklen_t len = sizeof *st;
    memset(st, 0, sizeof *st);
    return getsockopt(r->fd, SOL_PACKET, PACKET_STATISTICS, st, &len);
}

void rx_close(struct rx_ring *r)
{
    if (r->map)
        munmap(r->map, r->map_len);
    r->map = NULL;
    if (r->fd >= 0)
        close(r->fd);
    r->fd = -1;
    if (r->wake_fd >= 0)
        close(r->wake_fd);
    r->wake_fd = -1;
}
