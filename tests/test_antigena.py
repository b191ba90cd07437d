"""Antigena end to end: real TCP connections between two namespaces, routed through a third where
the sensor (capturing both veths) and the reference vSensor run; actions issued with
`ossensor vsensor block`, resets sent by the sensor, reports read back from the vSensor.

    client ns (A) a0 ---- sa  sensor ns (S, forwards)  sb ---- b0 server ns (B)
    10.88.N.2 / fd88:N::2       10.88.N.1  10.89.N.1           10.89.N.2 / fd89:N::2
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import Proc, sensor_env, sh, spawn_into, start_sensor, start_vsensor, teardown

PERIOD = 1.0
pytestmark = pytest.mark.timeout(90)

SERVER = r"""
import socket, sys, threading
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
srv = socket.socket(fam, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind((sys.argv[1], int(sys.argv[2])))
srv.listen(64)
print("LISTENING", flush=True)
def serve(c, port):
    try:
        while True:
            d = c.recv(4096)
            if not d:
                print(f"SRV eof port={port}", flush=True); return
            c.sendall(d)
    except OSError as e:
        print(f"SRV reset port={port} {type(e).__name__}", flush=True)
while True:
    c, peer = srv.accept()
    threading.Thread(target=serve, args=(c, peer[1]), daemon=True).start()
"""

# A long-lived connection: a message every 50 ms, each echoed back.
CLIENT = r"""
import socket, sys, time
fam = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
print(f"CONNECTED sport={s.getsockname()[1]}", flush=True)
n = 0
try:
    while True:
        s.sendall(b"ping-%06d" % n)
        if s.recv(64) == b"":
            print(f"EOF {time.time():.3f}", flush=True); break
        n += 1
        if n % 10 == 0:
            print(f"OK {n}", flush=True)
        time.sleep(0.05)
except OSError as e:
    print(f"RESET {time.time():.3f} {type(e).__name__}", flush=True)
"""

# One new connection, used for 1 s: OK, or RESET (refused/reset) as soon as it fails.
PROBE = r"""
import socket, sys, time
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3)
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        s.sendall(b"probe")
        if s.recv(64) == b"":
            raise ConnectionResetError("eof")
        time.sleep(0.05)
    print("OK")
except OSError as e:
    print(f"RESET {type(e).__name__}")
