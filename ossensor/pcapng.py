"""pcapng blocks: the batch format on the wire and in the vSensor's files.

A batch is one pcapng section: a Section Header Block, one Interface Description
Block per interface the section refers to, the Enhanced Packet Blocks (written by
the C reader, native/ring.c, never by Python on the live path), and one Interface
Statistics Block per interface carrying the drop counters. Any pcapng reader
(tcpdump, tshark, scapy) reads it. Times are in nanoseconds (if_tsresol = 9).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterator

BT_SHB = 0x0A0D0D0A
BT_IDB = 0x00000001
BT_EPB = 0x00000006
BT_ISB = 0x00000005
BYTE_ORDER_MAGIC = 0x1A2B3C4D

OPT_END = 0
OPT_COMMENT = 1
SHB_USERAPPL = 4
IF_NAME = 2
IF_TSRESOL = 9
ISB_STARTTIME = 2
ISB_ENDTIME = 3
ISB_IFRECV = 4
ISB_IFDROP = 5
ISB_FILTERACCEPT = 6
ISB_OSDROP = 7
ISB_USRDELIV = 8

# Linux ARPHRD_* -> pcap LINKTYPE_*: AF_PACKET hands us the frame as the device
# has it, so the link type is per interface and never assumed to be Ethernet.
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
ARPHRD_TO_LINKTYPE = {
    1: LINKTYPE_ETHERNET,      # ARPHRD_ETHER
    772: LINKTYPE_ETHERNET,    # ARPHRD_LOOPBACK (Linux gives it a zeroed Ethernet header)
    65534: LINKTYPE_RAW,       # ARPHRD_NONE (tun, wireguard)
    768: LINKTYPE_RAW,         # ARPHRD_TUNNEL (ipip)
    769: LINKTYPE_RAW,         # ARPHRD_TUNNEL6
    776: LINKTYPE_RAW,         # ARPHRD_SIT
    778: LINKTYPE_RAW,         # ARPHRD_IPGRE
    512: 9,                    # ARPHRD_PPP -> LINKTYPE_PPP
    801: 105,                  # ARPHRD_IEEE80211 -> LINKTYPE_IEEE802_11
    519: 104,                  # ARPHRD_IPIP? (cisco HDLC) -> LINKTYPE_C_HDLC
}


def linktype_for_arphrd(arphrd: int) -> int:
    """Unknown device types fall back to raw IP, which is what most L3 devices deliver."""
    return ARPHRD_TO_LINKTYPE.get(arphrd, LINKTYPE_RAW)


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


MAX_OPTION = 0xFFFF  # an option's length is 16 bits


def _option(code: int, value: bytes) -> bytes:
    """One option, padded: its length field is the value's length, so it never overruns its block."""
    if len(value) > MAX_OPTION:
        raise ValueError(f"pcapng option {code}: {len(value)} bytes (at most {MAX_OPTION})")
    return struct.pack("<HH", code, len(value)) + value + b"\0" * _pad4(len(value))


def _text(value: str) -> bytes:
    """A string option's UTF-8 bytes, cut (at a character boundary) to fit an option."""
    raw = value.encode()
    if len(raw) <= MAX_OPTION:
        return raw
    return raw[:MAX_OPTION].decode("utf-8", "ignore").encode()


def _options(opts: list[tuple[int, bytes]]) -> bytes:
    if not opts:
        return b""
    return b"".join(_option(c, v) for c, v in opts) + struct.pack("<HH", OPT_END, 0)


