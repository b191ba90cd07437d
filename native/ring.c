/*
 * ossensor._native: the capture hot path, as the Python type Ring.
 *
 * One AF_PACKET socket with a TPACKET_V3 receive ring, bound to every interface
 * (the kernel steps are in ring_rx.c); a classic-BPF program attached in the kernel
 * selects the interfaces and applies the user's filter. Ring.read() walks the ring's
 * blocks with the GIL released and writes one pcapng Enhanced Packet Block per packet
 * straight into the batch buffer (a bytes object handed to Python by Ring.take()
 * without a copy), so Python never sees a packet, only batches. This file holds the
 * batch (buffers, interface table, EPB writing) and the CPython glue.
 *
 * The interface table (ifindex -> pcapng interface id, link type) is set from
 * Python; packets from interfaces not in the table (left in the ring from before
 * a filter swap) are counted as "stale" and skipped.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_ether.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "dedup.h"
#include "ring_rx.h"

#define HUGE_2M (2u << 20)
#define POOL_MAX 64 /* batch buffers kept for reuse: bursts queue several at once (fresh pages cost) */
#define ISB_RESERVE(n) (256u + 256u * (n))

typedef struct {
    int ifindex;
    int linktype;
    PyObject *idb;    /* this interface's pcapng Interface Description Block (bytes) */
    uint64_t packets; /* written into batches, since the last take() */
    uint64_t bytes;   /* captured bytes written, since the last take() */
    uint64_t dup_packets, dup_bytes; /* copies suppressed (dedup.h), since the last take_duplicates() */
} IfEntry;

typedef struct {
    PyObject_HEAD
    struct rx_ring rx; /* the socket and its ring (ring_rx.h) */
    unsigned snaplen;
    int busy; /* a read() is in progress (GIL released) */

    unsigned drained_blocks; /* blocks handed back to the kernel by the last drain() */
    /* partially consumed block (the batch filled up in the middle of it) */
    struct tpacket3_hdr *pend_pkt;
    unsigned pend_left;

    IfEntry *ifs;
    unsigned n_ifs;
    int last_ifindex; /* one-entry cache: packets arrive in runs from one interface */
    unsigned last_id;

    PyObject *buf; /* bytearray being filled with one pcapng section */
    PyObject *pool[POOL_MAX]; /* batch buffers handed out; reused once Python lets go of them */
    unsigned pool_n;          /* slots in use: pool_buffers (as many as batches can wait to be sent) */
    PyObject *shb;             /* Section Header Block that opens every batch (bytes) */
    size_t buf_cap;  /* size of new batch buffers */
    size_t buf_size; /* size of the current one */
    size_t buf_len;
    size_t reserve; /* kept free at the end for the trailer (ISBs) */
    unsigned hdr_ifs; /* interfaces whose IDB is in the current batch */
    uint64_t batch_packets;
    uint64_t first_ns, last_ns;
    int batch_full;
    unsigned long long buffers_made; /* batch buffers allocated (not reused from the pool) */
    int buf_taken; /* buf was handed to Python by take(): read() starts the next batch in a pooled one */

    /* cumulative counters */
    uint64_t k_packets, k_drops, k_freezes; /* PACKET_STATISTICS, accumulated (reading resets them) */
    uint64_t stale;                         /* from interfaces no longer selected */
    uint64_t vlan_restored;
    uint64_t drain_ns; /* this thread's CPU time in drain(), for bench/capture.py: per packet, without Python */

    /* Antigena (antigena.h): rules matched in write_epb only when n_rules != 0 */
    struct ag_table *ag;
    unsigned n_rules;

    struct dd_table *dd; /* duplicate suppression (dedup.h); NULL: off */
} Ring;

#include "antigena.h"
#include "epb.h"

/* The batch being filled is empty again (a new buffer, or the last one handed to Python). */
static void start_batch(Ring *self)
{
    self->buf_len = 0;
    self->batch_packets = 0;
    self->first_ns = self->last_ns = 0;
    self->batch_full = 0;
    self->hdr_ifs = 0;
}

/* Start a new batch buffer. A bytearray handed to Python earlier is reused as soon as
 * only the pool still references it (its memoryview is gone): no fresh pages to fault in
 * for every batch. */
static PyObject *new_buffer(Ring *self)
{
    PyObject *b = NULL;
    int slot = -1;
    for (unsigned i = 0; i < self->pool_n; i++) {
        PyObject *c = self->pool[i];
        if (!c) {
            if (slot < 0)
                slot = i;
            continue;
        }
        if (Py_REFCNT(c) == 1 && (size_t)PyByteArray_GET_SIZE(c) >= self->buf_cap) {
            b = c;
            break;
        }
    }
    if (!b) {
        b = PyByteArray_FromStringAndSize(NULL, (Py_ssize_t)self->buf_cap);
        if (!b)
            return NULL;
        self->buffers_made++;
        /* Fresh pages are costly here (a fault per 4 KiB, ~2 ms per 4 MiB on a VM): ask for
         * transparent huge pages over the 2 MiB-aligned inside of the untouched buffer. */
        uintptr_t lo = (uintptr_t)PyByteArray_AS_STRING(b), hi = lo + self->buf_cap;
        uintptr_t hlo = (lo + HUGE_2M - 1) & ~(uintptr_t)(HUGE_2M - 1), hhi = hi & ~(uintptr_t)(HUGE_2M - 1);
        if (hhi > hlo)
            (void)madvise((void *)hlo, hhi - hlo, MADV_HUGEPAGE);
        if (slot < 0) { /* every pooled buffer is still in use: let the oldest go */
            Py_DECREF(self->pool[0]);
            memmove(self->pool, self->pool + 1, (self->pool_n - 1) * sizeof(PyObject *));
            slot = (int)self->pool_n - 1;
        }
        self->pool[slot] = b;
    }
    self->buf = b;
    self->buf_taken = 0;
    self->buf_size = (size_t)PyByteArray_GET_SIZE(b);
    if (self->buf_size > self->buf_cap) /* a pooled buffer from before set_batch_bytes() lowered the cap */
        self->buf_size = self->buf_cap;
    start_batch(self);
    return b;
}

