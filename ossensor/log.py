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
"""

from __future__ import annotations

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

    def __call__(self, level: int, msg: str) -> None:
        if level > self.level:
            return
        if self._secrets:
            msg = self._scrub(msg)
        stamp = _timestamp(time.time())
        if self.fmt == "json":
            line = json.dumps(json_record(stamp, level, msg), separators=(",", ":")) + "\n"
        else:
            line = f"{stamp} ossensor L{level} {msg}\n"
        with self._lock:
            self._out.write(line)
            self._out.flush()

    def error(self, msg: str) -> None:
        self(BASIC, "ERROR " + msg)

    def warning(self, msg: str) -> None:
        self(BASIC, "WARNING " + msg)

    def close(self) -> None:
        if self._own:
            self._own.close()
