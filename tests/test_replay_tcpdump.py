"""`ossensor replay` selects exactly what `tcpdump -r FILE EXPR` selects, on every link type (issue 21).

Capture files are written here (struct, scapy) for 15 link types (16 files), each with packets its filters can tell
apart; every file is run with every expression of EXPRESSIONS (protocol, host, net, port, portrange,
`ip broadcast`, `ip multicast`, `vlan`, `inbound`/`outbound`, 802.11 `type`/`subtype`/`wlan addr`, `len`,
byte offsets). For every pair, both tools must refuse it, or both select the same packets: same bytes,
same timestamps (ns), same wire length, same link type and snapshot length. The comparison reads our
output back with tcpdump itself, so every file we write is also checked to be readable by it.

The tcpdump runs go two at a time; ossensor runs in process (replay.main(), the same code as the command
line, through the C reader: the ASan rerun loads its AddressSanitizer build). A handful of command-line
runs check the one-line refusals and exit status 2.
"""

from __future__ import annotations

import argparse
import os
import shutil
import struct
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import asan  # noqa: E402

reader_mod = asan.load("FILEREADER_SO", "ossensor._filereader")

from scapy.layers.dot11 import Dot11, Dot11Beacon, Dot11Elt, Dot11ProbeReq, RadioTap  # noqa: E402
from scapy.layers.inet import ICMP, IP, TCP, UDP  # noqa: E402
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6  # noqa: E402
from scapy.layers.l2 import ARP, LLC, SNAP, Dot1Q, Ether  # noqa: E402
from scapy.packet import raw  # noqa: E402

from ossensor import replay  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TCPDUMP = shutil.which("tcpdump")
TSHARK = shutil.which("tshark")
pytestmark = pytest.mark.skipif(not TCPDUMP, reason="tcpdump needed")

AP = "00:11:22:33:44:55"
STA = "66:77:88:99:aa:bb"

EXPRESSIONS = [
    "", "tcp", "udp", "icmp", "ip", "ip6", "arp", "not ip", "ip6 and tcp", "icmp6",
    "host 10.0.0.1", "src host 10.0.0.2", "dst host 2001:db8::2", "net 10.0.0.0/24", "dst net 192.168.0.0/16",
    "port 80", "tcp port 443", "udp portrange 5000-6000", "ip broadcast", "ip multicast", "ip proto 17",
    "vlan", "vlan 10 and udp", "inbound", "outbound",
    "type mgt", "subtype beacon", "type data", f"wlan addr2 {AP}", f"wlan host {STA}",
    "len > 100", "less 80", "ip[8] = 64", "tcp[13] & 2 != 0", f"ether host {AP}", "tcp and port 80 or udp",
    "tcp and",  # a syntax error: refused by both on every link type
]


# ------------------------------------------------------------------------------ packets

def ip_packets() -> list[bytes]:
    """L3 packets every filter above can tell apart."""
    return [raw(p) for p in (
        IP(src="10.0.0.1", dst="10.0.0.2", ttl=64) / TCP(sport=1234, dport=80, flags="S"),
        IP(src="10.0.0.2", dst="255.255.255.255", ttl=128) / UDP(sport=68, dport=67) / (b"d" * 40),
        IP(src="192.168.1.5", dst="224.0.0.251", ttl=1) / UDP(sport=5353, dport=5555),
        IP(src="10.0.1.9", dst="10.0.0.1", ttl=64) / ICMP() / (b"p" * 150),
        IP(src="172.16.0.1", dst="192.168.7.7", ttl=30) / TCP(sport=443, dport=50000, flags="A") / (b"t" * 300),
        IPv6(src="2001:db8::1", dst="2001:db8::2") / TCP(sport=40000, dport=443, flags="S"),
        IPv6(src="fe80::1", dst="ff02::1") / ICMPv6EchoRequest(),
        IPv6(src="2001:db8::3", dst="2001:db8::1") / UDP(sport=5001, dport=53) / (b"q" * 20),
    )]


