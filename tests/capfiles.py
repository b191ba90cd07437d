"""Hand-built pcap and pcapng files for the replay tests: both byte orders, several sections,
if_tsresol in powers of 10 and 2, if_tsoffset, EPB/SPB/obsolete PB, comments and foreign blocks.
Independent of ossensor's own writer, so the reader is checked against the file formats."""

from __future__ import annotations

import struct
from dataclasses import dataclass


def _e(be: bool) -> str:
    return ">" if be else "<"


def _pad(b: bytes) -> bytes:
    return b + b"\0" * ((4 - len(b) % 4) % 4)


def option(be: bool, code: int, value: bytes) -> bytes:
    return struct.pack(_e(be) + "HH", code, len(value)) + _pad(value)


def options(be: bool, opts: list[tuple[int, bytes]]) -> bytes:
    if not opts:
        return b""
    return b"".join(option(be, c, v) for c, v in opts) + struct.pack(_e(be) + "HH", 0, 0)


def block(be: bool, btype: int, body: bytes) -> bytes:
    total = 12 + len(body)
    return struct.pack(_e(be) + "II", btype, total) + body + struct.pack(_e(be) + "I", total)


def shb(be: bool = False, comment: str | None = None) -> bytes:
    body = struct.pack(_e(be) + "IHHq", 0x1A2B3C4D, 1, 0, -1)
    opts = [(1, comment.encode())] if comment else []
    return block(be, 0x0A0D0D0A, body + options(be, opts + [(4, b"capfiles")]))


def idb(be: bool, linktype: int, name: str | None, snaplen: int = 262144, tsresol: int | None = None,
        tsoffset: int | None = None, comment: str | None = None) -> bytes:
    opts = []
    if comment:
        opts.append((1, comment.encode()))
    if name is not None:
        opts.append((2, name.encode()))
    if tsresol is not None:
        opts.append((9, bytes([tsresol])))
    if tsoffset is not None:
        opts.append((14, struct.pack(_e(be) + "q", tsoffset)))
    return block(be, 1, struct.pack(_e(be) + "HHI", linktype, 0, snaplen) + options(be, opts))


def epb(be: bool, if_id: int, ts_units: int, data: bytes, wirelen: int | None = None,
        comment: str | None = None) -> bytes:
    body = struct.pack(_e(be) + "IIIII", if_id, ts_units >> 32, ts_units & 0xFFFFFFFF, len(data),
                       len(data) if wirelen is None else wirelen)
    return block(be, 6, body + _pad(data) + options(be, [(1, comment.encode())] if comment else []))


def pb(be: bool, if_id: int, ts_units: int, data: bytes, wirelen: int | None = None) -> bytes:
    body = struct.pack(_e(be) + "HHIIII", if_id, 0, ts_units >> 32, ts_units & 0xFFFFFFFF, len(data),
                       len(data) if wirelen is None else wirelen)
    return block(be, 2, body + _pad(data))


def spb(be: bool, data: bytes, wirelen: int | None = None) -> bytes:
    return block(be, 3, struct.pack(_e(be) + "I", len(data) if wirelen is None else wirelen) + _pad(data))


def isb(be: bool, if_id: int) -> bytes:
    return block(be, 5, struct.pack(_e(be) + "III", if_id, 0, 0) + options(be, [(1, b"stats comment")]))


def nrb(be: bool) -> bytes:
    value = b"\x0a\x00\x00\x01host.test\0"
    rec = struct.pack(_e(be) + "HH", 1, len(value)) + _pad(value) + struct.pack(_e(be) + "HH", 0, 0)
    return block(be, 4, rec)


def custom(be: bool) -> bytes:
    return block(be, 0x00000BAD, struct.pack(_e(be) + "I", 32473) + _pad(b"vendor data"))


def pcap(packets: list[tuple[int, bytes, int]], *, nano: bool = False, be: bool = False, linktype: int = 1,
         snaplen: int = 262144) -> bytes:
    """packets: (ts_ns, data, wirelen)."""
    e = _e(be)
    out = [struct.pack(e + "IHHiIII", 0xA1B23C4D if nano else 0xA1B2C3D4, 2, 4, 0, 0, snaplen, linktype)]
    for ts, data, wirelen in packets:
        frac = ts % 10**9 if nano else (ts % 10**9) // 1000
        out.append(struct.pack(e + "IIII", ts // 10**9, frac, len(data), wirelen) + data)
    return b"".join(out)


def eth_udp(i: int, size: int = 60, dport: int = 9999) -> bytes:
    """An Ethernet/IPv4/UDP frame numbered i (no checksums needed for these tests)."""
    payload = (b"pkt-%06d-" % i).ljust(size, b"y")
    udp = struct.pack("!HHHH", 40000 + i % 1000, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                     bytes([10, 1, 0, 1]), bytes([10, 1, 0, 2])) + udp
    return b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip


def raw_ip_udp(i: int, size: int = 40, dport: int = 53) -> bytes:
    return eth_udp(i, size, dport)[14:]


@dataclass
class Expected:
    name: str
    ts_ns: int
    data: bytes
    wirelen: int


def multi_interface_pcapng() -> tuple[bytes, list[Expected]]:
    """Two sections (little- then big-endian), four interfaces, three link types, resolutions
    10^-9, 10^-6 (default), 2^-20 and an if_tsoffset; EPB, obsolete PB, SPB (ts 0); comments,
    an NRB, ISBs and a custom block in between, all to be skipped."""
    exp: list[Expected] = []
    base = 1_700_000_000
    le, be = False, True
    parts = [shb(le, comment="first section"), nrb(le),
             idb(le, 1, "eth0", tsresol=9, comment="ns"),
             idb(le, 101, "tun0"),                       # default resolution: microseconds
             idb(le, 1, "eth1", tsresol=0x80 | 20)]      # 2^-20 s
    for i in range(6):
        ts = base * 10**9 + i * 1_000_001 + 7
        data = eth_udp(i, 80)
        parts.append(epb(le, 0, ts, data, comment="a packet comment" if i == 2 else None))
        exp.append(Expected("eth0", ts, data, len(data)))
    for i in range(4):
        us = base * 10**6 + 500_000 + i * 1234
        data = raw_ip_udp(100 + i, 30)
        parts.append(epb(le, 1, us, data, wirelen=len(data) + 100))  # cut on capture: wirelen > caplen
        exp.append(Expected("tun0", us * 1000, data, len(data) + 100))
    units = (base + 3) * 2**20 + 12345
    data = eth_udp(200, 64)
    parts.append(pb(le, 2, units, data))
    exp.append(Expected("eth1", units * 10**9 >> 20, data, len(data)))
    parts += [isb(le, 0), custom(le)]
    # second section, big-endian: eth0 again (same name and link type) and a new interface with an offset
    parts += [shb(be), idb(be, 1, "eth0", tsresol=9), idb(be, 228, "ipv4if", tsresol=3, tsoffset=1000)]
    for i in range(3):
        ts = (base + 10) * 10**9 + i
        data = eth_udp(300 + i, 70)
        parts.append(epb(be, 0, ts, data))
        exp.append(Expected("eth0", ts, data, len(data)))
    ms = (base + 20) * 1000 + 42
    data = raw_ip_udp(400, 20)
    parts.append(epb(be, 1, ms, data))
    exp.append(Expected("ipv4if", ms * 10**6 + 1000 * 10**9, data, len(data)))
    data = eth_udp(500, 50)
    parts.append(spb(be, data))
    exp.append(Expected("eth0", 0, data, len(data)))
    parts.append(custom(be))
    return b"".join(parts), exp
