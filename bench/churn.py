#!/usr/bin/env python3
"""Interface churn: veths created and deleted while `ossensor run` captures with NETWORK_DEVICE_ANY=1.

    sudo python3 bench/churn.py [--cycles 1000] [--trials 10] [--json F]

Builds two namespaces (support.Topology), runs the reference vSensor and the sensor in one of them,
then:

1. churn: --cycles create/up/delete cycles of a veth pair (in chunks of 100 through `ip -batch`),
   waits until the sensor has logged every deletion, and prints the sensor's open file descriptors and
   RSS before and after (and the peak, VmHWM), plus the time the sensor needed to follow the events;
2. time to first packet: --trials times, one process in the capture namespace creates a veth pair
   (`ip -batch`: add, both ends up) and sends a numbered UDP frame out of it every ~1 ms from the
   moment it can. Reported per trial, in ms from the start of `ip link add`: when the first frame
   could be sent, and when the first frame captured was sent (the vSensor's pcapng timestamp), plus
   how many frames were sent before capture began (missed).
   tcpdump -i any, which follows new interfaces by itself, runs beside as the reference in the same
   run; the ratio ossensor / tcpdump is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from support import Topology, read_pcap, sensor_env, sh, start_sensor, start_vsensor, vsensor_packets  # noqa: E402

CREATE_AND_SEND = r"""
import socket, struct, subprocess, sys, time
name, tag, n = sys.argv[1], sys.argv[2], int(sys.argv[3])

def frame(seq):
    payload = b"ttfp-%s-%05d" % (tag.encode(), seq)
    udp = struct.pack("!HHHH", 1111, 9999, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     bytes([10, 80, 0, 1]), bytes([10, 80, 0, 2])) + udp
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip

tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
t0 = time.time()
subprocess.run(["ip", "-batch", "-"], check=True, text=True,
               input=f"link add {name} type veth peer name {name}p\nlink set {name} up\nlink set {name}p up\n")
first = None
for seq in range(n):
    try:
        tx.sendto(frame(seq), (name, 0))
        first = first or (seq, time.time())
    except OSError:
        pass
    time.sleep(0.001)