def ethernet() -> list[bytes]:
    out = [raw(Ether(src=AP if i % 2 else STA, dst="ff:ff:ff:ff:ff:ff" if i == 1 else "02:00:00:00:00:01",
                     type=0x86DD if p[0] >> 4 == 6 else 0x0800) / p) for i, p in enumerate(ip_packets())]
    out.append(raw(Ether(src=AP, dst="ff:ff:ff:ff:ff:ff") / ARP(psrc="10.0.0.1", pdst="10.0.0.2")))
    out.append(raw(Ether(src=STA, dst=AP) / Dot1Q(vlan=10) / IP(src="10.0.0.1", dst="10.0.0.9") / UDP(dport=5000)))
    out.append(raw(Ether(src=STA, dst=AP) / Dot1Q(vlan=20) / IP(src="10.0.0.3", dst="10.0.0.9") / TCP(dport=80)))
    return out


def af_header(af: int, order: str) -> bytes:
    return struct.pack(order + "I", af)


def null_frames(order: str, v6_afs=(24, 28, 30)) -> list[bytes]:
    """DLT_NULL / DLT_LOOP: the address family in a 4-byte header (BSD, macOS and Linux's AF_INET6)."""
    out, k = [], 0
    for p in ip_packets():
        if p[0] >> 4 == 4:
            out.append(af_header(2, order) + p)
        else:
            out.append(af_header(v6_afs[k % len(v6_afs)], order) + p)
            k += 1
    return out


def sll(pkttype: int, proto: int, payload: bytes) -> bytes:
    return struct.pack(">HHH8sH", pkttype, 1, 6, bytes.fromhex("001122334455") + b"\0\0", proto) + payload


def sll2(pkttype: int, proto: int, payload: bytes) -> bytes:
    return struct.pack(">HHIHBB8s", proto, 0, 3, 1, pkttype, 6, bytes.fromhex("001122334455") + b"\0\0") + payload


def cooked(make) -> list[bytes]:
    """Linux cooked frames: received (0, host), broadcast (1) and sent (4, outgoing) ones."""
    out = []
    for i, p in enumerate(ip_packets()):
        out.append(make((0, 1, 4)[i % 3], 0x86DD if p[0] >> 4 == 6 else 0x0800, p))
    out.append(make(4, 0x0806, raw(ARP(psrc="10.0.0.1", pdst="10.0.0.2"))))
    return out


def wifi() -> list[bytes]:
    """802.11 frames: beacon, probe request, data with LLC/SNAP and IP, an ACK."""
    return [raw(p) for p in (
        Dot11(type=0, subtype=8, addr1="ff:ff:ff:ff:ff:ff", addr2=AP, addr3=AP) / Dot11Beacon() /
        Dot11Elt(ID="SSID", info=b"ossensor"),
        Dot11(type=0, subtype=4, addr1="ff:ff:ff:ff:ff:ff", addr2=STA, addr3="ff:ff:ff:ff:ff:ff") / Dot11ProbeReq(),
        Dot11(type=2, subtype=0, FCfield=0x01, addr1=AP, addr2=STA, addr3="02:00:00:00:00:01") / LLC() /
        SNAP(code=0x0800) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(dport=80, flags="S"),
        Dot11(type=2, subtype=0, FCfield=0x02, addr1=STA, addr2=AP, addr3="02:00:00:00:00:01") / LLC() /
        SNAP(code=0x0800) / IP(src="10.0.0.2", dst="255.255.255.255") / UDP(dport=5001) / (b"w" * 120),
        Dot11(type=1, subtype=13, addr1=AP),
    )]


def ppi(frame: bytes) -> bytes:
    return struct.pack("<BBHI", 0, 0, 8, 105) + frame


def prism(frame: bytes) -> bytes:
    """A 144-byte Prism header (message code 0x41, not the AVS magic) before the 802.11 frame."""
    return struct.pack("<II16s", 0x41, 144, b"wlan0") + b"\0" * 120 + frame


def avs(frame: bytes) -> bytes:
    """A 64-byte AVS header (magic 0x80211001, its length big-endian) before the 802.11 frame."""
    return struct.pack(">II", 0x80211001, 64) + b"\0" * 56 + frame


