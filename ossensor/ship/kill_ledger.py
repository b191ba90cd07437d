"""Counters that outlive the process: what a SIGKILL took with it (accounting stage `lost_on_kill`).

With OSSENSOR_SPOOL_DIR set, every batch is on disk once it is cut (ship/spool.py); what a SIGKILL
loses is what the readers had taken out of the ring but not yet cut into a batch, or cut but not yet
spooled (or counted at a drop stage). A small memory-mapped file in the spool directory counts both
sides, and a page of a MAP_SHARED mapping survives the process that wrote it:

    DIR/.ossensor-run-<sha256(sensor name), 16 hex>.ledger   4 KiB, mode 0600

    0   b"OSSRUN01"
    8   u64 pid of the run that holds it
    16  u64 1 once that run ended cleanly (SIGTERM, SIGINT, an error exit), else 0
    24  u64 settled: packets of cut batches now in the spool or counted at a drop stage
    32  u64 read[i], i < MAX_READERS: packets reader i took out of its ring into batches (the open batch included)

Writes are single aligned 8-byte stores (a memoryview cast to "Q"), so a kill never leaves a torn
counter. Nothing per packet: a reader stores its count once per turn of its loop (after each ring read,
i.e. per ring block or timeout) and the shipping side once per batch. The next start with the same
directory and sensor name reads a file left with clean = 0 and counts sum(read) - settled as
`lost_on_kill` (logged at level 0). A kill between a ring read and its store (a few microseconds) can
leave that read's packets uncounted; packets still in the kernel ring are not counted (the ring's own
counters die with the socket).

The running process holds an exclusive lock (flock) on its file: a second sensor of the same name on the
same directory gets no ledger (and a warning), rather than corrupting the first one's.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import threading
from dataclasses import dataclass
from pathlib import Path

MAGIC = b"OSSRUN01"
SIZE = 4096
MAX_READERS = (SIZE - 32) // 8
_PID, _CLEAN, _SETTLED, _READ0 = 1, 2, 3, 4  # indexes of u64 words


@dataclass
class Previous:
    pid: int
    lost: int  # packets captured by a run killed before they were batched or spooled


def path_for(directory: Path, sensor: str) -> Path:
    return Path(directory) / f".ossensor-run-{hashlib.sha256(sensor.encode()).hexdigest()[:16]}.ledger"


class KillLedger:
    def __init__(self, path: Path, fd: int, mm: mmap.mmap, previous: Previous | None):
        self.path = path
        self._fd = fd
        self._mm = mm
        self._words = memoryview(mm).cast("Q")
        self.previous = previous
        self._lock = threading.Lock()  # settled: several readers hand batches over (fanout)
        self._settled = 0

    @classmethod
    def open(cls, directory: Path, sensor: str) -> "KillLedger":
        """Open (or create) this sensor's ledger in `directory`, read what an earlier run left, and
        start a fresh one. Raises OSError (BlockingIOError: another live process holds it)."""
        path = path_for(directory, sensor)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            st = os.fstat(fd)
            previous = None
            if st.st_size == SIZE:
                old = os.pread(fd, SIZE, 0)
                previous = _read_previous(old)
            else:
                os.ftruncate(fd, 0)
                os.ftruncate(fd, SIZE)
            mm = mmap.mmap(fd, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        mm[:] = bytes(SIZE)
        words = memoryview(mm).cast("Q")
        words[_PID] = os.getpid()
        mm[0:8] = MAGIC
        del words
        return cls(path, fd, mm, previous)

    # -- the running process ------------------------------------------------------------------
    def set_read(self, reader: int, packets: int) -> None:
        """Reader `reader` has taken `packets` out of its ring into batches so far (cumulative)."""
        if reader < MAX_READERS:
            self._words[_READ0 + reader] = packets

    def settled(self, packets: int) -> None:
        """A cut batch of `packets` is in the spool, or counted where it was dropped."""
        with self._lock:
            self._settled += packets
            self._words[_SETTLED] = self._settled

    def close(self, clean: bool = True) -> None:
        """The run ends: with clean, the next start finds nothing lost."""
        try:
            if clean:
                self._words[_CLEAN] = 1
            self._words.release()
            self._mm.close()
        finally:
            os.close(self._fd)


def _read_previous(raw: bytes) -> Previous | None:
    if raw[:8] != MAGIC:
        return None
    words = memoryview(raw).cast("Q")
    if words[_CLEAN]:
        return Previous(words[_PID], 0)
    read = sum(words[_READ0:_READ0 + MAX_READERS])
    return Previous(words[_PID], max(0, read - words[_SETTLED]))
