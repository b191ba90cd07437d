"""End to end: live capture on a veth reaches the reference vSensor, signed, over TLS."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from support import (KEY, Topology, read_pcap, send_udp, sensor_env, start_sensor, start_tcpdump, start_vsensor,
                     vsensor_packets)

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def topo():
    with Topology() as t:
        yield t


def wait_acked(sensor, n: int, timeout: float = 20) -> None:
    """Until the sensor's level-1 stats say n packets were acknowledged."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in reversed(sensor.lines):
            if " stats " in line:
                acked = int(line.split(" acked=")[1].split()[0])
                if acked >= n:
                    return
                break
        time.sleep(0.1)
    raise AssertionError(f"{n} packets not acknowledged in {timeout} s:\n{sensor.output}")


def batches_log(out) -> list[dict]:
    path = out / "batches.jsonl"
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def test_packets_arrive_identical_and_match_tcpdump(topo, tmp_path):
    vs, port = start_vsensor(topo, tmp_path / "vs")
    dump = tmp_path / "tcpdump.pcap"
    td = start_tcpdump(topo, dump, "udp port 9999")
    sensor = start_sensor(topo, sensor_env(topo, tmp_path, port, BPF="udp port 9999"))
    n = 500
    send_udp(topo, n, size=300)
    wait_acked(sensor, n)
    assert sensor.stop() == 0, sensor.output
    assert "stopped" in sensor.output
    td.stop()

    got = vsensor_packets(tmp_path / "vs")
    assert len(got) == n
    assert {name for name, _ in got} == {topo.cap_if}
    for i, (_, p) in enumerate(got):
        assert p.data[42:].startswith(b"ossensor-%08d-" % i)  # eth 14 + ip 20 + udp 8, in order
        assert len(p.data) == 42 + 300 and p.wirelen == 42 + 300
    ref = read_pcap(dump)
    assert [(ts, data) for ts, data, _ in ref] == [(p.ts_ns, p.data) for _, p in got]
    # tcpdump -r reads the vSensor's file too
    files = sorted((tmp_path / "vs").glob("*.pcapng"))
    r = subprocess.run(["tcpdump", "-r", str(files[0]), "-n"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == n, r.stderr
    # every packet accounted: acknowledged, none dropped
    final = [l for l in sensor.lines if "final stats" in l][-1]
    assert f"captured={n} " in final and f"acked={n} " in final and "kernel_drops=0" in final


def test_bpf_applies_in_the_kernel(topo, tmp_path):
    vs, port = start_vsensor(topo, tmp_path / "vs")
    sensor = start_sensor(topo, sensor_env(topo, tmp_path, port, BPF="udp and dst port 9999"))
    send_udp(topo, 200, port=8888)   # outside the filter
    send_udp(topo, 100, port=9999)   # inside
    wait_acked(sensor, 100)
    time.sleep(0.5)
    assert sensor.stop() == 0
    got = vsensor_packets(tmp_path / "vs")
    assert len(got) == 100
    assert all(p.data[36:38] == (9999).to_bytes(2, "big") for _, p in got)
    # the kernel never passed the others up: the ring's own count (ISB filteraccept) is 100
    stats = batches_log(tmp_path / "vs")
    assert stats, "vSensor logged no batch"
    final = [l for l in sensor.lines if "final stats" in l][-1]
    assert "captured=100 " in final and "kernel_drops=0" in final


def test_wrong_key_is_refused_and_logged(topo, tmp_path):
    vs, port = start_vsensor(topo, tmp_path / "vs")
    env = sensor_env(topo, tmp_path, port, OSSENSOR_DEBUG="0", VSENSOR_HMAC_KEY="not-the-right-key-at-all",
                     BPF="udp port 9999")
    sensor = start_sensor(topo, env)
    send_udp(topo, 20)
    sensor.wait_for(r"L0 ERROR vSensor refused the batch: HTTP 401")
    vs.wait_for(r"refused .*status=401")
    assert sensor.stop() == 0
    assert not list((tmp_path / "vs").glob("*.pcapng")), "a refused batch was written"
    final = [l for l in sensor.lines if "final stats" in l][-1]
    assert "acked=0 " in final and "refused=20 " in final


def test_secret_never_printed_at_debug_5(topo, tmp_path):
    vs, port = start_vsensor(topo, tmp_path / "vs")
    env = sensor_env(topo, tmp_path, port, OSSENSOR_DEBUG="5")
    sensor = start_sensor(topo, env)
    send_udp(topo, 10)
    sensor.wait_for(r"L5 packet ")
    sensor.wait_for(r"L4 batch seq=")
    sensor.wait_for(r"L2 send seq=\d+ packets=\d+ bytes=\d+ -> 200 acked")
    assert sensor.stop() == 0
    assert KEY not in sensor.output
    assert KEY.encode().hex() not in sensor.output
    cfg = (tmp_path / "ossensor.cfg").read_text()
    assert KEY not in cfg and "[osSensor]" in cfg
    assert KEY not in vs.output


def test_sigint_also_stops_cleanly(topo, tmp_path):
    import signal

    vs, port = start_vsensor(topo, tmp_path / "vs")
    sensor = start_sensor(topo, sensor_env(topo, tmp_path, port, OSSENSOR_BATCH_MAX_AGE_MS="60000",
                                            BPF="udp port 9999"))
    send_udp(topo, 50)
    time.sleep(0.3)
    sensor.signal(signal.SIGINT)
    assert sensor.p.wait(15) == 0
    # the batch was far from its age bound: only the final flush can have sent it
    assert len(vsensor_packets(tmp_path / "vs")) == 50