def ppp(p: bytes) -> bytes:
    return b"\xff\x03" + struct.pack(">H", 0x0057 if p[0] >> 4 == 6 else 0x0021) + p


# ------------------------------------------------------------------------------ files

def pcap_file(path: Path, linktype: int, frames: list[bytes], order: str = "<", snaplen: int = 262144,
              nano: bool = True) -> None:
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(order + "IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)]
    for i, f in enumerate(frames):
        sec, frac = 1_700_000_000 + i, (123_456_789 if nano else 123_456) + i * 7
        out.append(struct.pack(order + "IIII", sec, frac, len(f), len(f) + (4 if i == 2 else 0)) + f)
    path.write_bytes(b"".join(out))


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def pcapng_file(path: Path, interfaces: list[tuple[int, int]], packets: list[tuple[int, int, bytes]]) -> None:
    """interfaces: [(linktype, snaplen)]; packets: [(interface, ts_ns, frame)], nanosecond resolution."""
    out = [_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))]
    for i, (lt, snap) in enumerate(interfaces):
        opts = struct.pack("<HH", 2, 4) + f"if{i:02d}".encode() + struct.pack("<HHB3x", 9, 1, 9) + b"\0" * 4
        out.append(_block(1, struct.pack("<HHI", lt, 0, snap) + opts))
    for if_id, ts, f in packets:
        out.append(_block(6, struct.pack("<IIIII", if_id, ts >> 32, ts & 0xFFFFFFFF, len(f), len(f)) + f))
    path.write_bytes(b"".join(out))


@dataclass
class Case:
    name: str
    path: Path
    mixed: list[Path] | None = None  # a pcapng of several link types: tcpdump reads each part alone


def build_files(d: Path) -> list[Case]:
    eth = ethernet()
    specs = {
        "en10mb": (1, eth, "<", 128),  # snaplen 128: the longer records are cut before the filter
        "null_le": (0, null_frames("<"), "<", 262144),
        "null_be": (0, null_frames(">"), ">", 262144),  # written on a big-endian host: swapped for us
        "loop": (108, null_frames(">"), "<", 262144),
        "raw": (101, ip_packets(), ">", 262144),
        "ipv4": (228, [p for p in ip_packets() if p[0] >> 4 == 4], "<", 262144),
        "ipv6": (229, [p for p in ip_packets() if p[0] >> 4 == 6], "<", 262144),
        "linux_sll": (113, cooked(sll), "<", 262144),
        "linux_sll2": (276, cooked(sll2), "<", 262144),
        "ieee802_11": (105, wifi(), "<", 262144),
        "radiotap": (127, [raw(RadioTap() / Dot11(f)) for f in wifi()], "<", 262144),
        "ppi": (192, [ppi(f) for f in wifi()], "<", 262144),
        "prism": (119, [prism(f) for f in wifi()], "<", 262144),
        "avs": (163, [avs(f) for f in wifi()], ">", 262144),
        "ppp": (9, [ppp(p) for p in ip_packets()], ">", 200),
    }
    cases = []
    for name, (lt, frames, order, snap) in specs.items():
        path = d / f"{name}.pcap"
        pcap_file(path, lt, frames, order, snap, nano=name != "ppp")
        cases.append(Case(name, path))
    # a pcapng mixing three link types, packets interleaved; and each interface's packets alone
    parts = [(1, 262144, eth), (113, 262144, cooked(sll)), (127, 262144, [raw(RadioTap() / Dot11(f)) for f in wifi()])]
    packets, ts = [], 1_600_000_000_000_000_000
    for k in range(max(len(f) for _, _, f in parts)):
        for i, (_, _, frames) in enumerate(parts):
            if k < len(frames):
                ts += 1_001
                packets.append((i, ts, frames[k]))
    mixed = d / "mixed.pcapng"
    pcapng_file(mixed, [(lt, snap) for lt, snap, _ in parts], packets)
    alone = []
    for i, (lt, snap, _) in enumerate(parts):
        p = d / f"mixed-part{i}.pcapng"
        pcapng_file(p, [(lt, snap)], [(0, t, f) for j, t, f in packets if j == i])
        alone.append(p)
    cases.append(Case("mixed", mixed, alone))
    return cases


