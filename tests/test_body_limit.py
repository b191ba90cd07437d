"""Batches never exceed the vSensor's body limit, pcapng framing included (ship/body_limit.py).

The limit is protocol.MAX_BODY unless the vSensor's /v1/hello answer or a 413 says less (smaller wins);
a batch larger than the limit is refused as "batch too large for the vSensor (N > M bytes)", counted,
never retried as a connection failure. Real reference vSensor over real TLS on loopback.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import capfiles
from ossensor import pcapng, protocol
from ossensor.ship import body_limit
from ossensor.ship.client import Shipper
from support import KEY, loopback_vsensor, replay_env

pytestmark = pytest.mark.timeout(240)


def test_limit_parsing_and_smaller_wins():
    assert body_limit.announced(b'{"status":"ok","max_body_bytes":1048576,"max_body":9}') == 1048576
    assert body_limit.announced(b'{"status":"ok","max_body":2097152}') == 2097152
    assert body_limit.announced(b'{"max_body_bytes":true}') is None
    assert body_limit.announced(b"not json") is None and body_limit.announced(b"[1]") is None
    assert body_limit.from_reason("body of 5 bytes is larger than the limit of 1048576 bytes") == 1048576
    assert body_limit.from_reason("decoded body larger than 4096 bytes") == 4096
    assert body_limit.from_reason("something else") is None
    seen = []
    lim = body_limit.BodyLimit()
    lim.on_change(seen.append)
    assert lim.value == protocol.MAX_BODY
    assert not lim.learn(protocol.MAX_BODY + 1) and not lim.learn(None)
    assert lim.learn(1 << 20) and lim.value == 1 << 20 and seen == [1 << 20]
    assert not lim.learn(2 << 20) and lim.value == 1 << 20  # never raised again
    assert lim.learn(1) and lim.value == body_limit.MIN_LIMIT


def test_split_epbs_cuts_between_blocks():
    epbs = b"".join(pcapng.epb(0, i, b"x" * (10 + i)) for i in range(50))
    for cap in (1, 60, 100, 333, 10_000):
        parts = body_limit.split_epbs(epbs, cap)
        assert b"".join(bytes(p) for p in parts) == epbs
        for p in parts:
            blocks = list(pcapng.iter_blocks(p))
            assert len(p) <= cap or len(blocks) == 1


def _batches(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "batches.jsonl").read_text().splitlines()]


def _pcap_64b(path: Path, n: int) -> None:
    base = 1_700_000_000 * 10**9
    frames = [capfiles.eth_udp(i, 22) for i in range(256)]  # 64 bytes each
    assert len(frames[0]) == 64
    with open(path, "wb") as fh:
        fh.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        chunk = []
        for i in range(n):
            ts = base + i * 1000
            chunk.append(struct.pack("<IIII", ts // 10**9, (ts % 10**9) // 1000, 64, 64) + frames[i & 255])
            if len(chunk) == 65536:
                fh.write(b"".join(chunk))
                chunk = []
        fh.write(b"".join(chunk))


def test_replay_at_the_documented_maximum_batch_fits_64_mib(tmp_path):
    """The issue's case: OSSENSOR_BATCH_MAX_KB=65536 with 64 B packets made a 67,109,020-byte batch (156 bytes
    over protocol.MAX_BODY), answered 413 and lost. Now every batch fits, framing included, all stored."""
    n = 720_000  # 69 MB of EPBs: more than one 64 MiB batch
    cap = tmp_path / "small.pcap"
    _pcap_64b(cap, n)
    out = tmp_path / "vs"
    with loopback_vsensor(out) as (_, port):
        r = subprocess.run([sys.executable, "-m", "ossensor", "replay", str(cap)], capture_output=True, text=True,
                           timeout=200, env=replay_env(out, port, OSSENSOR_BATCH_MAX_KB="65536", OSSENSOR_QUEUE_MB="256",
                                                 OSSENSOR_INFLIGHT_MB="128"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "too large" not in r.stdout + r.stderr and "HTTP 413" not in r.stdout
    batches = _batches(out)
    assert sum(b["packets"] for b in batches) == n
    assert max(b["bytes"] for b in batches) <= protocol.MAX_BODY, [b["bytes"] for b in batches]
    assert max(b["bytes"] for b in batches) > protocol.MAX_BODY - (1 << 20)  # batches as large as allowed


def test_replay_learns_a_smaller_limit_from_hello(tmp_path):
    """A vSensor that takes 1 MiB (its hello says so): 4 MiB batches are cut at 1 MiB, framing included."""
    n = 40_000  # 3.8 MB of EPBs
    cap = tmp_path / "small.pcap"
    _pcap_64b(cap, n)
    out = tmp_path / "vs"
    with loopback_vsensor(out, extra=["--max-body-mb", "1"]) as (_, port):
        r = subprocess.run([sys.executable, "-m", "ossensor", "replay", str(cap)], capture_output=True, text=True,
                           timeout=120, env=replay_env(out, port, OSSENSOR_BATCH_MAX_KB="4096"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "too large" not in r.stdout + r.stderr
    batches = _batches(out)
    assert sum(b["packets"] for b in batches) == n
    assert max(b["bytes"] for b in batches) <= 1 << 20 and len(batches) >= 4, [b["bytes"] for b in batches]


def test_413_is_reported_as_too_large_not_as_a_tls_failure(tmp_path):
    out = tmp_path / "vs"
    with loopback_vsensor(out, extra=["--max-body-mb", "1"]) as (_, port):
        shipper = Shipper(host="127.0.0.1", port=port, key=KEY.encode(), sensor="s", boot="0123456789abcdef",
                          ca_file=str(out / "ca.pem"))
        try:
            body = pcapng.shb() + pcapng.idb("e", 1, 65535) + pcapng.epb(0, 1, b"z" * ((2 << 20) - 100))
            got = shipper.send(1, body)  # no hello yet: the vSensor answers 413
            assert (got.kind, got.status) == ("refused", 413), got
            assert got.reason == f"batch too large for the vSensor ({len(body)} > {1 << 20} bytes)", got
            assert shipper.limit.value == 1 << 20  # learnt from the 413's reason
            again = shipper.send(2, body)  # known too large: refused without sending
            assert (again.kind, again.status, again.rtt) == ("refused", 413, 0.0) and "too large" in again.reason
            fresh = Shipper(host="127.0.0.1", port=port, key=KEY.encode(), sensor="s", boot="0123456789abcdee",
                            ca_file=str(out / "ca.pem"))
            assert fresh.hello().kind == "acked" and fresh.limit.value == 1 << 20  # learnt from hello
            fresh.close()
        finally:
            shipper.close()


def test_replay_splits_a_section_whose_framing_outgrows_the_room_left(tmp_path):
    """1,000 interfaces: SHB, IDBs and ISBs take ~100 KB, more than the 64 KiB replay leaves under a
    1 MiB limit: such a section goes as several, each within the limit, nothing lost."""
    n_if, n = 1000, 20_000
    parts = [pcapng.shb()] + [pcapng.idb(f"if{i}", 1, 65535) for i in range(n_if)]
    frame = capfiles.eth_udp(1, 22)
    parts += [pcapng.epb(i % n_if, 1_700_000_000 * 10**9 + i, frame) for i in range(n)]
    cap = tmp_path / "many.pcapng"
    cap.write_bytes(b"".join(parts))
    out = tmp_path / "vs"
    with loopback_vsensor(out, extra=["--max-body-mb", "1"]) as (_, port):
        r = subprocess.run([sys.executable, "-m", "ossensor", "replay", str(cap)], capture_output=True, text=True,
                           timeout=120, env=replay_env(out, port, OSSENSOR_BATCH_MAX_KB="4096", OSSENSOR_DEBUG="4"))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "one of several" in r.stdout and "too large" not in r.stdout + r.stderr
    batches = _batches(out)
    assert sum(b["packets"] for b in batches) == n
    assert max(b["bytes"] for b in batches) <= 1 << 20, [b["bytes"] for b in batches]