print(f"{t0:.6f} {first[0]} {first[1]:.6f}")
"""


def figures(pid: int) -> dict:
    out = {"fds": len(os.listdir(f"/proc/{pid}/fd"))}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


def churn(topo: Topology, sensor, cycles: int) -> dict:
    pid = sensor.p.pid
    before = figures(pid)
    start_lines = len(sensor.lines)
    trend: list[int] = []  # RSS after each chunk of 100 cycles: growth that levels off is not a leak
    t0 = time.monotonic()
    for base in range(0, cycles, 100):
        lines = []
        for i in range(base, min(cycles, base + 100)):
            lines += [f"link add hpc{i} type veth peer name hpcp{i}", f"link set hpc{i} up", f"link del hpc{i}"]
        subprocess.run(["ip", "-n", topo.cap, "-batch", "-"], input="\n".join(lines) + "\n", text=True,
                       check=True, timeout=120)
        trend.append(figures(pid)["VmRSS"])
    t_made = time.monotonic() - t0
    deadline = time.monotonic() + 120
    seen = 0
    while time.monotonic() < deadline:
        seen = sum(" deleted" in l or "vanished" in l for l in sensor.lines[start_lines:])
        if seen >= 2 * cycles:
            break
        time.sleep(0.1)
    t_followed = time.monotonic() - t0
    time.sleep(1.5)  # a batch boundary: the interface table compacts
    after = figures(pid)
    return {"cycles": cycles, "deletions_logged": seen, "seconds_to_create": round(t_made, 2),
            "seconds_until_followed": round(t_followed, 2), "before": before, "after": after,
            "alive": sensor.p.poll() is None, "rss_trend_kib": trend,
            "lost_event_resyncs": sum("events were lost" in l for l in sensor.lines[start_lines:])}


def first_packet(topo: Topology, trial: int, out: Path, dump: Path) -> dict:
    """Create a veth in the capture namespace and, from the same process, send a numbered frame out of
    it every ~1 ms from the moment it is up: the first one captured says how long capture took."""
    name, tag = f"hpt{trial}", f"t{trial}"
    r = subprocess.run(["ip", "netns", "exec", topo.cap, sys.executable, "-c", CREATE_AND_SEND, name, tag, "300"],
                       capture_output=True, text=True, timeout=60, check=True)
    t0, first_seq, first_sent = r.stdout.split()
    t0, first_sent = float(t0), float(first_sent)
    time.sleep(1.5)  # tcpdump's ring holds packets up to its 1 s block timeout
    marker = f"ttfp-{tag}-".encode()

    def first_of(pkts):  # (seq, ts) of the lowest-numbered captured packet of this trial
        best = None
        for data, ts in pkts:
            k = data.find(marker)
            if k >= 0:
                seq = int(data[k + len(marker): k + len(marker) + 5])
                if best is None or seq < best[0]:
                    best = (seq, ts)
        return best

    ours = first_of((p.data, p.ts_ns) for n, p in vsensor_packets(out) if n in (name, name + "p"))
    theirs = first_of((d, ts) for ts, d, _ in read_pcap(dump)) if dump.exists() else None
    sh(f"ip -n {topo.cap} link del {name}")
    res = {"trial": trial, "first_send_ms": round((first_sent - t0) * 1000, 2), "first_seq_sent": int(first_seq)}
    for label, got in (("ossensor", ours), ("tcpdump", theirs)):
        if got:
            res[f"{label}_ms"] = round((got[1] / 1e9 - t0) * 1000, 2)  # from the start of `ip link add`
            res[f"{label}_missed"] = got[0] - int(first_seq)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("churn.py: needs root (network namespaces)", file=sys.stderr)
        return 2
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ossensor-churn-") as tmp, Topology() as topo:
        tmp = Path(tmp)
        vs, port = start_vsensor(topo, tmp / "vs")
        sensor = start_sensor(topo, sensor_env(topo, tmp, port, NETWORK_DEVICE_ANY="1", OSSENSOR_DEBUG="0",
                                               BPF="udp port 9999", OSSENSOR_STATS_INTERVAL="60"))
        dump = tmp / "tcpdump.pcap"
        td = topo.spawn(["tcpdump", "-i", "any", "-U", "-n", "--time-stamp-precision=nano", "-w", str(dump),
                         "udp port 9999"], netns=topo.cap)
        td.wait_for("listening on")
        sensor.wait_for("interface watcher: following")
        # warm-up so lazily loaded code is in the baseline
        subprocess.run(["ip", "-n", topo.cap, "-batch", "-"], text=True, check=True,
                       input="".join(f"link add hpw{i} type veth peer name hpwp{i}\nlink del hpw{i}\n" for i in range(5)))
        time.sleep(1.0)
        report = {"churn": churn(topo, sensor, args.cycles)}
        trials = [first_packet(topo, t, tmp / "vs", dump) for t in range(args.trials)]
        report["first_packet"] = trials
        td.stop()
        rc = sensor.stop()
        report["sensor_exit"] = rc

    c = report["churn"]
    b, a = c["before"], c["after"]
    print(f"churn: {c['cycles']} create/delete cycles of a veth pair ({2 * c['cycles']} interfaces) in "
          f"{c['seconds_to_create']} s; the sensor had logged {c['deletions_logged']} deletions after "
          f"{c['seconds_until_followed']} s; lost-event resyncs {c['lost_event_resyncs']}; alive={c['alive']}")
    print(f"  open fds   {b['fds']} -> {a['fds']}")
    print(f"  RSS        {b['VmRSS']} -> {a['VmRSS']} KiB ({a['VmRSS'] - b['VmRSS']:+d} KiB), "
          f"peak {a['VmHWM']} KiB")
    print(f"  RSS after each 100 cycles (KiB): {' '.join(str(x) for x in c['rss_trend_kib'])}")
    ours = [t["ossensor_ms"] for t in trials if "ossensor_ms" in t]
    ref = [t["tcpdump_ms"] for t in trials if "tcpdump_ms" in t]
    print("time to first captured packet, ms from the start of `ip link add` (frames missed before it):")
    for t in trials:
        print(f"  trial {t['trial']}: first frame sent at {t['first_send_ms']}; "
              f"ossensor {t.get('ossensor_ms', 'none')} ({t.get('ossensor_missed', '-')})"
              f"   tcpdump -i any {t.get('tcpdump_ms', 'none')} ({t.get('tcpdump_missed', '-')})")
    if ours:
        print(f"  ossensor median {statistics.median(ours):.1f} ms, max {max(ours):.1f} ms "
              f"({len(ours)}/{len(trials)} trials captured)")
    if ours and ref:
        print(f"  tcpdump -i any median {statistics.median(ref):.1f} ms; ratio of medians ossensor/tcpdump "
              f"{statistics.median(ours) / max(statistics.median(ref), 0.01):.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0 if report["sensor_exit"] == 0 and c["alive"] else 1


if __name__ == "__main__":
    sys.exit(main())