# ------------------------------------------------------------------------------ both tools

def read_pcap(data: bytes) -> tuple[tuple[int, int], list[tuple[int, bytes, int]]]:
    """((linktype, snaplen), [(ts_ns, data, wirelen)]) of tcpdump's -w output (nanosecond pcap)."""
    magic, _, _, _, _, snaplen, linktype = struct.unpack_from("<IHHiIII", data, 0)
    assert magic == 0xA1B23C4D, hex(magic)
    off, out = 24, []
    while off + 16 <= len(data):
        sec, frac, caplen, wirelen = struct.unpack_from("<IIII", data, off)
        out.append((sec * 10**9 + frac, data[off + 16: off + 16 + caplen], wirelen))
        off += 16 + caplen
    return (linktype, snaplen), out


def read_pcapng(data: bytes) -> list[tuple[int, int, bytes, int]]:
    """[(linktype, ts_ns, data, wirelen)] of our output (little-endian, nanoseconds as we write it)."""
    off, lts, out = 0, [], []
    while off < len(data):
        btype, total = struct.unpack_from("<II", data, off)
        body = data[off + 8: off + total - 4]
        if btype == 1:
            lts.append(struct.unpack_from("<H", body, 0)[0])
        elif btype == 6:
            if_id, hi, lo, caplen, wirelen = struct.unpack_from("<IIIII", body, 0)
            out.append((lts[if_id], (hi << 32) | lo, body[20: 20 + caplen], wirelen))
        off += total
    return out


def tcpdump(path: Path, expr: str) -> tuple[int, bytes, str]:
    """(exit status, -w output, stderr) of tcpdump -r path expr -w - with nanosecond timestamps."""
    argv = [TCPDUMP, "-nn", "--time-stamp-precision=nano", "-r", str(path), "-w", "-"] + ([expr] if expr else [])
    r = subprocess.run(argv, capture_output=True, timeout=20)
    return r.returncode, r.stdout, r.stderr.decode(errors="replace")


def ours(path: Path, expr: str, out: Path, monkeypatch, capsys) -> tuple[int, str]:
    """(exit status, stderr) of `ossensor replay path --out out` with BPF=expr, in process."""
    p = argparse.ArgumentParser()
    replay.add_arguments(p)
    args = p.parse_args([str(path), "--out", str(out), "--no-progress"])
    monkeypatch.setenv("BPF", expr)
    monkeypatch.setenv("OSSENSOR_DEBUG_LEVEL", "0")
    capsys.readouterr()
    rc = replay.main(args)
    return rc, capsys.readouterr().err


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Case]:
    return build_files(tmp_path_factory.mktemp("linktypes"))


@pytest.fixture(scope="module")
def expected(files) -> dict[tuple[str, str], list]:
    """tcpdump's answer for every (file, expression): per part for the mixed file (tcpdump refuses it)."""
    jobs = {}
    with ThreadPoolExecutor(2) as pool:
        for case in files:
            for expr in EXPRESSIONS:
                for i, part in enumerate(case.mixed or [case.path]):
                    jobs[(case.name, expr, i)] = pool.submit(tcpdump, part, expr)
        return {key: fut.result() for key, fut in jobs.items()}


