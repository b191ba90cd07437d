"""A distant vSensor (100 ms round trip through tests/delay_forwarder.py): several batches in flight,
every packet stored exactly once, also across a vSensor restart with a spool; the replay guard accepts
seqs in any order and still refuses repeats after a restart."""

from __future__ import annotations

import json
import sys
import time

import pytest

import capfiles
from delay_forwarder import DelayForwarder
from linkfault_util import expected_digest, payload_digest, start_sender, stats, stored_indices, wait_stat
from support import KEY, ROOT, Topology, loopback_vsensor, sensor_env, start_sensor, start_vsensor, vsensor_packets
from test_replay import replay, summary

from ossensor import protocol


def test_replay_through_100ms_all_stored_once_with_several_in_flight(tmp_path):
    """20,000 packets in small batches (a dozen or more) through a 100 ms round trip, a window of several
    batches: every packet stored once, in batches that were answered out of order or not."""
    n = 20_000
    base = 1_700_000_000 * 10**9
    pk = [(base + i * 1000, capfiles.eth_udp(i, 60 + i % 40), 60 + i % 40 + 42) for i in range(n)]
    (tmp_path / "big.pcap").write_bytes(capfiles.pcap(pk))
    out = tmp_path / "vs"
    with loopback_vsensor(out) as (_, port), DelayForwarder(("127.0.0.1", port), 100) as fw:
        env = {"VSENSOR_HOSTNAME": "127.0.0.1", "VSENSOR_PORT": str(fw.port), "VSENSOR_HMAC_KEY": KEY,
               "OSSENSOR_TLS_CA_FILE": str(out / "ca.pem"), "OSSENSOR_DEBUG": "2",
               "OSSENSOR_BATCH_MAX_KB": "64", "OSSENSOR_INFLIGHT_MB": "1"}
        r = replay(str(tmp_path / "big.pcap"), env=env, timeout=60)
        assert r.returncode == 0, r.stderr[-3000:]
        s = summary(r.stdout + r.stderr)
        assert s["acknowledged"] == str(n) and s["dropped"] == "0", s
        assert fw.accepted >= 2  # several connections: several batches in flight at once
    stored = [bytes(p.data) for _, p in vsensor_packets(out)]
    assert len(stored) == n
    assert sorted(stored) == sorted(data for _, data, _ in pk)  # each once, nothing else
    seqs = [e["seq"] for e in map(json.loads, (out / "batches.jsonl").read_text().splitlines())]
    assert len(seqs) == len(set(seqs)) >= 8


@pytest.fixture
def topo():
    with Topology() as t:
        yield t


@pytest.mark.timeout(150)
def test_vsensor_restarted_mid_stream_with_several_in_flight_and_a_spool(topo, tmp_path):
    """Live capture through a 100 ms round trip with a window of several batches and a spool; the
    vSensor is stopped while sends are outstanding and started again: nothing lost, nothing twice."""
    out, spool = tmp_path / "vs", tmp_path / "spool"
    vs, vport = start_vsensor(topo, out)
    fport = 9443
    fw = topo.spawn([sys.executable, str(ROOT / "tests" / "delay_forwarder.py"), "--listen", f"127.0.0.1:{fport}",
                     "--to", f"127.0.0.1:{vport}", "--rtt-ms", "100"], netns=topo.cap)
    fw.wait_for("forwarding")
    env = sensor_env(topo, tmp_path, fport, BPF="udp port 9999", OSSENSOR_SPOOL_DIR=str(spool),
                     OSSENSOR_BATCH_MAX_KB="128", OSSENSOR_BATCH_MAX_AGE_MS="100", OSSENSOR_INFLIGHT_MB="1",
                     OSSENSOR_QUEUE_MB="8", OSSENSOR_STATS_INTERVAL="1")
    sensor = start_sensor(topo, env)
    n, rate = 30_000, 5_000
    sender = start_sender(topo, 0, n, rate=rate)
    time.sleep(2.5)
    vs.stop()  # SIGTERM while batches are on their way through the 100 ms link
    time.sleep(3)
    vs = start_vsensor(topo, out, port=vport)[0]
    sender.p.wait(30)
    wait_stat(sensor, "captured", n, timeout=20)
    wait_stat(sensor, "acked", n, timeout=60)
    assert sensor.stop() == 0
    fin = stats(sensor, final=True)
    assert fin["kernel_drops"] == "0" and fin["queue_drops"] == "0" and fin["spool_drops"] == "0", fin
    idx = stored_indices(out)
    assert len(idx) == len(set(idx)), "the vSensor stored a packet twice"
    count, digest = payload_digest(out)
    assert count == n and digest == expected_digest(0, n)
    assert not list(spool.glob("*.osb")), "spool not emptied after acknowledgement"
    assert "cannot send to vSensor" in sensor.output and "reachable again after" in sensor.output


def test_replay_guard_takes_seqs_in_any_order_and_refuses_repeats_after_restart(tmp_path):
    """The vSensor's bookkeeping: gaps and out-of-order seqs are accepted, a repeat is refused (409),
    also after a restart (re-seeded from batches.jsonl)."""
    import http.client
    import ssl

    from ossensor import pcapng

    out = tmp_path / "vs"
    body = pcapng.shb() + pcapng.idb("eth0", 1, 65535) + pcapng.epb(0, 1_700_000_000 * 10**9, capfiles.eth_udp(1))

    def post(port, seq):
        conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=10,
                                           context=ssl.create_default_context(cafile=str(out / "ca.pem")))
        headers = protocol.sign(KEY.encode(), sensor="far", boot="b" * 16, seq=seq, timestamp=int(time.time()),
                                body=body)
        conn.request("POST", protocol.PATH_BATCHES, body=body, headers=headers)
        status = conn.getresponse().status
        conn.close()
        return status

    with loopback_vsensor(out) as (_, port):
        assert [post(port, s) for s in (5, 2, 9, 3)] == [200, 200, 200, 200]
        assert [post(port, s) for s in (2, 9)] == [409, 409]
    with loopback_vsensor(out) as (_, port):
        assert [post(port, s) for s in (3, 5)] == [409, 409]
        assert [post(port, s) for s in (4, 1, 100)] == [200, 200, 200]
