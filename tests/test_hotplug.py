"""Hot-plug: interfaces that appear, vanish, are renamed or change namespace while the sensor runs.

Real parts: two namespaces joined by veths (support.Topology), the sensor and the reference vSensor
in the capture namespace over real TLS, real UDP packets. Extra veths created by a test carry the
prefix `hp` + a per-test tag, live inside the test's namespaces and vanish with them.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import Topology, sensor_env, sh, start_sensor, start_vsensor, vsensor_packets

pytestmark = pytest.mark.timeout(90)

_n = itertools.count(1)

SENDER = """
import socket, sys
dst, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):
    s.sendto(b"hotplug-%04d" % i, (dst, port))
"""


@pytest.fixture
def topo():
    with Topology() as t:
        yield t


class Link:
    """A veth pair: `name` in the capture namespace (10.78.S.1), its peer in the peer namespace."""

    def __init__(self, topo: Topology, prefix: str = "hpa"):
        k = next(_n)
        self.topo = topo
        self.subnet = (os.getpid() + 17 * k) % 250 + 1
        self.name = f"{prefix}{os.getpid() % 10000}x{k}"[:15]
        self.peer = f"hq{os.getpid() % 10000}x{k}"[:15]
        self.ip = f"10.78.{self.subnet}.1"
        self.peer_ip = f"10.78.{self.subnet}.2"

    def create(self) -> float:
        t, ns, pns = self.topo, self.topo.cap, self.topo.peer
        sh(f"ip -n {ns} link add {self.name} type veth peer name {self.peer} netns {pns}")
        created = time.monotonic()
        sh(f"ip -n {ns} addr add {self.ip}/24 dev {self.name}")
        sh(f"ip -n {pns} addr add {self.peer_ip}/24 dev {self.peer}")
        sh(f"ip -n {ns} link set {self.name} up")
        sh(f"ip -n {pns} link set {self.peer} up")
        return created

    def rename(self, new: str) -> None:
        ns = self.topo.cap
        sh(f"ip -n {ns} link set {self.name} down")
        sh(f"ip -n {ns} link set {self.name} name {new}")
        sh(f"ip -n {ns} link set {new} up")
        self.name = new

    def delete(self) -> None:
        sh(f"ip -n {self.topo.cap} link del {self.name}")

    def send(self, n: int, port: int = 9999) -> None:
        r = subprocess.run(["ip", "netns", "exec", self.topo.peer, sys.executable, "-c", SENDER, self.ip,
                            str(port), str(n)], capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr


def count_on(out, name: str) -> int:
    return sum(1 for n, p in vsensor_packets(out) if n == name and b"hotplug-" in p.data)


def wait_count(out, name: str, n: int, timeout: float = 10) -> int:
    deadline = time.monotonic() + timeout
    got = 0
    while time.monotonic() < deadline:
        got = count_on(out, name)
        if got >= n:
            return got
        time.sleep(0.1)
    return got


def test_any1_new_veth_captured_deleted_dropped(topo, tmp_path):
    vs, port = start_vsensor(topo, tmp_path / "vs")
    sensor = start_sensor(topo, sensor_env(topo, tmp_path, port, NETWORK_DEVICE_ANY="1", BPF="udp port 9999",
                                           OSSENSOR_DEBUG="0"))
    sensor.wait_for(r"interface watcher: following netlink link events; NETWORK_DEVICE_ANY=1")
    link = Link(topo)
    link.create()
    time.sleep(0.2)  # the bound: packets sent 0.2 s after creation are captured
    link.send(20)
    sensor.wait_for(rf"L0 interface {link.name} index=\d+ appeared: selected \(no include list.*\): capturing")
    assert wait_count(tmp_path / "vs", link.name, 20) == 20, sensor.output
    # down: stays captured, says so
    sh(f"ip -n {topo.cap} link set {link.name} down")
    sensor.wait_for(rf"L0 interface {link.name} index=\d+ is down \(still captured: nothing arrives until it is up\)")
    # deleted: one level-0 line, the sensor keeps running and keeps capturing the others
    link.delete()
    sensor.wait_for(rf"L0 interface {link.name} index=\d+ deleted: no longer captured")
    from support import send_udp

    send_udp(topo, 10)  # the interface present from the start is still captured
    time.sleep(0.5)
    assert sensor.stop() == 0, sensor.output
    final = [l for l in sensor.lines if "final stats" in l][-1]
    assert "captured=30 " in final and "acked=30 " in final, final
    assert "Traceback" not in sensor.output


def test_rename_is_judged_again_and_excluded_ones_logged(topo, tmp_path):
    vs, port = start_vsensor(topo, tmp_path / "vs")
    env = sensor_env(topo, tmp_path, port, NETWORK_DEVICE_ANY="1", BPF="udp port 9999", OSSENSOR_DEBUG="0",
                     NETWORK_DEVICE_INCLUDELIST="^ov ^hp", NETWORK_DEVICE_EXCLUDELIST="^hpx [[:digit:]]z$")
    sensor = start_sensor(topo, env)
    sensor.wait_for(r"interface watcher: following")
    a = Link(topo, "hpa")
    a.create()
    sensor.wait_for(rf"interface {a.name} index=\d+ appeared: selected \(included by "
                    r"NETWORK_DEVICE_INCLUDELIST regex '\^hp'\): capturing")
    # renamed to a name the exclude list matches: dropped, with the rule that decided
    old = a.name
    a.rename("hpx" + old[3:])
    sensor.wait_for(rf"interface {a.name} index=\d+ renamed from {old}: no longer selected \(excluded by "
                    r"NETWORK_DEVICE_EXCLUDELIST regex '\^hpx'\): no longer captured")
    a.send(5)
    # a new one that the include list does not match: logged, not captured
    b = Link(topo, "zzb")
    b.create()
    sensor.wait_for(rf"interface {b.name} index=\d+ appeared: not selected "
                    r"\(matches no NETWORK_DEVICE_INCLUDELIST regex\)")
    b.send(5)
    # renamed into the include list: captured from then on
    old_b = b.name
    b.rename("hpb" + old_b[3:])
    sensor.wait_for(rf"interface {b.name} index=\d+ renamed from {old_b}: selected now")
    time.sleep(0.2)
    b.send(7)
    assert wait_count(tmp_path / "vs", b.name, 7) == 7, sensor.output
    time.sleep(0.3)
    assert sensor.stop() == 0, sensor.output
    assert count_on(tmp_path / "vs", a.name) == 0
    assert count_on(tmp_path / "vs", old_b) == 0
    final = [l for l in sensor.lines if "final stats" in l][-1]
    assert "captured=7 " in final, final


def test_moved_to_another_namespace_is_dropped(topo, tmp_path):
    vs, port = start_vsensor(topo, tmp_path / "vs")
    sensor = start_sensor(topo, sensor_env(topo, tmp_path, port, NETWORK_DEVICE_ANY="1", OSSENSOR_DEBUG="0",
                                           BPF="udp port 9999"))
    sensor.wait_for(r"interface watcher: following")
    a = Link(topo, "hpm")
    a.create()
    sensor.wait_for(rf"interface {a.name} index=\d+ appeared: selected")
    sh(f"ip -n {topo.cap} link set {a.name} netns {topo.peer}")
    sensor.wait_for(rf"interface {a.name} index=\d+ moved to another network namespace: no longer captured")
    # and back: it appears again (as a new interface of this namespace) and is captured
    sh(f"ip -n {topo.peer} link set {a.name} netns {topo.cap}")
    sh(f"ip -n {topo.cap} addr add {a.ip}/24 dev {a.name}; ip -n {topo.cap} link set {a.name} up")
    sensor.wait_for(rf"interface {a.name} index=\d+ appeared: selected .*: capturing")
    time.sleep(0.2)
    a.send(4)
    assert wait_count(tmp_path / "vs", a.name, 4) == 4, sensor.output[-3000:]
    assert sensor.stop() == 0, sensor.output


def test_any0_set_fixed_at_start_vanished_dropped_cleanly(topo, tmp_path):
    vs, port = start_vsensor(topo, tmp_path / "vs")
    first = Link(topo, "hpf")
    first.create()
    sensor = start_sensor(topo, sensor_env(topo, tmp_path, port, OSSENSOR_DEBUG="0", BPF="udp port 9999"))
    sensor.wait_for(r"NETWORK_DEVICE_ANY=0: the set stays as chosen at start")
    assert f"interface {first.name} index=" in sensor.output
    later = Link(topo, "hpl")
    later.create()
    sensor.wait_for(rf"interface {later.name} index=\d+ appeared: not captured \(NETWORK_DEVICE_ANY=0")
    time.sleep(0.2)
    later.send(5)
    first.send(6)
    assert wait_count(tmp_path / "vs", first.name, 6) == 6, sensor.output
    first.delete()
    sensor.wait_for(rf"interface {first.name} index=\d+ deleted: no longer captured \(1 interfaces\)")
    time.sleep(0.3)
    assert sensor.stop() == 0, sensor.output
    assert count_on(tmp_path / "vs", later.name) == 0
    final = [l for l in sensor.lines if "final stats" in l][-1]
    assert "captured=6 " in final and "acked=6 " in final, final


CHURN = """
import subprocess, sys
ns, prefix, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = []
for i in range(n):
    lines.append(f"link add {prefix}{i} type veth peer name {prefix}p{i}")
    lines.append(f"link set {prefix}{i} up")
    lines.append(f"link del {prefix}{i}")
subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\\n".join(lines) + "\\n", text=True, check=True)
"""


def proc_figures(pid: int) -> tuple[int, int]:
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    rss = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return fds, rss


@pytest.mark.timeout(150)
def test_churn_200_cycles_no_leak(topo, tmp_path):
    vs, port = start_vsensor(topo, tmp_path / "vs")
    sensor = start_sensor(topo, sensor_env(topo, tmp_path, port, NETWORK_DEVICE_ANY="1", OSSENSOR_DEBUG="0",
                                           BPF="udp port 9999", OSSENSOR_STATS_INTERVAL="5"))
    sensor.wait_for(r"interface watcher: following")
    # warm up: one cycle, so lazily loaded code and caches are in the baseline
    subprocess.run([sys.executable, "-c", CHURN, topo.cap, "hpw", "3"], check=True, timeout=30)
    time.sleep(1.0)
    pid = sensor.p.pid
    fds0, rss0 = proc_figures(pid)
    lines0 = len(sensor.lines)
    subprocess.run([sys.executable, "-c", CHURN, topo.cap, "hpc", "200"], check=True, timeout=60)
    # wait until the sensor has seen all of it (each veth: appeared + deleted)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if sum(" deleted: " in l or "vanished" in l for l in sensor.lines[lines0:]) >= 400:
            break
        time.sleep(0.2)
    time.sleep(1.5)  # a batch boundary: the table compacts
    fds1, rss1 = proc_figures(pid)
    seen = sum(" deleted: " in l or "vanished" in l for l in sensor.lines[lines0:])
    print(f"churn 200: fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} KiB, deletions seen {seen}")
    assert seen >= 400, sensor.output[-3000:]  # both ends of 200 veth pairs
    assert sensor.p.poll() is None, sensor.output
    assert fds1 == fds0, (fds0, fds1)
    assert rss1 - rss0 < 8 * 1024, f"RSS grew {rss0} -> {rss1} KiB over 200 cycles"
    # still capturing, including a veth created after the churn
    link = Link(topo, "hpz")
    link.create()
    time.sleep(0.2)
    link.send(10)
    assert wait_count(tmp_path / "vs", link.name, 10) == 10, sensor.output[-3000:]
    assert sensor.stop() == 0
    assert "Traceback" not in sensor.output


SECTIONS = r"""
import json, os, socket, struct, subprocess, sys, threading, time
from ossensor.ops import log as L
from ossensor import pcapng
from ossensor.ship.accounting import Accounting
from ossensor.capture.live import LiveCapture
from ossensor.interfaces.egrep import ERE
from ossensor.interfaces.hotplug import Watcher
from ossensor.interfaces.netlink import enumerate_interfaces
from ossensor.interfaces.selection import Selector

