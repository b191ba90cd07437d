"""Debug levels 0-5 (SPEC "Debug levels", issue 8): each level's content appears at that level and not
below; the key appears at no level, in the plain or the JSON format. One namespace pair and one
reference vSensor serve every run; each run is one real sensor process on the veth."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from support import KEY, ROOT, Topology, free_port, sensor_env, start_sensor, start_vsensor

pytestmark = pytest.mark.timeout(60)

N = 5
PAYLOAD = b"ossensor-debug-level-known-packet"

SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(%d):
    s.sendto(%r + b"-%%d" %% i, (%r, 9999))
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("levels")
    with Topology() as topo:
        vs, port = start_vsensor(topo, tmp / "vs", port=free_port())
        # an Antigena action for an address nobody uses: every sensor run receives it (level 3 content)
        r = subprocess.run([sys.executable, "-m", "ossensor", "vsensor", "block", "--out", str(tmp / "vs"),
                            "--host", "10.254.254.254", "--id", "lvl", "--expires", "600"],
                           capture_output=True, text=True, timeout=20, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert r.returncode == 0, r.stderr
        yield topo, tmp, port


def run_sensor(site, level: int, **extra: str) -> list[str]:
    """Start at `level`, send N known packets, let a statistics interval pass, stop; the output lines."""
    topo, tmp, port = site
    env = sensor_env(topo, tmp, port, OSSENSOR_DEBUG=str(level), BPF="udp port 9999",
                     OSSENSOR_STATS_INTERVAL="0.5", ANTIGENA_TIME_PERIOD="0.3",
                     OSSENSOR_METRICS_PORT=str(free_port()), OSSENSOR_METRICS_ADDR="127.0.0.1", **extra)
    if extra.get("OSSENSOR_LOG_FORMAT") == "json":
        sensor = _start_json(topo, env)
        sensor.wait_for(r'"event":"metrics"')
    else:
        sensor = start_sensor(topo, env)
        # logged after the ring is bound ("capturing on" comes just before it): no packet can slip past
        sensor.wait_for(r" L0 metrics and probes on ")
    topo.run_in(topo.peer, SENDER % (N, PAYLOAD, topo.cap_ip))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not _acked(sensor.lines, N):
        time.sleep(0.1)
    time.sleep(0.6)  # at least one statistics interval after the acknowledgment
    while level >= 3 and time.monotonic() < deadline and not any("antigena received id=lvl" in l
                                                                  for l in sensor.lines):
        time.sleep(0.1)
    assert sensor.stop() == 0, sensor.output
    return list(sensor.lines)


def _start_json(topo, env):
    p = topo.spawn([__import__("sys").executable, "-m", "ossensor", "run"], netns=topo.cap, env=env)
    p.wait_for(r'"event":"capturing"')
    return p


def _acked(lines: list[str], n: int) -> bool:
    for line in reversed(lines):
        m = re.search(r"\backed=(\d+)", line)
        if m and " stats " in line or (m and '"event":"stats"' in line):
            return int(m.group(1)) >= n
    return False


def levels_of(lines: list[str]) -> set[int]:
    return {int(m.group(1)) for l in lines if (m := re.search(r" ossensor L(\d) ", l))}


def known_hex() -> str:
    return (PAYLOAD + b"-0").hex()


# what each level adds (a regex that must match some line at that level and no line below it)
MARKS = {
    1: [r" L1 stats captured=\d+ ", r" L1 rate interface=\S+ packets_per_s=", r" L1 antigena active=\d+ "],
    2: [r" L2 send seq=\d+ packets=\d+ bytes=\d+( zstd)? -> 200 acked: "],
    3: [r" L3 antigena received id=lvl target=host"],
    4: [r" L4 batch seq=\d+ packets=\d+ bytes=\d+ .*span_ms="],
    5: [r" L5 packet if=\S+ ts=\d+\.\d+ caplen=\d+ len=\d+ hex=[0-9a-f]+$"],
}


def check_common(lines: list[str], level: int) -> str:
    out = "\n".join(lines)
    assert KEY not in out and KEY.encode().hex() not in out
    assert max(levels_of(lines)) <= level, f"a line above level {level}:\n{out}"
    # level 0 always: the start-up summary, errors, the final accounting
    assert re.search(r" L0 ossensor \S+ starting: sensor=\S+ boot=[0-9a-f]+", out)
    assert " L0 config VSENSOR_HMAC_KEY=<redacted>" in out
    assert re.search(r" L0 interface \S+ index=\d+ selected: ", out)
    assert re.search(r" L0 shipping to https://127\.0\.0\.1:\d+ \(TLS verified against \S+ca\.pem", out)
    assert re.search(rf" L0 final stats captured={N} .*acked={N} ", out), out
    for k, marks in MARKS.items():
        for mark in marks:
            found = any(re.search(mark, l) for l in lines)
            assert found == (k <= level), f"level {level}: {mark!r} {'missing' if k <= level else 'present'}\n{out}"
    return out


def test_level_0_startup_summary_only(site):
    lines = run_sensor(site, 0)
    out = check_common(lines, 0)
    assert levels_of(lines) == {0}
    assert re.search(r" L0 kernel filter: \(not \(\(host 127\.0\.0\.1 and tcp port \d+\)\)\) and \(udp port 9999\)",
                     out)
    assert " L0 config OSSENSOR_DEBUG=0" in out


def test_level_1_statistics(site):
    check_common(run_sensor(site, 1), 1)


def test_level_2_each_send_and_the_answer(site):
    lines = run_sensor(site, 2)
    check_common(lines, 2)
    sends = [l for l in lines if " L2 send seq=" in l]
    assert sum(int(re.search(r"packets=(\d+)", l).group(1)) for l in sends if "-> 200 acked" in l) == N
    assert all("rtt_ms=" in l for l in sends)


def test_level_3_antigena_details(site):
    check_common(run_sensor(site, 3), 3)  # the action the vSensor holds, received (and nothing of level 4)


def test_level_4_one_line_per_batch(site):
    lines = run_sensor(site, 4)
    out = check_common(lines, 4)
    batch_lines = [l for l in lines if " L4 batch seq=" in l]
    batches = int(re.search(r" L0 final stats .*\bbatches=(\d+)", out).group(1))
    assert len(batch_lines) == batches >= 1
    assert sum(int(re.search(r"packets=(\d+)", l).group(1)) for l in batch_lines) == N
    assert [int(re.search(r"seq=(\d+)", l).group(1)) for l in batch_lines] == list(range(1, batches + 1))


def test_level_5_every_packet_as_hex(site):
    lines = run_sensor(site, 5)
    check_common(lines, 5)
    packets = [l for l in lines if " L5 packet " in l]
    assert len(packets) == N
    assert known_hex() in packets[0]  # the payload we sent, byte for byte, at the end of the frame
    assert packets[0].endswith(known_hex())


def test_json_format_same_events_no_secret(site):
    lines = run_sensor(site, 5, OSSENSOR_LOG_FORMAT="json")
    out = "\n".join(lines)
    assert KEY not in out and KEY.encode().hex() not in out
    recs = [json.loads(l) for l in lines]  # every line is one JSON object
    assert all({"ts", "level", "msg", "event", "severity"} <= r.keys() for r in recs)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", r["ts"]) for r in recs)
    events = {r["event"] for r in recs}
    assert {"ossensor", "config", "interface", "capturing", "shipping", "stats", "send", "batch",
            "packet", "final", "stopped"} <= events, events
    sends = [r for r in recs if r["event"] == "send" and r["level"] == 2]
    assert sends and all(isinstance(r["seq"], int) and isinstance(r["packets"], int) for r in sends)
    assert sum(r["packets"] for r in sends if "acked" in r["msg"]) == N
    key_row = [r for r in recs if r["event"] == "config" and "VSENSOR_HMAC_KEY" in r["msg"]]
    assert key_row and key_row[0]["VSENSOR_HMAC_KEY"] == "<redacted>"
    pk = [r for r in recs if r["event"] == "packet"]
    assert len(pk) == N and pk[0]["msg"].endswith(known_hex()) and pk[0]["level"] == 5
    stats = [r for r in recs if r["event"] == "stats" and r["level"] == 1]
    assert stats and isinstance(stats[-1]["captured"], int)
