"""Where the reference vSensor keeps accepted batches: pcapng files that tcpdump and tshark read.

Layout of ``--out DIR``:

* ``DIR/<sensor>-<boot>.pcapng`` - the packets of one sensor process (boot), batch after batch.
  Further files of the same boot are ``DIR/<sensor>-<boot>-<n>.pcapng`` (n = 1, 2, ...), see below.
* ``DIR/batches.jsonl`` - one JSON line per accepted batch (sensor, boot, seq, packets, bytes, time,
  files written, the ISB counters per interface).

Appending keeps per-packet work out of Python: a batch is walked once in C (native/pcapng_scan.c, all
the checks, GIL released) and Python reads only its SHB, IDBs and ISBs; its packets are written as a few
slices of the received buffer (no copy, nothing per packet).
The first batch of a file is written whole (its Section Header Block with the section length set to
"unknown"). A later batch whose Interface Description Blocks are the same as those already in the file,
or extend them in order, is appended without its SHB and the IDBs already present: only the new IDBs,
then its EPBs and ISBs byte for byte. libpcap (tcpdump) reads ISBs in mid-file fine, but refuses a file
whose interfaces have different link types, so interfaces are grouped by (link type, if_tsresol): each
group has its own file, and a batch mixing groups is split between them (interface ids are renumbered
then, which costs one copy of the batch, made in C). A batch whose IDBs conflict with its group's file (an
interface changed) starts a new file for that group. After a vSensor restart a stream never appends to
an older file (its state is unknown); it starts a new numbered file. Descriptors are bounded: at most
MAX_OPEN_FILES files stay open (the least recently written streams' files are closed, and reopened for
appending by their next batch), and a stream idle for STREAM_IDLE_S is forgotten, its next batch starting a
new numbered file (every sensor restart is a new boot, hence a new stream: without this each would keep a
descriptor for ever).

Drop-behind: after each batch the store starts the writeback of what it appended (sync_file_range) and
drops from the page cache what lies more than DROP_BEHIND (32 MiB) behind a file's end, once it is on
disk. The files are the same; the vSensor's page cache stays small and its writes reuse warm pages.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from ossensor import pcapng

# Link types whose libpcap DLT has another number (pcap-common.c: ATM_RFC1483 100 -> 11, RAW 101 -> 12,
# SLIP_BSDOS 102 -> 15, PPP_BSDOS 103 -> 16). libpcap up to 1.10.x compares every IDB after the first
# with the first one's *DLT*, so a file with two IDBs of one of these types reads in tshark but tcpdump
# refuses it ("an interface has a type 101 different from the type of the first interface"): each
# such interface gets a file of its own (a fourth element in its group key: its rank among its peers).
LIBPCAP_REMAPPED = frozenset({100, 101, 102, 103})
from ossensor.pcapng import BT_EPB, BT_IDB, BT_ISB, BT_SHB, PcapngError

try:
    from ossensor import _pcapngscan as _scan  # native/pcapng_scan.c
except ImportError:  # not built: the pure-Python walk below (same result, ~1 µs per packet)
    _scan = None

BATCH_LOG = "batches.jsonl"
SEED_TAIL_BYTES = 64 << 20   # replay memory re-seeded at start from this much of the end of BATCH_LOG ...
SEED_MAX_ENTRIES = 100_000   # ... and at most this many entries (the newest)
SUFFIX = ".pcapng"
MAX_OPEN_FILES = 1024        # files kept open for appending, over all streams (beyond: the least recently
                             # written streams' files are closed, and reopened by their next batch) ...
STREAM_IDLE_S = 600          # ... and a stream idle this long is forgotten: sensors that come and go cost no fd
DROP_BEHIND = 32 << 20       # page cache kept per file behind its end (see _drop_behind) ...
DROP_STEP = 4 << 20          # ... dropped in steps of at least this much
_NAME_MAX = 255

# What libpcap (tcpdump) and wiretap (tshark) refuse, refused here first (libpcap sf-pcapng.c):
MAX_BLOCK = 16 << 20       # libpcap's INITIAL_MAX_BLOCKSIZE: a longer block is "pcapng block size > maximum"
MAX_SHB = 1 << 20          # BT_SHB_INSANE_MAX: a longer first SHB is not a pcapng file to libpcap
MAX_SNAPLEN = 262144       # max_snaplen_for_dlt / WTAP_MAX_PACKET_SIZE_STANDARD: snaplen 0 or above means this
IF_TSOFFSET = 14
BLOCK_NAMES = {BT_SHB: "Section Header Block", BT_IDB: "Interface Description Block",
               BT_EPB: "Enhanced Packet Block", BT_ISB: "Interface Statistics Block"}

_DUPLICATES = re.compile(r"(?:^|; )duplicates=([0-9]{1,20})\b")
_ISB_COUNTERS = {
    pcapng.ISB_IFRECV: "ifrecv", pcapng.ISB_IFDROP: "ifdrop", pcapng.ISB_FILTERACCEPT: "filteraccept",
    pcapng.ISB_OSDROP: "osdrop", pcapng.ISB_USRDELIV: "usrdeliv",
}


@dataclass
class ParsedBatch:
    """A validated pcapng section, described by its few non-packet blocks (no packet decoded)."""
    data: memoryview
    shb: memoryview
    idbs: list[memoryview]                      # raw IDB blocks in interface-id order
    groups: list[tuple[int, bytes, int, int]]        # per interface: (link type, if_tsresol, snaplen)
    names: list[str]                            # per interface: if_name
    heads: list[tuple[int, int]]                # (offset, length) of the SHB and the IDBs, in order
    packets: int
    stats: list[dict] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.data)

    def epb_isb_slices(self) -> list[memoryview]:
        """The EPBs and ISBs, byte for byte and in order, as few slices of `data` (cut at the SHB/IDBs)."""
        out, pos = [], 0
        for off, length in self.heads:
            if off > pos:
                out.append(self.data[pos:off])
            pos = off + length
        if pos < len(self.data):
            out.append(self.data[pos:])
        return out


class _Builder:
    """What parse_batch keeps of the SHB, IDB and ISB blocks (shared by the C and the Python walk)."""

    def __init__(self, view: memoryview):
        self.view = view
        self.shb = None
        self.idbs: list[memoryview] = []
        self.groups: list[tuple[int, bytes, int, int]] = []
        self.names: list[str] = []
        self.heads: list[tuple[int, int]] = []
        self.stats: list[dict] = []

    def add_shb(self, off: int, raw: memoryview) -> None:
        self.shb = raw
        self.heads.append((off, len(raw)))

    def add_idb(self, off: int, raw: memoryview) -> None:
        linktype, _, snaplen = struct.unpack_from("<HHI", raw, 8)
        tsresol, name = b"\x06", ""
        for code, value in pcapng.parse_options(raw[16:-4]):
            if code == pcapng.IF_TSRESOL:
                tsresol = value[:1]
            elif code == pcapng.IF_NAME:
                name = value.decode("utf-8", "replace")
        self.idbs.append(raw)
        # one file per group: libpcap refuses a file whose interfaces differ in link type or snaplen
        key = (linktype, tsresol, snaplen, 0)
        if linktype in LIBPCAP_REMAPPED:  # ... and one whose second IDB has one of these: a file each
            key = (linktype, tsresol, snaplen, sum(1 for g in self.groups if g[:3] == key[:3]))
        self.groups.append(key)
        self.names.append(name)
        self.heads.append((off, len(raw)))

    def add_isb(self, raw: memoryview) -> None:
        if_id = struct.unpack_from("<I", raw, 8)[0]
        entry: dict = {"if_id": if_id, "if_name": self.names[if_id]}
        for code, value in pcapng.parse_options(raw[20:-4]):
            if code in _ISB_COUNTERS and len(value) == 8:
                entry[_ISB_COUNTERS[code]] = struct.unpack("<Q", value)[0]
            elif code == pcapng.OPT_COMMENT:  # the sensor's suppressed copies (issue 19): not a loss
                m = _DUPLICATES.search(bytes(value).decode("utf-8", "replace"))
                if m:
                    entry["duplicates"] = int(m.group(1))
        self.stats.append(entry)

    def done(self, packets: int) -> ParsedBatch:
        return ParsedBatch(self.view, self.shb, self.idbs, self.groups, self.names, self.heads, packets,
                           self.stats)


CUSTOM_OPTIONS = (2988, 2989, 19372, 19373)  # a Private Enterprise Number, then data


def _option_length_rule(btype: int, code: int, length: int, first: int) -> str:
    """The length wiretap (tshark) insists on for this option, as words, if `length` breaks it; else ""."""
    if code in CUSTOM_OPTIONS:
        return "at least 4" if length < 4 else ""
    if btype != BT_EPB:
        return ""
    if code in (2, 6):    # epb_flags, epb_queue
        return "4" if length != 4 else ""
    if code in (4, 5):    # epb_dropcount, epb_packetid
        return "8" if length != 8 else ""
    if code == 7:         # epb_verdict: a type byte; TC and XDP verdicts are 8 bytes after it
        if length < 1:
            return "at least 1"
        return "9" if first in (1, 2) and length != 9 else ""
    return ""


def check_options(raw: memoryview, start: int, btype: int, off: int) -> None:
    """The options of block `raw` (at byte `off` of the batch) from `start` to its trailer: each one
    within the block, an end-of-options (if any) of length 0 and last; in an IDB the two options
    libpcap reads (if_tsresol, if_tsoffset) once each, of their length, a resolution it can use; the
    options wiretap gives a fixed length (EPB flags, drop count, packet id, queue, verdict; custom
    options in any block) of that length.
    What libpcap or wiretap would refuse in the stored file is refused here. Raises PcapngError."""
    name = BLOCK_NAMES[btype]
    end = len(raw) - 4
    pos = start
    seen_tsresol = seen_tsoffset = False
    while pos < end:
        if end - pos < 4:
            raise PcapngError(off, f"{name}: option header overruns the block")
        code, length = struct.unpack_from("<HH", raw, pos)
        if (length + 3) & ~3 > end - pos - 4:
            raise PcapngError(off, f"{name}: option {code} (length {length}) overruns the block")
        if code == pcapng.OPT_END:
            if length:
                raise PcapngError(off, f"{name}: end-of-options option with length {length}")
            if pos + 4 != end:
                raise PcapngError(off, f"{name}: data after the end-of-options option")
            return
        want = _option_length_rule(btype, code, length, raw[pos + 4] if length else 0)
        if want:
            raise PcapngError(off, f"{name}: option {code} with length {length} (readers need {want})")
        if btype == BT_IDB and code == pcapng.IF_TSRESOL:
            if length != 1:
                raise PcapngError(off, f"{name}: if_tsresol option with length {length} != 1")
            if seen_tsresol:
                raise PcapngError(off, f"{name}: more than one if_tsresol option")
            seen_tsresol = True
            res = raw[pos + 4]
            if (res & 0x7F) > 63 if res & 0x80 else res > 19:
                raise PcapngError(off, f"{name}: if_tsresol 0x{res:02x} is too fine")
        elif btype == BT_IDB and code == IF_TSOFFSET:
            if length != 8:
                raise PcapngError(off, f"{name}: if_tsoffset option with length {length} != 8")
            if seen_tsoffset:
                raise PcapngError(off, f"{name}: more than one if_tsoffset option")
            seen_tsoffset = True
        pos += 4 + ((length + 3) & ~3)


def parse_batch(data: bytes | memoryview) -> ParsedBatch:
    """Check that `data` is exactly one well-formed little-endian pcapng section. Raises PcapngError.

    Accepted blocks: one SHB first (version 1.0 or 1.2), then IDBs, EPBs and ISBs; every EPB/ISB must
    name an interface declared before it, an EPB's captured length must fit its block and its
    interface's snapshot length; every block's options lie within it (check_options); no block over
    16 MiB. What this accepts, tcpdump and tshark read from the stored file (tests/test_pcapng_readers.py).

    The walk over the blocks is C (native/pcapng_scan.c, one pass, GIL released, no Python object per
    packet); Python reads only the SHB, IDBs and ISBs it reports. parse_batch_py is the pure-Python
    reference with the same checks, messages and result (used when the extension is not built).
    """
    if _scan is None:
        return parse_batch_py(data)
    view = memoryview(data)
    try:
        packets, blocks = _scan.scan(view)
    except _scan.ScanError as err:
        raise PcapngError(*err.args) from None
    b = _Builder(view)
    for btype, off, length in blocks:
        raw = view[off:off + length]
        if btype == BT_IDB:
            b.add_idb(off, raw)
        elif btype == BT_ISB:
            b.add_isb(raw)
        else:
            b.add_shb(off, raw)
    return b.done(packets)


def parse_batch_py(data: bytes | memoryview) -> ParsedBatch:
    """parse_batch in pure Python, block by block: the reference the C walk is tested against."""
    view = memoryview(data)
    if len(view) == 0:
        raise PcapngError(0, "empty body")
    b = _Builder(view)
    packets = 0
    snaps: list[int] = []  # per interface: its snapshot length as libpcap adjusts it
    unpack = struct.unpack_from
    for blk in pcapng.iter_blocks(view):
        btype, off, raw = blk.btype, blk.offset, blk.raw
        length = len(raw)
        if length > MAX_BLOCK:
            raise PcapngError(off, f"block of {length} bytes (more than {MAX_BLOCK >> 20} MiB)")
        if btype == BT_EPB:
            if length < 32:
                raise PcapngError(off, "Enhanced Packet Block too short")
            if_id, _hi, _lo, caplen = unpack("<IIII", raw, 8)
            if if_id >= len(b.idbs):
                raise PcapngError(off, f"packet refers to undeclared interface {if_id}")
            if 28 + caplen + 4 > length:
                raise PcapngError(off, "captured length exceeds block")
            if caplen > snaps[if_id]:
                raise PcapngError(off, f"captured length {caplen} exceeds the interface's snapshot length "
                                       f"{snaps[if_id]}")
            check_options(raw, 28 + ((caplen + 3) & ~3), btype, off)
            packets += 1
        elif btype == BT_SHB:
            if b.shb is not None:
                raise PcapngError(off, "a batch must be one section (second Section Header Block)")
            if length < 28:
                raise PcapngError(off, "Section Header Block too short")
            major, minor = unpack("<HH", raw, 12)
            if major != 1:
                raise PcapngError(off, f"unsupported pcapng major version {major}")
            if minor not in (0, 2):
                raise PcapngError(off, f"unsupported pcapng version 1.{minor} (libpcap reads 1.0 and 1.2)")
            if length > MAX_SHB:
                raise PcapngError(off, f"Section Header Block of {length} bytes (more than 1 MiB)")
            check_options(raw, 24, btype, off)
            b.add_shb(off, raw)
        elif b.shb is None:
            raise PcapngError(off, "body does not start with a Section Header Block")
        elif btype == BT_IDB:
            if length < 20:
                raise PcapngError(off, "Interface Description Block too short")
            check_options(raw, 16, btype, off)
            snaplen = unpack("<I", raw, 12)[0]
            snaps.append(snaplen if 0 < snaplen <= MAX_SNAPLEN else MAX_SNAPLEN)
            b.add_idb(off, raw)
        elif btype == BT_ISB:
            if length < 24:
                raise PcapngError(off, "Interface Statistics Block too short")
            if_id = unpack("<I", raw, 8)[0]
            if if_id >= len(b.idbs):
                raise PcapngError(off, f"statistics refer to undeclared interface {if_id}")
            check_options(raw, 20, btype, off)
            b.add_isb(raw)
        else:
            raise PcapngError(off, f"unsupported block type 0x{btype:08x} (a batch holds IDB, EPB and ISB)")
    if b.shb is None:
        raise PcapngError(0, "no Section Header Block")
    return b.done(packets)


def split_py(data: bytes | memoryview, group_of: list[int], new_id: list[int], ngroups: int) -> list[bytes]:
    """The EPBs and ISBs of a parsed section, per group (group_of[if_id]), interface ids rewritten to
    new_id[if_id]; SHB and IDBs left out. Reference for _pcapngscan.split (per-block Python)."""
    out = [bytearray() for _ in range(ngroups)]
    for blk in pcapng.iter_blocks(data):
        if blk.btype in (BT_EPB, BT_ISB):
            if_id = struct.unpack_from("<I", blk.raw, 8)[0]
            dst = out[group_of[if_id]]
            start = len(dst)
            dst += blk.raw
            struct.pack_into("<I", dst, start + 8, new_id[if_id])
    return [bytes(b) for b in out]


def split(data: bytes | memoryview, group_of: list[int], new_id: list[int], ngroups: int) -> list[bytes]:
    if _scan is None:
        return split_py(data, group_of, new_id, ngroups)
    return _scan.split(data, group_of, new_id, ngroups)


def _file_shb(shb: memoryview) -> bytes:
    """The batch's SHB with its section length set to -1 (unknown): the file's section keeps growing."""
    out = bytearray(shb)
    struct.pack_into("<q", out, 16, -1)
    return bytes(out)


@dataclass
class _File:
    path: Path
    fh: object
    idbs: list[bytes]
    started: int = 0   # writeback started up to here (drop-behind)
    dropped: int = 0   # on disk and out of the page cache up to here


def _drop_behind(f: _File) -> None:
    """Start writing back what was just appended and drop from the page cache what lies more than
    DROP_BEHIND bytes behind the end (once on disk): a stream of batches then reuses the same few pages
    instead of taking fresh ones (on this VM a fresh page costs ~8x a reused one: 8 vs 1 ms per 4 MiB)."""
    if _scan is None or f.started < 0:
        return
    end = f.fh.tell()
    fd = f.fh.fileno()
    try:
        if end > f.started:
            _scan.sync_file_range(fd, f.started, end - f.started, _scan.SYNC_FILE_RANGE_WRITE)
            f.started = end
        upto = end - DROP_BEHIND
        if upto - f.dropped >= DROP_STEP:
            _scan.sync_file_range(fd, f.dropped, upto - f.dropped, _scan.SYNC_FILE_RANGE_WAIT_BEFORE
                                  | _scan.SYNC_FILE_RANGE_WRITE | _scan.SYNC_FILE_RANGE_WAIT_AFTER)
            os.posix_fadvise(fd, f.dropped, upto - f.dropped, os.POSIX_FADV_DONTNEED)
            f.dropped = upto
    except OSError:
        f.started = -1  # not for this file system: leave the page cache to the kernel


def _is_prefix(short: list[bytes], long: list) -> bool:
    return len(short) <= len(long) and all(bytes(long[i]) == short[i] for i in range(len(short)))


class Store:
    """Appends accepted batches; thread-safe (one lock: writes are sequential page-cache copies)."""

    def __init__(self, out_dir: Path):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        # (sensor, boot) -> its open files, least recently written first; when each was last written
        self._streams: OrderedDict[tuple[str, str], dict[tuple[int, bytes, int, int], _File]] = OrderedDict()
        self._written_at: dict[tuple[str, str], float] = {}
        self._open_files = 0
        self._next_n: dict[tuple[str, str], int] = {}
        self._closed = False
        self._log = open(self.out_dir / BATCH_LOG, "a", encoding="utf-8")

    # -- naming ----------------------------------------------------------------------------
    def _stem(self, sensor: str, boot: str) -> str:
        stem = f"{sensor}-{boot}"
        if len(stem.encode()) + len(SUFFIX) + 8 > _NAME_MAX:  # room for "-<n>"
            digest = hashlib.sha256(sensor.encode()).hexdigest()[:12]
            stem = f"{sensor[:_NAME_MAX - len(SUFFIX) - 8 - 30]}~{digest}-{boot}"
        return stem

    def _new_path(self, sensor: str, boot: str) -> Path:
        stem = self._stem(sensor, boot)
        n = self._next_n.get((sensor, boot), 0)
        while True:
            path = self.out_dir / (f"{stem}{SUFFIX}" if n == 0 else f"{stem}-{n}{SUFFIX}")
            n += 1
            if not path.exists():
                self._next_n[(sensor, boot)] = n
                return path

    # -- writing ---------------------------------------------------------------------------
    def append(self, sensor: str, boot: str, seq: int, batch: ParsedBatch, *, sent: int,
               wire_bytes: int, encoding: str) -> list[str]:
        """Store one accepted batch; returns the names of the files written. Raises OSError."""
        with self._lock:
            if self._closed:
                raise OSError("store is closed")
            files = self._streams.setdefault((sensor, boot), {})
            self._streams.move_to_end((sensor, boot))
            self._written_at[(sensor, boot)] = time.monotonic()
            # Which group file each interface goes to, and its interface id there.
            group_keys: list[tuple[int, bytes, int, int]] = []
            for g in batch.groups:
                if g not in group_keys:
                    group_keys.append(g)
            plan: dict[tuple[int, bytes, int, int], list] = {}
            for key in group_keys:
                members = [i for i, g in enumerate(batch.groups) if g == key]
                raw = [batch.idbs[i] for i in members]
                current = files.get(key)
                if current is not None and current.fh is None and not self._reopen(current):
                    current = None  # closed to save a descriptor, and gone since: a new file
                parts: list = []
                if current is not None and (_is_prefix(current.idbs, raw) or
                                            _is_prefix([bytes(r) for r in raw], current.idbs)):
                    parts.extend(raw[len(current.idbs):])
                    plan[key] = [current, parts, False, raw]
                else:
                    parts.append(_file_shb(batch.shb))
                    parts.extend(raw)
                    plan[key] = [None, parts, True, raw]
            local: dict[int, int] = {}
            for key in group_keys:
                for k, i in enumerate(i for i, g in enumerate(batch.groups) if g == key):
                    local[i] = k
            new_id = [local[i] for i in range(len(batch.groups))]

            # EPBs/ISBs: one group (the common case) -> slices of the batch between its SHB/IDBs, no copy;
            # several groups -> one copy per group, interface ids renumbered (C, one pass).
            if len(group_keys) == 1:
                plan[group_keys[0]][1].extend(batch.epb_isb_slices())
            elif len(group_keys) > 1:
                index = {key: j for j, key in enumerate(group_keys)}
                chunks = split(batch.data, [index[g] for g in batch.groups], new_id, len(group_keys))
                for key, chunk in zip(group_keys, chunks):
                    if chunk:
                        plan[key][1].append(chunk)

            written: list[str] = []
            done: list[_File] = []
            undo: list[tuple[_File, int]] = []
            created: list[tuple[tuple[int, bytes, int, int], _File, _File | None]] = []
            try:
                for key in group_keys:
                    current, parts, fresh, raw = plan[key]
                    if fresh:
                        path = self._new_path(sensor, boot)
                        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o640)
                        current = _File(path, os.fdopen(fd, "ab"), [])
                        created.append((key, current, files.get(key)))
                    else:
                        undo.append((current, current.fh.tell()))
                    current.fh.writelines(parts)
                    current.fh.flush()
                    written.append(current.path.name)
                    done.append(current)
            except OSError:
                # Leave every file as it was: drop a half-written batch, remove files it created.
                for f, pos in undo:
                    try:
                        f.fh.truncate(pos)
                    except OSError:
                        pass
                for _key, f, _old in created:
                    try:
                        f.fh.close()
                        f.path.unlink()
                    except OSError:
                        pass
                raise
            for key, f, old in created:
                files[key] = f
                self._open_files += 1
                if old is not None and old.fh is not None:
                    old.fh.close()
                    self._open_files -= 1
            for key in group_keys:
                f, raw = files[key], plan[key][3]
                if len(raw) > len(f.idbs):
                    f.idbs = [bytes(r) for r in raw]
            for f in done:
                _drop_behind(f)
            self._log_batch(sensor, boot, seq, batch, sent=sent, wire_bytes=wire_bytes,
                            encoding=encoding, files=written)
            self._close_idle_streams()
            return written

    def _reopen(self, f: _File) -> bool:
        try:
            f.fh = open(f.path, "ab")  # noqa: SIM115 - kept open across batches
        except OSError:
            return False
        self._open_files += 1
        return True

    def _close_idle_streams(self) -> None:
        """Over MAX_OPEN_FILES open files, close those of the least recently written streams: the stream
        stays known and its next batch reopens its file. A stream idle for STREAM_IDLE_S is forgotten (its
        next batch, if any, starts a new numbered file). The stream just written is left alone."""
        now = time.monotonic()
        for stream in list(self._streams)[:-1]:
            idle = now - self._written_at[stream] >= STREAM_IDLE_S
            if not idle and self._open_files <= MAX_OPEN_FILES:
                break
            for f in self._streams[stream].values():
                if f.fh is not None:
                    try:
                        f.fh.close()
                    except OSError:
                        pass
                    f.fh = None
                    self._open_files -= 1
            if idle:
                del self._streams[stream], self._written_at[stream]
                self._next_n.pop(stream, None)  # a new file's number is found again from the directory

    @property
    def open_files(self) -> int:
        return self._open_files

    def _log_batch(self, sensor, boot, seq, batch: ParsedBatch, **extra) -> None:
        entry = {"time": round(time.time(), 3), "sensor": sensor, "boot": boot, "seq": seq,
                 "packets": batch.packets, "bytes": batch.size, **extra,
                 "interfaces": batch.names, "stats": batch.stats}
        self._log.write(json.dumps(entry, separators=(",", ":")) + "\n")
        self._log.flush()

    def accepted(self, tail_bytes: int | None = None, max_entries: int | None = None) -> list[tuple[str, str, int]]:
        """(sensor, boot, seq) of the batches logged in batches.jsonl, oldest first, whatever their age:
        what a restarted vSensor re-seeds its replay guard with (a sensor re-signs a retried or spooled
        batch with a fresh time, so the signed time says nothing about whether it was stored).

        Bounded: only the last `tail_bytes` of the file (SEED_TAIL_BYTES, 64 MiB) and of those the last
        `max_entries` lines (SEED_MAX_ENTRIES, 100 000) are read; older batches are forgotten.
        """
        tail_bytes = SEED_TAIL_BYTES if tail_bytes is None else tail_bytes
        max_entries = SEED_MAX_ENTRIES if max_entries is None else max_entries
        out: list[tuple[str, str, int]] = []
        for entry in tail_entries(self.out_dir / BATCH_LOG, tail_bytes, max_entries):
            try:
                out.append((str(entry["sensor"]), str(entry["boot"]), int(entry["seq"])))
            except (KeyError, TypeError, ValueError):
                continue
        return out

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for files in self._streams.values():
                for f in files.values():
                    if f.fh is None:
                        continue
                    try:
                        f.fh.close()
                    except OSError:
                        pass
            self._streams.clear()
            self._written_at.clear()
            self._open_files = 0
            self._log.close()


def tail_entries(path: Path, tail_bytes: int, max_entries: int) -> list[dict]:
    """The JSON objects on the last lines of a .jsonl file, oldest first: at most the last `tail_bytes`
    of it (a partial first line skipped) and of those the last `max_entries`; unreadable lines skipped,
    a missing file gives none."""
    try:
        with open(path, "rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - tail_bytes))
            if size > tail_bytes:
                fh.readline()  # a partial line
            lines = fh.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines[-max_entries:] if max_entries > 0 else []:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out
