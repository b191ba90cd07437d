"""The vSensor link under faults: real sensor, real reference vSensor over real TLS, in namespaces.

Outage with and without a spool, SIGKILL of either end, a misbehaving peer (slow, 500, dropped
connections, garbage), an HTTP CONNECT proxy (tinyproxy), mutual TLS, SIGTERM under load.
"""

from __future__ import annotations

import json
import shutil
import signal
import time

import pytest

from linkfault_util import (FAKE_VSENSOR, expected_digest, fake_store_packets, make_ca, make_leaf, payload_digest, run_cli,
                            start_fake_vsensor, start_sender, stats, stored_indices, vm_kib, wait_stat)
from support import KEY, Topology, send_udp, sensor_env, start_sensor, start_vsensor

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def topo():
    with Topology() as t:
        yield t


def _final(sensor) -> dict[str, str]:
    st = stats(sensor, final=True)
    assert st, sensor.output[-3000:]
    return st


def _send_until(topo, sensor, pattern: str, timeout: float = 25):
    """A few packets each second until `pattern` shows in the sensor's log (the ring may start a
    moment after "capturing on" is logged on a loaded machine)."""
    deadline = time.monotonic() + timeout
    while True:
        send_udp(topo, 5)
        try:
            return sensor.wait_for(pattern, timeout=1)
        except AssertionError:
            if time.monotonic() > deadline:
                raise


def _restart_vsensor(topo, out, port, extra=None):
    return start_vsensor(topo, out, port=port, extra=extra)[0]


# ---------------------------------------------------------------------------- SIGTERM under load
def test_sigterm_under_load_flushes_everything_zstd(topo, tmp_path):
    vs, port = start_vsensor(topo, tmp_path / "vs")
    env = sensor_env(topo, tmp_path, port, BPF="udp port 9999", OSSENSOR_COMPRESSION="zstd",
                     OSSENSOR_SHUTDOWN_TIMEOUT="5", OSSENSOR_BATCH_MAX_AGE_MS="500")
    sensor = start_sensor(topo, env)
    sender = start_sender(topo, 0, 40000, rate=20000)
    time.sleep(1.2)  # mid-stream
    t0 = time.monotonic()
    sensor.signal(signal.SIGTERM)
    assert sensor.p.wait(10) == 0, sensor.output[-3000:]
    took = time.monotonic() - t0
    sender.p.wait(10)
    st = _final(sensor)
    captured = int(st["captured"])
    assert captured > 1000
    # everything captured before the signal reached the vSensor within the timeout
    assert int(st["acked"]) == captured, st
    assert st["shutdown_drops"] == "0" and st["queue_drops"] == "0", st
    assert took < 5 + 3, took
    count, _ = payload_digest(tmp_path / "vs")
    assert count == captured
    assert "zstd" in sensor.output  # level 2 shows the encoding of each send
    sent_bytes = int(st["sent"])
    assert sent_bytes == captured  # sent counts packets; each batch went once


# ---------------------------------------------------------------------------- misbehaving peer
def test_misbehaving_vsensor_slow_500_drop_garbage(topo, tmp_path):
    ca_path, ca, ca_key = make_ca(tmp_path / "pki", "fakeca")
    cert, key = make_leaf(tmp_path / "pki", "fake", ca, ca_key, ["127.0.0.1"])
    port = 8443
    plan = ["500", "503", "drop", "garbage", "slow", "500", "drop", "ok"]
    fake = start_fake_vsensor(topo, cert, key, port, tmp_path / "fake", plan)
    env = sensor_env(topo, tmp_path, port, BPF="udp port 9999", OSSENSOR_TLS_CA_FILE=str(ca_path),
                     OSSENSOR_QUEUE_MB="2", OSSENSOR_BATCH_MAX_KB="1024", OSSENSOR_BATCH_MAX_AGE_MS="200")
    sensor = start_sensor(topo, env)
    sender = start_sender(topo, 0, 3000, rate=500)
    sender.p.wait(20)
    wait_stat(sensor, "acked", 3000, timeout=45)
    assert sensor.stop() == 0
    st = _final(sensor)
    assert st["acked"] == st["captured"] == "3000", st
    assert sorted(fake_store_packets(tmp_path / "fake")) == list(range(3000))
    out = sensor.output
    assert "internal error (test)" in out            # the peer's reason is shown
    assert "busy (test)" in out
    assert "retrying in" in out and "L0 ERROR cannot send to vSensor" in out
    assert "reachable again after" in out
    assert "Traceback" not in out
    assert KEY not in out


