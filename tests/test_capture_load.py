"""Correctness under load and tagged traffic: every packet is captured or counted, VLAN tags survive."""

from __future__ import annotations

import collections
import json
import re
import subprocess

import pytest

import asan
from support import (NATIVE_PRELUDE, ROOT, Topology, final_counts, read_pcap, send_udp, sensor_env, sh,
                     start_sensor, start_tcpdump, start_vsensor, trafgen_udp_cfg, vsensor_packets)

pytestmark = pytest.mark.timeout(180)
asan.load("NATIVE_SO", "ossensor._native")  # the ring built with ASan in test_ring_under_asan's rerun


@pytest.fixture
def topo():
    with Topology() as t:
        yield t


def test_high_rate_every_packet_captured_or_counted(topo, tmp_path):
    for ns, dev in ((topo.cap, topo.cap_if), (topo.peer, topo.peer_if)):  # no IPv6 chatter: exact counts
        sh(f"ip netns exec {ns} sysctl -qw net.ipv6.conf.{dev}.disable_ipv6=1")
    rx_dropped = f"/sys/class/net/{topo.cap_if}/statistics/rx_dropped"
    vs, port = start_vsensor(topo, tmp_path / "vs")
    # a small ring (2 MiB) so that a burst at the generator's full speed may overflow it:
    # whatever happens, each packet must be captured or counted as a kernel drop
    env = sensor_env(topo, tmp_path, port, BPF="udp dst port 5678", OSSENSOR_RING_MB="2",
                     OSSENSOR_BATCH_MAX_AGE_MS="200", OSSENSOR_DEBUG="1", ANTIGENA_ENABLED="false")
    sensor = start_sensor(topo, env)
    cfg = tmp_path / "udp.cfg"
    cfg.write_text(trafgen_udp_cfg())
    tx = f"/sys/class/net/{topo.peer_if}/statistics/tx_packets"
    before = int(sh(f"ip netns exec {topo.peer} cat {tx}").stdout)
    if_drops0 = int(sh(f"ip netns exec {topo.cap} cat {rx_dropped}").stdout)
    sh(f"ip netns exec {topo.peer} trafgen -o {topo.peer_if} -i {cfg} -P 1 -n 300000 -q -C", timeout=120)
    sent = int(sh(f"ip netns exec {topo.peer} cat {tx}").stdout) - before
    assert sent == 300000
    # at full speed the receiving veth's backlog can overflow before any tap sees the packet:
    # the interface counts those (rx_dropped), and the sensor cannot have seen them
    if_drops = int(sh(f"ip netns exec {topo.cap} cat {rx_dropped}").stdout) - if_drops0
    assert sensor.stop(timeout=60) == 0, sensor.output
    c = final_counts(sensor)
    assert c["captured"] + c["kernel_drops"] + if_drops == sent, (c, if_drops)
    dropped = c["queue_drops"] + c["refused"] + c["shutdown_drops"] + c.get("spool_drops", 0)
    assert c["acked"] + dropped == c["captured"], c
    assert len(vsensor_packets(tmp_path / "vs")) == c["acked"]



def send_vlan_udp(topo, tmp_path, payload: int, n: int = 20) -> None:
    """n 802.1Q-tagged (VID 100) UDP frames to port 5678 from the peer, with `payload` bytes of 0x42 (trafgen)."""
    eth = "0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02"
    tag = "0x81, 0x00, 0x20, 0x64, 0x08, 0x00"  # TPID 0x8100, PCP 1, VID 100, then IPv4
    ip = (f"0x45, 0x00, const16({28 + payload}), 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, csumip(18, 37), "
          "10, 78, 0, 1, 10, 78, 0, 2")
    udp = f"const16(1234), const16(5678), const16({8 + payload}), 0x00, 0x00"
    cfg = tmp_path / "vlan.cfg"
    cfg.write_text(f"{{ {eth}, {tag}, {ip}, {udp}, fill(0x42, {payload}) }}\n")
    sh(f"ip netns exec {topo.peer} trafgen -o {topo.peer_if} -i {cfg} -P 1 -n {n} -q -C", timeout=60)