static void free_table(IfEntry *tab, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        Py_XDECREF(tab[i].idb);
    PyMem_Free(tab);
}

static PyObject *Ring_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    (void)args;
    (void)kwds;
    Ring *self = (Ring *)type->tp_alloc(type, 0);
    if (self)
        self->rx.fd = self->rx.wake_fd = -1;
    return (PyObject *)self;
}

static void Ring_dealloc(Ring *self)
{
    rx_close(&self->rx);
    free_table(self->ifs, self->n_ifs);
    for (unsigned i = 0; i < POOL_MAX; i++)
        Py_XDECREF(self->pool[i]);
    Py_XDECREF(self->shb);
    ag_free(self);
    dd_release(self->dd);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Ring_init(Ring *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"ring_bytes", "block_size", "block_timeout_ms", "snaplen", "batch_bytes",
                             "pool_buffers", NULL};
    unsigned long long ring_bytes = 64ull << 20;
    unsigned block_size = 1u << 20, timeout_ms = 10, snaplen = 262144;
    unsigned long long batch_bytes = 4ull << 20;
    unsigned pool_buffers = 8;

    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|KIIIKI", kwlist, &ring_bytes, &block_size, &timeout_ms,
                                     &snaplen, &batch_bytes, &pool_buffers))
        return -1;
    long page = sysconf(_SC_PAGESIZE);
    if (block_size < (unsigned)page || block_size % (unsigned)page || (block_size & (block_size - 1))) {
        PyErr_Format(PyExc_ValueError, "block_size must be a power of two and a multiple of the page size (%ld)",
                     page);
        return -1;
    }
    if (snaplen < 64 || snaplen + 256 > block_size) {
        PyErr_SetString(PyExc_ValueError, "snaplen must be at least 64 and fit in a ring block");
        return -1;
    }
    if (self->rx.fd >= 0 || self->rx.map) {
        PyErr_SetString(PyExc_RuntimeError, "Ring already initialised");
        return -1;
    }
    if (pool_buffers < 2 || pool_buffers > POOL_MAX) {
        PyErr_Format(PyExc_ValueError, "pool_buffers must be 2..%d", POOL_MAX);
        return -1;
    }
    self->pool_n = pool_buffers;
    self->snaplen = snaplen;
    self->buf_cap = batch_bytes < snaplen + 1024u ? snaplen + 1024u : (size_t)batch_bytes;
    self->buf_cap = (self->buf_cap + 3) & ~(size_t)3;
    self->reserve = ISB_RESERVE(0);
    self->shb = PyBytes_FromStringAndSize(NULL, 0);
    if (!self->shb)
        return -1;
    self->last_ifindex = -1;

    /* Protocol 0: the socket receives nothing until start() binds it, so no packet
     * reaches the ring before the filter is attached. */
    if (rx_open(&self->rx) < 0 || rx_size_ring(&self->rx, ring_bytes, block_size, timeout_ms) < 0 ||
        rx_mmap(&self->rx) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        rx_close(&self->rx);
        return -1;
    }
    if (!new_buffer(self))
        return -1;
    return 0;
}

static int check_not_closed(Ring *self)
{
    if (self->rx.fd < 0) {
        PyErr_SetString(PyExc_ValueError, "Ring is closed");
        return -1;
    }
    return 0;
}

static int check_open(Ring *self)
{
    if (check_not_closed(self) < 0)
        return -1;
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Ring is being read by another thread");
        return -1;
    }
    return 0;
}

/* attach_filter(program): program is a sequence of (code, jt, jf, k) tuples.
 * SO_ATTACH_FILTER replaces the previous program atomically. */
