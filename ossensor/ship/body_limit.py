"""The largest batch body the vSensor takes, learnt and shared: batches are cut to fit it.

The limit is protocol.MAX_BODY (64 MiB, what the reference vSensor takes by default) unless the vSensor
says less: its `POST /v1/hello` answer may carry `max_body_bytes` (or, from older vSensors, `max_body`),
and a 413 answer names its limit ("... larger than the limit of M bytes"). The smaller value wins and
is never raised again by this process. It bounds the whole section, pcapng framing included (SHB, IDBs,
EPBs, ISBs): live capture sizes its batch buffers to it (capture/live.py), replay cuts its sections to
it (replay.py), and a batch that is still larger (cut before the limit was learnt) is refused at once,
counted, and logged as "batch too large for the vSensor (N > M bytes)" -- never sent to meet a 413,
never retried as a connection failure.
"""

from __future__ import annotations

import json
import re
import struct
import threading
from typing import Callable

from ossensor import protocol

MIN_LIMIT = 64 << 10  # a vSensor announcing less is taken to mean this (one full-size packet and framing)
_LIMIT_IN_REASON = re.compile(r"(?:limit of|larger than) (\d{1,12}) bytes")


class BodyLimit:
    """The current limit (bytes); `learn` lowers it and tells the listeners (the capture's batch size)."""

    def __init__(self, limit: int = protocol.MAX_BODY):
        self.value = limit
        self._lock = threading.Lock()
        self._listeners: list[Callable[[int], None]] = []

    def on_change(self, listener: Callable[[int], None]) -> None:
        self._listeners.append(listener)

    def learn(self, limit: int | None) -> bool:
        """Take `limit` if it is smaller than the current one. True if the limit changed."""
        if limit is None:
            return False
        limit = max(MIN_LIMIT, limit)
        with self._lock:
            if limit >= self.value:
                return False
            self.value = limit
        for listener in list(self._listeners):
            listener(limit)
        return True

    def fits(self, nbytes: int) -> bool:
        return nbytes <= self.value


def announced(data: bytes) -> int | None:
    """The body limit a /v1/hello answer announces (`max_body_bytes`, else `max_body`), or None."""
    try:
        doc = json.loads(data[:65536])
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    for key in ("max_body_bytes", "max_body"):
        value = doc.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def from_reason(reason: str) -> int | None:
    """The limit a 413 answer's reason names ("... larger than the limit of M bytes"), or None."""
    m = _LIMIT_IN_REASON.search(reason or "")
    return int(m.group(1)) if m else None


def too_large(size: int, limit: int) -> str:
    return f"batch too large for the vSensor ({size} > {limit} bytes)"


def split_epbs(epbs: bytes | memoryview, max_bytes: int) -> list[memoryview]:
    """`epbs` (whole pcapng blocks) as consecutive slices of at most `max_bytes` each, cut between
    blocks (a block larger than max_bytes stands alone). Python per block: only for a batch cut
    before a smaller limit was learnt, never on the usual path."""
    view = memoryview(epbs)
    out, start, pos, end = [], 0, 0, len(view)
    while pos + 8 <= end:
        total = struct.unpack_from("<I", view, pos + 4)[0]
        if total < 12 or pos + total > end:
            break  # not ours to judge here: the rest goes as it is (the vSensor checks it)
        if pos + total - start > max_bytes and pos > start:
            out.append(view[start:pos])
            start = pos
        pos += total
    if start < end:
        out.append(view[start:])
    return out