def test_slow_vsensor_acknowledging_after_shutdown_counts_the_batch_once(tmp_path):
    """The real shipper against the misbehaving peer ("slow": answers 200 after 3 s), without
    namespaces: the send outlives the shutdown timeout, finish() counts the batch as a shutdown
    drop, and the late acknowledgement is not counted again (acked + dropped <= captured)."""
    import socket
    import subprocess
    import sys
    from types import SimpleNamespace

    from ossensor.ops import log as L
    from ossensor.ship.accounting import Accounting
    from ossensor.ship.batch import Batch
    from ossensor.ship.client import Shipper
    from ossensor.ship.pipeline import Pipeline

    ca_path, ca, ca_key = make_ca(tmp_path / "pki", "fakeca")
    cert, key = make_leaf(tmp_path / "pki", "fake", ca, ca_key, ["127.0.0.1"])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "fake").mkdir()
    fake = subprocess.Popen([sys.executable, "-c", FAKE_VSENSOR, str(cert), str(key), str(port),
                             str(tmp_path / "fake"), "slow"], stdout=subprocess.PIPE, text=True)
    try:
        assert fake.stdout.readline().strip() == "listening"
        boot = "0123456789abcdef"
        client = Shipper(host="127.0.0.1", port=port, key=KEY.encode(), sensor="s1", boot=boot,
                         ca_file=str(ca_path), connect_timeout=3, read_timeout=10)
        acct = Accounting()
        settings = SimpleNamespace(queue_mb=8, spool_dir=None, compression="none", sensor_name="s1")
        pipe = Pipeline(settings, L.Log(1, stream=open(tmp_path / "log", "w")), acct, client, boot)
        acct.add_batch(7, 700, {"eth0": (7, 700)})
        assert pipe.enqueue(Batch(1, b"x" * 700, 7, 700, 1, 2, 0.0, per_if={"eth0": (7, 700)}))
        (thread,) = pipe.start()  # no OSSENSOR_INFLIGHT_MB: one sender
        assert fake.stdout.readline().split()[:3] == ["request", "0", "slow"]
        t0 = time.monotonic()
        res = pipe.finish(0.3)  # OSSENSOR_SHUTDOWN_TIMEOUT: shorter than the peer's delay
        assert time.monotonic() - t0 < 2 and (res["lost_batches"], res["lost_packets"]) == (1, 7), res
        thread.join(8)  # the peer answers 200 meanwhile
        assert not thread.is_alive()
        assert list((tmp_path / "fake").glob("*.pcapng")), "the slow peer did not store the batch"
        st = acct.snapshot()
        assert st["acked"] == 0 and st["dropped"]["shutdown"] == 7 and acct.in_flight() == 0, st
        assert st["captured"] == st["acked"] + sum(st["dropped"].values())
    finally:
        fake.kill()
        fake.wait()