static PyObject *Ring_attach_filter(Ring *self, PyObject *arg)
{
    if (check_not_closed(self) < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(arg, "program must be a sequence of (code, jt, jf, k)");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    if (n < 1 || n > BPF_MAXINSNS) {
        Py_DECREF(seq);
        PyErr_Format(PyExc_ValueError, "program length %zd outside 1..%d", n, BPF_MAXINSNS);
        return NULL;
    }
    struct sock_filter *ins = PyMem_Calloc((size_t)n, sizeof *ins);
    if (!ins) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned code, jt, jf;
        unsigned long k;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "IIIk", &code, &jt, &jf, &k)) {
            PyMem_Free(ins);
            Py_DECREF(seq);
            return NULL;
        }
        if (code > 0xffff || jt > 0xff || jf > 0xff || k > 0xffffffffUL) {
            PyMem_Free(ins);
            Py_DECREF(seq);
            PyErr_Format(PyExc_ValueError, "instruction %zd out of range", i);
            return NULL;
        }
        ins[i].code = (uint16_t)code;
        ins[i].jt = (uint8_t)jt;
        ins[i].jf = (uint8_t)jf;
        ins[i].k = (uint32_t)k;
    }
    Py_DECREF(seq);
    int rc = rx_attach_filter(&self->rx, ins, (unsigned short)n);
    PyMem_Free(ins);
    if (rc < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* start(): bind to all interfaces; reception begins here. */
static PyObject *Ring_start(Ring *self, PyObject *Py_UNUSED(ignored))
{
    if (check_open(self) < 0)
        return NULL;
    if (!self->rx.started && rx_bind_all(&self->rx) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* Bytes the current batch needs before any packet: the SHB and one IDB per interface. */
static size_t header_size(Ring *self)
{
    size_t n = (size_t)PyBytes_GET_SIZE(self->shb);
    for (unsigned i = 0; i < self->n_ifs; i++)
        n += (size_t)PyBytes_GET_SIZE(self->ifs[i].idb);
    return n;
}

/* Write the SHB and the IDBs into an empty batch. */
static void write_header(Ring *self, uint8_t *out)
{
    size_t n = (size_t)PyBytes_GET_SIZE(self->shb);
    memcpy(out, PyBytes_AS_STRING(self->shb), n);
    for (unsigned i = 0; i < self->n_ifs; i++) {
        size_t k = (size_t)PyBytes_GET_SIZE(self->ifs[i].idb);
        memcpy(out + n, PyBytes_AS_STRING(self->ifs[i].idb), k);
        n += k;
    }
    self->buf_len = n;
    self->hdr_ifs = self->n_ifs;
}

/* set_interfaces([(ifindex, linktype, idb), ...], shb=None): position in the list = pcapng
 * interface id; idb is that interface's Interface Description Block. While a batch is being
 * filled the existing positions must not change (ids are stable within a section); new
 * interfaces may be appended, and their IDBs are written into the batch at once (pcapng
 * allows an IDB anywhere before the first packet that refers to it). */
static PyObject *Ring_set_interfaces(Ring *self, PyObject *args)
{
    PyObject *arg, *shb = NULL;
    if (!PyArg_ParseTuple(args, "O|O!", &arg, &PyBytes_Type, &shb))
        return NULL;
    if (check_open(self) < 0)
        return NULL;
    PyObject *seq = PySequence_Fast(arg, "interfaces must be a sequence of (ifindex, linktype, idb)");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    IfEntry *tab = PyMem_Calloc(n ? (size_t)n : 1, sizeof *tab);
    if (!tab) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *idb;
        if (!PyArg_ParseTuple(PySequence_Fast_GET_ITEM(seq, i), "iiO!", &tab[i].ifindex, &tab[i].linktype,
                              &PyBytes_Type, &idb)) {
            free_table(tab, (unsigned)i);
            Py_DECREF(seq);
            return NULL;
        }
        Py_INCREF(idb);
        tab[i].idb = idb;
    }
    Py_DECREF(seq);
    unsigned old_n = self->n_ifs;
    if (self->buf_len) {
        int ok = (size_t)n >= old_n && !shb;
        for (unsigned i = 0; ok && i < old_n; i++)
            ok = tab[i].ifindex == self->ifs[i].ifindex && tab[i].linktype == self->ifs[i].linktype;
        if (!ok) {
            free_table(tab, (unsigned)n);
            PyErr_SetString(PyExc_ValueError,
                            "interface ids must stay stable within a batch: only append, or take() first");
            return NULL;
        }
        for (unsigned i = 0; i < old_n; i++) {
            tab[i].packets = self->ifs[i].packets;
            tab[i].bytes = self->ifs[i].bytes;
        }
    }
    if (shb) {
        Py_INCREF(shb);
        Py_SETREF(self->shb, shb);
    }
    free_table(self->ifs, old_n);
    self->ifs = tab;
    self->n_ifs = (unsigned)n;
    self->last_ifindex = -1;
    self->reserve = ISB_RESERVE(self->n_ifs);
    /* every batch must hold its header, the trailer and one full-size packet */
    size_t need = header_size(self) + self->reserve + self->snaplen + 64;
    if (need > self->buf_cap)
        self->buf_cap = (need + 3) & ~(size_t)3;
    if (!self->buf_len) {
        if ((self->buf_taken || (size_t)PyByteArray_GET_SIZE(self->buf) < self->buf_cap) && !new_buffer(self))
            return NULL;
    } else if (self->hdr_ifs < self->n_ifs) {
        size_t extra = 0;
        for (unsigned i = self->hdr_ifs; i < self->n_ifs; i++)
            extra += (size_t)PyBytes_GET_SIZE(self->ifs[i].idb);
        if (self->buf_len + extra + self->reserve <= self->buf_size) {
            uint8_t *out = (uint8_t *)PyByteArray_AS_STRING(self->buf);
            for (unsigned i = self->hdr_ifs; i < self->n_ifs; i++) {
                size_t k = (size_t)PyBytes_GET_SIZE(self->ifs[i].idb);
                memcpy(out + self->buf_len, PyBytes_AS_STRING(self->ifs[i].idb), k);
                self->buf_len += k;
            }
            self->hdr_ifs = self->n_ifs;
        } else {
            self->batch_full = 1; /* no room for the new IDBs: they open the next batch */
        }
    }
    Py_RETURN_NONE;
}

static inline int lookup_if(Ring *self, int ifindex, unsigned *id)
{
    if (ifindex == self->last_ifindex) {
        *id = self->last_id;
        return 1;
    }
    for (unsigned i = 0; i < self->n_ifs; i++) {
        if (self->ifs[i].ifindex == ifindex) {
            self->last_ifindex = ifindex;
            self->last_id = i;
            *id = i;
            return 1;
        }
    }
    return 0;
}

/* The kernel wrote the ring from another CPU: a copy (or hash) that waits for each line in turn costs more
 * than the copy itself. drain() works through a block in chunks of up to DD_AHEAD packets or DD_AHEAD_BYTES
 * of captured bytes and reads each chunk ahead before writing it (4 KiB stay in the L1 cache until copied):
 * - dedup on: it takes their identities, which reads every byte, and asks for their table sets
 *   (hash_ahead), so each look-up finds its set in the cache (after a sleep the table is cold: the kernel,
 *   the generator and other processes ran meanwhile);
 * - dedup off, big packets (the chunk's first >= TOUCH_MIN bytes): it asks for every line of the chunk
 *   (touch_ahead; 1500 B packets: a third less CPU than below);
 * - otherwise (and with dedup on too, for the next chunk's first packet) it asks for the next packet's
 *   first three lines while it copies one (small packets: walking a chunk twice cost more than it saved). */
#define TOUCH_MIN 512u
#define DD_AHEAD 32u
#define DD_AHEAD_BYTES 4096u

/* The identities of up to n packets from h into keys, up to DD_AHEAD_BYTES of them (a big packet takes
 * longer to hash than its set takes to arrive, and the bytes hashed should stay in L1 for the copy);
 * returns how many (>= 1). */
static inline unsigned hash_ahead(Ring *self, struct tpacket3_hdr *h, unsigned n, uint64_t *keys)
{
    uint32_t bytes = 0;
    for (unsigned i = 0;;) {
        struct sockaddr_ll *sll = (struct sockaddr_ll *)((uint8_t *)h + TPACKET_ALIGN(sizeof(struct tpacket3_hdr)));
        unsigned id;
        keys[i] = 0;
        if (lookup_if(self, sll->sll_ifindex, &id)) { /* else stale: write_epb() counts it, no look-up */
            keys[i] = dd_identity(self->dd, (const uint8_t *)h + h->tp_mac, h->tp_snaplen, h->tp_len,
                                  self->ifs[id].linktype);
            dd_prefetch(self->dd, keys[i]);
        }
        bytes += h->tp_snaplen;
        if (++i == n || bytes >= DD_AHEAD_BYTES)
            return i;
        h = rx_next_packet(h);
    }
}

/* Ask for every line of up to n packets from h (ring header, data and the header after it), up to
 * DD_AHEAD_BYTES of captured bytes; returns how many (>= 1). */
static inline unsigned touch_ahead(struct tpacket3_hdr *h, unsigned n)
{
    uint32_t bytes = 0;
    for (unsigned i = 0;;) {
        const uint8_t *p = (const uint8_t *)((uintptr_t)h & ~(uintptr_t)63);
        uint32_t span = h->tp_next_offset ? h->tp_next_offset + 64u : h->tp_mac + h->tp_snaplen;
        if (span > DD_AHEAD_BYTES) /* a big packet: its start; the copy streams the rest */
            span = DD_AHEAD_BYTES;
        for (const uint8_t *end = (const uint8_t *)h + span; p < end; p += 64)
            __builtin_prefetch(p);
        bytes += h->tp_snaplen;
        if (++i == n || bytes >= DD_AHEAD_BYTES)
            return i;
        h = rx_next_packet(h);
    }
}

/* Copy one packet into the batch as an EPB; with dd_on, `key` is its identity (hash_ahead) and a copy
 * is counted instead. Returns 0 when it does not fit. */
static inline int write_epb(Ring *self, uint8_t *out, struct tpacket3_hdr *h, int dd_on, uint64_t key)
{
    struct sockaddr_ll *sll = (struct sockaddr_ll *)((uint8_t *)h + TPACKET_ALIGN(sizeof(struct tpacket3_hdr)));
    unsigned id;
    if (!lookup_if(self, sll->sll_ifindex, &id)) {
        self->stale++;
        return 1;
    }
    const uint8_t *data = (const uint8_t *)h + h->tp_mac;
    uint32_t caplen = h->tp_snaplen, wirelen = h->tp_len;
    uint64_t ns = (uint64_t)h->tp_sec * 1000000000ull + h->tp_nsec;
    if (dd_on && dd_check(self->dd, key, ns, sll->sll_ifindex)) {
        self->ifs[id].dup_packets++;
        self->ifs[id].dup_bytes += caplen;
        return 1;
    }
    int vlan = (h->tp_status & TP_STATUS_VLAN_VALID) && self->ifs[id].linktype == LINKTYPE_ETHERNET &&
               caplen >= 12;
    uint32_t outlen = caplen + (vlan ? 4u : 0u);
    if (outlen > self->snaplen) /* a restored tag must not take a frame cut at snaplen past the IDB's snaplen: */
        outlen = self->snaplen; /* libpcap refuses a packet longer than its interface's snaplen */
    uint32_t total = epb_total(outlen);
    if (!self->buf_len)
        write_header(self, out);
    if (id >= self->hdr_ifs || self->buf_len + total + self->reserve > self->buf_size)
        return 0;
    uint8_t *p = epb_start(out + self->buf_len, total, id, ns, outlen, wirelen + (vlan ? 4u : 0u));
    if (vlan) {
        /* The NIC or kernel stripped the 802.1Q tag into the ring header: put it back
         * after the MAC addresses so the frame is as it was on the wire. */
        uint16_t tpid = (h->tp_status & TP_STATUS_VLAN_TPID_VALID) ? h->hv1.tp_vlan_tpid : ETH_P_8021Q;
        uint16_t tag[2] = {htons(tpid), htons((uint16_t)h->hv1.tp_vlan_tci)};
        memcpy(p, data, 12);
        memcpy(p + 12, tag, 4);
        memcpy(p + 16, data + 12, outlen - 16); /* outlen >= 16: caplen >= 12, snaplen >= 64 */
        self->vlan_restored++;
    } else {
        memcpy(p, data, outlen);
    }
    epb_finish(p, outlen, total);
    if (self->n_rules)
        ag_match(self->ag, p, outlen, sll->sll_ifindex, self->ifs[id].linktype,
                 sll->sll_pkttype);

    self->buf_len += total;
    if (!self->batch_packets)
        self->first_ns = ns;
    self->last_ns = ns;
    self->batch_packets++;
    self->ifs[id].packets++;
    self->ifs[id].bytes += outlen;
    return 1;
}

/* Drain ready blocks into the batch buffer. Called without the GIL. Returns packets written. */
static uint64_t drain(Ring *self, uint8_t *out)
{
    uint64_t before = self->batch_packets;
    int dd_on = self->dd && self->n_ifs > 1; /* one interface: no copy to meet */
    uint64_t keys[DD_AHEAD];
    self->drained_blocks = 0;
    struct tpacket_block_desc *bd;
    while ((bd = rx_block_ready(&self->rx))) {
        struct tpacket3_hdr *h;
        unsigned left;
        if (self->pend_pkt) {
            h = self->pend_pkt;
            left = self->pend_left;
        } else {
            h = rx_first_packet(bd);
            left = bd->hdr.bh1.num_pkts;
        }
        while (left) {
            unsigned chunk = left < DD_AHEAD ? left : DD_AHEAD;
            int touched = !dd_on && h->tp_snaplen >= TOUCH_MIN;
            if (dd_on)
                chunk = hash_ahead(self, h, chunk, keys);
            else if (touched)
                chunk = touch_ahead(h, chunk);
            for (unsigned i = 0; i < chunk; i++) {
                if (!touched) { /* the next packet's header and first bytes, while this one is copied */
                    const uint8_t *nx = (const uint8_t *)h + h->tp_next_offset;
                    __builtin_prefetch(nx);
                    __builtin_prefetch(nx + 64);
                    __builtin_prefetch(nx + 128);
                }
                if (!write_epb(self, out, h, dd_on, dd_on ? keys[i] : 0)) {
                    if (!self->batch_packets)
                        self->buf_len = 0; /* a header alone is no batch */
                    self->pend_pkt = h;
                    self->pend_left = left;
                    self->batch_full = 1;
                    return self->batch_packets - before;
                }
                left--;
                h = rx_next_packet(h);
            }
        }
        self->pend_pkt = NULL;
        self->pend_left = 0;
        rx_block_release(&self->rx, bd);
        self->drained_blocks++;
    }
    return self->batch_packets - before;
}

/* drain(), its CPU time (the calling thread's: not the time asleep or preempted) added to drain_ns: two
 * clock reads per read() call, not per packet. */
static uint64_t drain_timed(Ring *self, uint8_t *out)
{
    struct timespec a, b;
    int timed = clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a) == 0;
    uint64_t n = drain(self, out);
    if (timed && clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b) == 0)
        self->drain_ns += (uint64_t)((b.tv_sec - a.tv_sec) * 1000000000ll + (b.tv_nsec - a.tv_nsec));
    return n;
}