def _capture_vlan(topo, tmp_path, payload: int, **env: str) -> tuple[list, list]:
    """20 VLAN-100 UDP frames captured by the sensor and by tcpdump: (the vSensor's packets, tcpdump's)."""
    vs, port = start_vsensor(topo, tmp_path / "vs")
    dump = tmp_path / "tcpdump.pcap"
    td = start_tcpdump(topo, dump, "vlan 100 and udp port 5678")
    sensor = start_sensor(topo, sensor_env(topo, tmp_path, port, BPF="vlan 100 and udp port 5678",
                                           ANTIGENA_ENABLED="false", **env))
    send_vlan_udp(topo, tmp_path, payload=payload)
    sensor.wait_for(r"acked=20 ", timeout=20)
    assert sensor.stop() == 0
    td.stop()
    got = vsensor_packets(tmp_path / "vs")
    assert len(got) == 20
    return got, read_pcap(dump)


def test_vlan_tagged_frames_keep_their_tag(topo, tmp_path):
    # 802.1Q frames (VLAN 100) cross the veth; the receiving kernel moves the tag out of
    # band (TP_STATUS_VLAN_VALID) and the reader must put it back, as tcpdump does
    got, ref = _capture_vlan(topo, tmp_path, payload=18)
    for _, p in got:
        assert p.data[12:16] == bytes([0x81, 0x00, 0x20, 0x64]), p.data[:20].hex()
        assert p.wirelen == len(p.data) == 64
    assert [data for _, data, _ in ref] == [p.data for _, p in got]