a, b = sys.argv[1], sys.argv[2]
log = L.Log(0, stream=open(os.devnull, "w"))
cap = LiveCapture(ring_bytes=4 << 20, block_timeout_ms=5, snaplen=2048, batch_bytes=1 << 20, batch_age_s=0.5,
                  filter_expr="udp port 9999", log=log, accounting=Accounting())
selector = Selector(None, [ERE("^" + a[:-1])], [])
initial = selector.select(enumerate_interfaces()).selected
cap.set_interfaces(initial)
w = Watcher(cap, selector, initial, hotplug=True, log=log).open()
batches, stop = [], threading.Event()
cap.start()
reader = threading.Thread(target=cap.run, args=(stop, batches.append))
reader.start()
w.start()

def frame(tag):
    payload = tag.encode()
    udp = struct.pack("!HHHH", 1111, 9999, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, bytes([10, 0, 0, 1]),
                     bytes([10, 0, 0, 2])) + udp
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip

tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
def send(dev, tag, n):
    for i in range(n):
        tx.sendto(frame(f"{tag}-{i}"), (dev, 0))

send(a, "A1", 3)
subprocess.run(f"ip link add {b} type veth peer name {b}p; ip link set {b} up; ip link set {b}p up",
               shell=True, check=True)
time.sleep(0.15)
send(b, "B1", 3)           # same batch as A1 (the batch is 0.5 s long): B's IDBs are appended
send(a, "A2", 2)
time.sleep(0.8)            # batch boundary
send(b, "B2", 2)
subprocess.run(f"ip link del {b}", shell=True, check=True)
time.sleep(0.1)
send(a, "A3", 2)
time.sleep(0.8)
send(a, "A4", 1)
time.sleep(0.3)
w.stop()
stop.set()
reader.join()
out = []
for batch in batches:
    (sec,) = pcapng.read_sections(batch.body)
    out.append({"idbs": [i.name for i in sec.interfaces],
                "packets": [[sec.interfaces[p.if_id].name, p.data[42:].decode()] for p in sec.packets]})
