"""Live capture: one ring for all selected interfaces, cut into batches.

The reader thread is the only one that touches the Ring: it reads (GIL released
in C), cuts a batch when it is full or old enough, wraps it as a pcapng section
and hands it on. Interface changes are applied between reads: appended within a
batch (ids stay stable), compacted only at a batch boundary.
"""

from __future__ import annotations

import itertools
import threading
import time
from typing import Callable, Iterator

from ossensor.ops import log as L
from ossensor.ship.accounting import Accounting
from ossensor import pcapng
from ossensor.ship.batch import Batch, BatchQueue, packet_hex, trailer
from ossensor.capture import bpf
from ossensor.interfaces.netlink import Interface

BLOCK_SIZE = 1 << 20  # ring block: a power of two, a multiple of any page size (4 KiB .. 64 KiB)
# While packets flow (and no Antigena rule is active), the reader sleeps this long between drains
# instead of waking at every retired block: each wake-up costs CPU (tens of µs on a VM), and batches
# are cut every OSSENSOR_BATCH_MAX_AGE_MS anyway. The C side skips it when the ring is filling.
READ_LINGER_MS = 40
# With no traffic the reader waits this long for a block; interface changes and stopping wake it at
# once (Ring.wake), so this only sets how often an idle loop turns (liveness, batch age).
IDLE_WAIT_MS = 250
# Back-pressure: while a full batch's worth of bytes waits in the shipping queue, the reader leaves
# packets in the kernel ring (memory already paid for) instead of copying them into more batches
# (fresh memory to fault in, more RSS). It reads again when the shipper takes a batch, or when the
# ring is half full whatever the queue holds, so the ring does not overflow on account of waiting.
# It does not wait once the queue has run (nearly) full, until it is almost empty again - shipping
# cannot keep up: the queue then bounds and counts what is lost, as without waiting, and the ring
# stays empty for the reader's stalls - nor while Antigena rules are active (they act as packets are
# read). A burst then costs no memory beyond the ring and a few batches.
HOLD_BATCHES = 1
HOLD_WAIT_S = 0.01  # the longest wait before the ring is looked at again
# Batch buffers: the ring keeps for reuse as many as can wait to be sent (pool_buffers: the queue's
# worth + the one being filled + the one being sent), so a queue that stays full does not fault in
# a fresh buffer for every batch (~2 ms per 4 MiB here). Once nothing has waited in the queue for
# POOL_TRIM_AFTER_S, idle buffers beyond POOL_KEEP go back to the system.
POOL_KEEP = 8
POOL_TRIM_AFTER_S = 10.0