/* read(timeout_ms, linger_ms=0) -> packets appended. Waits up to timeout_ms only when no block
 * is ready.
 *
 * linger_ms: while traffic flows, sleep that long before draining instead of waking for every
 * block the kernel retires (every block timeout, 10 ms by default). A wake-up costs tens of
 * microseconds of CPU on a VM, more than a block's worth of copying at moderate rates. Only
 * after a drain that emptied the ring and took back under 1/8 of its blocks (the ring is in no
 * danger of filling), and never while Antigena rules are active (they act as packets are read). */
static PyObject *Ring_read(Ring *self, PyObject *args)
{
    int timeout_ms = 100, linger_ms = 0;
    if (!PyArg_ParseTuple(args, "|ii", &timeout_ms, &linger_ms))
        return NULL;
    if (check_open(self) < 0)
        return NULL;
    if (self->batch_full)
        return PyLong_FromLong(0);
    if (self->buf_taken && !new_buffer(self))
        return NULL;
    uint8_t *out = (uint8_t *)PyByteArray_AS_STRING(self->buf);
    uint64_t n;
    int err = 0;
    int linger = linger_ms > 0 && timeout_ms != 0 && !self->n_rules && !self->pend_pkt &&
                 self->drained_blocks > 0 && self->drained_blocks < self->rx.block_nr / 8;
    self->busy = 1;
    Py_BEGIN_ALLOW_THREADS
    int woken = linger ? rx_sleep(&self->rx, linger_ms) : 0; /* a sleep that wake() can end */
    n = drain_timed(self, out);
    if (!n && !self->batch_full && timeout_ms != 0 && !woken) {
        woken = rx_wait(&self->rx, timeout_ms);
        if (woken < 0)
            err = errno;
        else
            n = drain_timed(self, out);
    }
    if (woken > 0) /* consume the wake-up: the next read waits again */
        rx_clear_wake(&self->rx);
    Py_END_ALLOW_THREADS
    self->busy = 0;
    if (err) {
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromUnsignedLongLong(n);
}

static PyObject *per_if_counts(Ring *self)
{
    PyObject *per_if = PyList_New(self->n_ifs);
    if (!per_if)
        return NULL;
    for (unsigned i = 0; i < self->n_ifs; i++) {
        PyObject *t = Py_BuildValue("(KK)", (unsigned long long)self->ifs[i].packets,
                                    (unsigned long long)self->ifs[i].bytes);
        if (!t) {
            Py_DECREF(per_if);
            return NULL;
        }
        PyList_SET_ITEM(per_if, i, t);
    }
    return per_if;
}

/* batch_counts() -> (interfaces with an IDB in this batch, [(packets, bytes) per interface id]) */
static PyObject *Ring_batch_counts(Ring *self, PyObject *Py_UNUSED(ignored))
{
    if (check_open(self) < 0)
        return NULL;
    return Py_BuildValue("(IN)", self->hdr_ifs, per_if_counts(self));
}

/* take(trailer=b"") -> (section: memoryview, packets, first_ns, last_ns, [(packets, bytes) per id])
 * Appends the trailer (the ISBs) and hands the whole pcapng section to Python as a memoryview
 * of the batch buffer — no copy. The buffer is reused once that view is gone. */
static PyObject *Ring_take(Ring *self, PyObject *args)
{
    Py_buffer trailer = {0};
    if (!PyArg_ParseTuple(args, "|y*", &trailer))
        return NULL;
    if (self->buf_taken) { /* nothing read since the last take(): no batch to hand out */
        PyBuffer_Release(&trailer);
        PyErr_SetString(PyExc_RuntimeError, "take(): no batch since the last take()");
        return NULL;
    }
    if (check_open(self) < 0) {
        PyBuffer_Release(&trailer);
        return NULL;
    }
    if (self->buf_len + (size_t)trailer.len > (size_t)PyByteArray_GET_SIZE(self->buf)) {
        if (PyByteArray_Resize(self->buf, (Py_ssize_t)(self->buf_len + (size_t)trailer.len)) < 0) {
            PyBuffer_Release(&trailer);
            return NULL;
        }
        self->buf_size = (size_t)PyByteArray_GET_SIZE(self->buf);
    }
    memcpy(PyByteArray_AS_STRING(self->buf) + self->buf_len, trailer.buf, (size_t)trailer.len);
    size_t len = self->buf_len + (size_t)trailer.len;
    PyBuffer_Release(&trailer);
    PyObject *per_if = per_if_counts(self);
    if (!per_if)
        return NULL;
    PyObject *whole = PyMemoryView_FromObject(self->buf);
    PyObject *view = whole ? PySequence_GetSlice(whole, 0, (Py_ssize_t)len) : NULL;
    Py_XDECREF(whole);
    if (!view) {
        Py_DECREF(per_if);
        return NULL;
    }
    unsigned long long pk = self->batch_packets, f = self->first_ns, l = self->last_ns;
    for (unsigned i = 0; i < self->n_ifs; i++)
        self->ifs[i].packets = self->ifs[i].bytes = 0;
    /* The next buffer is chosen at the next read(), not now: by then Python has usually let go of
     * this one (compressed, or sent), and the same buffer serves again: one buffer's pages
     * resident instead of two. */
    start_batch(self);
    self->buf_taken = 1;
    return Py_BuildValue("(NKKKN)", view, pk, f, l, per_if);
}

/* join_fanout(group_id, mode): share the traffic with the other sockets of this fanout group
 * (PACKET_FANOUT_HASH keeps each flow on one socket; the kernel defragments first so
 * fragments follow their flow). Only after start(): the kernel requires a bound socket. */
static PyObject *Ring_join_fanout(Ring *self, PyObject *args)
{
    unsigned group, mode;
    if (!PyArg_ParseTuple(args, "II", &group, &mode))
        return NULL;
    if (check_open(self) < 0)
        return NULL;
    if (!self->rx.started) {
        PyErr_SetString(PyExc_RuntimeError, "join_fanout() needs a started ring");
        return NULL;
    }
    if (rx_join_fanout(&self->rx, group, mode) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* set_dedup(window_ms, share_with=None): suppress copies of one packet seen on another interface
 * within window_ms (0: off); share_with: a Ring of the same fanout group whose table to share. */
static PyObject *Ring_set_dedup(Ring *self, PyObject *args)
{
    unsigned window_ms;
    PyObject *peer = Py_None;
    if (!PyArg_ParseTuple(args, "I|O", &window_ms, &peer) || check_open(self) < 0)
        return NULL;
    if (peer != Py_None && (!PyObject_TypeCheck(peer, Py_TYPE(self)) || !((Ring *)peer)->dd)) {
        PyErr_SetString(PyExc_ValueError, "share_with must be a Ring with dedup on");
        return NULL;
    }
    struct dd_table *t = NULL;
    if (peer != Py_None)
        t = dd_share(((Ring *)peer)->dd);
    else if (window_ms && !(t = dd_new(window_ms)))
        return errno == ENOMEM ? PyErr_NoMemory() : PyErr_SetFromErrno(PyExc_OSError);
    dd_release(self->dd);
    self->dd = t;
    Py_RETURN_NONE;
}

/* take_duplicates() -> [(packets, bytes) suppressed per interface id] since the last call */
static PyObject *Ring_take_duplicates(Ring *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *l = PyList_New(self->n_ifs);
    for (unsigned i = 0; l && i < self->n_ifs; i++) {
        PyObject *t = Py_BuildValue("(KK)", (unsigned long long)self->ifs[i].dup_packets,
                                    (unsigned long long)self->ifs[i].dup_bytes);
        if (!t)
            Py_CLEAR(l);
        else
            PyList_SET_ITEM(l, i, t);
        self->ifs[i].dup_packets = self->ifs[i].dup_bytes = 0;
    }
    return l;
}

/* kernel_stats() -> (packets, drops, freezes), cumulative since the socket opened.
 * The kernel resets its counters on every read, so we accumulate. packets includes drops. */
static PyObject *Ring_kernel_stats(Ring *self, PyObject *Py_UNUSED(ignored))
{
    if (check_not_closed(self) < 0)
        return NULL;
    struct tpacket_stats_v3 st;
    if (rx_stats(&self->rx, &st) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    self->k_packets += st.tp_packets;
    self->k_drops += st.tp_drops;
    self->k_freezes += st.tp_freeze_q_cnt;
    return Py_BuildValue("(KKK)", (unsigned long long)self->k_packets, (unsigned long long)self->k_drops,
                         (unsigned long long)self->k_freezes);
}

static PyObject *Ring_fileno(Ring *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromLong(self->rx.fd);
}

/* wake(): end the reader's current or next wait in read() at once. Any thread, no GIL needed
 * by the reader; used for interface changes and for stopping. */
static PyObject *Ring_wake(Ring *self, PyObject *Py_UNUSED(ignored))
{
    if (rx_wake(&self->rx) < 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

static PyObject *Ring_close(Ring *self, PyObject *Py_UNUSED(ignored))
{
    if (self->busy) {
        PyErr_SetString(PyExc_RuntimeError, "Ring is being read by another thread");
        return NULL;
    }
    rx_close(&self->rx);
    Py_RETURN_NONE;
}

static PyObject *Ring_get_ring_bytes(Ring *self, void *Py_UNUSED(c))
{
    return PyLong_FromSize_t(self->rx.map_len);
}
static PyObject *Ring_get_batch_bytes(Ring *self, void *Py_UNUSED(c))
{
    return PyLong_FromSize_t(self->buf_len);
}
static PyObject *Ring_get_batch_full(Ring *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->batch_full);
}
#define U64_GETTER(field)                                                                                     \
    static PyObject *Ring_get_##field(Ring *self, void *Py_UNUSED(c))                                      \
    {                                                                                                         \
        return PyLong_FromUnsignedLongLong(self->field);                                                      \
    }
U64_GETTER(batch_packets)
U64_GETTER(stale)
U64_GETTER(vlan_restored)
U64_GETTER(drain_ns)
U64_GETTER(buffers_made)

/* set_batch_bytes(n) -> the batch size now in force: batches (header, packets and the trailer's
 * reserve) are cut at n bytes from now on, but never below what one full-size packet needs. The batch
 * being filled is cut at once if it already holds more. Called by the reader thread between reads. */
static PyObject *Ring_set_batch_bytes(Ring *self, PyObject *arg)
{
    unsigned long long n = PyLong_AsUnsignedLongLong(arg);
    if (n == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    size_t need = header_size(self) + self->reserve + self->snaplen + 64;
    size_t cap = n < need ? need : (size_t)n;
    self->buf_cap = cap & ~(size_t)3;
    if (self->buf_cap < need)
        self->buf_cap = (need + 3) & ~(size_t)3;
    if (self->buf_size > self->buf_cap) {
        if (self->buf_len + self->reserve > self->buf_cap)
            self->batch_full = 1; /* already past the new size: the reader cuts it now */
        else
            self->buf_size = self->buf_cap;
    }
    return PyLong_FromSize_t(self->buf_cap);
}

/* trim(keep) -> buffers released. Lets go of pooled batch buffers nobody uses (their memory goes
 * back to the system) until at most `keep` stay pooled: after a burst, the pool need not hold
 * the queue's worth of memory for ever. */
static PyObject *Ring_trim(Ring *self, PyObject *arg)
{
    long keep = PyLong_AsLong(arg);
    if (keep == -1 && PyErr_Occurred())
        return NULL;
    unsigned held = 0, released = 0;
    for (unsigned i = 0; i < self->pool_n; i++)
        held += self->pool[i] != NULL;
    for (unsigned i = 0; i < self->pool_n && (long)held > keep; i++) {
        PyObject *c = self->pool[i];
        if (c && c != self->buf && Py_REFCNT(c) == 1) {
            self->pool[i] = NULL;
            Py_DECREF(c);
            held--;
            released++;
        }
    }
    return PyLong_FromUnsignedLong(released);
}

/* ready() -> (blocks the kernel has handed over and the reader has not drained, blocks in the ring).
 * How full the ring is: the reader may leave packets here while shipping catches up (the ring's
 * memory is paid for already; a queued batch is more), and must not once half of it is taken. */
static PyObject *Ring_ready(Ring *self, PyObject *Py_UNUSED(ignored))
{
    if (check_not_closed(self) < 0) /* not check_open(): a look from another thread while the reader reads is fine */
        return NULL;
    return Py_BuildValue("(II)", rx_ready_blocks(&self->rx), self->rx.block_nr);
}

static PyObject *Ring_get_rules_active(Ring *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->n_rules != 0);
}

static PyGetSetDef Ring_getset[] = {
    {"rules_active", (getter)Ring_get_rules_active, NULL,
     "Antigena rules are set: packets must be read as they come", NULL},
    {"buffers_made", (getter)Ring_get_buffers_made, NULL,
     "batch buffers allocated, not reused from the pool (fresh pages to fault in)", NULL},
    {"ring_bytes", (getter)Ring_get_ring_bytes, NULL, "size of the kernel ring obtained", NULL},
    {"batch_bytes", (getter)Ring_get_batch_bytes, NULL, "bytes in the batch being filled", NULL},
    {"batch_packets", (getter)Ring_get_batch_packets, NULL, "packets in the batch being filled", NULL},
    {"batch_full", (getter)Ring_get_batch_full, NULL, "the next packet does not fit: take() now", NULL},
    {"stale", (getter)Ring_get_stale, NULL, "packets skipped from interfaces no longer selected", NULL},
    {"vlan_restored", (getter)Ring_get_vlan_restored, NULL, "802.1Q tags put back into frames", NULL},
    {"drain_ns", (getter)Ring_get_drain_ns, NULL, "CPU ns spent copying packets out of the ring (read's work)", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyMethodDef Ring_methods[] = {
    {"attach_filter", (PyCFunction)Ring_attach_filter, METH_O, "attach a classic BPF program [(code, jt, jf, k)]"},
    {"start", (PyCFunction)Ring_start, METH_NOARGS, "bind to all interfaces: capture starts"},
    {"set_interfaces", (PyCFunction)Ring_set_interfaces, METH_VARARGS,
     "set_interfaces([(ifindex, linktype, idb)], shb=None); position = pcapng interface id"},
    {"read", (PyCFunction)Ring_read, METH_VARARGS, "read(timeout_ms, linger_ms=0) -> packets appended to the batch"},
    {"take", (PyCFunction)Ring_take, METH_VARARGS,
     "take(trailer) -> (section memoryview, packets, first_ns, last_ns, per_if)"},
    {"batch_counts", (PyCFunction)Ring_batch_counts, METH_NOARGS, "(interfaces in batch, [(packets, bytes)])"},
    {"kernel_stats", (PyCFunction)Ring_kernel_stats, METH_NOARGS, "(packets, drops, freezes) cumulative"},
    {"join_fanout", (PyCFunction)Ring_join_fanout, METH_VARARGS, "join_fanout(group, mode): PACKET_FANOUT"},
    {"set_dedup", (PyCFunction)Ring_set_dedup, METH_VARARGS, "set_dedup(window_ms, share_with=None); 0: off"},
    {"take_duplicates", (PyCFunction)Ring_take_duplicates, METH_NOARGS, "[(packets, bytes)] suppressed per id"},
    {"fileno", (PyCFunction)Ring_fileno, METH_NOARGS, "socket file descriptor"},
    {"set_batch_bytes", (PyCFunction)Ring_set_batch_bytes, METH_O,
     "set_batch_bytes(n) -> bytes: cut batches at n bytes from now on (at least one full-size packet)"},
    {"trim", (PyCFunction)Ring_trim, METH_O, "trim(keep): release idle pooled batch buffers beyond keep"},
    {"ready", (PyCFunction)Ring_ready, METH_NOARGS, "(blocks ready for the reader, blocks in the ring)"},
    {"wake", (PyCFunction)Ring_wake, METH_NOARGS, "end the reader's wait in read() at once (any thread)"},
    {"close", (PyCFunction)Ring_close, METH_NOARGS, "unmap the ring and close the socket"},
    {"set_rules", (PyCFunction)Ring_set_rules, METH_O, "Antigena: set [(id, kind, family, a, b, pa, pb)]"},
    {"take_hits", (PyCFunction)Ring_take_hits, METH_NOARGS, "Antigena: [(rule_id, ifindex, linktype, pkttype, hdrs)]"},
    {"antigena_stats", (PyCFunction)Ring_antigena_stats, METH_NOARGS, "(rules, matched, hits, overflow, skipped)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject RingType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "ossensor._native.Ring",
    .tp_doc = "TPACKET_V3 capture ring that writes pcapng EPBs into batch buffers",
    .tp_basicsize = sizeof(Ring),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Ring_new,
    .tp_init = (initproc)Ring_init,
    .tp_dealloc = (destructor)Ring_dealloc,
    .tp_methods = Ring_methods,
    .tp_getset = Ring_getset,
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT, "ossensor._native", "ossensor capture hot path", -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void)
{
    if (PyType_Ready(&RingType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&native_module);
    if (!m)
        return NULL;
    Py_INCREF(&RingType);
    if (PyModule_AddIntConstant(m, "POOL_MAX", POOL_MAX) < 0 ||
        PyModule_AddObject(m, "Ring", (PyObject *)&RingType) < 0) {
        Py_DECREF(&RingType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
