"""Where every captured packet went: nothing is lost silently.

Invariant (DESIGN "Nothing lost silently"), in packets and in bytes:

    captured + recovered = acknowledged + dropped at a named stage + in flight

`captured` is what this process wrote into batches; `recovered` is what an earlier process
left to this one: batches found in the disk spool at start (sent by this one), and packets that
a SIGKILL took from it before they were batched or spooled (counted at `lost_on_kill` at once). "In flight" is in
the memory queue, in the spool, or being sent. Kernel ring drops happen before capture and
are counted beside it. All counters are cumulative, in total and per interface.

Stages a packet passes: captured -> queued (memory) and/or spooled (disk) -> sent -> acked.
Stages where it can be dropped (`STAGES`):
  queue     the memory queue was full and there is no spool (or it could not be written)
  spool     the disk spool was full (or a spool file was torn / unreadable)
  refused   the vSensor refused the batch (401/403/4xx): retrying cannot help
  shutdown  not delivered within OSSENSOR_SHUTDOWN_TIMEOUT and no spool to keep it
  lost_on_kill  captured by an earlier run (same OSSENSOR_SPOOL_DIR) that was killed (SIGKILL)
            before they were batched or spooled: counted by this run at start (ship/kill_ledger.py)

Beside them, per interface, `duplicate`: copies of a packet already captured on another
interface (a pod's veth, then the bridge, then the uplink), counted and not written
(OSSENSOR_DEDUP, native/dedup.h). Not a loss: the first copy is in `captured`, so duplicates
stay outside the invariant.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

STAGES = ("queue", "spool", "refused", "shutdown", "lost_on_kill")  # where a captured packet can be dropped
MAX_INTERFACES = 4096  # per-interface counters kept (oldest idle ones are let go beyond it)
FLOW = ("captured", "recovered", "queued", "spooled", "sent", "acked")  # stages it passes


def _zero() -> dict[str, list[int]]:
    return {k: [0, 0] for k in FLOW + tuple("drop_" + s for s in STAGES) + ("duplicate",)}


@dataclass
class IfCounters:
    """Per-interface [packets, bytes] for each stage in FLOW and each drop stage."""
    stages: dict[str, list[int]] = field(default_factory=_zero)

    @property
    def packets(self) -> int:
        return self.stages["captured"][0]

    @property
    def bytes(self) -> int:
        return self.stages["captured"][1]

    def dropped_packets(self) -> int:
        return sum(self.stages["drop_" + s][0] for s in STAGES)


@dataclass
class Accounting:
    kernel_seen: int = 0      # packets that passed the kernel filter (PACKET_STATISTICS tp_packets)
    kernel_drops: int = 0     # of those, dropped because the ring was full
    stale: int = 0            # skipped: interface no longer selected (left in the ring from before)
    duplicates: int = 0       # copies of a packet captured on another interface: counted, not written
    duplicate_bytes: int = 0
    captured: int = 0         # written into batches
    captured_bytes: int = 0
    batches: int = 0
    recovered: int = 0        # packets found in the spool at start (an earlier process captured them)
    recovered_bytes: int = 0
    queued: int = 0           # packets put into the memory queue
    spooled: int = 0          # packets written to the disk spool
    torn_files: int = 0       # spool files found torn/unreadable (their packets: drop stage "spool")
    sent_batches: int = 0     # batches sent at least once (first attempts)
    sent_packets: int = 0
    sent_bytes: int = 0       # body bytes of first attempts (after compression)
    retries: int = 0          # further attempts (connection errors, timeouts, 5xx)
    acked: int = 0
    acked_bytes: int = 0
    acked_batches: int = 0
    dropped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    dropped_bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    per_if: dict[str, IfCounters] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _per_if(self, stage: str, per_if: dict[str, tuple[int, int]] | None) -> None:
        for name, (p, b) in (per_if or {}).items():
            counters = self.per_if.get(name)
            if counters is None:
                if len(self.per_if) >= MAX_INTERFACES:
                    self._forget_one()
                counters = self.per_if[name] = IfCounters()
            c = counters.stages[stage]
            c[0] += p
            c[1] += b

    def _forget_one(self) -> None:
        """Pods come and go with new veth names: keep per-interface counters bounded by letting
        go of the oldest interface that has nothing in flight (its totals stay in the sums)."""
        for name, c in self.per_if.items():
            st = c.stages
            if st["captured"][0] + st["recovered"][0] == st["acked"][0] + c.dropped_packets():
                del self.per_if[name]
                return

    def add_batch(self, packets: int, nbytes: int, per_if: dict[str, tuple[int, int]]) -> None:
        with self.lock:
            self.batches += 1
            self.captured += packets
            self.captured_bytes += nbytes
            self._per_if("captured", per_if)

    def add_duplicates(self, per_if: dict[str, tuple[int, int]]) -> None:
        with self.lock:
            self.duplicates += sum(p for p, _ in per_if.values())
            self.duplicate_bytes += sum(b for _, b in per_if.values())
            self._per_if("duplicate", per_if)

    def isb_duplicates(self) -> dict[str, int]:
        """For the batches' ISBs: copies suppressed per interface, cumulative."""
        with self.lock:
            return {n: c.stages["duplicate"][0] for n, c in self.per_if.items() if c.stages["duplicate"][0]}

    def add_recovered(self, packets: int, nbytes: int, per_if: dict[str, tuple[int, int]] | None) -> None:
        with self.lock:
            self.recovered += packets
            self.recovered_bytes += nbytes
            self._per_if("recovered", per_if)

    def lost_on_kill(self, packets: int) -> None:
        """An earlier run, killed, had captured `packets` not yet batched or spooled: they are this
        run's to count (recovered, then dropped at `lost_on_kill`; bytes and interfaces unknown)."""
        with self.lock:
            self.recovered += packets
            self.dropped["lost_on_kill"] += packets

    def stage(self, stage: str, packets: int, per_if: dict[str, tuple[int, int]] | None = None) -> None:
        """A batch passed `stage` ("queued", "spooled")."""
        with self.lock:
            setattr(self, stage, getattr(self, stage) + packets)
            self._per_if(stage, per_if)

    def sent(self, packets: int, body_bytes: int, per_if: dict[str, tuple[int, int]] | None = None,
             retry: bool = False) -> None:
        with self.lock:
            if retry:
                self.retries += 1
                return
            self.sent_batches += 1
            self.sent_packets += packets
            self.sent_bytes += body_bytes
            self._per_if("sent", per_if)

    def ack(self, packets: int, nbytes: int, per_if: dict[str, tuple[int, int]] | None = None) -> None:
        with self.lock:
            self.acked += packets
            self.acked_bytes += nbytes
            self.acked_batches += 1
            self._per_if("acked", per_if)

    def drop(self, stage: str, packets: int, nbytes: int = 0,
             per_if: dict[str, tuple[int, int]] | None = None) -> None:
        with self.lock:
            self.dropped[stage] += packets
            self.dropped_bytes[stage] += nbytes
            self._per_if("drop_" + stage, per_if)

    def in_flight(self) -> int:
        with self.lock:
            return self.captured + self.recovered - self.acked - sum(self.dropped.values())

    def isb_drops(self) -> tuple[dict[str, int], dict[str, int]]:
        """For the batches' ISBs: per interface, packets dropped at our stages (isb_ifdrop);
        and the ring-wide totals per stage (named in the first ISB's comment)."""
        with self.lock:
            return ({n: c.dropped_packets() for n, c in self.per_if.items()}, dict(self.dropped))

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "kernel_seen": self.kernel_seen, "kernel_drops": self.kernel_drops, "stale": self.stale,
                "duplicates": self.duplicates, "duplicate_bytes": self.duplicate_bytes,
                "captured": self.captured, "captured_bytes": self.captured_bytes, "batches": self.batches,
                "recovered": self.recovered, "recovered_bytes": self.recovered_bytes,
                "queued": self.queued, "spooled": self.spooled, "torn_files": self.torn_files,
                "sent_batches": self.sent_batches, "sent_packets": self.sent_packets,
                "sent_bytes": self.sent_bytes, "retries": self.retries, "acked": self.acked, "acked_bytes": self.acked_bytes,
                "acked_batches": self.acked_batches,
                "dropped": dict(self.dropped), "dropped_bytes": dict(self.dropped_bytes),
                "per_if": {k: (v.packets, v.bytes) for k, v in self.per_if.items()},
                "per_if_stages": {k: {s: tuple(pb) for s, pb in v.stages.items()} for k, v in self.per_if.items()},
            }