def test_vlan_tag_restored_within_a_small_snaplen(topo, tmp_path):
    # 146-byte tagged frames, OSSENSOR_SNAPLEN=64: the ring holds the first 64 bytes of the untagged
    # frame; with the tag put back the EPB must still say 64 (not 68), or the vSensor refuses the batch
    # and tcpdump would refuse the stored file ("bigger than snaplen")
    got, ref = _capture_vlan(topo, tmp_path, payload=100, OSSENSOR_SNAPLEN="64")
    for (_, p), (_, data, _) in zip(got, ref):
        assert p.data == data[:64] and p.wirelen == len(data) == 146, (p.data.hex(), len(data))
    (stored,) = (tmp_path / "vs").glob("*.pcapng")
    run = subprocess.run(["tcpdump", "-r", str(stored), "--count"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and run.stdout.split()[0] == "20", (run.stdout, run.stderr)


def test_live_batches_fit_the_limit_the_vsensor_announces(topo, tmp_path):
    # a vSensor taking 1 MiB bodies (its hello says so), 4 MiB batches configured: the ring's batches are
    # cut at 1 MiB, framing included (Ring.set_batch_bytes); nothing is refused, everything stored
    for ns, dev in ((topo.cap, topo.cap_if), (topo.peer, topo.peer_if)):
        sh(f"ip netns exec {ns} sysctl -qw net.ipv6.conf.{dev}.disable_ipv6=1")
    vs, port = start_vsensor(topo, tmp_path / "vs", extra=["--max-body-mb", "1"])
    sensor = start_sensor(topo, sensor_env(topo, tmp_path, port, BPF="udp dst port 5678", OSSENSOR_BATCH_MAX_KB="4096",
                                           OSSENSOR_BATCH_MAX_AGE_MS="3000", ANTIGENA_ENABLED="false"))
    sensor.wait_for(r"batches now cut at \d+ bytes \(the vSensor takes at most 1048576 bytes", timeout=20)
    cfg = tmp_path / "udp.cfg"
    cfg.write_text(trafgen_udp_cfg(200))
    sh(f"ip netns exec {topo.peer} trafgen -o {topo.peer_if} -i {cfg} -P 1 -n 20000 -b 20000pps -q -C", timeout=60)
    assert sensor.stop(timeout=60) == 0, sensor.output
    c = final_counts(sensor)
    assert c["captured"] + c["kernel_drops"] == 20000 and c["acked"] == c["captured"] and c["refused"] == 0, c
    assert "too large" not in sensor.output
    sizes = [json.loads(line)["bytes"] for line in (tmp_path / "vs" / "batches.jsonl").read_text().splitlines()]
    assert max(sizes) <= 1 << 20 and len(sizes) >= 4, sizes


def test_big_and_small_frames_mixed_arrive_whole(topo, tmp_path):
    # the ring reads chunks of big frames (>= 512 B) ahead before copying them and small ones as it goes
    # (native/ring.c touch_ahead): frames of 1500, 600 and 64 bytes in turn, so chunks start with each;
    # every frame stored once, whole
    for ns, dev in ((topo.cap, topo.cap_if), (topo.peer, topo.peer_if)):
        sh(f"ip netns exec {ns} sysctl -qw net.ipv6.conf.{dev}.disable_ipv6=1")
    vs, port = start_vsensor(topo, tmp_path / "vs")
    sensor = start_sensor(topo, sensor_env(topo, tmp_path, port, BPF="udp dst port 5678",
                                           OSSENSOR_BATCH_MAX_AGE_MS="300", ANTIGENA_ENABLED="false"))
    cfg = tmp_path / "udp.cfg"
    sizes = (1500, 600, 64)
    cfg.write_text("".join(trafgen_udp_cfg(n) for n in sizes))
    sh(f"ip netns exec {topo.peer} trafgen -o {topo.peer_if} -i {cfg} -P 1 -n 9000 -b 9000pps -q -C", timeout=60)
    assert sensor.stop(timeout=60) == 0, sensor.output
    c = final_counts(sensor)
    assert c["captured"] == 9000 and c["kernel_drops"] == 0 and c["acked"] == 9000, c
    got = [p.data for _, p in vsensor_packets(tmp_path / "vs")]
    assert sorted(collections.Counter(len(d) for d in got).items()) == [(n, 3000) for n in sorted(sizes)]
    for d in got:  # the frame as trafgen built it: its header, then 0x41 to the end
        assert d[12:14] == b"\x08\x00" and d[36:38] == (5678).to_bytes(2, "big") and d[42:] == b"A" * (len(d) - 42)


def test_fanout_readers_share_the_traffic_without_duplicates(topo, tmp_path):
    for ns, dev in ((topo.cap, topo.cap_if), (topo.peer, topo.peer_if)):
        sh(f"ip netns exec {ns} sysctl -qw net.ipv6.conf.{dev}.disable_ipv6=1")
    vs, port = start_vsensor(topo, tmp_path / "vs")
    env = sensor_env(topo, tmp_path, port, BPF="udp dst port 5678", OSSENSOR_CAPTURE_THREADS="2",
                     OSSENSOR_DEBUG="1", ANTIGENA_ENABLED="false")
    sensor = start_sensor(topo, env)
    # many flows (random source ports), so the hash spreads them over both rings
    cfg = tmp_path / "flows.cfg"
    cfg.write_text(trafgen_udp_cfg().replace("const16(1234)", "drnd(2)"))
    sh(f"ip netns exec {topo.peer} trafgen -o {topo.peer_if} -i {cfg} -P 1 -n 20000 -b 20000pps -q -C",
       timeout=60)
    assert sensor.stop(timeout=60) == 0, sensor.output
    c = final_counts(sensor)
    assert c["captured"] + c["kernel_drops"] == 20000, c
    got = vsensor_packets(tmp_path / "vs")
    assert len(got) == c["acked"] == c["captured"]
    seqs = [int(l.split("seq=")[1].split()[0]) for l in vs.lines if l.split()[1:2] == ["accepted"]]
    assert len(seqs) == len(set(seqs)) and len(seqs) >= 2  # one sequence shared by the readers


TUN_HOLDER = """
import fcntl, os, struct, sys, time
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", sys.argv[1].encode(), 0x0001 | 0x1000))  # TUNSETIFF IFF_TUN|IFF_NO_PI
print("READY", flush=True)
while True:
    os.read(fd, 65536)  # drain what the kernel routes into the tun
"""


def test_mixed_link_types_raw_ip_tun_beside_ethernet(topo, tmp_path):
    import sys

    tun = f"ost{topo.net}"
    holder = topo.spawn([sys.executable, "-c", TUN_HOLDER, tun], netns=topo.cap)
    holder.wait_for("READY")
    sh(f"ip -n {topo.cap} addr add 10.80.{topo.net}.1/24 dev {tun}")
    sh(f"ip -n {topo.cap} link set {tun} up")
    vs, port = start_vsensor(topo, tmp_path / "vs")
    sensor = start_sensor(topo, sensor_env(topo, tmp_path, port, BPF="udp port 9999", ANTIGENA_ENABLED="false"))
    send_udp(topo, 10)  # Ethernet: peer -> veth
    code = ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for i in range(7): s.sendto(b'through the tun %d' % i, ('10.80.{topo.net}.9', 9999))\n")
    r = subprocess.run(["ip", "netns", "exec", topo.cap, sys.executable, "-c", code], capture_output=True,
                       timeout=30)
    assert r.returncode == 0, r.stderr
    sensor.wait_for(r"acked=17 ", timeout=20)
    assert sensor.stop() == 0
    got = vsensor_packets(tmp_path / "vs")
    by_if: dict[str, list] = {}
    for name, p in got:
        by_if.setdefault(name, []).append(p)
    assert len(by_if[topo.cap_if]) == 10 and len(by_if[tun]) == 7
    for i, p in enumerate(by_if[tun]):  # raw IP: the packet starts with the IPv4 header
        assert p.data[0] >> 4 == 4 and p.data[28:].startswith(b"through the tun %d" % i)
    assert all(p.data[12:14] == b"\x08\x00" for p in by_if[topo.cap_if])  # Ethernet frames
    from ossensor import pcapng

    linktypes = {i.name: i.linktype for f in (tmp_path / "vs").glob("*.pcapng")
                 for sec in pcapng.read_sections(f.read_bytes()) for i in sec.interfaces}
    assert linktypes[tun] == pcapng.LINKTYPE_RAW and linktypes[topo.cap_if] == pcapng.LINKTYPE_ETHERNET


def test_filter_that_cannot_match_raw_ip_still_captures_ethernet(topo, tmp_path):
    """`BPF=ether ...` compiles for Ethernet but not for a raw-IP tun: the tun selects nothing
    (one warning), the veth is captured, no traceback."""
    import sys

    tun = f"ost{topo.net}"
    holder = topo.spawn([sys.executable, "-c", TUN_HOLDER, tun], netns=topo.cap)
    holder.wait_for("READY")
    sh(f"ip -n {topo.cap} link set {tun} up")
    vs, port = start_vsensor(topo, tmp_path / "vs")
    sensor = start_sensor(topo, sensor_env(topo, tmp_path, port, BPF="not ether host 02:00:00:00:00:99 and udp port 9999",
                                           ANTIGENA_ENABLED="false"))
    assert re.search(r"WARNING BPF selects nothing on link type 101 interfaces", sensor.output)
    send_udp(topo, 10)
    sensor.wait_for(r"acked=10 ", timeout=20)
    assert sensor.stop() == 0
    assert "Traceback" not in sensor.output


def test_ring_wake_ends_a_wait_once_and_take_needs_a_new_batch():
    """Ring.wake() (interface changes, new Antigena rules, stop) ends the reader's wait at once; an
    early wake ends the next wait, once. take() hands out a batch once; a second take() without a
    read in between is an error, not the same buffer twice."""
    import threading
    import time

    from ossensor._native import Ring

    ring = Ring(ring_bytes=1 << 21, block_size=1 << 20, snaplen=2048, batch_bytes=1 << 16)  # not bound: no traffic
    try:
        t = threading.Thread(target=ring.read, args=(5000, 40))
        t.start()
        time.sleep(0.2)
        t0 = time.monotonic()
        ring.wake()
        t.join(3)
        assert not t.is_alive() and time.monotonic() - t0 < 1.0
        ring.wake()  # before the read: that read returns at once ...
        t0 = time.monotonic()
        assert ring.read(3000) == 0 and time.monotonic() - t0 < 1.0
        t0 = time.monotonic()  # ... and the wake-up is consumed: the next one waits its timeout
        assert ring.read(300) == 0 and time.monotonic() - t0 >= 0.25
        ring.take()
        with pytest.raises(RuntimeError, match="no batch since the last take"):
            ring.take()
        ring.read(0)
        ring.take()  # a read started a new batch
    finally:
        ring.close()


HOLD = NATIVE_PRELUDE + r"""
import json, os, socket, struct, sys, threading, time
from ossensor.ops import log as L
from ossensor.ship.accounting import Accounting
from ossensor.ship.batch import Batch, BatchQueue
from ossensor.capture.live import LiveCapture
from ossensor.interfaces.netlink import enumerate_interfaces

dev = sys.argv[1]
log = L.Log(0, stream=open(os.devnull, "w"))
MiB = 1 << 20
cap = LiveCapture(ring_bytes=8 * MiB, block_timeout_ms=5, snaplen=2048, batch_bytes=MiB, batch_age_s=0.1,
                  filter_expr="udp port 9999", log=log, accounting=Accounting())
cap.set_interfaces([i for i in enumerate_interfaces() if i.name == dev])
queue = BatchQueue(64 * MiB)
def waiting():  # a full batch waits to be shipped: the reader should leave packets in the ring
    queue.put(Batch(0, bytes(MiB), 1, MiB, 0, 0, time.monotonic()))
batches, stop = [], threading.Event()
read = lambda: sum(b.packets for b in batches)
tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
frame = (b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" +
         struct.pack("!BBHHHBBH4s4s", 0x45, 0, 1000, 0, 0, 64, 17, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) +
         struct.pack("!HHHH", 1111, 9999, 980, 0) + bytes(972))
def send(n):
    for _ in range(n):
        tx.sendto(frame, (dev, 0))

waiting()
cap.start()
reader = threading.Thread(target=cap.run, args=(stop, batches.append, queue), daemon=True)
reader.start()
out = {}
send(1000)                       # 1 MB: an eighth of the ring
time.sleep(0.5)
out["held"], out["read_while_held"], out["ring_blocks_ready"] = cap.held, read(), cap.ring.ready()[0]
queue.get(0.1)                   # the shipper takes the waiting batch: the reader reads again
time.sleep(0.5)
out["read_after_take"] = read()
waiting()
send(6000)                       # 6 MB while a batch waits: past half the ring, read regardless
time.sleep(0.5)
out["read_past_half"] = read()
out["ready_past_half"], out["blocks"] = cap.ring.ready()
rules = [(9, 3, 4, bytes([10, 9, 9, 9]), b"", 0, 0)]  # an Antigena rule (for another host) is active:
def hook(ring):                                          # packets are read as they come, batch waiting or not
    if rules:
        ring.set_rules([rules.pop()])
cap.antigena_hook = hook
send(500)
time.sleep(0.5)
out["read_with_rules"] = read()
stop.set()
reader.join()
out["read_at_stop"] = read()
out["kernel"] = cap.kernel_stats()
out["drain_ns"] = cap.ring.drain_ns
print(json.dumps(out))
"""


def test_reader_leaves_packets_in_the_ring_while_a_batch_waits(topo):
    """Back-pressure: while a full batch waits in the shipping queue, the reader leaves packets in
    the kernel ring (no new batch memory); it reads them once the shipper takes a batch, and reads
    regardless once the ring is half full or while Antigena rules are active. Nothing is lost."""
    import json
    import os
    import sys
    from pathlib import Path

    r = subprocess.run(["ip", "netns", "exec", topo.cap, sys.executable, "-c", HOLD, topo.cap_if],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["held"] > 0 and out["read_while_held"] == 0 and out["ring_blocks_ready"] >= 1, out
    assert out["read_after_take"] == 1000, out
    # past half the ring (8 blocks of 1 MiB) the reader read on, down to under half again
    assert 1000 < out["read_past_half"] < 7000 and 2 * out["ready_past_half"] < out["blocks"], out
    assert out["read_with_rules"] == 7500, out  # Antigena rules active: no waiting
    assert out["read_at_stop"] == 7500 and out["kernel"] == [7500, 0], out
    # the reader's CPU in drain() (bench/capture.py's per-packet figure): counted, and not the time asleep
    assert 0 < out["drain_ns"] < 7500 * 100_000, out


def test_ring_pool_reuses_as_many_buffers_as_wait_and_trims_idle_ones():
    """The ring keeps pool_buffers batch buffers for reuse: batches that wait to be sent and come
    back cost no fresh pages; trim(keep) lets idle ones go once the queue is quiet."""
    from ossensor._native import Ring

    ring = Ring(ring_bytes=1 << 21, block_size=1 << 20, snaplen=2048, batch_bytes=1 << 16, pool_buffers=4)
    try:
        waiting = []
        for _ in range(4):  # four batches wait in the queue at once
            ring.read(0)
            waiting.append(ring.take()[0])
        assert ring.buffers_made == 4
        waiting.clear()  # sent: their buffers come back
        for _ in range(4):
            ring.read(0)
            waiting.append(ring.take()[0])
        assert ring.buffers_made == 4  # all four reused
        ring.read(0)
        assert ring.buffers_made == 5  # all four still wait: a fifth is made (and the oldest leaves the pool)
        waiting.clear()
        assert ring.trim(1) == 3  # idle ones go; the batch being filled keeps its buffer (it is the one kept)
        assert ring.trim(1) == 0
        ring.take()
        ring.read(0)
        assert ring.buffers_made == 5
    finally:
        ring.close()
    with pytest.raises(ValueError, match="pool_buffers"):
        Ring(ring_bytes=1 << 21, block_size=1 << 20, snaplen=2048, batch_bytes=1 << 16, pool_buffers=1)
    # the sensor's choice: the queue's worth + filling + sending, within POOL_KEEP..the ring's limit
    from ossensor._native import POOL_MAX
    from ossensor.capture.live import POOL_KEEP, pool_buffers_for

    MiB = 1 << 20
    assert pool_buffers_for(64 * MiB, 4 * MiB) == 18  # the defaults
    assert pool_buffers_for(1 * MiB, 4 * MiB) == POOL_KEEP
    assert pool_buffers_for(1 << 30, 4 * MiB) == POOL_MAX == 64
    with pytest.raises(ValueError, match="pool_buffers"):
        Ring(ring_bytes=1 << 21, block_size=1 << 20, snaplen=2048, batch_bytes=1 << 16, pool_buffers=POOL_MAX + 1)


TRIM = NATIVE_PRELUDE + r"""
import io, json, os, socket, struct, sys, threading, time
from ossensor.ops import log as L
from ossensor.ship.accounting import Accounting
from ossensor.ship.batch import BatchQueue
from ossensor.capture import live
from ossensor.capture.live import LiveCapture
from ossensor.interfaces.netlink import enumerate_interfaces

live.POOL_TRIM_AFTER_S = 0.5  # instead of 10 s
live.POOL_KEEP = 2
dev = sys.argv[1]
out = io.StringIO()
log = L.Log(4, stream=out)
cap = LiveCapture(ring_bytes=8 << 20, block_timeout_ms=5, snaplen=2048, batch_bytes=64 << 10, batch_age_s=0.05,
                  filter_expr="udp port 9999", log=log, accounting=Accounting(), pool_buffers=8)
cap.set_interfaces([i for i in enumerate_interfaces() if i.name == dev])
queue = BatchQueue(1 << 20)
stop = threading.Event()
cap.start()
reader = threading.Thread(target=cap.run, args=(stop, queue.put, queue, False), daemon=True)
reader.start()
tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
frame = (b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" +
         struct.pack("!BBHHHBBH4s4s", 0x45, 0, 1000, 0, 0, 64, 17, 0, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) +
         struct.pack("!HHHH", 1111, 9999, 980, 0) + bytes(972))
for _ in range(400):  # 400 KB: several 64 KiB batches wait in the queue at once
    tx.sendto(frame, (dev, 0))
time.sleep(0.3)
waited = len(queue)
made = cap.buffers_made
while queue.get(0.01):  # the shipper sends them all
    pass
queue.in_hand.clear()
time.sleep(1.5)        # a quiet queue for longer than POOL_TRIM_AFTER_S
stop.set()
reader.join()
print(json.dumps({"waited": waited, "made": made, "log": [l for l in out.getvalue().splitlines() if "released" in l]}))
"""


def test_idle_pooled_batch_buffers_are_released_after_a_quiet_spell(topo):
    """After a burst several batch buffers sit in the ring's pool; once the queue has been empty
    for POOL_TRIM_AFTER_S the reader lets all but POOL_KEEP of them go (and says so at level 4)."""
    import json
    import os
    import sys
    from pathlib import Path

    r = subprocess.run(["ip", "netns", "exec", topo.cap, sys.executable, "-c", TRIM, topo.cap_if],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["waited"] >= 4 and out["made"] >= 4, out
    assert len(out["log"]) == 1 and "released" in out["log"][0], out  # once per quiet spell
    released = int(out["log"][0].split("released ")[1].split()[0])
    assert released == min(out["made"], 8) - 2, out  # every pooled one (8 at most) beyond POOL_KEEP


def test_ring_under_asan(tmp_path):
    """This file's tests and the Antigena ones (the ring's reader with real traffic at a high rate,
    VLAN tags, fanout, mixed link types, back-pressure, the pool, wake and take, rules and resets) again
    with ring.c, ring_rx.c and dedup.c built with -fsanitize=address and leak checking: an out-of-bounds access, a use after
    free or a leaked buffer allocated in them (or antigena.h, which ring.c includes) fails. The dedup
    table's own rerun, in a node's topology, is test_dedup.py::test_dedup_under_asan."""
    so, libasan = asan.build(tmp_path, "ossensor._native")
    asan.rerun([__file__, str(ROOT / "tests" / "test_antigena.py")], "NATIVE_SO", so, libasan,
               leaks_in=("ring.c", "ring_rx.c", "antigena.h", "dedup.c"), timeout=600)