def _block(btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack("<II", btype, total) + body + struct.pack("<I", total)


def shb(userappl: str = "ossensor") -> bytes:
    body = struct.pack("<IHHq", BYTE_ORDER_MAGIC, 1, 0, -1)
    return _block(BT_SHB, body + _options([(SHB_USERAPPL, _text(userappl))]))


def idb(name: str, linktype: int, snaplen: int) -> bytes:
    body = struct.pack("<HHI", linktype, 0, snaplen)
    return _block(BT_IDB, body + _options([(IF_NAME, _text(name)), (IF_TSRESOL, b"\x09")]))


def isb(if_id: int, ts_ns: int, *, ifrecv: int | None = None, ifdrop: int | None = None,
        filteraccept: int | None = None, osdrop: int | None = None, usrdeliv: int | None = None,
        comment: str | None = None) -> bytes:
    opts = []
    if comment:
        opts.append((OPT_COMMENT, _text(comment)))
    for code, value in ((ISB_IFRECV, ifrecv), (ISB_IFDROP, ifdrop), (ISB_FILTERACCEPT, filteraccept),
                        (ISB_OSDROP, osdrop), (ISB_USRDELIV, usrdeliv)):
        if value is not None:
            opts.append((code, struct.pack("<Q", value)))
    body = struct.pack("<III", if_id, ts_ns >> 32, ts_ns & 0xFFFFFFFF)
    return _block(BT_ISB, body + _options(opts))


def epb(if_id: int, ts_ns: int, data: bytes, wirelen: int | None = None) -> bytes:
    """One Enhanced Packet Block; for tests and file replay of odd inputs (live capture writes EPBs in C)."""
    body = struct.pack("<IIIII", if_id, ts_ns >> 32, ts_ns & 0xFFFFFFFF, len(data),
                       len(data) if wirelen is None else wirelen)
    return _block(BT_EPB, body + data + b"\0" * _pad4(len(data)))


# ---- reading -------------------------------------------------------------------------------

class PcapngError(ValueError):
    def __init__(self, offset: int, reason: str):
        super().__init__(f"at byte {offset}: {reason}")
        self.offset = offset
        self.reason = reason


@dataclass
class Block:
    btype: int
    offset: int
    raw: memoryview  # the whole block, headers and trailer included

    @property
    def body(self) -> memoryview:
        return self.raw[8:-4]


def iter_blocks(data: bytes | memoryview, offset: int = 0) -> Iterator[Block]:
    """Little-endian pcapng blocks (the only byte order we write). Raises PcapngError on damage."""
    view = memoryview(data)
    end = len(view)
    while offset < end:
        if end - offset < 12:
            raise PcapngError(offset, "truncated block header")
        btype, total = struct.unpack_from("<II", view, offset)
        if btype == BT_SHB and struct.unpack_from("<I", view, offset + 8)[0] != BYTE_ORDER_MAGIC:
            raise PcapngError(offset, "section is not little-endian")
        if total < 12 or total % 4 or offset + total > end:
            raise PcapngError(offset, f"bad block length {total}")
        if struct.unpack_from("<I", view, offset + total - 4)[0] != total:
            raise PcapngError(offset, "block trailer length does not match")
        yield Block(btype, offset, view[offset:offset + total])
        offset += total


def parse_options(buf: memoryview) -> list[tuple[int, bytes]]:
    out, off = [], 0
    while off + 4 <= len(buf):
        code, length = struct.unpack_from("<HH", buf, off)
        if code == OPT_END:
            break
        out.append((code, bytes(buf[off + 4: off + 4 + length])))
        off += 4 + length + _pad4(length)
    return out


@dataclass
class Interface:
    name: str
    linktype: int
    snaplen: int


@dataclass
class Packet:
    if_id: int
    ts_ns: int
    data: bytes
    wirelen: int


@dataclass
class Section:
    interfaces: list[Interface]
    packets: list[Packet]
    stats: list[tuple[int, dict[int, int | bytes]]]  # (if_id, {option code: value})


def read_sections(data: bytes | memoryview) -> list[Section]:
    """Decode every section (tests, the vSensor's summaries). Per-packet Python: not for the live path."""
    sections: list[Section] = []
    for blk in iter_blocks(data):
        body = blk.body
        if blk.btype == BT_SHB:
            sections.append(Section([], [], []))
            continue
        if not sections:
            raise PcapngError(blk.offset, "block before the first Section Header Block")
        sec = sections[-1]
        if blk.btype == BT_IDB:
            linktype, _, snaplen = struct.unpack_from("<HHI", body, 0)
            name = ""
            for code, value in parse_options(body[8:]):
                if code == IF_NAME:
                    name = value.decode("utf-8", "replace")
            sec.interfaces.append(Interface(name, linktype, snaplen))
        elif blk.btype == BT_EPB:
            if_id, hi, lo, caplen, wirelen = struct.unpack_from("<IIIII", body, 0)
            if if_id >= len(sec.interfaces):
                raise PcapngError(blk.offset, f"packet refers to undeclared interface {if_id}")
            if 20 + caplen > len(body):
                raise PcapngError(blk.offset, "captured length exceeds block")
            sec.packets.append(Packet(if_id, (hi << 32) | lo, bytes(body[20:20 + caplen]), wirelen))
        elif blk.btype == BT_ISB:
            if_id = struct.unpack_from("<I", body, 0)[0]
            opts: dict[int, int | bytes] = {}
            for code, value in parse_options(body[12:]):
                opts[code] = struct.unpack("<Q", value)[0] if len(value) == 8 and code >= 2 else value
            sec.stats.append((if_id, opts))
    return sections
