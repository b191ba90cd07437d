"""Log lines by debug level (OSSENSOR_DEBUG, SPEC "Debug levels").

0 basic information and errors; 1 periodic statistics; 2 each send and the
vSensor's answer; 3 Antigena details; 4 one line per batch; 5 every packet as hex.
A line is printed when its level <= the configured level. One event per line,
with a UTC timestamp and the level, so `kubectl logs | grep` works.

Two formats (OSSENSOR_LOG_FORMAT), the same events in both:

* ``plain`` (default): ``2026-01-02T03:04:05.678Z ossensor L2 send seq=3 packets=10 ...``
* ``json``: one JSON object per line for log pipelines:
  ``{"ts": "...", "level": 2, "event": "send", "msg": "send seq=3 ...", "seq": 3, "packets": 10, ...}``.
  ``event`` is the message's first word (``ERROR``/``WARNING`` give ``"severity"`` instead and the
  word after them); the message's ``name=value`` pairs become fields (integers and decimals as numbers).
  Field names never shadow ``ts``/``level``/``msg``/``event``.

Belt and braces for the secret: a Log given ``secrets`` replaces each of them (and its hex form) in
every line with ``<redacted>`` before it is written, whichever format.

The capture readers never wait for the log output (``never_block_this_thread``): their lines go
into a bounded queue that a writer thread empties. A log file on a disk busy with writeback, or a
stdout pipe nobody reads, can stall a write() for tens of milliseconds, and a stalled reader lets
the kernel ring overflow: packets would be lost for the sake of log lines. When the queue is full
(level 5 prints every packet), lines are dropped instead, and a warning says how many.
"""

from __future__ import annotations

import atexit
import collections
import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Iterable, TextIO

BASIC, STATS, SENDS, ANTIGENA, BATCHES, PACKETS = range(6)
FORMATS = ("plain", "json")
REDACTED = "<redacted>"

_PAIR = re.compile(r"(?<![\w.\-])([A-Za-z_][A-Za-z0-9_]*)=(\S+)")
_NUMBER = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]+)?")
_RESERVED = {"ts", "level", "msg", "event", "severity"}
HOT_QUEUE_LINES = 10_000  # lines of non-blocking threads waiting for the output (~1.5 MB)


def _timestamp(now: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"


def _value(text: str):
    m = _NUMBER.fullmatch(text)
    if m and len(text) <= 18:
        return float(text) if m.group(2) else int(text)
    return text


def json_record(stamp: str, level: int, msg: str) -> dict:
    """The structured form of one event (what the json format prints)."""
    rec: dict = {"ts": stamp, "level": level}
    words = msg.split(None, 2)
    first = words[0] if words else ""
    if first in ("ERROR", "WARNING"):
        rec["severity"] = first.lower()
        rest = msg[len(first):].lstrip()
        first = rest.split(None, 1)[0] if rest.strip() else ""
    else:
        rec["severity"] = "info"
    rec["event"] = first.rstrip(":")
    rec["msg"] = msg
    if level != PACKETS:  # a packet's hex is already in msg once
        for name, value in _PAIR.findall(msg):
            if name not in _RESERVED and name not in rec:
                rec[name] = _value(value.rstrip(",;)"))
    return rec


class Log:
    def __init__(self, level: int = 1, path: Path | None = None, stream: TextIO | None = None,
                 fmt: str = "plain", secrets: Iterable[bytes | str] = ()):
        if fmt not in FORMATS:
            raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
        self.level = level
        self.fmt = fmt
        self._lock = threading.Lock()
        self._own = None
        self._secrets: list[str] = []
        for s in secrets:
            self.add_secret(s)
        if path is not None:
            self._own = open(path, "a", encoding="utf-8", buffering=1)
            stream = self._own
        self._out = stream or sys.stdout
        # lines of the threads that must not wait for the output, oldest first; a writer thread empties it
        self._hot: set[int] = set()
        self._queued: collections.deque[str] = collections.deque()
        self._dropped = 0
        self.lines_dropped = 0  # since start (the metric); _dropped: since the last warning
        self._state_lock = threading.Lock()
        self._wake = threading.Event()
        self._writer: threading.Thread | None = None
        self._closed = False

    def never_block_this_thread(self) -> None:
        """From now on, this thread's lines are queued (bounded) and written by another thread:
        for the capture readers, which must keep draining the kernel ring whatever the output does."""
        with self._state_lock:  # not self._lock: a writer stuck in the output holds that one
            self._hot.add(threading.get_ident())
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_queued, name="log-writer", daemon=True)
                self._writer.start()
                atexit.register(self.flush)  # a daemon thread dies with the interpreter: its lines must not

    def add_secret(self, secret: bytes | str) -> None:
        """Never print this (nor its hex): it is replaced by <redacted> in every line."""
        raw = secret.encode("utf-8", "surrogateescape") if isinstance(secret, str) else bytes(secret)
        if len(raw) < 4:
            return  # too short to search for without mangling ordinary text
        forms = {raw.decode("utf-8", "surrogateescape"), raw.hex(), raw.hex().upper()}
        self._secrets.extend(f for f in forms if f and f not in self._secrets)

    def enabled(self, level: int) -> bool:
        return level <= self.level

    def _scrub(self, msg: str) -> str:
        for s in self._secrets:
            if s in msg:
                msg = msg.replace(s, REDACTED)
        return msg

    def _line(self, level: int, msg: str) -> str:
        if self._secrets:
            msg = self._scrub(msg)
        stamp = _timestamp(time.time())
        if self.fmt == "json":
            return json.dumps(json_record(stamp, level, msg), separators=(",", ":")) + "\n"
        return f"{stamp} ossensor L{level} {msg}\n"

    def __call__(self, level: int, msg: str) -> None:
        if level > self.level:
            return
        line = self._line(level, msg)
        if self._hot and threading.get_ident() in self._hot:
            if len(self._queued) < HOT_QUEUE_LINES:
                self._queued.append(line)
                self._wake.set()
            else:
                with self._state_lock:
                    self._dropped += 1
                    self.lines_dropped += 1
            return
        with self._lock:
            self._drain()  # queued lines first: the output stays in the order the lines were made
            self._out.write(line)
            self._out.flush()

    def _drain(self) -> None:
        """Write the queued lines, and how many were dropped (the caller holds the lock)."""
        if not self._queued and not self._dropped:
            return
        while self._queued:
            self._out.write(self._queued.popleft())
        with self._state_lock:
            n, self._dropped = self._dropped, 0
        if n:
            self._out.write(self._line(BASIC, f"WARNING log_output_behind: dropped={n} lines of the capture thread, "
                                              "which does not wait for the log output (a slow disk under "
                                              "OSSENSOR_LOGFILE_PATH, an unread stdout, or OSSENSOR_DEBUG=5 at a "
                                              "high packet rate); no packet was lost for them"))
        self._out.flush()

    def _write_queued(self) -> None:
        # woken by each queued line (and by close): no timer, an idle sensor stays asleep
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        """Write what the non-blocking threads queued, now."""
        try:
            with self._lock:
                self._drain()
        except (OSError, ValueError):  # the output is gone (closed file, broken pipe): nothing to write to
            self._queued.clear()

    def error(self, msg: str) -> None:
        self(BASIC, "ERROR " + msg)

    def warning(self, msg: str) -> None:
        self(BASIC, "WARNING " + msg)

    def close(self) -> None:
        self.flush()
        self._closed = True
        self._wake.set()
        atexit.unregister(self.flush)
        if self._own:
            self._own.close()