print(json.dumps(out))
"""


def test_batches_carry_an_idb_per_interface_as_they_come_and_go(topo):
    tag = f"{os.getpid() % 10000}"
    a, b = f"hpi{tag}a", f"hpi{tag}b"
    sh(f"ip -n {topo.cap} link add {a} type veth peer name {a}p")
    sh(f"ip -n {topo.cap} link set {a} up; ip -n {topo.cap} link set {a}p up")
    r = subprocess.run(["ip", "netns", "exec", topo.cap, sys.executable, "-c", SECTIONS, a, b],
                       capture_output=True, text=True, timeout=30,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert r.returncode == 0, r.stderr
    batches = json.loads(r.stdout)
    for bt in batches:
        assert len(set(bt["idbs"])) == len(bt["idbs"]), bt  # one IDB per interface, ids unique
        for name, tag_ in bt["packets"]:  # each packet's id names the interface it crossed
            assert name.startswith(a if tag_.startswith("A") else b), (name, tag_, bt)
    tags = [t for bt in batches for _, t in bt["packets"]]
    for t in ["A1-0", "A1-2", "B1-0", "B1-2", "A2-1", "B2-1", "A3-0", "A3-1", "A4-0"]:
        assert tags.count(t) == 2, (t, batches)  # out of one end, into its peer: both captured
    # the batch that saw B appear declares A's interfaces first (ids stable) and B's after them
    first = next(bt for bt in batches if any(t.startswith("B1") for _, t in bt["packets"]))
    assert first["idbs"][:2] == sorted([a, a + "p"], key=first["idbs"].index) and set(first["idbs"][2:]) == {b, b + "p"}
    assert any(t.startswith("A1") for _, t in first["packets"])
    # after B was deleted and a batch boundary passed, B is no longer declared
    last = next(bt for bt in batches if any(t.startswith("A4") for _, t in bt["packets"]))
    assert set(last["idbs"]) == {a, a + "p"}, last


def test_device_default_captures_the_default_route_device(topo, tmp_path):
    vs, port = start_vsensor(topo, tmp_path / "vs")
    sh(f"ip -n {topo.cap} route add default via {topo.peer_ip} dev {topo.cap_if}")
    other = Link(topo, "hpo")
    other.create()
    sensor = start_sensor(topo, sensor_env(topo, tmp_path, port, OSSENSOR_NETWORK_DEVICE="default",
                                           OSSENSOR_DEBUG="0", NETWORK_DEVICE_ANY="1", BPF="udp port 9999"))
    sensor.wait_for(rf"L0 OSSENSOR_NETWORK_DEVICE=default: {topo.cap_if} \(device of the IPv4 default route\)")
    sensor.wait_for(rf"capturing on {topo.cap_if}:")
    sensor.wait_for(r"interface watcher: following")
    assert f"interface {other.name} index=" in sensor.output and "not OSSENSOR_NETWORK_DEVICE" in sensor.output
    # with ANY=1 a new interface is judged by the same rule: not the device, not captured
    late = Link(topo, "hpn")
    late.create()
    sensor.wait_for(rf"interface {late.name} index=\d+ appeared: not selected \(not OSSENSOR_NETWORK_DEVICE")
    assert sensor.stop() == 0, sensor.output
