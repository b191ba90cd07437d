"""Several readers for one capture: rings in a PACKET_FANOUT group (OSSENSOR_CAPTURE_THREADS).

When one reader thread cannot keep up, the kernel can spread the packets over
several rings, each read by its own thread (the C reader releases the GIL, so
they run in parallel). PACKET_FANOUT_HASH keeps every flow on one ring, so the
packets of a connection stay in order within their batches. OSSENSOR_RING_MB is
the total: each ring gets its share. Every ring has the same interfaces and the
same filter; batch numbers come from one shared sequence.
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Callable

from ossensor.capture import bpf
from ossensor.capture.live import Delivered, LiveCapture

PACKET_FANOUT_HASH = 0


class FanoutCapture:
    def __init__(self, readers: int, *, ring_bytes: int, dedup_window_ms: int = 0, **kwargs):
        seq = itertools.count(1)
        delivered = Delivered()
        share = max(2 << 20, ring_bytes // readers)
        self.members = [LiveCapture(ring_bytes=share, seq_source=seq, totals=self.totals, delivered=delivered,
                                    dedup_window_ms=dedup_window_ms if i == 0 else 0, **kwargs)
                        for i in range(readers)]
        if dedup_window_ms:  # one table for all: copies meet whichever ring receives them
            for m in self.members[1:]:
                m.ring.set_dedup(dedup_window_ms, self.members[0].ring)
        self.group = os.getpid() & 0xFFFF

    @property
    def ring_bytes(self) -> int:
        return sum(m.ring_bytes for m in self.members)

    @property
    def interfaces(self):
        return self.members[0].interfaces

    @property
    def heartbeat(self) -> float | None:
        """Liveness is the slowest reader's."""
        beats = [getattr(m, "heartbeat", None) for m in self.members]
        return None if any(b is None for b in beats) else min(beats)

    @property
    def antigena_hook(self):
        return getattr(self.members[0], "antigena_hook", None)

    @antigena_hook.setter
    def antigena_hook(self, hook) -> None:
        for m in self.members:
            m.antigena_hook = hook

    def set_interfaces(self, interfaces) -> None:
        for m in self.members:
            m.set_interfaces(interfaces)

    def attach_ledger(self, ledger) -> None:
        for i, m in enumerate(self.members):
            m.attach_ledger(ledger, i)

    def set_batch_bytes(self, nbytes: int) -> None:
        for m in self.members:
            m.set_batch_bytes(nbytes)

    def start(self) -> None:
        """Bind each ring with a reject-all filter, join the group, then give each its program:
        until all have joined, a bound ring would receive every packet, not its share."""
        reject = [(bpf.BPF_RET_K, 0, 0, 0)]
        for m in self.members:
            m.ring.attach_filter(reject)
            m.start()
            m.ring.join_fanout(self.group, PACKET_FANOUT_HASH)
        for m in self.members:
            with m._lock:
                if m.program is not None:
                    m.ring.attach_filter(m.program)

    def run(self, stop: threading.Event, emit: Callable, backlog=None, hold: bool = True) -> None:
        threads = [threading.Thread(target=m.run, args=(stop, emit, backlog, hold), name=f"reader-{i + 1}",
                                    daemon=True) for i, m in enumerate(self.members[1:])]
        for t in threads:
            t.start()
        try:
            self.members[0].run(stop, emit, backlog, hold)
        finally:
            for t in threads:
                t.join()

    @property
    def buffers_made(self) -> int:
        return sum(m.buffers_made for m in self.members)

    @property
    def held(self) -> int:
        return sum(m.held for m in self.members)

    def ring_fill(self) -> float:
        return max(m.ring_fill() for m in self.members)

    def wake(self) -> None:
        for m in self.members:
            m.wake()

    def totals(self) -> tuple[int, int, int]:
        seen = drops = stale = 0
        for m in self.members:
            a, b, c = m.totals()
            seen, drops, stale = seen + a, drops + b, stale + c
        return seen, drops, stale

    def kernel_stats(self) -> tuple[int, int]:
        seen, drops, _ = self.totals()
        return seen, drops

    def close(self) -> None:
        for m in self.members:
            m.close()