def test_every_link_type_and_expression_as_tcpdump(files, expected, tmp_path, monkeypatch, capsys):
    assert len(files) == 16 and len(EXPRESSIONS) >= 20
    mismatches, selected, refused, readback = [], 0, 0, {}
    for case in files:
        for n, expr in enumerate(EXPRESSIONS):
            parts = [expected[(case.name, expr, i)] for i in range(len(case.mixed or [1]))]
            out = tmp_path / f"{case.name}-{n}.pcapng"
            rc, err = ours(case.path, expr, out, monkeypatch, capsys)
            where = f"{case.name} {expr!r}"
            if any(p[0] != 0 for p in parts):  # tcpdump refuses (for one interface of the mixed file)
                refused += 1
                lines = err.strip().splitlines()
                if rc != 2 or len(lines) != 1 or not lines[0].startswith("ossensor: BPF: does not compile for "
                                                                         "interface "):
                    mismatches.append(f"{where}: tcpdump refuses ({parts[0][2].strip()!r}), ours rc={rc} {err!r}")
                continue
            if rc != 0:
                mismatches.append(f"{where}: tcpdump selects, ours rc={rc} {err!r}")
                continue
            if case.mixed:
                want = sorted((ts, d, w) for _, pkts in (read_pcap(p[1]) for p in parts) for ts, d, w in pkts)
                got = [(ts, d, w) for _, ts, d, w in read_pcapng(out.read_bytes())]
            else:
                head, want = read_pcap(parts[0][1])
                readback[where] = (out, head, want)
                continue
            selected += len(got)
            if got != want:
                mismatches.append(f"{where}: {len(got)} packets, tcpdump {len(want)}")
    # our single-link-type outputs read back by tcpdump itself: same packets, link type and snaplen
    with ThreadPoolExecutor(2) as pool:
        back = {where: pool.submit(tcpdump, out, "") for where, (out, _, _) in readback.items()}
        for where, fut in back.items():
            _, head, want = readback[where]
            rc, data, err = fut.result()
            if rc != 0:
                mismatches.append(f"{where}: tcpdump cannot read our output: {err.strip()}")
                continue
            got_head, got = read_pcap(data)
            selected += len(got)
            if (got_head, got) != (head, want):
                mismatches.append(f"{where}: {len(got)} packets {got_head}, tcpdump {len(want)} {head}")
    assert not mismatches, f"{len(mismatches)} differ:\n" + "\n".join(mismatches[:40])
    # the matrix is not vacuous: both outcomes, many packets
    print(f"pairs: {len(files) * len(EXPRESSIONS)}, refused by both: {refused}, packets compared: {selected}")
    assert refused >= 80 and selected >= 400, (refused, selected)


def test_the_issue_classes(files, expected):
    """The differences issue 21 lists, each seen in tcpdump's answer (so the matrix above covers them)."""
    sel = {k: len(read_pcap(v[1])[1]) if v[0] == 0 else None for k, v in expected.items()}
    for name in ("null_le", "null_be", "loop"):  # BSD/macOS AF_INET6 values, both byte orders
        assert sel[(name, "ip6", 0)] == 3 and sel[(name, "tcp", 0)] == 3
    for name in ("ieee802_11", "radiotap", "prism", "avs"):
        assert sel[(name, "type mgt", 0)] == 2 and sel[(name, "subtype beacon", 0)] == 1
    for name in ("ieee802_11", "radiotap", "ppi", "prism", "avs"):
        assert sel[(name, f"wlan addr2 {AP}", 0)] == 2
    assert sel[("ppi", "type mgt", 0)] is None  # libpcap: "802.11 link-layer types supported only on 802.11"
    assert sel[("en10mb", "ip broadcast", 0)] == 1
    assert sel[("en10mb", "inbound", 0)] is None and sel[("linux_sll", "inbound", 0)] == 6
    assert sel[("linux_sll2", "outbound", 0)] == 3
    assert sel[("ipv4", "ip6", 0)] is None  # "expression rejects all packets"
    head, pkts = read_pcap(expected[("en10mb", "", 0)][1])
    assert head == (1, 128) and max(len(d) for _, d, _ in pkts) == 128  # cut to the file's snaplen


def test_refusals_on_the_command_line(files, tmp_path):
    """Through the real command: one line naming the interface, link type and libpcap's reason; status 2."""
    by = {c.name: c.path for c in files}
    env = dict(os.environ, PYTHONPATH=str(ROOT), OSSENSOR_DEBUG_LEVEL="0")
    for name, expr, words in [("en10mb", "inbound", "link type 1 EN10MB): inbound/outbound not supported"),
                              ("ipv4", "ip6", "link type 228 IPV4): expression rejects all packets"),
                              ("en10mb", "type mgt", "802.11 link-layer types supported only on 802.11"),
                              ("mixed", "subtype beacon", "interface if00 (link type 1 EN10MB)")]:
        r = subprocess.run([sys.executable, "-m", "ossensor", "replay", str(by[name]), "--out",
                            str(tmp_path / "o.pcapng")], env=dict(env, BPF=expr), capture_output=True, text=True,
                           timeout=60)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and words in lines[0] and "Traceback" not in r.stderr, r.stderr


