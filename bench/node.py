#!/usr/bin/env python3
"""Node benchmark (issue 19): what duplicate suppression saves and costs on a node's topology.

    sudo python3 bench/node.py [--datagrams 20000] [--size 512] [--repeat 2] [--json F]

Builds the node-like topology of tests/node_topology.py (one module, imported here through
sys.path): a bridge with two pods, a routed pod, an uplink to an "outside" namespace. Runs
`ossensor run` in the node namespace with its default selection (every interface but lo,
NETWORK_DEVICE_ANY=1) and the reference vSensor there on loopback, with OSSENSOR_DEDUP=on and
=off in turn (interleaved when --repeat > 1), while three flows of UDP datagrams cross the node:
pod -> pod over the bridge (2 copies), pod -> outside (3), pod -> routed pod (3).

Per mode: datagrams sent, packets the vSensor stored, pcapng bytes and bytes on the wire it
received (OSSENSOR_COMPRESSION=none: the bytes are the packets), the sensor's CPU seconds (process tree, /proc schedstat). Printed as ratios on/off of
the same run: the machine is shared, absolute numbers are not comparable between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from node_topology import NodeTopology, wait_until  # noqa: E402  (the one copy of the topology)
from capture import cpu_and_rss  # noqa: E402

KEY = "bench-key-0123456789"


def vsensor_totals(out: Path) -> tuple[int, int, int]:
    """(packets, pcapng bytes, bytes on the wire) the vSensor accepted, from its batches.jsonl."""
    path = out / "batches.jsonl"
    p = b = w = 0
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                e = json.loads(line)
                p += e.get("packets", 0)
                b += e.get("bytes", 0)
                w += e.get("wire_bytes", e.get("bytes", 0))
    return p, b, w


def one_run(topo: NodeTopology, tmp: Path, dedup: str, datagrams: int, size: int) -> dict:
    out = tmp / f"vs-{dedup}-{time.monotonic_ns()}"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", VSENSOR_HMAC_KEY=KEY)
    vlog = tmp / "vsensor.log"
    vs = subprocess.Popen(["ip", "netns", "exec", topo.node, sys.executable, "-m", "ossensor", "vsensor",
                           "--listen", "127.0.0.1:0", "--out", str(out)], env=env, stdout=vlog.open("w"),
                          stderr=subprocess.STDOUT, start_new_session=True)
    sensor = None
    try:
        assert wait_until(lambda: "listening on" in vlog.read_text(), 20), vlog.read_text()
        port = re.search(r"listening on https://127\.0\.0\.1:(\d+)", vlog.read_text()).group(1)
        senv = dict(env, VSENSOR_HOSTNAME="127.0.0.1", VSENSOR_PORT=port, OSSENSOR_TLS_CA_FILE=str(out / "ca.pem"),
                    OSSENSOR_CONFIG_PATH=str(tmp / "ossensor.cfg"), OSSENSOR_DEBUG="1", NETWORK_DEVICE_ANY="1",
                    OSSENSOR_STATS_INTERVAL="3600", ANTIGENA_ENABLED="false", OSSENSOR_DEDUP=dedup,
                    OSSENSOR_BATCH_MAX_AGE_MS="200", OSSENSOR_COMPRESSION="none")  # bytes = packets sent
        slog = tmp / f"sensor-{dedup}.log"
        sensor = subprocess.Popen(["ip", "netns", "exec", topo.node, sys.executable, "-m", "ossensor", "run"],
                                  env=senv, stdout=slog.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        assert wait_until(lambda: "capturing on" in slog.read_text(), 30), slog.read_text()
        time.sleep(0.5)
        cpu0, _ = cpu_and_rss(sensor.pid)
        t0 = time.monotonic()
        topo.send_udp(0, topo.pod_ip[1], datagrams, size=size, tag="p2p")
        topo.send_udp(0, topo.outside_ip, datagrams, size=size, tag="out")
        topo.send_udp(0, topo.pod_ip[2], datagrams, size=size, tag="routed")
        elapsed = time.monotonic() - t0
        expect = 3 * datagrams if dedup == "on" else 8 * datagrams
        wait_until(lambda: vsensor_totals(out)[0] >= expect, 60, 0.2)
        cpu1, rss = cpu_and_rss(sensor.pid)
        os.killpg(sensor.pid, signal.SIGTERM)
        sensor.wait(30)
        text = slog.read_text()
        final = [ln for ln in text.splitlines() if "final stats" in ln][-1]
        f = dict(re.findall(r" (\w+)=(\d+)", final))
        packets, pcapng_bytes, wire = vsensor_totals(out)
        return {"dedup": dedup, "datagrams": 3 * datagrams, "size": size, "send_s": round(elapsed, 2),
                "stored_packets": packets, "pcapng_bytes": pcapng_bytes, "wire_bytes": wire,
                "captured": int(f.get("captured", 0)), "duplicates": int(f.get("duplicates", 0)),
                "sensor_cpu_s": round(cpu1 - cpu0, 3), "peak_rss_mib": round(rss / 2**20, 1)}
    finally:
        for p in (sensor, vs):
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(out, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--datagrams", type=int, default=20000, help="datagrams per flow (3 flows)")
    ap.add_argument("--size", type=int, default=512, help="UDP payload bytes")
    ap.add_argument("--repeat", type=int, default=2, help="on/off pairs, interleaved; the least CPU kept per mode")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (namespaces, capture)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="ossensor-node-bench-"))
    best: dict[str, dict] = {}
    try:
        with NodeTopology() as topo:
            for _ in range(args.repeat):
                for mode in ("on", "off"):
                    r = one_run(topo, tmp, mode, args.datagrams, args.size)
                    print(f"  dedup={mode:3} sent={r['datagrams']} stored={r['stored_packets']} "
                          f"duplicates={r['duplicates']} pcapng_bytes={r['pcapng_bytes']} wire_bytes={r['wire_bytes']} "
                          f"cpu={r['sensor_cpu_s']:.3f}s rss={r['peak_rss_mib']} MiB", flush=True)
                    if mode not in best or r["sensor_cpu_s"] < best[mode]["sensor_cpu_s"]:
                        best[mode] = r
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    on, off = best["on"], best["off"]
    print(f"\ndedup on / off (same run, {args.datagrams} datagrams x 3 flows, {args.size} B payloads):")
    print(f"  packets to the vSensor  x{on['stored_packets'] / off['stored_packets']:.3f}")
    print(f"  pcapng bytes            x{on['pcapng_bytes'] / off['pcapng_bytes']:.3f}")
    print(f"  bytes on the wire       x{on['wire_bytes'] / off['wire_bytes']:.3f}")
    print(f"  sensor CPU              x{on['sensor_cpu_s'] / off['sensor_cpu_s']:.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"on": on, "off": off}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
