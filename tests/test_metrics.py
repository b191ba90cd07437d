"""Metrics and probes (issue 8): scraped over real HTTP from a running sensor in a namespace."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import types

import pytest

from support import ROOT, Topology, free_port, send_udp, sensor_env, start_sensor, start_vsensor

pytestmark = pytest.mark.timeout(90)

GET = """
import json, sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        print(json.dumps([r.status, r.read().decode()]))
except urllib.error.HTTPError as e:
    print(json.dumps([e.code, e.read().decode()]))
"""


@pytest.fixture
def topo():
    with Topology() as t:
        yield t


def http_get(topo: Topology, port: int, path: str) -> tuple[int, str]:
    out = topo.run_in(topo.cap, GET.replace("sys.argv[1]", repr(f"http://127.0.0.1:{port}{path}")))
    status, body = json.loads(out)
    return status, body


def metric(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    rx = re.compile(rf"^{re.escape(name)}(\{{{re.escape(want)}\}})?\s+(\S+)$" if want
                    else rf"^{re.escape(name)}\s+(\S+)$", re.M)
    m = rx.search(text)
    if not m:
        return None
    return float(m.group(m.lastindex))


def wait_metric(topo, port, name, value, timeout=20.0, **labels) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        status, text = http_get(topo, port, "/metrics")
        if status == 200 and metric(text, name, **labels) == value:
            return text
        time.sleep(0.3)
    raise AssertionError(f"{name}{labels} never reached {value}:\n{text}")


def wait_probe(topo, port, path, status, timeout=20.0, starts: str = "") -> str:
    deadline = time.monotonic() + timeout
    got = None
    while time.monotonic() < deadline:
        got = http_get(topo, port, path)
        if got[0] == status and got[1].startswith(starts):
            return got[1]
        time.sleep(0.3)
    raise AssertionError(f"{path} never answered {status}; last: {got}")


def test_metrics_match_the_accounting(topo, tmp_path):
    vs, port = start_vsensor(topo, tmp_path / "vs")
    mport = free_port()
    env = sensor_env(topo, tmp_path, port, BPF="udp port 9999", OSSENSOR_METRICS_PORT=str(mport),
                     OSSENSOR_METRICS_ADDR="127.0.0.1", OSSENSOR_DEBUG="1")
    sensor = start_sensor(topo, env)
    sensor.wait_for(r"L0 metrics and probes on http://127\.0\.0\.1:%d/" % mport)
    n, size = 300, 100
    send_udp(topo, n, size=size)
    text = wait_metric(topo, mport, "ossensor_acked_packets_total", n)
    frame = 14 + 20 + 8 + size
    assert metric(text, "ossensor_captured_packets_total") == n
    assert metric(text, "ossensor_captured_bytes_total") == n * frame
    assert metric(text, "ossensor_interface_captured_packets_total", interface=topo.cap_if) == n
    assert metric(text, "ossensor_interface_captured_bytes_total", interface=topo.cap_if) == n * frame
    for stage in ("captured", "sent", "acked"):
        assert metric(text, "ossensor_interface_stage_packets_total", interface=topo.cap_if, stage=stage) == n
    assert metric(text, "ossensor_interface_stage_packets_total", interface=topo.cap_if, stage="drop_queue") == 0
    for stage in ("kernel_ring", "queue", "refused", "shutdown"):
        assert metric(text, "ossensor_dropped_packets_total", stage=stage) == 0, stage
    assert metric(text, "ossensor_in_flight_packets") == 0
    assert metric(text, "ossensor_queue_batches") == 0
    assert metric(text, "ossensor_queue_capacity_bytes") == 64 << 20  # OSSENSOR_QUEUE_MB default
    assert metric(text, "ossensor_ring_fill_ratio") == 0  # everything read: nothing waits in the ring
    assert metric(text, "ossensor_reader_waits_total") == 0  # no batch ever waited to be sent
    assert metric(text, "ossensor_log_lines_dropped_total") == 0  # the log output kept up
    assert metric(text, "ossensor_vsensor_requests_total", outcome="acked", status="200") >= 1
    assert metric(text, "ossensor_vsensor_last_rtt_seconds") > 0
    assert metric(text, "ossensor_vsensor_rtt_seconds_count") >= 1
    assert metric(text, "ossensor_live") == 1
    # the same numbers as the sensor's own accounting line
    sensor.wait_for(rf" stats captured={n} .*acked={n} .* ring_fill_pct=0 reader_waits=0 ")
    sensor.wait_for(rf"L1 rate interface={topo.cap_if} packets_per_s=")
    assert sensor.stop() == 0
    final = [l for l in sensor.lines if "final stats" in l][-1]
    assert f"captured={n} " in final and f"acked={n} " in final
    assert "test-key" not in text


def test_probes_flip_with_the_vsensor(topo, tmp_path):
    port = free_port()
    mport = free_port()
    # the vSensor's CA must exist before the sensor starts: create it, then stop that vSensor
    vs, _ = start_vsensor(topo, tmp_path / "vs", port=port)
    vs.stop()
    env = sensor_env(topo, tmp_path, port, BPF="udp port 9999", OSSENSOR_METRICS_PORT=str(mport),
                     OSSENSOR_METRICS_ADDR="127.0.0.1", OSSENSOR_READY_ACK_SECS="3", OSSENSOR_DEBUG="2")
    sensor = start_sensor(topo, env)
    wait_probe(topo, mport, "/healthz", 200, starts="ok: capture loop alive")
    body = wait_probe(topo, mport, "/readyz", 503)
    assert "not acknowledged anything yet" in body and "cannot connect" in body, body
    sensor.wait_for(r"L2 hello -> - retry: cannot connect")
    sensor.wait_for(r"L0 readiness: not ready: ")
    # the vSensor comes up: the keep-alive hello makes the sensor ready
    vs, _ = start_vsensor(topo, tmp_path / "vs", port=port)
    body = wait_probe(topo, mport, "/readyz", 200, timeout=15)
    assert body.startswith("ready: capturing; vSensor acknowledged")
    sensor.wait_for(r"L2 hello -> 200 acked")
    sensor.wait_for(r"L0 readiness: ready: ")
    status, text = http_get(topo, mport, "/metrics")
    assert metric(text, "ossensor_ready") == 1
    # it goes away: unready within the bound (3 s) plus one keep-alive turn
    t0 = time.monotonic()
    vs.stop()
    body = wait_probe(topo, mport, "/readyz", 503, timeout=15)
    assert "no acknowledgment from the vSensor for" in body and "OSSENSOR_READY_ACK_SECS=3" in body, body
    assert time.monotonic() - t0 < 10
    assert http_get(topo, mport, "/healthz")[0] == 200  # alive all along: only readiness flips
    assert http_get(topo, mport, "/nope")[0] == 404
    assert sensor.stop() == 0


def _fake_sensor():
    from ossensor.ship.accounting import Accounting

    return types.SimpleNamespace(stop=threading.Event(), capture=None, acct=Accounting(),
                                 s=types.SimpleNamespace(sensor_name="t"), boot="b")


def test_liveness_flips_when_the_capture_loop_stops_turning():
    # A stuck reader cannot be produced on demand in a real process without stopping the HTTP server
    # with it (SIGSTOP stops every thread), so the liveness rule is checked on its inputs.
    from prometheus_client import CollectorRegistry

    from ossensor.ops import metrics

    sensor = _fake_sensor()
    h = metrics.Health(sensor, 60.0, CollectorRegistry())
    assert h.liveness()[0] and "starting" in h.liveness()[1]
    assert h.readiness() == (False, "not capturing yet (starting)")
    sensor.capture = types.SimpleNamespace(heartbeat=time.monotonic())
    assert h.liveness()[0]
    h.observe(types.SimpleNamespace(kind="acked", status=200, reason="ok", rtt=0.01))
    assert h.readiness()[0]
    sensor.capture.heartbeat = time.monotonic() - metrics.LIVE_STALE_S - 1
    live, why = h.liveness()
    assert not live and "capture loop stuck or ended" in why
    assert not h.readiness()[0]
    sensor.capture.heartbeat = time.monotonic()
    sensor.stop.set()
    assert h.readiness() == (False, "stopping")


def test_antigena_counters_are_exported_when_present():
    from prometheus_client import CollectorRegistry, generate_latest

    from ossensor.ops import metrics

    sensor = _fake_sensor()
    sensor.antigena = types.SimpleNamespace(counters=lambda: {"received": 3, "enforced": 2, "note": "x",
                                                              "active": 1})
    reg = CollectorRegistry(auto_describe=False)
    h = metrics.Health(sensor, 60.0, reg)
    reg.register(metrics.Collector(sensor, h))
    text = generate_latest(reg).decode()
    assert metric(text, "ossensor_antigena_events_total", event="received") == 3
    assert metric(text, "ossensor_antigena_events_total", event="enforced") == 2
    assert "note" not in text
    assert metric(text, "ossensor_antigena_active") == 1
    assert metric(text, "ossensor_antigena_events_total", event="active") is None


@pytest.mark.parametrize("var,value,reason", [
    ("OSSENSOR_METRICS_PORT", "http", "must be an integer 1-65535"),
    ("OSSENSOR_METRICS_ADDR", "localhost:9", "must be an IP address"),
    ("OSSENSOR_LOG_FORMAT", "xml", "must be plain or json"),
    ("OSSENSOR_READY_ACK_SECS", "0", "must be a number of seconds"),
])
def test_bad_observability_settings_are_one_line(var, value, reason, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), VSENSOR_HOSTNAME="127.0.0.1", VSENSOR_HMAC_KEY="k" * 16,
               OSSENSOR_CONFIG_PATH=str(tmp_path / "c.cfg"))
    env[var] = value
    r = subprocess.run([sys.executable, "-m", "ossensor", "run"], env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()] and r.stderr.startswith(f"ossensor: {var}: ")
    assert reason in r.stderr and "Traceback" not in r.stderr
