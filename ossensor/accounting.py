"""Where every captured packet went: nothing is lost silently.

Invariant (DESIGN "Nothing lost silently"): packets captured into batches =
acknowledged + dropped at a named stage + in flight. Kernel ring drops happen
before capture and are counted beside it. All counters are cumulative.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

STAGES = ("queue", "refused", "shutdown")  # where a captured packet can be dropped


@dataclass
class IfCounters:
    packets: int = 0
    bytes: int = 0


@dataclass
class Accounting:
    kernel_seen: int = 0      # packets that passed the kernel filter (PACKET_STATISTICS tp_packets)
    kernel_drops: int = 0     # of those, dropped because the ring was full
    stale: int = 0            # skipped: interface no longer selected (left in the ring from before)
    captured: int = 0         # written into batches
    captured_bytes: int = 0
    batches: int = 0
    sent_batches: int = 0
    sent_packets: int = 0
    sent_bytes: int = 0       # body bytes on the wire
    acked: int = 0
    acked_batches: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    per_if: dict[str, IfCounters] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add_batch(self, packets: int, nbytes: int, per_if: dict[str, tuple[int, int]]) -> None:
        with self.lock:
            self.batches += 1
            self.captured += packets
            self.captured_bytes += nbytes
            for name, (p, b) in per_if.items():
                c = self.per_if.setdefault(name, IfCounters())
                c.packets += p
                c.bytes += b

    def drop(self, stage: str, packets: int) -> None:
        with self.lock:
            self.dropped[stage] += packets

    def in_flight(self) -> int:
        with self.lock:
            return self.captured - self.acked - sum(self.dropped.values())

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "kernel_seen": self.kernel_seen, "kernel_drops": self.kernel_drops, "stale": self.stale,
                "captured": self.captured, "captured_bytes": self.captured_bytes, "batches": self.batches,
                "sent_batches": self.sent_batches, "sent_packets": self.sent_packets,
                "sent_bytes": self.sent_bytes, "acked": self.acked, "acked_batches": self.acked_batches,
                "dropped": dict(self.dropped),
                "per_if": {k: (v.packets, v.bytes) for k, v in self.per_if.items()},
            }