# ---------------------------------------------------------------------------- proxy
def _tinyproxy(topo, tmp_path, vport):
    if not shutil.which("tinyproxy"):
        pytest.skip("tinyproxy not installed (scripts/setup.sh installs it)")
    pport = 3128
    log = tmp_path / "tinyproxy.log"
    conf = tmp_path / "tinyproxy.conf"
    conf.write_text(f"Port {pport}\nListen 127.0.0.1\nTimeout 60\nMaxClients 20\nLogFile \"{log}\"\n"
                    f"LogLevel Connect\nAllow 127.0.0.1\nConnectPort {vport}\n")
    log.touch()
    log.chmod(0o666)
    tp = topo.spawn(["tinyproxy", "-d", "-c", str(conf)], netns=topo.cap)
    topo.run_in(topo.cap, f"""
import socket, time
deadline = time.monotonic() + 10
while True:
    try:
        socket.create_connection(("127.0.0.1", {pport}), timeout=1).close()
        break
    except OSError:
        assert time.monotonic() < deadline, "tinyproxy is not listening"
        time.sleep(0.1)
""")
    return pport, log


def test_https_proxy_connect_and_no_proxy_bypass(topo, tmp_path):
    vs, port = start_vsensor(topo, tmp_path / "vs")
    pport, plog = _tinyproxy(topo, tmp_path, port)
    env = sensor_env(topo, tmp_path, port, BPF="udp port 9999", HTTPS_PROXY=f"http://127.0.0.1:{pport}")
    sensor = start_sensor(topo, env)
    sensor.wait_for(rf"shipping to .*via proxy http://127\.0\.0\.1:{pport} \(HTTPS_PROXY\)")
    send_udp(topo, 100)
    wait_stat(sensor, "acked", 100, timeout=20)
    assert sensor.stop() == 0
    assert f"CONNECT 127.0.0.1:{port}" in plog.read_text() or "CONNECT" in plog.read_text(), plog.read_text()
    connects = plog.read_text().count("CONNECT")

    # NO_PROXY (lower-case form) names the vSensor: the proxy is not used
    env2 = dict(env, no_proxy="localhost,127.0.0.1", OSSENSOR_CONFIG_PATH=str(tmp_path / "c2.cfg"))
    sensor2 = start_sensor(topo, env2)
    sensor2.wait_for(r"shipping to .*, direct\)")
    send_udp(topo, 50)
    wait_stat(sensor2, "acked", 50, timeout=20)
    assert sensor2.stop() == 0
    assert plog.read_text().count("CONNECT") == connects
    assert len(stored_indices(tmp_path / "vs")) == 150


@pytest.mark.parametrize("value", ["127.0.0.1:3128", "proxy.example:3128", "socks5://127.0.0.1:1080"])
def test_proxy_without_http_scheme_is_a_one_line_error(tmp_path, value):
    r = run_cli({"VSENSOR_HOSTNAME": "127.0.0.1", "VSENSOR_HMAC_KEY": KEY, "HTTPS_PROXY": value,
                 "OSSENSOR_CONFIG_PATH": str(tmp_path / "c.cfg")})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr
    assert f"HTTPS_PROXY: {value!r} is not an http:// proxy URL" in r.stdout + r.stderr