"""


class Routed:
    """Client and server namespaces joined through the sensor's namespace (which forwards)."""

    def __init__(self):
        n = os.getpid() % 200 + 20
        self.n = n
        tag = f"{os.getpid() % 100000}"
        self.cap = f"oagS{tag}"
        self.a, self.b = f"oagA{tag}", f"oagB{tag}"
        self.sa, self.sb = f"oags{tag}a"[:13], f"oags{tag}b"[:13]
        self.a_ip, self.b_ip = f"10.88.{n}.2", f"10.89.{n}.2"
        self.a_ip6, self.b_ip6 = f"fd88:{n:x}::2", f"fd89:{n:x}::2"
        self.procs: list[Proc] = []

    def __enter__(self) -> "Routed":
        try:
            for ns in (self.cap, self.a, self.b):
                sh(f"ip netns add {ns}")
                sh(f"ip -n {ns} link set lo up")
            n = self.n
            for side, sif, peer_ns, v4, v6 in (("a", self.sa, self.a, "10.88", "fd88"),
                                               ("b", self.sb, self.b, "10.89", "fd89")):
                sh(f"ip -n {self.cap} link add {sif} type veth peer name {side}0 netns {peer_ns}")
                sh(f"ip -n {self.cap} addr add {v4}.{n}.1/24 dev {sif}")
                sh(f"ip -n {self.cap} addr add {v6}:{n:x}::1/64 dev {sif} nodad")
                sh(f"ip -n {peer_ns} addr add {v4}.{n}.2/24 dev {side}0")
                sh(f"ip -n {peer_ns} addr add {v6}:{n:x}::2/64 dev {side}0 nodad")
                sh(f"ip -n {self.cap} link set {sif} up")
                sh(f"ip -n {peer_ns} link set {side}0 up")
                sh(f"ip -n {peer_ns} route add default via {v4}.{n}.1")
                sh(f"ip -n {peer_ns} -6 route add default via {v6}:{n:x}::1")
            sh(f"ip netns exec {self.cap} sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        teardown(self.procs, (self.cap, self.a, self.b))

    def spawn(self, argv: list[str], netns: str | None = None, env: dict[str, str] | None = None) -> Proc:
        return spawn_into(self.procs, argv, netns, env)

    def py(self, ns: str, code: str, *args) -> Proc:
        return self.spawn([sys.executable, "-c", code, *map(str, args)], netns=ns)

    def probe(self, dst: str, port: int) -> str:
        r = subprocess.run(["ip", "netns", "exec", self.a, sys.executable, "-c", PROBE, dst, str(port)],
                           capture_output=True, text=True, timeout=15)
        return r.stdout.strip()


@pytest.fixture
def net():
    with Routed() as t:
        yield t


def block(out: Path, *args: str) -> float:
    r = subprocess.run([sys.executable, "-m", "ossensor", "vsensor", "block", "--out", str(out), *args],
                       capture_output=True, text=True, timeout=20,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert r.returncode == 0, r.stderr
    return time.monotonic()


def reports(out: Path) -> list[dict]:
    path = out / "antigena-reports.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def wait_report(out: Path, aid: str, state: str, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for r in reversed(reports(out)):
            if r.get("id") == aid and r.get("state") == state:
                return r
        time.sleep(0.1)
    raise AssertionError(f"no report {aid}={state} in {timeout} s: {reports(out)}")


def still_talking(client: Proc, timeout: float = 4.0) -> None:
    """The client prints a line every 10 echoes (>= 0.5 s): wait for a new one."""
    n = len(client.lines)
    deadline = time.monotonic() + timeout
    while len(client.lines) <= n and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(client.lines) > n and "RESET" not in client.output and "EOF" not in client.output, client.output


def socket_kinds(pid: int) -> dict[str, int]:
    """How many packet and raw sockets the process holds (from /proc, in its namespace)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    out = {}
    for kind, files, col in (("packet", ["packet"], 8), ("raw", ["raw", "raw6"], 9)):
        count = 0
        for f in files:
            for line in Path(f"/proc/{pid}/net/{f}").read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) > col and cols[col] in inodes:
                    count += 1
        out[kind] = count
    return out


def start(net: Routed, tmp: Path, **env: str):
    vs, port = start_vsensor(net, tmp / "vs", port=8443)
    sensor = start_sensor(net, sensor_env(net, tmp, port, OSSENSOR_DEBUG="3", ANTIGENA_TIME_PERIOD=str(PERIOD),
                                          BPF="tcp", **env))
    return vs, sensor


@pytest.mark.parametrize("readers", [1, 2])  # 2: rings in a PACKET_FANOUT group, each with the rules
def test_block_connection_resets_both_ends_and_spares_others(net, tmp_path, readers):
    vs, sensor = start(net, tmp_path, OSSENSOR_CAPTURE_THREADS=str(readers))
    srv = net.py(net.b, SERVER, net.b_ip, 7000)
    srv.wait_for("LISTENING")
    victim = net.py(net.a, CLIENT, net.b_ip, 7000)
    other = net.py(net.a, CLIENT, net.b_ip, 7000)
    sport = int(victim.wait_for(r"CONNECTED sport=(\d+)").group(1))
    other.wait_for("OK 10")
    victim.wait_for("OK 10")
    kinds = socket_kinds(sensor.p.pid)
    assert kinds["packet"] == readers + 1 and kinds["raw"] >= 1, kinds  # capture ring(s) + injection sockets

    t0 = block(tmp_path / "vs", "--connection", f"{net.b_ip}:7000", f"{net.a_ip}:{sport}",  # either direction
               "--id", "c1", "--expires", "60")
    victim.wait_for(r"RESET ", timeout=PERIOD + 1.5)
    elapsed = time.monotonic() - t0
    assert elapsed <= PERIOD + 1.0, f"reset after {elapsed:.2f} s"
    srv.wait_for(rf"SRV reset port={sport}", timeout=2)   # the server's end was reset too
    # the other connection keeps working
    still_talking(other)
    rep = wait_report(tmp_path / "vs", "c1", "enforced", timeout=PERIOD * 3)
    assert rep["resets_sent"] >= 2 and rep["hits"] >= 1 and rep["target"]["type"] == "connection"
    sensor.wait_for(r"L3 antigena received id=c1 target=connection")
    sensor.wait_for(r"L3 antigena enforced id=c1 flow=")
    sensor.wait_for(r"L3 antigena reported \d+ actions .*c1=enforced")
    sensor.wait_for(r"L1 antigena .*resets_sent=[1-9]")
    vs.wait_for(r"antigena-report sensor=\S+ boot=\S+ id=c1 state=enforced")
    assert sensor.stop() == 0, sensor.output
    last = [r for r in reports(tmp_path / "vs") if r.get("id") == "c1"][-1]
    assert last["state"] == "stopped" and last["final"]  # the last exchange at shutdown says so


def test_quarantine_resets_new_connections_until_expiry(net, tmp_path):
    vs, sensor = start(net, tmp_path)
    srv = net.py(net.b, SERVER, net.b_ip, 7001)
    srv.wait_for("LISTENING")
    assert net.probe(net.b_ip, 7001) == "OK"
    block(tmp_path / "vs", "--host", net.a_ip, "--id", "q1", "--expires", "4")
    sensor.wait_for(r"L3 antigena received id=q1 target=host", timeout=PERIOD + 3)
    assert net.probe(net.b_ip, 7001).startswith("RESET")
    assert net.probe(net.b_ip, 7001).startswith("RESET")
    sensor.wait_for(r"L3 antigena expired id=q1", timeout=6)
    assert net.probe(net.b_ip, 7001) == "OK"
    rep = wait_report(tmp_path / "vs", "q1", "expired", timeout=PERIOD * 3)
    assert rep["final"] and rep["resets_sent"] >= 2
    assert sensor.stop() == 0, sensor.output


def test_ipv6_connection_block(net, tmp_path):
    vs, sensor = start(net, tmp_path)
    srv = net.py(net.b, SERVER, net.b_ip6, 7002)
    srv.wait_for("LISTENING")
    victim = net.py(net.a, CLIENT, net.b_ip6, 7002)
    sport = int(victim.wait_for(r"CONNECTED sport=(\d+)").group(1))
    victim.wait_for("OK 10")
    block(tmp_path / "vs", "--connection", f"[{net.a_ip6}]:{sport}", f"[{net.b_ip6}]:7002", "--id", "v6")
    victim.wait_for(r"RESET ", timeout=PERIOD + 1.5)
    srv.wait_for(rf"SRV reset port={sport}", timeout=2)
    assert sensor.stop() == 0, sensor.output


VLAN_PROBE = r"""
import sys, time
from scapy.all import AsyncSniffer, Dot1Q, Ether, IP, TCP, get_if_hwaddr, sendp
iface, dst_mac, src, dst = sys.argv[1:5]
sniff = AsyncSniffer(iface=iface, store=True,  # no BPF: the kernel strips the tag before a filter sees it
                     lfilter=lambda p: TCP in p and p[TCP].flags & 0x04)
sniff.start()
time.sleep(0.3)
frame = (Ether(src=get_if_hwaddr(iface), dst=dst_mac) / Dot1Q(vlan=100) / IP(src=src, dst=dst) /
         TCP(sport=5555, dport=7006, seq=1000, ack=2000, flags="PA") / (b"x" * 10))
end = time.monotonic() + 6
while time.monotonic() < end and not sniff.results:
    sendp(frame, iface=iface, verbose=False)
    time.sleep(0.2)
time.sleep(0.2)
for p in sniff.stop():
    print(f"RST vlan={p[Dot1Q].vlan if Dot1Q in p else None} src={p[IP].src} dst={p[IP].dst} sport={p[TCP].sport} dport={p[TCP].dport} "
          f"seq={p[TCP].seq} ack={p[TCP].ack} flags={p[TCP].flags} eth_dst={p[Ether].dst}", flush=True)
print("DONE", flush=True)
"""


def test_vlan_tagged_segment_is_answered_with_a_tagged_reset(net, tmp_path):
    """802.1Q: the kernel moves the tag of a received frame into the ring header, the reader puts it
    back, the C matcher parses past it, and the reset to the sender goes out with the same tag and
    seq = the segment's ack. (No 8021q module here for a VLAN device: scapy sends tagged segments.)"""
    vs, sensor = start(net, tmp_path)
    src = f"10.90.{net.n}.2"
    block(tmp_path / "vs", "--host", src, "--id", "vl")
    sensor.wait_for(r"L3 antigena received id=vl", timeout=PERIOD + 3)
    sa_mac = sh(f"ip netns exec {net.cap} cat /sys/class/net/{net.sa}/address").stdout.strip()
    probe = net.py(net.a, VLAN_PROBE, "a0", sa_mac, src, net.b_ip)
    probe.wait_for("DONE", timeout=15)
    a0_mac = sh(f"ip netns exec {net.a} cat /sys/class/net/a0/address").stdout.strip()
    assert (f"RST vlan=100 src={net.b_ip} dst={src} sport=7006 dport=5555 seq=2000 ack=1010 flags=RA "
            f"eth_dst={a0_mac}") in probe.output, probe.output + sensor.output
    assert sensor.stop() == 0, sensor.output


def test_disabled_opens_no_injection_socket_and_refuses(net, tmp_path):
    vs, sensor = start(net, tmp_path, ANTIGENA_ENABLED="false")
    sensor.wait_for(r"antigena disabled \(ANTIGENA_ENABLED=false\): no injection socket")
    assert socket_kinds(sensor.p.pid) == {"packet": 1, "raw": 0}  # the capture socket only
    srv = net.py(net.b, SERVER, net.b_ip, 7003)
    srv.wait_for("LISTENING")
    victim = net.py(net.a, CLIENT, net.b_ip, 7003)
    sport = int(victim.wait_for(r"CONNECTED sport=(\d+)").group(1))
    block(tmp_path / "vs", "--connection", f"{net.a_ip}:{sport}", f"{net.b_ip}:7003", "--id", "d1")
    rep = wait_report(tmp_path / "vs", "d1", "refused", timeout=PERIOD * 3 + 1)
    assert "ANTIGENA_ENABLED=false" in rep["reason"] and rep["final"]
    time.sleep(PERIOD + 0.5)
    still_talking(victim)
    sensor.wait_for(r"L3 antigena refused id=d1 .*ANTIGENA_ENABLED=false")
    assert sensor.stop() == 0, sensor.output


def test_malformed_actions_are_refused_and_reported(net, tmp_path):
    vs, sensor = start(net, tmp_path)
    out = tmp_path / "vs"
    block(out, "--raw", json.dumps({"id": "m1", "target": {"type": "subnet", "address": "10.0.0.0/8"},
                                    "expires_in": 30}))
    block(out, "--raw", json.dumps({"id": "m2", "target": {"type": "host", "address": "10.88.1.999"},
                                    "expires_in": 30}))
    block(out, "--raw", json.dumps({"id": "m3", "target": {"type": "host", "address": net.a_ip},
                                    "expires_in": -5}))
    block(out, "--raw", json.dumps({"target": "nonsense"}))
    reasons = {aid: wait_report(out, aid, "refused", timeout=PERIOD * 3 + 1)["reason"] for aid in ("m1", "m2", "m3")}
    assert "unknown type 'subnet'" in reasons["m1"]
    assert "'10.88.1.999' is not an IPv4 or IPv6 address" in reasons["m2"]
    assert "expires_in: -5 is not positive" in reasons["m3"]
    deadline = time.monotonic() + PERIOD * 3
    while not any(r["id"] is None for r in reports(out)) and time.monotonic() < deadline:
        time.sleep(0.1)
    anonymous = [r for r in reports(out) if r["id"] is None]
    assert anonymous and anonymous[0]["state"] == "refused" and "id: missing" in anonymous[0]["reason"]
    # refused ones are reported once (final), not installed, and the sensor carries on
    time.sleep(PERIOD * 2)
    assert sum(1 for r in reports(out) if r.get("id") == "m1") == 1
    assert sum(1 for r in reports(out) if r.get("id") is None) == 1
    assert sensor.p.poll() is None
    srv = net.py(net.b, SERVER, net.b_ip, 7004)
    srv.wait_for("LISTENING")
    assert net.probe(net.b_ip, 7004) == "OK"  # m3 (host a) was not installed
    assert "Traceback" not in sensor.output
    assert sensor.stop() == 0, sensor.output