@pytest.mark.parametrize("kind, header, words", [
    ("pcap 2.5", struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 5, 0, 0, 262144, 1), "unsupported pcap savefile version 2.5"),
    ("pcap 1.0", struct.pack("<IHHiIII", 0xA1B2C3D4, 1, 0, 0, 0, 262144, 1), "archaic pcap savefile format"),
    ("pcapng 1.1", _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 1, -1)) +
     _block(1, struct.pack("<HHI", 1, 0, 262144)), "unsupported pcapng savefile version 1.1"),
])
def test_unsupported_versions_refused_as_tcpdump_does(tmp_path, kind, header, words):
    path = tmp_path / "v.cap"
    path.write_bytes(header + struct.pack("<IIII", 1, 0, 14, 14) + b"\0" * 14)
    rc, _, err = tcpdump(path, "")
    assert rc != 0 and "version" in err or "archaic" in err, err
    r = subprocess.run([sys.executable, "-m", "ossensor", "replay", str(path), "--out", str(tmp_path / "o")],
                       env=dict(os.environ, PYTHONPATH=str(ROOT), OSSENSOR_DEBUG_LEVEL="0"), capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"ossensor: {path}: at byte "
                                                                   f"{4 if kind.startswith('pcap ') else 12}: "
                                                                   + r.stderr.split(": ", 3)[-1].strip()], r.stderr
    assert words in r.stderr


def _records(tmp_path, name: str, data: bytes) -> tuple[tuple, tuple]:
    """((tcpdump's status, packets), (ours, packets read back by tcpdump)) for one file, no filter."""
    path = tmp_path / name
    path.write_bytes(data)
    rc, out, _ = tcpdump(path, "")
    mine = tmp_path / (name + ".out")
    r = subprocess.run([sys.executable, "-m", "ossensor", "replay", str(path), "--out", str(mine)],
                       env=dict(os.environ, PYTHONPATH=str(ROOT), OSSENSOR_DEBUG_LEVEL="0"), capture_output=True,
                       text=True, timeout=60)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) <= 1, r.stderr
    _records.stdout = r.stdout
    back_rc, back, err = tcpdump(mine, "")
    assert back_rc == 0, err
    return (rc, read_pcap(out)[1]), (r.returncode, read_pcap(back)[1])


def test_records_longer_than_the_snaplen_as_libpcap(tmp_path):
    """pcap: cut to the file's snaplen before the filter; beyond the link type's maximum, damage. pcapng: a
    record longer than its interface's snaplen is refused. Both after the same packets as tcpdump's."""
    frames = [bytes(range(50)), bytes(range(100)) * 2]
    recs = b"".join(struct.pack("<IIII", 10 + i, 5, len(f), len(f)) + f for i, f in enumerate(frames))
    head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 64, 1)
    (t_rc, t_pk), (o_rc, o_pk) = _records(tmp_path, "cut.pcap", head + recs)
    assert (t_rc, o_rc) == (0, 0) and t_pk == o_pk and [len(d) for _, d, _ in o_pk] == [50, 64]
    assert [w for _, _, w in o_pk] == [50, 200]
    assert "cut.pcap: 1 records longer than the file's snapshot length (64) cut to it" in _records.stdout
    (t_rc, t_pk), (o_rc, o_pk) = _records(tmp_path, "huge.pcap", head + recs + struct.pack("<IIII", 20, 0, 300000,
                                                                                          300000))
    assert t_rc != 0 and o_rc == 2 and t_pk == o_pk and len(o_pk) == 2
    ng = (_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)) + _block(1, struct.pack("<HHI", 1, 0, 64))
          + b"".join(_block(6, struct.pack("<IIIII", 0, 0, 1000 + i, len(f), len(f)) + f) for i, f in enumerate(frames)))
    (t_rc, t_pk), (o_rc, o_pk) = _records(tmp_path, "long.pcapng", ng)
    assert t_rc != 0 and o_rc == 2 and t_pk == o_pk and len(o_pk) == 1


