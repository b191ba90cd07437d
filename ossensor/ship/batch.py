"""Batches: pcapng sections built around the EPBs the C reader wrote, and the bounded queue.

A section = SHB + one IDB per interface in the ring's table (ids = positions)
+ the EPBs + one ISB per interface with the drop counters (SPEC: the counters
reach the vSensor in the batches).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

from ossensor import pcapng
from ossensor.pcapng import BT_EPB


@dataclass
class Batch:
    seq: int
    body: bytes
    packets: int
    captured_bytes: int
    first_ns: int
    last_ns: int
    created: float  # time.monotonic()
    per_if: dict[str, tuple[int, int]] = field(default_factory=dict)  # interface -> (packets, bytes)
    boot: str | None = None       # None: this process's boot; else the boot it was captured under (spool)
    encoding: str = "identity"    # Content-Encoding of body ("zstd" after compression)
    spool_path: str | None = None  # its spool file, when one was written (deleted once acknowledged)

    @property
    def size(self) -> int:
        """Bytes it holds in memory (0 when only its spool file holds it). A memoryview of a
        pooled capture buffer holds the whole buffer, so that is what it counts."""
        if self.body is None:
            return 0
        if isinstance(self.body, memoryview) and self.body.obj is not None:
            return max(len(self.body), len(self.body.obj))
        return len(self.body)


def section(interfaces: list[tuple[str, int]], snaplen: int | list[int], epbs: bytes, *, ts_ns: int,
            delivered: list[int], kernel_seen: int, kernel_drops: int,
            drops: tuple[dict[str, int], dict[str, int]] | None = None,
            duplicates: dict[str, int] | None = None) -> bytes:
    """A whole section around `epbs` (file replay; live capture has the C reader write the
    header and its EPBs in place, and only appends the trailer). `snaplen`: one for all interfaces,
    or one each (replay keeps each input interface's)."""
    snaps = snaplen if isinstance(snaplen, list) else [snaplen] * len(interfaces)
    head = [pcapng.shb()] + [pcapng.idb(name, lt, snap) for (name, lt), snap in zip(interfaces, snaps)]
    return b"".join(head) + epbs + trailer([n for n, _ in interfaces], ts_ns=ts_ns, delivered=delivered,
                                           kernel_seen=kernel_seen, kernel_drops=kernel_drops, drops=drops)


DUP_PREFIX = "duplicates="  # in an ISB's comment: copies counted, not sent (not a loss)


def dup_note(duplicates: dict[str, int] | None, name: str, sep: str) -> str:
    n = (duplicates or {}).get(name, 0)
    return f"{sep}{DUP_PREFIX}{n} (copies of packets captured on another interface; not a loss)" if n else ""


def trailer(names: list[str], *, ts_ns: int, delivered: list[int], kernel_seen: int, kernel_drops: int,
            drops: tuple[dict[str, int], dict[str, int]] | None = None,
            duplicates: dict[str, int] | None = None) -> bytes:
    """The ISBs that close a section, one per interface id (names in id order).
    delivered: cumulative packets per interface; drops: Accounting.isb_drops() -- per interface,
    packets dropped at ossensor's own stages (isb_ifdrop), and ring-wide totals per stage
    (named in the first ISB's comment); duplicates: per interface, copies of packets captured on
    another interface that were counted, not sent (cumulative; "duplicates=N" in that ISB's comment,
    not a loss)."""
    tail = []
    by_if, by_stage = drops if drops is not None else (None, None)
    for i, name in enumerate(names):
        ifdrop = by_if.get(name, 0) if by_if is not None else None
        if i == 0:
            # One ring serves every interface: its counters are ring-wide, carried once.
            comment = "isb_filteraccept and isb_osdrop are ring-wide (all interfaces)"
            if by_stage is not None:
                comment += ("; isb_ifdrop = dropped by ossensor after capture; ossensor drops: "
                            + " ".join(f"{k}={v}" for k, v in by_stage.items()))
            comment += dup_note(duplicates, name, "; ")
            tail.append(pcapng.isb(0, ts_ns, usrdeliv=delivered[0], filteraccept=kernel_seen,
                                   osdrop=kernel_drops, ifdrop=ifdrop, comment=comment))
        else:
            tail.append(pcapng.isb(i, ts_ns, usrdeliv=delivered[i], ifdrop=ifdrop,
                                   comment=dup_note(duplicates, name, "") or None))
    return b"".join(tail)


def packet_hex(epbs: bytes | memoryview, names: list[str]) -> list[str]:
    """Level 5: one line per packet, its contents as hex. Per-packet Python, only at that level."""
    out = []
    for blk in pcapng.iter_blocks(epbs):
        if blk.btype != BT_EPB:
            continue
        body = blk.body
        if_id = int.from_bytes(body[0:4], "little")
        ts = (int.from_bytes(body[4:8], "little") << 32) | int.from_bytes(body[8:12], "little")
        caplen = int.from_bytes(body[12:16], "little")
        wirelen = int.from_bytes(body[16:20], "little")
        name = names[if_id] if if_id < len(names) else str(if_id)
        out.append(f"packet if={name} ts={ts / 1e9:.9f} caplen={caplen} len={wirelen} "
                   f"hex={bytes(body[20:20 + caplen]).hex()}")
    return out


class BatchQueue:
    """Bounded by bytes: a full queue refuses the batch and the caller counts the drop.

    The first batch always gets in, whatever its size (a pooled capture buffer counts whole),
    and a batch that holds no memory (size 0: only its spool file holds it) is always accepted:
    the spool's own bound limits those. Consumers (the senders, several when batches are in flight
    together): a batch taken is in `in_hand` until its consumer settles it (under `lock`, with
    `settled`) or puts it back with `requeue_front`. Batches in hand are outside the byte bound: the
    in-flight window (OSSENSOR_INFLIGHT_MB) bounds them."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self._items: collections.deque[Batch] = collections.deque()
        self._bytes = 0
        lock = threading.RLock()  # re-entrant: `lock` may be taken around other calls
        self._cond = threading.Condition(lock)  # the consumer waits for batches
        self._taken = threading.Condition(lock)  # the producer waits for room (wait_below)
        self._closed = False
        self.in_hand: dict[int, Batch] = {}  # taken by a consumer, not settled yet, by id() (guarded by lock)

    @property
    def lock(self):
        return self._cond

    def put(self, batch: Batch) -> bool:
        with self._cond:
            size = batch.size
            if size and self._bytes + size > self.max_bytes and self._items:
                return False
            self._items.append(batch)
            self._bytes += size
            self._cond.notify()
            return True

    def get(self, timeout: float) -> Batch | None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._items:
                if self._closed:
                    return None
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(left)
            batch = self._items.popleft()
            self._bytes -= batch.size
            self.in_hand[id(batch)] = batch
            self._taken.notify_all()
            return batch

    def settled(self, batch: Batch) -> bool:
        """The consumer is done with `batch` (call under `lock`): False if it was no longer in hand."""
        return self.in_hand.pop(id(batch), None) is not None

    def requeue_front(self, batch: Batch) -> None:
        """The consumer puts back the batch it took (sent first next time; not bounded)."""
        with self._cond:
            self.in_hand.pop(id(batch), None)
            self._items.appendleft(batch)
            self._bytes += batch.size
            self._cond.notify()

    def close(self) -> None:
        """No more puts: get() returns None once empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._taken.notify_all()

    def drain(self) -> list[Batch]:
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._bytes = 0
            self._taken.notify_all()
            return items

    def wait_below(self, nbytes: int, timeout: float) -> None:
        """Wait until fewer than `nbytes` are queued in memory (or `timeout` s): the reader leaves
        packets in the kernel ring meanwhile."""
        with self._cond:
            if self._bytes >= nbytes and not self._closed:
                self._taken.wait(timeout)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)
