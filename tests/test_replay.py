"""`ossensor replay`: capture files through BPF, batching and shipping, without root.

The real reference vSensor over real TLS on 127.0.0.1 (port 0: it picks one); tcpdump as the
second opinion on filters; files hand-built (tests/capfiles.py) or written by scapy.
"""

from __future__ import annotations

import os
import pty
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

import capfiles
from support import KEY, ROOT, Proc, loopback_vsensor, vsensor_packets

pytestmark = pytest.mark.timeout(60)


def replay(*args: str, env: dict[str, str] | None = None, timeout: float = 30, cwd=None,
           preexec=None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("VSENSOR_", "OSSENSOR_", "BPF"))}
    full["PYTHONPATH"] = str(ROOT)
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "ossensor", "replay", *args], env=full, capture_output=True,
                          text=True, timeout=timeout, cwd=cwd, preexec_fn=preexec)


def epbs_of(path: Path) -> list[capfiles.Expected]:
    from ossensor import pcapng

    out = []
    for sec in pcapng.read_sections(path.read_bytes()):
        for p in sec.packets:
            out.append(capfiles.Expected(sec.interfaces[p.if_id].name, p.ts_ns, p.data, p.wirelen))
    return out


@pytest.fixture
def vsensor(tmp_path):
    out = tmp_path / "vs"
    with loopback_vsensor(out) as (p, port):
        env = {"VSENSOR_HOSTNAME": "127.0.0.1", "VSENSOR_PORT": str(port), "VSENSOR_HMAC_KEY": KEY,
               "OSSENSOR_TLS_CA_FILE": str(out / "ca.pem"), "OSSENSOR_DEBUG": "2"}
        yield out, env, p


def pcap_packets(n: int = 40) -> list[tuple[int, bytes, int]]:
    base = 1_700_000_000 * 10**9
    return [(base + i * 1_234_567 + 891, capfiles.eth_udp(i, 50 + i), 50 + i + 42 + (5 if i % 7 == 0 else 0))
            for i in range(n)]


def summary(text: str) -> dict[str, str]:
    line = [l for l in text.splitlines() if "replay summary:" in l][-1]
    return dict(re.findall(r"(\w+)=(\S+)", line))


# ------------------------------------------------------------------------------ round trips

