"""Log lines by debug level (OSSENSOR_DEBUG, SPEC "Debug levels").

0 basic information and errors; 1 periodic statistics; 2 each send and the
vSensor's answer; 3 Antigena details; 4 one line per batch; 5 every packet as hex.
A line is printed when its level <= the configured level. One event per line,
with a UTC timestamp and the level, so `kubectl logs | grep` works.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import TextIO

BASIC, STATS, SENDS, ANTIGENA, BATCHES, PACKETS = range(6)


class Log:
    def __init__(self, level: int = 1, path: Path | None = None, stream: TextIO | None = None):
        self.level = level
        self._lock = threading.Lock()
        self._own = None
        if path is not None:
            self._own = open(path, "a", encoding="utf-8", buffering=1)
            stream = self._own
        self._out = stream or sys.stdout

    def enabled(self, level: int) -> bool:
        return level <= self.level

    def __call__(self, level: int, msg: str) -> None:
        if level > self.level:
            return
        now = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now % 1 * 1000):03d}Z"
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