# ---------------------------------------------------------------------------- mutual TLS
def test_mtls_accepted_with_client_cert_refused_without_and_wrong_ca(topo, tmp_path):
    pki = tmp_path / "pki"
    client_ca_path, client_ca, client_ca_key = make_ca(pki, "clientca")
    ccert, ckey = make_leaf(pki, "sensor-client", client_ca, client_ca_key, ["sensor-1"], client=True)
    other_ca_path, other_ca, other_key = make_ca(pki, "otherca")
    rcert, rkey = make_leaf(pki, "rogue-client", other_ca, other_key, ["rogue"], client=True)
    vs, port = start_vsensor(topo, tmp_path / "vs", extra=["--client-ca", str(client_ca_path)])

    # right client certificate: accepted
    env = sensor_env(topo, tmp_path, port, BPF="udp port 9999", OSSENSOR_TLS_CERT_FILE=str(ccert),
                     OSSENSOR_TLS_KEY_FILE=str(ckey))
    ok = start_sensor(topo, env)
    send_udp(topo, 30)
    wait_stat(ok, "acked", 30, timeout=20)
    assert ok.stop() == 0
    assert "stopping (SIGTERM received): flushing the last batch" in ok.output  # the log names the signal

    # no client certificate: refused at the TLS layer, said so at level 0
    env_none = sensor_env(topo, tmp_path, port, BPF="udp port 9999", OSSENSOR_SHUTDOWN_TIMEOUT="1")
    none = start_sensor(topo, env_none)
    _send_until(topo, none, r"L0 ERROR cannot send to vSensor .*TLS failure: .*client certificate")
    assert none.stop() == 0

    # a client certificate from a CA the vSensor does not trust: refused
    env_rogue = dict(env, OSSENSOR_TLS_CERT_FILE=str(rcert), OSSENSOR_TLS_KEY_FILE=str(rkey),
                     OSSENSOR_SHUTDOWN_TIMEOUT="1")
    rogue = start_sensor(topo, env_rogue)
    _send_until(topo, rogue, r"L0 ERROR cannot send to vSensor .*TLS failure: .*(client certificate|CA)")
    assert rogue.stop() == 0
    st = _final(rogue)
    assert st["acked"] == "0" and int(st["shutdown_drops"]) == int(st["captured"]) > 0, st

    # the sensor trusts the wrong CA for the vSensor: unknown CA, said so
    env_wrongca = dict(env, OSSENSOR_TLS_CA_FILE=str(other_ca_path), OSSENSOR_SHUTDOWN_TIMEOUT="1")
    wrong = start_sensor(topo, env_wrongca)
    _send_until(topo, wrong, r"L0 ERROR cannot send to vSensor .*TLS failure: .*unknown CA.*OSSENSOR_TLS_CA_FILE")
    assert wrong.stop() == 0
    assert len(stored_indices(tmp_path / "vs")) == 30


def test_tls_failures_explained_expired_and_name_mismatch(topo, tmp_path):
    """Shipper against a TLS peer with an expired / wrongly named certificate: one clear reason."""
    ca_path, ca, ca_key = make_ca(tmp_path / "pki", "testca")
    cases = {"expired": make_leaf(tmp_path / "pki", "expired", ca, ca_key, ["127.0.0.1"], expired=True),
             "mismatch": make_leaf(tmp_path / "pki", "other", ca, ca_key, ["vsensor.other.example"])}
    code = r"""
import sys
from ossensor.ship.client import Shipper
sh = Shipper(host="127.0.0.1", port=int(sys.argv[1]), key=b"k", sensor="s", boot="0"*16, ca_file=sys.argv[2],
             connect_timeout=3, read_timeout=3)
print(sh.send(1, b"").reason)
"""
    for i, (what, (cert, key)) in enumerate(cases.items()):
        port = 8500 + i
        start_fake_vsensor(topo, cert, key, port, tmp_path / f"f{i}", ["ok"])
        out = topo.run_in(topo.cap, code.replace("sys.argv[1]", str(port)).replace("sys.argv[2]", repr(str(ca_path))))
        if what == "expired":
            assert "TLS failure: the vSensor's certificate has expired" in out, out
        else:
            assert "TLS failure: the vSensor's certificate does not name VSENSOR_HOSTNAME (name mismatch)" in out, out


