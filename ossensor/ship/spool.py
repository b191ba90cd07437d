"""The disk spool: batches kept on disk until the vSensor acknowledges them.

With `OSSENSOR_SPOOL_DIR` set, every batch is written here when it is cut (a write-ahead
log: a sensor killed with SIGKILL loses only the batch it was filling), and its file is
deleted once the vSensor acknowledges it (200, or 409 "already have it"). A sensor that
starts with files in the spool sends them first, under the boot and seq they were
captured with, so the vSensor's replay guard accepts each exactly once.

Files: `DIR/<boot, 16 hex digits>-<seq, 12 digits>.osb`, mode 0600, written as `.tmp` and
renamed (atomic on one filesystem). The directory may be shared: only names of exactly that
form (`SPOOL_NAME`), regular files owned by this user, are ever read or removed; anything
else in it is left alone. A directory the spool creates gets mode 0700; an existing one keeps
its mode. Layout:

    b"OSSPOOL1"  u32 header length (little-endian)  JSON header  body

The header holds sensor, boot, seq, packets, bytes, per-interface counts, encoding,
body length and the body's SHA-256. A file whose length or digest does not match (torn
by a crash or a full disk), or a leftover `.tmp`, is skipped, removed and counted.
No fsync: the page cache survives the process; a power cut may tear the last files,
which is detected. The spool is bounded by `OSSENSOR_SPOOL_MB` (file sizes).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
import struct
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from ossensor.ship.batch import Batch

MAGIC = b"OSSPOOL1"
SUFFIX = ".osb"
# The only names the spool writes, reads or removes: <boot>-<seq>.osb, and .osb.tmp while written.
SPOOL_NAME = re.compile(r"[0-9a-f]{16}-[0-9]{12,20}\.osb(\.tmp)?")


@dataclass
class Torn:
    name: str
    reason: str
    packets: int  # 0 when the header could not be read
    nbytes: int


class SpoolFull(Exception):
    pass


class Spool:
    def __init__(self, directory: Path, max_bytes: int, sensor: str):
        self.dir = Path(directory)
        self.max_bytes = max_bytes
        self.sensor = sensor
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}  # file name -> size on disk
        self._bytes = 0
        try:
            try:
                self.dir.mkdir(mode=0o700, parents=True)
                os.chmod(self.dir, 0o700)  # only a directory created here (mkdir's mode is under umask)
            except FileExistsError:
                if not self.dir.is_dir():
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR)) from None
            # a unique probe name, created exclusively: nothing of the user's is touched
            fd, probe = tempfile.mkstemp(prefix=".ossensor-write-test-", dir=self.dir)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:  # a start-up error, one line: the directory is the user's input
            raise _unusable(self.dir, err) from None

    # -- start ---------------------------------------------------------------------------
    def recover(self) -> tuple[list[Batch], list[Torn]]:
        """Batches left by an earlier process (oldest first, bodies not loaded), and torn files."""
        good: list[tuple[float, str, Batch]] = []
        torn: list[Torn] = []
        try:
            names = sorted(os.listdir(self.dir))
        except OSError as err:
            raise _unusable(self.dir, err) from None
        uid = os.geteuid()
        for name in names:
            if not SPOOL_NAME.fullmatch(name):
                continue  # not the spool's: never read, never removed
            path = self.dir / name
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_uid != uid:
                continue  # a directory, a link, another user's file: not the spool's
            if name.endswith(".tmp"):
                torn.append(Torn(name, "incomplete write (the process stopped while writing it)", 0, 0))
                _unlink(path)
                continue
            try:
                batch, size = self._read(path, verify=True)
            except (OSError, ValueError) as err:
                meta = _try_header(path)
                torn.append(Torn(path.name, str(err), meta.get("packets", 0) if meta else 0,
                                 meta.get("bytes", 0) if meta else 0))
                _unlink(path)
                continue
            batch.body = None  # loaded again when it is sent: memory stays bounded
            good.append((st.st_mtime, path.name, batch))
            with self._lock:
                self._sizes[path.name] = size
                self._bytes += size
        good.sort(key=lambda g: (g[0], g[1]))
        return [g[2] for g in good], torn

    # -- write / read / delete -----------------------------------------------------------
    def put(self, batch: Batch, boot: str) -> str:
        """Write the batch; returns its path. Raises SpoolFull, or OSError (disk trouble)."""
        header = json.dumps({
            "sensor": self.sensor, "boot": batch.boot or boot, "seq": batch.seq, "packets": batch.packets,
            "bytes": batch.captured_bytes, "first_ns": batch.first_ns, "last_ns": batch.last_ns,
            "per_if": batch.per_if, "encoding": batch.encoding, "body_len": len(batch.body),
            "sha256": hashlib.sha256(batch.body).hexdigest(),
        }, separators=(",", ":")).encode()
        size = len(MAGIC) + 4 + len(header) + len(batch.body)
        name = f"{batch.boot or boot}-{batch.seq:012d}{SUFFIX}"
        if not SPOOL_NAME.fullmatch(name):  # a file it would not find again
            raise OSError(errno.EINVAL, f"not a spool file name: {name!r}")
        with self._lock:
            if self._bytes + size > self.max_bytes:
                raise SpoolFull(f"spool full ({self._bytes >> 20} of {self.max_bytes >> 20} MiB)")
            self._bytes += size
            self._sizes[name] = size
        path = self.dir / name
        tmp = self.dir / (name + ".tmp")
        try:
            # exclusive, no link followed, owner-only: the directory may be shared (e.g. /tmp)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            self._forget(name)
            raise
        try:
            with open(fd, "wb") as f:
                f.write(MAGIC + struct.pack("<I", len(header)) + header)
                f.write(batch.body)
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)
            self._forget(name)
            raise
        return str(path)

    def load(self, path: str) -> bytes:
        batch, _ = self._read(Path(path), verify=True)
        return batch.body

    def remove(self, path: str) -> None:
        Path(path).unlink(missing_ok=True)
        self._forget(Path(path).name)

    def _forget(self, name: str) -> None:
        with self._lock:
            size = self._sizes.pop(name, 0)
            self._bytes -= size

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._sizes)

    # -- format ----------------------------------------------------------------------------
    def _read(self, path: Path, verify: bool) -> tuple[Batch, int]:
        data = path.read_bytes()
        meta, off = _parse_header(data)
        body = data[off:]
        if len(body) != meta["body_len"]:
            raise ValueError(f"torn: body is {len(body)} bytes, header says {meta['body_len']}")
        if verify and hashlib.sha256(body).hexdigest() != meta["sha256"]:
            raise ValueError("torn: body does not match its SHA-256")
        per_if = {k: (int(v[0]), int(v[1])) for k, v in (meta.get("per_if") or {}).items()}
        batch = Batch(int(meta["seq"]), body, int(meta["packets"]), int(meta["bytes"]),
                      int(meta.get("first_ns", 0)), int(meta.get("last_ns", 0)), 0.0, per_if=per_if,
                      boot=str(meta["boot"]), encoding=str(meta.get("encoding", "identity")),
                      spool_path=str(path))
        return batch, len(data)


def _unusable(directory: Path, err: OSError):
    from ossensor.config.problems import ConfigError

    return ConfigError([f"OSSENSOR_SPOOL_DIR: cannot use {directory}: {err.strerror or err}"])


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass  # counted as torn all the same; the next start tries again


def _parse_header(data: bytes) -> tuple[dict, int]:
    if len(data) < len(MAGIC) + 4 or data[:len(MAGIC)] != MAGIC:
        raise ValueError("torn: no spool header")
    (hlen,) = struct.unpack_from("<I", data, len(MAGIC))
    off = len(MAGIC) + 4
    if hlen > 1 << 20 or len(data) < off + hlen:
        raise ValueError("torn: header cut short")
    try:
        meta = json.loads(data[off:off + hlen])
        for k in ("boot", "seq", "packets", "bytes", "body_len", "sha256"):
            meta[k]
    except (ValueError, KeyError, TypeError):
        raise ValueError("torn: header unreadable") from None
    return meta, off + hlen


def _try_header(path: Path) -> dict | None:
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
        return _parse_header(head + b"")[0] if len(head) >= 12 else None
    except (OSError, ValueError):
        return None


__all__ = ["Spool", "SpoolFull", "Torn"]