def pool_buffers_for(queue_bytes: int, batch_bytes: int) -> int:
    """Batch buffers worth pooling: as many as can wait in the queue and in flight (the caller adds
    OSSENSOR_INFLIGHT_MB to the queue's bytes), + the one filling + one more; at least POOL_KEEP, at most what the ring can hold (native/ring.c POOL_MAX)."""
    from ossensor._native import POOL_MAX

    return min(POOL_MAX, max(POOL_KEEP, queue_bytes // batch_bytes + 2))


class Delivered:
    """Packets delivered into batches, cumulative per interface name (the ISBs' isb_usrdeliv);
    shared, under a lock, by the readers of a fanout group."""

    def __init__(self):
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def add(self, per_name: dict[str, tuple[int, int]], names: list[str]) -> list[int]:
        """Count a batch; the totals for `names`, in that order."""
        with self._lock:
            for name, (p, _) in per_name.items():
                self._counts[name] = self._counts.get(name, 0) + p
            return [self._counts.get(n, 0) for n in names]

    def keep(self, names: set[str]) -> None:
        with self._lock:
            self._counts = {n: c for n, c in self._counts.items() if n in names}


class LiveCapture:
    def __init__(self, *, ring_bytes: int, block_timeout_ms: int, snaplen: int, batch_bytes: int,
                 batch_age_s: float, filter_expr: str, log: L.Log, accounting: Accounting,
                 seq_source: Iterator[int] | None = None,
                 totals: Callable[[], tuple[int, int, int]] | None = None,
                 delivered: "Delivered | None" = None, pool_buffers: int = POOL_KEEP,
                 dedup_window_ms: int = 0):
        """seq_source, totals and delivered are shared by the readers of a fanout group
        (capture/fanout.py): one sequence of batch numbers, ring-wide counters summed over the
        group's rings, and one count per interface of the packets delivered into batches.
        dedup_window_ms: a copy of a packet captured on another interface within that window is
        counted (stage "duplicate"), not written (native/dedup.h); 0: every copy is written."""
        from ossensor._native import Ring

        self.snaplen = snaplen
        self.batch_bytes = batch_bytes
        self.batch_age_s = batch_age_s
        self.filter_expr = filter_expr
        self.log = log
        self.acct = accounting
        self.ring = Ring(ring_bytes=ring_bytes, block_size=BLOCK_SIZE, block_timeout_ms=block_timeout_ms,
                         snaplen=snaplen, batch_bytes=batch_bytes, pool_buffers=pool_buffers)
        if dedup_window_ms:
            self.ring.set_dedup(dedup_window_ms)
        self._settle_s = 2 * block_timeout_ms / 1000 + 0.02  # a filter swap's last packets are read by then
        self._compact_after = 0.0
        self.ring.attach_filter([(bpf.BPF_RET_K, 0, 0, 0)])  # nothing until interfaces are set
        self._table: list[Interface] = []      # id order of the batch being filled
        self._delivered = delivered if delivered is not None else Delivered()  # per interface name
        self._pending: list[Interface] | None = None
        self._pending_prog: list[bpf.Insn] | None = None  # attached once the table holds its interfaces
        self._bodies: dict[int, list[bpf.Insn]] = {}  # libpcap program per link type (hot-plug: no recompiling)
        self._started = False
        self._lock = threading.Lock()
        self._seq = 0
        self._seq_source = seq_source if seq_source is not None else itertools.count(1)
        self._totals = totals if totals is not None else self.totals
        self.program: list[bpf.Insn] | None = None  # what the kernel runs now
        self._batch_started = 0.0
        self.held = 0  # loop turns that left packets in the ring while shipping caught up
        self._overloaded = False  # the queue ran (nearly) full and has not emptied since: no waiting
        self._queue_busy_at = 0.0  # when a batch last waited in the queue (pool trimming)
        self._idbs: dict[tuple[str, int], bytes] = {}
        self._batch_bytes_pending: int | None = None  # set_batch_bytes(), applied by the reader thread
        self._ledger = None       # ship/kill_ledger.py: packets read, stored once per loop turn (SIGKILL accounting)
        self._ledger_slot = 0
        self._cut_packets = 0     # packets in the batches this reader cut
        self.ring.set_interfaces([], pcapng.shb())
        # Ethernet's program is compiled now, while the process may still open the live libpcap
        # handle it needs (capabilities are dropped later): an Ethernet interface hot-plugged
        # after start gets the same `vlan` semantics as one present at start.
        self._body_for(pcapng.LINKTYPE_ETHERNET)

    @property
    def ring_bytes(self) -> int:
        return self.ring.ring_bytes

    @property
    def buffers_made(self) -> int:
        """Batch buffers allocated rather than reused from the ring's pool (each costs fresh pages)."""
        return self.ring.buffers_made

    def program_for(self, interfaces: list[Interface]) -> list[bpf.Insn]:
        groups: dict[int, list[int]] = {}
        for iface in interfaces:
            groups.setdefault(iface.linktype, []).append(iface.index)
        return bpf.build_program([(ixs, self._body_for(lt)) for lt, ixs in groups.items()])

    def _body_for(self, linktype: int) -> list[bpf.Insn]:
        """libpcap's program for the filter on one link type, compiled once. An expression that
        cannot match on this link type (`arp` on a raw-IP tun) selects nothing there; any other
        failure is an error naming the link type."""
        body = self._bodies.get(linktype)
        if body is None:
            try:
                body = bpf.compile_expr(self.filter_expr, linktype, self.snaplen, live=True)
            except bpf.FilterError as err:
                if linktype == pcapng.LINKTYPE_ETHERNET and "rejects all packets" not in str(err):
                    raise bpf.FilterError(f"does not compile for link type {linktype}: {err}") from None
                # e.g. `arp` or `ether host ...` on a raw-IP tun: no packet there can match
                self.log.warning(f"BPF selects nothing on link type {linktype} interfaces: {err}")
                body = [(bpf.BPF_RET_K, 0, 0, 0)]
            self._bodies[linktype] = body
        return body

    @property
    def interfaces(self) -> list[Interface]:
        """What is (or is about to be) captured."""
        with self._lock:
            return list(self._pending if self._pending is not None else self._table)

    def set_interfaces(self, interfaces: list[Interface]) -> None:
        """Called from any thread. Before start() it applies at once; afterwards the reader thread
        applies it at once (wake() ends its wait): first the table (new interfaces appended),
        then the new filter, so no packet of a new interface arrives before its table entry
        (it would be skipped as stale). Removed interfaces stop at the filter swap; their
        entries leave the table at the next batch boundary."""
        prog = self.program_for(interfaces)
        with self._lock:
            self._pending = list(interfaces)
            self._pending_prog = prog
            if not self._started:
                self._apply_pending()
                return
        self.ring.wake()  # the reader applies it now, not after its current wait

    def wake(self) -> None:
        """End the reader's current wait (stop, or a change to apply). Any thread."""
        self.ring.wake()

    def _apply_pending(self) -> None:
        """Reader thread (or before start). New interfaces are appended; removed ones leave
        the table only at a batch boundary, so ids stay stable within a section."""
        if self._pending is None:
            return
        wanted = {i.index: i for i in self._pending}
        now = time.monotonic()
        if self._pending_prog is not None and self._started:
            # the new filter goes in now; packets of removed interfaces that the kernel captured
            # before it can still sit in a block it has not retired yet (up to one block timeout):
            # keep their table entries until those are read, or they would be skipped as stale
            self._compact_after = now + self._settle_s
        if self.ring.batch_packets or now < self._compact_after:
            known = {i.index: i.linktype for i in self._table}
            table = self._table + [i for i in self._pending if i.index not in known]
        else:
            table = list(self._pending)
            self._pending = None
        self.count_duplicates()  # by the ids of the table being replaced
        for i, iface in enumerate(table):
            if iface.index in wanted and wanted[iface.index].linktype == iface.linktype:
                table[i] = wanted[iface.index]  # a rename keeps the id, takes the new name
        self.ring.set_interfaces([(i.index, i.linktype, self._idb(i)) for i in table])
        self._table = table
        if self._pending is None:  # compacted: forget the counters of interfaces gone (bounded memory)
            self._delivered.keep({i.name for i in table})
        if self._pending_prog is not None:
            self.ring.attach_filter(self._pending_prog)
            self.program, self._pending_prog = self._pending_prog, None

    def _idb(self, iface: Interface) -> bytes:
        key = (iface.name, iface.linktype)
        blk = self._idbs.get(key)
        if blk is None:
            if len(self._idbs) > 4096:  # interfaces come and go: keep the cache bounded
                self._idbs.clear()
            blk = self._idbs[key] = pcapng.idb(iface.name, iface.linktype, self.snaplen)
        return blk

    def attach_ledger(self, ledger, slot: int = 0) -> None:
        """Count what this reader took out of the ring (cut batches and the open one) in `ledger`'s
        slot, once per loop turn: a SIGKILL's loss is counted by the next start (ship/kill_ledger.py)."""
        self._ledger, self._ledger_slot = ledger, slot

    def _note_read(self) -> None:
        if self._ledger is not None:
            self._ledger.set_read(self._ledger_slot, self._cut_packets + self.ring.batch_packets)

    def set_batch_bytes(self, nbytes: int) -> None:
        """Cut batches at `nbytes` (the vSensor's body limit, learnt: ship/body_limit.py), framing
        included, from the reader's next turn on (any thread)."""
        self._batch_bytes_pending = nbytes
        self.wake()

    def _apply_batch_bytes(self) -> None:
        nbytes, self._batch_bytes_pending = self._batch_bytes_pending, None
        if nbytes is not None and nbytes < self.batch_bytes:
            self.batch_bytes = self.ring.set_batch_bytes(nbytes)
            self.log(L.BASIC, f"batches now cut at {self.batch_bytes} bytes (the vSensor takes at most "
                              f"{nbytes} bytes per batch)")

    def start(self) -> None:
        with self._lock:
            self._started = True
        self.ring.start()

    def count_duplicates(self) -> None:
        """Reader thread: the copies the ring suppressed since the last call, into the accounting
        (stage "duplicate", per interface name; not a loss: the first copy was captured)."""
        names = [i.name for i in self._table]
        per_name: dict[str, tuple[int, int]] = {}
        for i, (p, b) in enumerate(self.ring.take_duplicates()):
            if p and i < len(names):
                p0, b0 = per_name.get(names[i], (0, 0))
                per_name[names[i]] = (p0 + p, b0 + b)
        if per_name:
            self.acct.add_duplicates(per_name)

    def _cut(self, ts_ns: int) -> Batch | None:
        """Close the batch: the C reader wrote its SHB, IDBs and EPBs in place; add the ISBs."""
        self.count_duplicates()
        if not self.ring.batch_packets:
            return None
        n_hdr, counts = self.ring.batch_counts()
        names = [i.name for i in self._table]
        per_name: dict[str, tuple[int, int]] = {}
        for i, (p, b) in enumerate(counts):
            if p:  # added up: a name can stand twice in the table (deleted and recreated in one batch)
                p0, b0 = per_name.get(names[i], (0, 0))
                per_name[names[i]] = (p0 + p, b0 + b)
        delivered = self._delivered.add(per_name, names[:n_hdr])
        k_seen, k_drops, stale = self._totals()
        with self.acct.lock:
            self.acct.kernel_seen, self.acct.kernel_drops, self.acct.stale = k_seen, k_drops, stale
        isbs = trailer(names[:n_hdr], ts_ns=ts_ns, delivered=delivered, kernel_seen=k_seen,
                       kernel_drops=k_drops, drops=self.acct.isb_drops(), duplicates=self.acct.isb_duplicates())
        body, packets, first_ns, last_ns, _ = self.ring.take(isbs)
        self._cut_packets += packets
        self._seq = next(self._seq_source)
        captured = sum(b for _, b in counts)
        self.acct.add_batch(packets, captured, per_name)
        if self.log.enabled(L.BATCHES):
            span = (last_ns - first_ns) / 1e6
            self.log(L.BATCHES, f"batch seq={self._seq} packets={packets} bytes={captured} "
                                f"body={len(body)} first={first_ns / 1e9:.6f} last={last_ns / 1e9:.6f} "
                                f"span_ms={span:.1f}")
        if self.log.enabled(L.PACKETS):
            for line in packet_hex(body, names):
                self.log(L.PACKETS, line)
        return Batch(self._seq, body, packets, captured, first_ns, last_ns, time.monotonic(), per_if=per_name)

    def run(self, stop: threading.Event, emit: Callable[[Batch], None],
            backlog: BatchQueue | None = None, hold: bool = True) -> None:
        """The reader loop; returns after a final drain once `stop` is set. `backlog`: the queue
        `emit` feeds (the pool is trimmed once it has been empty a while); with `hold`, while it
        holds HOLD_BATCHES batches' worth, packets wait in the ring."""
        ring = self.ring
        hold_bytes = HOLD_BATCHES * self.batch_bytes
        never_block = getattr(self.log, "never_block_this_thread", None)
        if never_block is not None:  # a stalled log write must not stall the ring's reader (ops/log.py)
            never_block()
        while not stop.is_set():
            wait = IDLE_WAIT_MS
            if self._batch_started:  # wake in time to cut the batch at its age
                due = self._batch_started + self.batch_age_s - time.monotonic()
                wait = max(1, min(wait, int(due * 1000) + 1))
            if backlog is not None:
                self._trim_pool(backlog)
            if hold and backlog is not None and self._may_hold(backlog, hold_bytes):
                self.held += 1
                backlog.wait_below(hold_bytes, min(HOLD_WAIT_S, wait / 1000))
            else:
                ring.read(wait, READ_LINGER_MS)
                self._note_read()
            if self._batch_bytes_pending is not None:
                self._apply_batch_bytes()
            hook = getattr(self, "antigena_hook", None)  # Antigena: rules in, hits out (C matched them)
            if hook is not None:
                hook(ring)
            now = time.monotonic()
            self.heartbeat = now  # liveness (/healthz): the loop turns at least every 250 ms
            if ring.batch_packets and not self._batch_started:
                self._batch_started = now
            if ring.batch_packets and (ring.batch_full or now - self._batch_started >= self.batch_age_s):
                self._flush(emit)
            with self._lock:
                if self._pending is not None:
                    self._apply_pending()
        # final drain: what the kernel already holds goes into the last batches
        while True:
            n = ring.read(0)
            self._note_read()
            if ring.batch_full:
                self._flush(emit)
            elif not n:
                break
        self._flush(emit)

    def ring_fill(self) -> float:
        """Share of the ring's blocks holding packets not read yet (any thread)."""
        ready, blocks = self.ring.ready()
        return ready / blocks

    def _trim_pool(self, backlog: BatchQueue) -> None:
        now = time.monotonic()
        if backlog.nbytes:
            self._queue_busy_at = now
        elif self._queue_busy_at and now - self._queue_busy_at > POOL_TRIM_AFTER_S:
            self._queue_busy_at = 0.0  # once per quiet spell
            released = self.ring.trim(POOL_KEEP)
            if released:
                self.log(L.BATCHES, f"released {released} idle batch buffers ({released * self.batch_bytes >> 20} MiB)")

    def _may_hold(self, backlog: BatchQueue, hold_bytes: int) -> bool:
        """Leave packets in the ring this turn? Only while a batch waits, the queue is not (nearly)
        full and has not been since it last ran almost empty (shipping is not keeping up: waiting
        would only move the losses from the queue into the ring), no Antigena rule is active, and
        the ring is under half full."""
        queued = backlog.nbytes
        if queued > backlog.max_bytes - 2 * self.batch_bytes:
            self._overloaded = True
        elif queued < hold_bytes:
            self._overloaded = False
        return (queued >= hold_bytes and not self._overloaded and not self.ring.rules_active
                and self._ring_has_room())

    def _ring_has_room(self) -> bool:
        """The ring may hold packets a while longer: under half full (the other half absorbs a
        stall of the reader: 32 MiB of a 64 MiB ring is 40 ms at 780 MB/s)."""
        return self.ring_fill() < 0.5

    def _flush(self, emit: Callable[[Batch], None]) -> None:
        self._batch_started = 0.0
        batch = self._cut(time.time_ns())
        if batch:
            emit(batch)

    def totals(self) -> tuple[int, int, int]:
        """(packets past the filter, ring drops, stale) of this ring, cumulative."""
        k_seen, k_drops, _ = self.ring.kernel_stats()
        return k_seen, k_drops, self.ring.stale

    def kernel_stats(self) -> tuple[int, int]:
        k_seen, k_drops, _ = self.ring.kernel_stats()
        return k_seen, k_drops

    def close(self) -> None:
        self.ring.close()