# ---------------------------------------------------------------------------- SIGKILL of either end
@pytest.mark.timeout(120)
def test_sigkill_vsensor_and_sensor_with_spool_no_duplicates_no_silent_loss(topo, tmp_path):
    out, spool = tmp_path / "vs", tmp_path / "spool"
    vs, port = start_vsensor(topo, out)
    env = sensor_env(topo, tmp_path, port, BPF="udp port 9999", OSSENSOR_SPOOL_DIR=str(spool),
                     OSSENSOR_SPOOL_MB="64", OSSENSOR_QUEUE_MB="8")  # the least for 4 MiB batches
    sensor = start_sensor(topo, env)
    # phase A: the vSensor is SIGKILLed mid-stream
    sender = start_sender(topo, 0, 6000, rate=3000)
    time.sleep(0.8)
    vs.kill()
    sender.p.wait(20)
    st = wait_stat(sensor, "captured", 6000, timeout=15)
    time.sleep(0.5)
    st = stats(sensor)
    assert int(st["spooled"]) == 6000, st  # every batch is on disk until acknowledged
    # the sensor is SIGKILLed while batches wait for the vSensor
    sensor.kill()
    files = sorted(spool.glob("*.osb"))
    assert files, "nothing in the spool"
    # a torn file (as after a crash mid-write) and a leftover temporary file
    data = files[-1].read_bytes()
    torn = spool / ("f" * 16 + "-000000000001.osb")
    torn.write_bytes(data[: len(data) // 2])
    (spool / ("e" * 16 + "-000000000002.osb.tmp")).write_bytes(data[:100])
    torn_packets = json.loads(data[12:12 + int.from_bytes(data[8:12], "little")])["packets"]

    vs = _restart_vsensor(topo, out, port)
    sensor2 = start_sensor(topo, dict(env, OSSENSOR_CONFIG_PATH=str(tmp_path / "c2.cfg")))
    sensor2.wait_for(r"from an earlier run to send first, 2 torn files skipped")
    assert f"({torn_packets} packets lost)" in sensor2.output
    # phase B after the restart
    start_sender(topo, 6000, 1000, rate=2000).p.wait(20)
    wait_stat(sensor2, "captured", 1000, timeout=15)
    st2 = stats(sensor2)
    recovered = int(st2["recovered"])
    wait_stat(sensor2, "acked", 1000 + recovered - torn_packets, timeout=30)
    assert sensor2.stop() == 0
    fin = _final(sensor2)
    assert int(fin["spool_drops"]) == torn_packets
    assert int(fin["acked"]) + int(fin["spool_drops"]) == int(fin["captured"]) + int(fin["recovered"]), fin
    assert not list(spool.glob("*.osb")), "spool not emptied after acknowledgement"

    idx = stored_indices(out)
    assert len(idx) == len(set(idx)), "the vSensor accepted a duplicate"
    assert set(range(6000, 7000)) <= set(idx)
    # Phase A: whatever was acknowledged before the kill plus what the spool held arrives; nothing else
    # can be missing: the spool held every captured batch (write-ahead).
    assert set(range(6000)) <= set(idx), sorted(set(range(6000)) - set(idx))[:20]


# ---------------------------------------------------------------------------- outages
@pytest.mark.timeout(150)
def test_vsensor_down_30s_with_spool_every_packet_arrives(topo, tmp_path):
    out, spool = tmp_path / "vs", tmp_path / "spool"
    vs, port = start_vsensor(topo, out)
    env = sensor_env(topo, tmp_path, port, BPF="udp port 9999", OSSENSOR_SPOOL_DIR=str(spool),
                     OSSENSOR_SPOOL_MB="512", OSSENSOR_QUEUE_MB="8", OSSENSOR_RING_MB="32",
                     OSSENSOR_DEBUG="1", OSSENSOR_BATCH_MAX_AGE_MS="500", OSSENSOR_STATS_INTERVAL="2")
    sensor = start_sensor(topo, env)
    n, rate = 20000 * 34, 20000
    sender = start_sender(topo, 0, n, rate=rate)
    time.sleep(2)
    vs.stop()
    time.sleep(30)
    vs = _restart_vsensor(topo, out, port)
    t_back = time.monotonic()
    sender.p.wait(40)
    assert "sent" in sender.output, sender.output
    wait_stat(sensor, "captured", n, timeout=20)
    peak_spool = max(float(l.split("spool_mb=")[1].split()[0]) for l in sensor.lines if "spool_mb=" in l)
    wait_stat(sensor, "acked", n, timeout=60)
    print(f"\n[figures] spool: {n} packets at {rate}/s, vSensor down 30 s: peak spool {peak_spool:.0f} MiB, "
          f"all acknowledged {time.monotonic() - t_back:.1f} s after the vSensor returned")
    assert sensor.stop() == 0
    fin = _final(sensor)
    assert fin["kernel_drops"] == "0" and fin["queue_drops"] == "0" and fin["spool_drops"] == "0", fin
    assert fin["reader_waits"] == "0", fin  # with a spool, cut batches go to disk: packets never wait in the ring
    count, digest = payload_digest(out)
    assert count == n
    assert digest == expected_digest(0, n)
    assert "L0 ERROR cannot send to vSensor" in sensor.output and "reachable again after" in sensor.output


@pytest.mark.timeout(120)
def test_vsensor_down_without_spool_memory_bounded_drops_exact(topo, tmp_path):
    out = tmp_path / "vs"
    vs, port = start_vsensor(topo, out)
    queue_mb = 16
    env = sensor_env(topo, tmp_path, port, BPF="udp port 9999", OSSENSOR_QUEUE_MB=str(queue_mb),
                     OSSENSOR_RING_MB="32", OSSENSOR_DEBUG="1", OSSENSOR_BATCH_MAX_AGE_MS="500",
                     OSSENSOR_STATS_INTERVAL="2",
                     OSSENSOR_COMPRESSION="none")  # the test frames compress ~100x: the queue would hold all
    sensor = start_sensor(topo, env)
    base_kib = vm_kib(sensor.p.pid, "VmRSS")
    size, rate, seconds = 1000, 20000, 12
    n = rate * seconds
    vs.stop()  # down from the start: ~240 MB arrive while the queue holds 16 MiB
    sender = start_sender(topo, 0, n, rate=rate, size=size)
    sender.p.wait(40)
    wait_stat(sensor, "captured", n - 100, timeout=20)
    hwm_kib = vm_kib(sensor.p.pid, "VmHWM")
    vs = _restart_vsensor(topo, out, port)
    time.sleep(1)
    st = stats(sensor)
    wait_stat(sensor, "acked", int(st["captured"]) - int(st["queue_drops"]), timeout=30)
    # a later batch tells the vSensor what was dropped, in its ISBs
    start_sender(topo, n, 50, rate=1000, size=size).p.wait(20)
    wait_stat(sensor, "acked", int(st["captured"]) - int(st["queue_drops"]) + 50, timeout=20)
    assert sensor.stop() == 0
    fin = _final(sensor)
    captured, acked, qd, kd = (int(fin[k]) for k in ("captured", "acked", "queue_drops", "kernel_drops"))
    assert qd > n // 2, fin  # most of it could not be kept
    assert int(fin["reader_waits"]) > 0, fin  # without a spool, packets waited in the ring first
    stored = len(stored_indices(out))
    assert stored == acked
    assert captured == acked + qd, fin                       # exact: nothing else lost
    assert captured + kd == n + 50, fin                      # every packet sent was seen by the kernel
    last = [json.loads(l) for l in (out / "batches.jsonl").read_text().splitlines()][-1]
    isb = last["stats"][0]
    assert isb["ifdrop"] == qd and isb["usrdeliv"] == captured, isb
    # memory: start + ring (touched as it fills) + queue + two batches + slack; ~240 MB would be unbounded
    grown_mb = (hwm_kib - base_kib) / 1024
    print(f"\n[figures] no spool: {n} packets of {size} B at {rate}/s into a stopped vSensor: RSS grew "
          f"{grown_mb:.1f} MiB (queue bound {queue_mb} MiB); queue_drops={qd} acked={acked} kernel_drops={kd}")
    assert grown_mb < 32 + queue_mb + 2 * 4 + 40, f"RSS grew {grown_mb:.0f} MiB"
    assert "queue full" in sensor.output