def test_pcap_and_multi_interface_pcapng_arrive_identical_at_the_vsensor(vsensor, tmp_path):
    out, env, _ = vsensor
    pk = pcap_packets()
    (tmp_path / "us.pcap").write_bytes(capfiles.pcap(pk))
    (tmp_path / "ns-be.pcap").write_bytes(capfiles.pcap(pk[:10], nano=True, be=True))
    ng, ng_expected = capfiles.multi_interface_pcapng()
    (tmp_path / "multi.pcapng").write_bytes(ng)
    r = replay(str(tmp_path / "us.pcap"), str(tmp_path / "ns-be.pcap"), str(tmp_path / "multi.pcapng"),
               env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    s = summary(r.stdout)
    total = len(pk) + 10 + len(ng_expected)
    assert (s["read"], s["passed_filter"], s["acknowledged"], s["dropped"]) == (str(total), str(total),
                                                                               str(total), "0")
    assert KEY not in r.stdout + r.stderr

    expected = ([capfiles.Expected("file0", ts - ts % 1000, d, w) for ts, d, w in pk]        # microseconds
                + [capfiles.Expected("file1", ts, d, w) for ts, d, w in pk[:10]]             # nanoseconds
                + ng_expected)
    got = [capfiles.Expected(name, p.ts_ns, p.data, p.wirelen) for name, p in vsensor_packets(out)]
    key = lambda e: (e.name, e.ts_ns, e.data)  # the vSensor files link types apart: compare as sets
    assert sorted(got, key=key) == sorted(expected, key=key)


def test_out_file_is_one_pcapng_section_identical_to_the_input_and_tcpdump_reads_it(tmp_path):
    pk = pcap_packets(1000)
    src = tmp_path / "in.pcap"
    src.write_bytes(capfiles.pcap(pk, nano=True))
    dst = tmp_path / "out.pcapng"
    # small batches: the output spans many of them
    r = replay(str(src), "--out", str(dst), env={"OSSENSOR_BATCH_MAX_KB": "64", "OSSENSOR_SNAPLEN": "1500",
                                                     "VSENSOR_PORT": "not-a-port",
                                                     "OSSENSOR_TLS_CA_FILE": "/nonexistent/ca.pem"})
    assert r.returncode == 0, r.stdout + r.stderr  # vSensor variables are neither needed nor checked
    assert int(summary(r.stdout)["batches"]) > 1
    assert epbs_of(dst) == [capfiles.Expected("file0", ts, d, w) for ts, d, w in pk]
    td = subprocess.run(["tcpdump", "-nr", str(dst)], capture_output=True, text=True, timeout=30)
    assert td.returncode == 0 and len(td.stdout.splitlines()) == len(pk), td.stderr


def test_several_files_to_one_out_file_keep_their_interfaces(tmp_path):
    ng, expected = capfiles.multi_interface_pcapng()
    (tmp_path / "a.pcapng").write_bytes(ng)
    pk = pcap_packets(5)
    (tmp_path / "b.pcap").write_bytes(capfiles.pcap(pk, nano=True))
    dst = tmp_path / "out.pcapng"
    r = replay(str(tmp_path / "a.pcapng"), str(tmp_path / "b.pcap"), "-o", str(dst))
    assert r.returncode == 0, r.stderr
    assert epbs_of(dst) == expected + [capfiles.Expected("file1", ts, d, w) for ts, d, w in pk]
    # level 5 (every packet as hex) takes the batches through Python: the same file comes out
    r = replay(str(tmp_path / "a.pcapng"), str(tmp_path / "b.pcap"), "-o", str(tmp_path / "5.pcapng"),
               env={"OSSENSOR_DEBUG": "5"})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "5.pcapng").read_bytes() == dst.read_bytes()
    assert r.stdout.count(" L5 packet if=") == len(expected) + len(pk)
    # to standard output: the pcapng there, the log lines on standard error
    r = subprocess.run([sys.executable, "-m", "ossensor", "replay", str(tmp_path / "a.pcapng"),
                        str(tmp_path / "b.pcap"), "-o", "-"], capture_output=True, timeout=30,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and r.stdout == dst.read_bytes(), r.stderr
    assert b"replay summary:" in r.stderr


def test_scapy_written_files_replay(tmp_path):
    scapy = pytest.importorskip("scapy.all")
    from decimal import Decimal

    pkts = [scapy.Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / scapy.IP(dst="192.0.2.%d" % i) / scapy.UDP(dport=53) / (b"q" * i) for i in range(20)]
    for i, p in enumerate(pkts):
        p.time = Decimal("1700000000.000000001") + Decimal(i) / 1000
    scapy.wrpcap(str(tmp_path / "s.pcap"), pkts, nano=True)
    with scapy.PcapNgWriter(str(tmp_path / "s.pcapng")) as w:
        for p in pkts:
            w.write(p)
    for name in ("s.pcap", "s.pcapng"):
        dst = tmp_path / (name + ".out")
        r = replay(str(tmp_path / name), "-o", str(dst))
        assert r.returncode == 0, r.stderr
        got = epbs_of(dst)
        assert [p.data for p in got] == [bytes(p) for p in pkts]
        assert got[0].ts_ns // 1000 == 1700000000000000  # pcapng by scapy: microseconds


# ------------------------------------------------------------------------------ the filter

def mixed_traffic(tmp_path: Path) -> Path:
    scapy = pytest.importorskip("scapy.all")
    from scapy.layers.inet6 import IPv6
    from scapy.layers.l2 import ARP, Dot1Q

    E = scapy.Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    pkts = []
    for i in range(60):
        kind = i % 6
        if kind == 0:
            p = E / scapy.IP(src="10.0.0.1", dst="10.0.0.%d" % (i % 5 + 2)) / scapy.UDP(sport=1000 + i, dport=53) / (b"d" * i)
        elif kind == 1:
            p = E / scapy.IP(src="10.0.1.1", dst="10.0.0.2") / scapy.TCP(sport=40000 + i, dport=443, flags="S")
        elif kind == 2:
            p = E / scapy.IP(src="10.0.0.9", dst="10.0.0.2") / scapy.ICMP() / (b"p" * (i * 3))
        elif kind == 3:
            p = E / ARP(pdst="10.0.0.%d" % i)
        elif kind == 4:
            p = E / Dot1Q(vlan=7) / scapy.IP(src="10.0.0.1", dst="10.0.0.3") / scapy.UDP(dport=9999) / b"v"
        else:
            p = E / IPv6(src="fd00::1", dst="fd00::2") / scapy.UDP(dport=9999 if i % 12 else 53) / (b"6" * i)
        p.time = 1700000000 + i
        pkts.append(p)
    f = tmp_path / "mixed.pcap"
    scapy.wrpcap(str(f), pkts)
    return f


FILTERS = ["udp", "tcp port 443", "icmp and greater 100", "arp", "vlan 7 and udp", "ip6 and udp port 9999",
           "host 10.0.0.3 or (ip6 and port 53)", "net 10.0.1.0/24", "not (udp or tcp)", "ether[12:2] = 0x0800",
           "udp[8:1] = 0x64", "less 70"]


def tcpdump_count(path: Path, expr: str) -> tuple[int, int]:
    """(packets, captured bytes) that `tcpdump -r FILE EXPR` keeps, from the file it writes."""
    out = path.with_suffix(".td")
    r = subprocess.run(["tcpdump", "-r", str(path), "-w", str(out), expr], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    from support import read_pcap

    pk = read_pcap(out)
    return len(pk), sum(len(d) for _, d, _ in pk)


def test_bpf_is_applied_exactly_as_tcpdump_applies_it(tmp_path):
    from ossensor._filereader import Reader

    f = mixed_traffic(tmp_path)
    for expr in FILTERS:
        r = Reader(str(f), expr)
        r.read()
        assert r.state == "eof", (expr, r.error)
        assert (r.packets_passed, r.bytes_passed) == tcpdump_count(f, expr), expr
        assert r.packets_read == 60
    # through the command line too, BPF from the environment; the same packets, in order
    expr = "udp or arp"
    dst = tmp_path / "f.pcapng"
    r = replay(str(f), "-o", str(dst), env={"BPF": expr})
    assert r.returncode == 0, r.stderr
    s = summary(r.stdout)
    n, b = tcpdump_count(f, expr)
    assert (int(s["read"]), int(s["passed_filter"]), int(s["passed_bytes"])) == (60, n, b)
    from support import read_pcap

    assert [p.data for p in epbs_of(dst)] == [d for _, d, _ in read_pcap(f.with_suffix(".td"))]


def test_bpf_on_raw_ip_and_pcapng_files_matches_tcpdump(tmp_path):
    from ossensor._filereader import Reader

    raw = tmp_path / "raw.pcap"  # LINKTYPE_RAW (101): libpcap's DLT_RAW is 12, the reader maps it
    raw.write_bytes(capfiles.pcap([(10**18 + i, capfiles.raw_ip_udp(i, 20, 53 if i % 3 else 9999), 48)
                                   for i in range(30)], linktype=101))
    ng = tmp_path / "one-lt.pcapng"
    ng.write_bytes(capfiles.shb() + capfiles.idb(False, 1, "eth0") + capfiles.idb(False, 1, "eth1")
                   + b"".join(capfiles.epb(False, i % 2, 10**15 + i, capfiles.eth_udp(i, 30, 53 if i % 4 else 9999))
                              for i in range(40)))
    for path in (raw, ng):
        for expr in ("udp port 9999", "udp port 53 and len > 40", "not udp"):
            r = Reader(str(path), expr)
            r.read()
            assert r.state == "eof", r.error
            assert (r.packets_passed, r.bytes_passed) == tcpdump_count(path, expr), (path.name, expr)


# ------------------------------------------------------------------------------ errors

def test_truncated_file_is_reported_with_its_offset_and_what_came_before_is_sent(vsensor, tmp_path):
    out, env, _ = vsensor
    pk = pcap_packets(20)
    data = capfiles.pcap(pk)
    cut = len(data) - 30  # inside the last packet
    bad = tmp_path / "cut.pcap"
    bad.write_bytes(data[:cut])
    good = tmp_path / "good.pcap"
    good.write_bytes(capfiles.pcap(pk[:3]))
    r = replay(str(bad), str(good), env=env)
    assert r.returncode == 2, r.stdout + r.stderr
    last_record = len(data) - 16 - len(pk[-1][1])
    assert r.stderr.strip() == (f"ossensor: {bad}: at byte {last_record}: truncated packet: record of "
                                f"{len(pk[-1][1])} bytes, file ends after {cut - last_record - 16}")
    s = summary(r.stdout)
    assert (s["read"], s["acknowledged"], s["errors"]) == ("22", "22", "1")  # 19 before the damage + 3
    assert len(vsensor_packets(out)) == 22


SHB = len(capfiles.shb())


@pytest.mark.parametrize("content,offset,reason", [
    (b"", 0, "empty file"),
    (b"GIF89a not a capture", 0, "not a pcap or pcapng file"),
    (capfiles.pcap([])[:20], 20, "truncated pcap file header"),
    (capfiles.shb() + struct.pack("<II", 6, 7), SHB, "truncated block header (8 of 12 bytes)"),
    (capfiles.shb() + struct.pack("<III", 6, 7, 0), SHB + 4, "bad block length 7"),
    (capfiles.shb() + struct.pack("<III", 6, 1 << 30, 0), SHB + 4, "implausible block length"),
    (capfiles.shb() + capfiles.epb(False, 0, 1, b"x" * 20), SHB + 8, "undeclared interface 0"),
    (capfiles.shb()[:-4] + b"\xff\0\0\0", SHB - 4, "trailer length 255 does not match header length"),
    (capfiles.shb() + capfiles.idb(False, 1, "e") + capfiles.epb(False, 0, 1, b"x" * 20)[:-9],
     SHB + len(capfiles.idb(False, 1, "e")), "truncated block: type 0x00000006"),
    (capfiles.pcap([(0, b"x" * 10, 10)])[:-1], 24, "truncated packet: record of 10 bytes, file ends after 9"),
    (capfiles.pcap([(0, b"x" * 10, 10)]) + b"\0" * 8 + b"\xff" * 8, 50, "invalid packet capture length 4294967295"),
    (capfiles.idb(False, 1, "eth0"), 0, "not a pcap or pcapng file"),
])
def test_malformed_files_end_with_one_line_naming_file_and_offset(tmp_path, content, offset, reason):
    f = tmp_path / "bad.cap"
    f.write_bytes(content)
    r = replay(str(f), "-o", str(tmp_path / "o.pcapng"))
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert r.stderr.startswith(f"ossensor: {f}: at byte {offset}: ") and reason in r.stderr, r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_user_errors_are_one_line_and_status_2(tmp_path):
    good = tmp_path / "g.pcap"
    good.write_bytes(capfiles.pcap(pcap_packets(2)))
    cases = [
        ((str(tmp_path / "missing.pcap"), "-o", str(tmp_path / "o")), {},
         f"ossensor: {tmp_path / 'missing.pcap'}: cannot open: No such file or directory"),
        ((str(tmp_path),), {"VSENSOR_HOSTNAME": "h", "VSENSOR_HMAC_KEY": "k" * 16}, f"ossensor: {tmp_path}: cannot open: Is a directory"),
        ((str(good), "-o", str(tmp_path / "o")), {"BPF": "udp port"}, "ossensor: BPF: does not compile"),
        ((str(good), "-o", str(tmp_path / "no" / "dir" / "o")), {}, "ossensor: --out: cannot write"),
        ((str(good),), {}, "ossensor: VSENSOR_HOSTNAME: required, not set"),
        ((str(good), "-o", str(tmp_path / "o")), {"OSSENSOR_SNAPLEN": "10"}, "ossensor: OSSENSOR_SNAPLEN:"),
    ]
    for args, env, first in cases:
        r = replay(*args, env=env)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert r.stderr.startswith(first), (args, r.stderr)
        assert "Traceback" not in r.stderr + r.stdout
    r = replay(str(good), "--speed", "0", "-o", str(tmp_path / "o"))
    assert r.returncode == 2 and "--speed: must be a number > 0" in r.stderr


def test_wrong_key_is_refused_and_counted_never_printed(vsensor, tmp_path):
    out, env, _ = vsensor
    f = tmp_path / "g.pcap"
    f.write_bytes(capfiles.pcap(pcap_packets(5)))
    wrong = "wrong-key-6789-abcdef"
    r = replay(str(f), env={**env, "VSENSOR_HMAC_KEY": wrong, "OSSENSOR_DEBUG": "5"})
    assert r.returncode == 1, r.stdout + r.stderr
    s = summary(r.stdout)
    assert (s["acknowledged"], s["dropped"], s["refused"]) == ("0", "5", "5")
    assert "HTTP 401" in r.stdout
    assert wrong not in r.stdout + r.stderr and KEY not in r.stdout + r.stderr


# ------------------------------------------------------------------------------ pacing, progress, no root

def test_realtime_follows_the_file_timing_and_speed_scales_it(tmp_path):
    base = 1_700_000_000 * 10**9
    f = tmp_path / "slow.pcap"
    f.write_bytes(capfiles.pcap([(base + i * 150_000_000, capfiles.eth_udp(i), 102) for i in range(5)], nano=True))
    timings = {}
    for args in (("--realtime",), ("--speed", "6"), ()):
        t0 = time.monotonic()
        r = replay(str(f), "-o", str(tmp_path / "o.pcapng"), *args, env={"OSSENSOR_BATCH_MAX_AGE_MS": "50"})
        timings[args] = time.monotonic() - t0
        assert r.returncode == 0, r.stderr
        assert len(epbs_of(tmp_path / "o.pcapng")) == 5
    # the file spans 0.6 s: real time takes at least that, x6 about 0.1 s, unpaced nothing
    startup = timings[()]
    assert timings[("--realtime",)] >= 0.6
    assert timings[("--speed", "6")] < timings[("--realtime",)] - 0.3
    assert timings[("--realtime",)] < startup + 0.6 + 1.5


def test_progress_bar_on_a_terminal_only(tmp_path):
    f = tmp_path / "g.pcap"
    f.write_bytes(capfiles.pcap(pcap_packets(50)))
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VSENSOR_", "OSSENSOR_", "BPF"))}
    env.update(PYTHONPATH=str(ROOT), COLUMNS="120", TERM="xterm")
    p = subprocess.Popen([sys.executable, "-m", "ossensor", "replay", str(f), "-o", str(tmp_path / "o")],
                         stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
    finally:
        assert p.wait(30) == 0
        os.close(master)
    text = b"".join(chunks).decode(errors="replace")
    assert "pkts" in text and "pkt/s" in text and "replay summary:" in text
    r = replay(str(f), "-o", str(tmp_path / "o"))  # a pipe: no bar
    assert "pkt/s" not in r.stdout and "\x1b[" not in r.stdout and "replay summary:" in r.stdout


def test_works_without_capture_privileges(tmp_path):
    """No capability at all (CAP_NET_RAW included: no capture socket can be opened), no root
    powers over files: replay still works. (The test runs as uid 0 with every capability dropped
    from the bounding set, because this machine's Python lives where other users cannot read it.)"""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        pytest.skip("needs root and setpriv to drop every capability")
    f = tmp_path / "g.pcap"
    f.write_bytes(capfiles.pcap(pcap_packets(10)))
    drop = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs"]
    env = {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "")}
    probe = subprocess.run(drop + [sys.executable, "-c", "import socket; socket.socket(socket.AF_PACKET, "
                                   "socket.SOCK_RAW)"], capture_output=True, text=True, timeout=30, env=env)
    assert probe.returncode != 0 and "PermissionError" in probe.stderr  # no capture possible here
    r = subprocess.run(drop + [sys.executable, "-m", "ossensor", "replay", str(f), "-o", str(tmp_path / "o.pcapng")],
                       capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(epbs_of(tmp_path / "o.pcapng")) == 10


def test_unreachable_vsensor_is_counted_not_hung(tmp_path):
    from support import free_port

    f = tmp_path / "g.pcap"
    f.write_bytes(capfiles.pcap(pcap_packets(7)))
    env = {"VSENSOR_HOSTNAME": "127.0.0.1", "VSENSOR_PORT": str(free_port()), "VSENSOR_HMAC_KEY": KEY,
           "OSSENSOR_SHUTDOWN_TIMEOUT": "1"}
    t0 = time.monotonic()
    r = replay(str(f), "--send-timeout", "2", env=env)
    assert time.monotonic() - t0 < 20
    assert r.returncode == 1, r.stdout + r.stderr
    s = summary(r.stdout)
    assert (s["read"], s["acknowledged"], s["dropped"]) == ("7", "0", "7")
    assert "cannot connect" in r.stdout and "--send-timeout" in r.stdout


def test_interrupt_stops_cleanly_and_keeps_what_was_read(tmp_path):
    base = 1_700_000_000 * 10**9
    f = tmp_path / "long.pcap"  # 100 s of traffic at real time
    f.write_bytes(capfiles.pcap([(base + i * 10**9, capfiles.eth_udp(i), 102) for i in range(100)], nano=True))
    dst = tmp_path / "o.pcapng"
    p = Proc([sys.executable, "-m", "ossensor", "replay", "--realtime", str(f), "-o", str(dst)],
             env={"OSSENSOR_BATCH_MAX_AGE_MS": "100"})
    try:
        p.wait_for(r"replaying ")
        time.sleep(1.5)
        p.signal(signal.SIGINT)
        assert p.p.wait(15) == 130
        p._t.join(2)
    finally:
        p.kill()
    s = summary(p.output)
    assert "INTERRUPTED" in p.output and "Traceback" not in p.output
    assert 1 <= int(s["read"]) <= 4
    assert len(epbs_of(dst)) == int(s["read"]) == int(s["written"])
