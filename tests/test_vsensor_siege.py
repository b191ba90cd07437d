"""The reference vSensor under siege, over real TLS on loopback (tests/siege.py makes the load):

* 1,000 idle TLS connections, 300 trickling one request-header line every 3 s and 300 bare TCP connects
  that never send a ClientHello, all reopened as soon as the vSensor closes them, while a real sensor's
  `ossensor replay` ships 2,000 packets: every packet stored within 30 s, and no trickler or bare
  connection held longer than its deadline (headers 10 s from their first byte, handshake 5 s);
* 2,000 connections open at once, each a sensor sending one small signed batch: every one stored.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import capfiles
from ossensor.vsensor.listener import HANDSHAKE_TIMEOUT_S, HEADER_TIMEOUT_S
from support import KEY, ROOT, Proc, loopback_vsensor, replay_env

pytestmark = pytest.mark.timeout(300)
SIEGE = str(ROOT / "tests" / "siege.py")


def _stored_packets(out: Path) -> int:
    path = out / "batches.jsonl"
    if not path.exists():
        return 0
    return sum(json.loads(line)["packets"] for line in path.read_text().splitlines() if line.strip())


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def _last_report(p: Proc) -> dict:
    for line in reversed(p.lines):
        if line.startswith("{"):
            return json.loads(line)
    return {}


def test_a_sensor_ships_through_a_siege(tmp_path):
    out = tmp_path / "vs"
    cap = tmp_path / "2000.pcap"
    cap.write_bytes(capfiles.pcap([(1_700_000_000 * 10**9 + i * 10**6, f, len(f))
                                   for i, f in enumerate(capfiles.eth_udp(i, 100) for i in range(2000))]))
    with loopback_vsensor(out) as (vs, port):
        hostile = Proc([sys.executable, SIEGE, "hostile", "--port", str(port), "--ca", str(out / "ca.pem"),
                        "--idle", "1000", "--trickle", "300", "--bare", "300", "--every", "3"])
        try:
            deadline = time.monotonic() + 90
            while True:  # the siege is up: (nearly) every hostile connection open at once
                rep = _last_report(hostile)
                if rep.get("idle", 0) >= 950 and rep.get("trickle", 0) >= 250 and rep.get("bare", 0) >= 250:
                    break
                assert time.monotonic() < deadline, f"siege never built up: {rep}\n{hostile.output[-2000:]}"
                time.sleep(0.5)
            time.sleep(HEADER_TIMEOUT_S + 1)  # past the first deadlines: tricklers and bare ones cycling
            rss_mib = _rss_kib(vs.p.pid) / 1024
            t0 = time.monotonic()
            r = subprocess.run([sys.executable, "-m", "ossensor", "replay", str(cap)], capture_output=True,
                               text=True, timeout=60, env=replay_env(out, port, OSSENSOR_DEBUG="1"))
            took = time.monotonic() - t0
            rep = _last_report(hostile)
            print(f"replay took {took:.1f} s during the siege: {rep}; vSensor RSS {rss_mib:.0f} MiB")
        finally:
            hostile.kill()
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        assert _stored_packets(out) == 2000 and took < 30, (took, r.stderr[-2000:])
        # the siege was on all along, and the deadlines held
        assert rep["idle"] >= 900, rep
        assert rep["closed"]["trickle"] >= 250 and rep["held"]["trickle"] <= HEADER_TIMEOUT_S + 4, rep
        assert rep["closed"]["bare"] >= 250 and rep["held"]["bare"] <= HANDSHAKE_TIMEOUT_S + 3, rep
        assert rep["held"]["idle"] > 0 or rep["closed"]["idle"] == 0
        # bounded memory: ~60 KiB per connection (asyncio's own 256 KiB TLS buffers would make it ~500 MiB)
        assert rss_mib < 350, rss_mib
        log = vs.output
        assert "status=408" in log and "tls-error" in log and "Traceback" not in log


def test_two_thousand_sensors_at_once(tmp_path):
    out = tmp_path / "vs"
    with loopback_vsensor(out) as (vs, port):
        r = subprocess.run([sys.executable, SIEGE, "senders", "--port", str(port), "--ca", str(out / "ca.pem"),
                            "--conns", "2000", "--batches", "1", "--kb", "1"], capture_output=True, text=True,
                           timeout=240, env={**os.environ, "VSENSOR_HMAC_KEY": KEY, "PYTHONPATH": str(ROOT)})
        assert r.returncode == 0, r.stderr[-3000:]
        result = json.loads(r.stdout.strip().splitlines()[-1])
        print(result)
        assert result["connected"] == 2000 and result["accepted"] == 2000, result
        entries = [json.loads(line) for line in (out / "batches.jsonl").read_text().splitlines()]
        assert len({e["sensor"] for e in entries}) == 2000 and len(entries) == 2000
        assert "Traceback" not in vs.output