def test_pcap_before_2_3_has_its_lengths_the_other_way_round(tmp_path):
    """pcap 2.0-2.2 records hold the wire length first (libpcap swaps them back; 2.3 when caplen > len)."""
    f = bytes(range(60))
    for minor, swapped in ((2, True), (3, True), (3, False)):
        lens = (1500, 60) if swapped else (60, 1500)
        head = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, minor, 0, 0, 262144, 1)
        (t_rc, t_pk), (o_rc, o_pk) = _records(tmp_path, f"v2{minor}.pcap", head + struct.pack("<IIII", 1, 2, *lens) + f
                                              + struct.pack("<IIII", 3, 4, *lens) + f)
        assert (t_rc, o_rc) == (0, 0) and t_pk == o_pk and [(len(d), w) for _, d, w in o_pk] == [(60, 1500)] * 2


def test_to_the_vsensor_as_tcpdump_selects(files, expected, tmp_path):
    """Replay to the reference vSensor over TLS: 802.11 `type mgt` and the snaplen-128 Ethernet file arrive
    as tcpdump selects them, each interface with its link type and snaplen."""
    from support import KEY, loopback_vsensor

    from ossensor import pcapng

    by = {c.name: c.path for c in files}
    out = tmp_path / "vs"
    with loopback_vsensor(out) as (_, port):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VSENSOR_", "OSSENSOR_", "BPF"))}
        env.update(PYTHONPATH=str(ROOT), VSENSOR_HOSTNAME="127.0.0.1", VSENSOR_PORT=str(port), VSENSOR_HMAC_KEY=KEY,
                   OSSENSOR_TLS_CA_FILE=str(out / "ca.pem"), OSSENSOR_DEBUG="1")
        for name, expr in (("ieee802_11", "type mgt"), ("en10mb", "")):
            r = subprocess.run([sys.executable, "-m", "ossensor", "replay", str(by[name])], env=dict(env, BPF=expr),
                               capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr
    got = {}
    for f in sorted(out.glob("*.pcapng")):
        for sec in pcapng.read_sections(f.read_bytes()):
            for p in sec.packets:
                i = sec.interfaces[p.if_id]
                got.setdefault((i.linktype, i.snaplen), []).append((p.ts_ns, p.data, p.wirelen))
    want = {}
    for name, expr in (("ieee802_11", "type mgt"), ("en10mb", "")):
        head, pkts = read_pcap(expected[(name, expr, 0)][1])
        want[head] = pkts
    assert {k: sorted(v) for k, v in got.items()} == {k: sorted(v) for k, v in want.items()}
    assert set(got) == {(105, 262144), (1, 128)}


@pytest.mark.parametrize("empty", ["pcap", "pcapng"])
def test_empty_captures_write_a_file_tcpdump_and_tshark_read(tmp_path, empty):
    """No packets (and, in pcapng, no interface): what we write still reads back in both tools."""
    path = tmp_path / f"empty.{empty}"
    if empty == "pcap":
        path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 96, 113))
    else:
        path.write_bytes(_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1)))
    out = tmp_path / "out.pcapng"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OSSENSOR_DEBUG_LEVEL="0")
    r = subprocess.run([sys.executable, "-m", "ossensor", "replay", str(path), "--out", str(out)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rc, data, err = tcpdump(out, "")
    assert rc == 0, err
    head, pkts = read_pcap(data)
    assert pkts == [] and head == ((113, 96) if empty == "pcap" else (1, 262144))  # the input's link type, snaplen
    if TSHARK:
        t = subprocess.run([TSHARK, "-r", str(out)], capture_output=True, text=True, timeout=60)
        assert t.returncode == 0 and t.stdout == "", t.stderr


def test_under_asan(tmp_path):
    """The matrix again with the reader built with AddressSanitizer, leaks checked in the C reader."""
    so, libasan = asan.build(tmp_path, "ossensor._filereader")
    asan.rerun(__file__, "FILEREADER_SO", so, libasan, select="every_link_type",
               leaks_in=("filereader.c", "capfile.c", "capfilter.c"), asan_options="fast_unwind_on_malloc=0")
