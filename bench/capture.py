#!/usr/bin/env python3
"""Capture benchmark: ossensor against tcpdump (and pcapy-ng, scapy) on the same traffic, same run.

    sudo python3 bench/capture.py [--seconds 3] [--sizes 64,1500] [--only NAME,...] [--json F] [--plot F]

Builds two namespaces joined by a veth pair, drives the generator side with trafgen
pinned to CPU 0, and runs each capturer in turn, pinned to CPU 1, on the other side. The
receivers the full paths send to (the reference vSensor, the socat TLS listener) are not
pinned: the scheduler puts them where there is room (pinned beside trafgen, which busy-waits
between bursts, they answered a 4 MiB batch only after tens of ms):

  tcpdump        tcpdump -w /dev/null, 64 MiB ring (-B)
  ossensor-null  ossensor's capture only (native ring -> pcapng batches -> null sink)
  ossensor-dedup the same, dedup on (OSSENSOR_DEDUP's table, native/dedup.c): "capture only, dedup on"
  ossensor-null2 the same on two interfaces (the veth and lo, idle), dedup off: the base for the dedup row
  none           no capturer: at the generator's maximum, how much each capturer slows the generator per
                 packet is the kernel's share of capturing (tpacket_rcv runs on the sender's CPU, not in
                 the capturer's process), e.g. --only none,ossensor-null2,ossensor-dedup --sizes 64
  ossensor-full  `ossensor run`: capture -> pcapng -> HMAC -> TLS -> reference vSensor (on loopback)
  tcpdump-socat  tcpdump -w - | socat - OPENSSL:vSensor  (the do-it-yourself full path)
  pcapy          pcapy-ng next_batch loop
  scapy          scapy L2listen + recv (what sniff() does)

Per capturer and frame size, at a fixed moderate rate (CPU per packet) and at the
generator's maximum (drops): packets sent (veth tx counter), captured, dropped
(kernel ring and, for ossensor, every stage), CPU seconds of the capturer's process
tree (from /proc) per packet sent, and peak RSS. Ratios are to tcpdump in the same
run: they survive a noisy machine, absolute numbers do not. ossensor's capture-only rows
also print drain= (the native drain's own CPU per packet, Ring.drain_ns: the per-packet
work without Python's per-wake-up costs), and dedup's cost in it. Also measured: the
"crypto floor", the CPU to SHA-256/HMAC and AES-GCM-encrypt the same bytes alone.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# BENCH_NS_TAG: a suffix for the namespace names, so two people can bench at once
GEN, CAP = "obench-gen" + os.environ.get("BENCH_NS_TAG", ""), "obench-cap" + os.environ.get("BENCH_NS_TAG", "")
GEN_IF, CAP_IF = "obg0", "obc0"
MODERATE = {64: 200_000, 1500: 50_000}  # 1500 B: what the reference vSensor (Python, ~70 MB/s here) absorbs
KEY = "bench-key-0123456789"


def sh(cmd: str, check: bool = True) -> str:
    return subprocess.run(cmd, shell=True, check=check, capture_output=True, text=True).stdout


def setup() -> None:
    teardown()
    sh(f"ip netns add {GEN}; ip netns add {CAP}")
    sh(f"ip -n {GEN} link add {GEN_IF} type veth peer name {CAP_IF} netns {CAP}")
    for ns, dev in ((GEN, GEN_IF), (CAP, CAP_IF)):
        sh(f"ip -n {ns} link set lo up; ip -n {ns} link set {dev} up")
        sh(f"ip netns exec {ns} sysctl -qw net.ipv6.conf.{dev}.disable_ipv6=1")  # no ND chatter


def teardown() -> None:
    for ns in (GEN, CAP):
        sh(f"ip netns pids {ns} 2>/dev/null | xargs -r kill -9", check=False)
        sh(f"ip netns del {ns} 2>/dev/null", check=False)


def trafgen_cfg(size: int, payload: str = "random") -> str:
    """UDP frames of `size` bytes (without FCS) to a MAC that is not the receiver's: the capture
    sees them, the receiving IP stack drops them without answering.

    payload "random" (the default): payloads are random, as encrypted traffic is, so compression
    gains only on headers. 64 B frames get fresh random bytes per packet (trafgen's drnd); 1500 B
    frames cycle through 1024 frames of static random bytes (1.5 MB, more than zstd's window at the
    levels used; drnd at 1500 B would cap trafgen near 100 kpps). "fill": every payload is 0x41
    bytes, the easiest case for compression."""
    ip_len, udp_len = size - 14, size - 34
    hdr = [0x45, 0, ip_len >> 8, ip_len & 255, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 78, 0, 1, 10, 78, 0, 2]
    s = sum((hdr[i] << 8) + hdr[i + 1] for i in range(0, 20, 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    s = ~s & 0xFFFF
    hdr[10], hdr[11] = s >> 8, s & 255
    eth = [2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 8, 0]
    udp = [0x04, 0xD2, 0x16, 0x2E, udp_len >> 8, udp_len & 255, 0, 0]
    body = ", ".join(f"0x{b:02x}" for b in eth + hdr + udp)
    if payload == "fill":
        return f"{{ {body}, fill(0x41, {size - 42}) }}\n"
    if size <= 128:
        return f"{{ {body}, drnd({size - 42}) }}\n"
    return f"{{ {body}, rnd({size - 42}) }}\n" * 1024


def stored_packets(tmp: Path) -> int:
    """Packets the reference vSensor has accepted so far (its batches.jsonl)."""
    path = tmp / "vs" / "batches.jsonl"
    if not path.exists():
        return 0
    return sum(json.loads(line).get("packets", 0) for line in path.read_text().splitlines() if line.strip())


def tx_packets() -> int:
    return int(sh(f"ip netns exec {GEN} cat /sys/class/net/{GEN_IF}/statistics/tx_packets"))


def tree(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_and_rss(pid: int) -> tuple[float, int]:
    """CPU seconds (nanosecond run time from schedstat, summed over every thread of the
    tree: clock ticks are too coarse for tcpdump's few milliseconds) and peak RSS."""
    cpu, rss = 0.0, 0
    for p in tree(pid):
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                cpu += int(Path(f"/proc/{p}/task/{task}/schedstat").read_text().split()[0]) / 1e9
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    rss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return cpu, rss


class Run:
    def __init__(self, name: str, argv: list[str], ready: str, env: dict | None = None, shell: bool = False):
        self.name, self.argv, self.ready, self.env, self.shell = name, argv, ready, env, shell


def start(run: Run, tmp: Path) -> tuple[subprocess.Popen, Path]:
    log = tmp / f"{run.name}.log"
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1", **(run.env or {}))
    argv = ["ip", "netns", "exec", CAP, "taskset", "-c", "1"] + run.argv
    p = subprocess.Popen(argv, stdout=log.open("w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 20
    while run.ready not in log.read_text():
        if p.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{run.name} did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return p, log


def parse_counts(name: str, text: str) -> tuple[int, int, dict]:
    if name.startswith("tcpdump"):
        cap = int(re.search(r"(\d+) packets? captured", text).group(1))
        drop = int(re.search(r"(\d+) packets? dropped by kernel", text).group(1))
        return cap, drop, {}
    if name == "ossensor-full":
        line = [l for l in text.splitlines() if "final stats" in l][-1]
        f = dict(re.findall(r"(\w+)=(\d+)", line))
        stages = {k: int(f[k]) for k in ("queue_drops", "refused", "shutdown_drops", "acked") if k in f}
        return int(f["captured"]), int(f["kernel_drops"]), stages
    m = re.search(r"RESULT captured=(\d+) dropped=(-?\d+)", text)
    return int(m.group(1)), int(m.group(2)), {}


# trafgen -b sends a second's packets as fast as it can, then waits (bursts); -t sleeps between
# packets: steady, but each packet costs about 16.5 µs beside the gap, so smooth tops out near 57 kpps
SMOOTH_OVERHEAD_US = 16.5


def measure(run: Run, size: int, rate: int | None, count: int, tmp: Path, payload: str = "random",
            smooth: bool = False) -> dict:
    cfg = tmp / f"frame{size}.cfg"
    cfg.write_text(trafgen_cfg(size, payload))
    p, log = start(run, tmp)
    try:
        time.sleep(0.5)
        cpu0, _ = cpu_and_rss(p.pid)
        tx0 = tx_packets()
        stored0 = stored_packets(tmp)
        gen = ["ip", "netns", "exec", GEN, "taskset", "-c", "0", "trafgen", "-o", GEN_IF, "-i", str(cfg),
               "-P", "1", "-n", str(count), "-q", "-C"]
        if rate and smooth:
            gen += ["-t", f"{max(0, round((1e6 / rate - SMOOTH_OVERHEAD_US) * 1000))}ns"]
        elif rate:
            gen += ["-b", f"{rate}pps"]
        t0 = time.monotonic()
        subprocess.run(gen, check=True, capture_output=True, timeout=300)
        elapsed = time.monotonic() - t0
        sent = tx_packets() - tx0
        time.sleep(1.6)  # let batches age out and ship
        if run.name == "ossensor-full":
            # its CPU includes shipping: wait until the vSensor has stored what was captured
            # (at the generator's maximum the sender can be seconds behind the traffic)
            last, still = -1, time.monotonic()
            while time.monotonic() - still < 3 and time.monotonic() - t0 < 300:
                n = stored_packets(tmp) - stored0
                if n >= sent:
                    break
                if n != last:
                    last, still = n, time.monotonic()
                time.sleep(0.2)
        cpu1, rss = cpu_and_rss(p.pid)
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    text = log.read_text()
    if run.name == "tcpdump-socat":
        time.sleep(0.2)
        text += (tmp / "td.err").read_text()
    captured, dropped, stages = parse_counts(run.name, text)
    # ossensor's capture-only rows: the native drain's own CPU (no Python, no wake-ups), per packet captured
    m = re.search(r"drain_ns=(\d+)", text)
    drain_ns = round(int(m.group(1)) / captured, 2) if m and captured else None
    cpu = cpu1 - cpu0
    # what reached the end of the capturer's path: for the full path, what the vSensor acknowledged
    delivered = stages.get("acked", captured) if stages else captured
    if run.name == "none":
        delivered = sent  # nothing to capture, nothing lost
    return {"capturer": run.name, "size": size, "rate": rate or "max", "sent": sent, "delivered": delivered,
            "pps": round(sent / elapsed), "captured": captured, "dropped": dropped, "stages": stages,
            "cpu_s": round(cpu, 3), "us_per_pkt": round(cpu / max(sent, 1) * 1e6, 3),
            "peak_rss_mib": round(rss / 2**20, 1), "drain_ns_per_pkt": drain_ns}


def crypto_floor(size: int) -> float:
    """µs of CPU to sign (SHA-256 digest, as the protocol does) and AES-GCM-encrypt one packet's
    pcapng record, measured alone over 4 MiB buffers."""
    import hashlib

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    buf = os.urandom(4 << 20)
    aes = AESGCM(AESGCM.generate_key(bit_length=128))
    nonce = os.urandom(12)
    rounds = 16
    t0 = time.process_time()
    for _ in range(rounds):
        hashlib.sha256(buf).digest()
        aes.encrypt(nonce, buf, None)
    per_byte = (time.process_time() - t0) / (rounds * len(buf))
    return per_byte * (size + 32) * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0, help="seconds of traffic at the moderate rate")
    ap.add_argument("--max-packets", type=int, default=1_500_000, help="packets sent at the maximum rate")
    ap.add_argument("--sizes", default="64,1500")
    ap.add_argument("--only", default="", help="comma list of capturers (default: all)")
    ap.add_argument("--no-max", action="store_true", help="skip the maximum-rate runs")
    ap.add_argument("--smooth", action="store_true",
                    help="moderate rates paced packet by packet (trafgen -t) instead of trafgen -b's one burst a "
                         "second; trafgen cannot pace above ~57 kpps, the achieved rate is printed")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run each measurement N times, interleaved, and keep the best (noisy machines)")
    ap.add_argument("--payload", choices=("random", "fill"), default="random",
                    help="frame payloads: random (as encrypted traffic; default) or fill (0x41 bytes: compresses "
                         "~100x, flatters ossensor's compression)")
    ap.add_argument("--sensor-debug", type=int, default=1,
                    help="OSSENSOR_DEBUG for the full path (its log: ossensor-full.log, see --keep)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temp directory (capturer logs, the vSensor's store); default: removed")
    ap.add_argument("--ab", action="append", default=[], metavar="NAME=PATH",
                    help="also run the ossensor capture-only and dedup rows with this build of the extension "
                         "(a copy of ossensor/_native*.so), as NAME: two builds in one run, interleaved")
    ap.add_argument("--json", default="", help="write the results here")
    ap.add_argument("--plot", default="", help="write a PNG plot here")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("bench: needs root (namespaces, trafgen, capture)", file=sys.stderr)
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="ossensor-bench-"))
    setup()
    vs = None
    try:
        port = 18443
        vs_out = tmp / "vs"
        vs = subprocess.Popen(["ip", "netns", "exec", CAP, sys.executable, "-m", "ossensor",
                               "vsensor", "--listen", f"127.0.0.1:{port}", "--out", str(vs_out)],
                              env=dict(os.environ, PYTHONPATH=str(ROOT), VSENSOR_HMAC_KEY=KEY),
                              stdout=(tmp / "vsensor.log").open("w"), stderr=subprocess.STDOUT,
                              start_new_session=True)
        socat_l = None
        for _ in range(100):
            if (vs_out / "server.pem").exists() and "listening" in (tmp / "vsensor.log").read_text():
                break
            time.sleep(0.1)
        # a plain TLS sink for the do-it-yourself pipe
        socat_l = subprocess.Popen(["ip", "netns", "exec", CAP, "socat", "-u",
                                    f"OPENSSL-LISTEN:{port + 1},reuseaddr,fork,cert={vs_out}/server.pem,"
                                    f"key={vs_out}/server.key,verify=0", "OPEN:/dev/null"],
                                   start_new_session=True)
        sensor_env = {"VSENSOR_HOSTNAME": "127.0.0.1", "VSENSOR_PORT": str(port), "VSENSOR_HMAC_KEY": KEY,
                      "OSSENSOR_TLS_CA_FILE": str(vs_out / "ca.pem"),
                      "OSSENSOR_CONFIG_PATH": str(tmp / "ossensor.cfg"), "OSSENSOR_DEBUG": str(args.sensor_debug),
                      "OSSENSOR_STATS_INTERVAL": "3600", "OSSENSOR_NETWORK_DEVICE": CAP_IF,
                      "ANTIGENA_ENABLED": "false"}
        runs = [
            Run("tcpdump", ["tcpdump", "-i", CAP_IF, "-n", "-s", "262144", "-B", "65536", "-w", "/dev/null"],
                "listening on"),
            Run("ossensor-null", [sys.executable, str(ROOT / "bench/_capturers.py"), "ossensor-null", CAP_IF],
                "READY"),
            Run("ossensor-null2", [sys.executable, str(ROOT / "bench/_capturers.py"), "ossensor-null2", CAP_IF],
                "READY"),
            Run("ossensor-dedup", [sys.executable, str(ROOT / "bench/_capturers.py"), "ossensor-dedup", CAP_IF],
                "READY"),
            Run("ossensor-full", [sys.executable, "-m", "ossensor", "run"], "capturing on", env=sensor_env),
            Run("tcpdump-socat", ["sh", "-c", f"tcpdump -i {CAP_IF} -n -s 262144 -B 65536 -w - 2>{tmp}/td.err | "
                                              f"socat -u -b 262144 - OPENSSL:127.0.0.1:{port + 1},verify=0 & "
                                              f"tail -F {tmp}/td.err 2>/dev/null; wait"], "listening on"),
            Run("none", [sys.executable, str(ROOT / "bench/_capturers.py"), "none", CAP_IF], "READY"),
            Run("pcapy", [sys.executable, str(ROOT / "bench/_capturers.py"), "pcapy", CAP_IF], "READY"),
            Run("scapy", [sys.executable, str(ROOT / "bench/_capturers.py"), "scapy", CAP_IF], "READY"),
        ]
        if args.only:
            keep = set(args.only.split(",")) | {"tcpdump"}
            runs = [r for r in runs if r.name in keep]
        for ab in args.ab:
            name, _, path = ab.partition("=")
            if not name or not Path(path).is_file():
                print(f"bench: --ab {ab!r}: expected NAME=PATH of a built extension", file=sys.stderr)
                return 2
            runs += [Run(f"{r.name}@{name}", r.argv, r.ready, env={"BENCH_NATIVE_SO": str(Path(path).resolve())})
                     for r in runs if r.name in ("ossensor-null", "ossensor-null2", "ossensor-dedup")]
        results = []
        for size in sizes:
            plans = [(MODERATE.get(size, 100_000), int(MODERATE.get(size, 100_000) * args.seconds))]
            if not args.no_max:
                plans.append((None, args.max_packets))
            for rate, count in plans:
                best: dict[str, dict] = {}
                every: dict[str, list[dict]] = {}  # every repeat, for the dedup pairs
                for _ in range(args.repeat):
                    for run in runs:
                        if run.name == "scapy" and rate is None:
                            continue  # it cannot keep up at a moderate rate already; max adds nothing
                        if run.name == "none" and rate is not None:
                            continue  # nothing to measure at a set rate
                        r = measure(run, size, rate, count if run.name != "scapy" else count // 10, tmp,
                                    args.payload, args.smooth)
                        every.setdefault(run.name, []).append(r)
                        key = (r["us_per_pkt"], r["sent"] - r["delivered"])
                        if rate is None:
                            key = key[::-1]  # at the maximum rate, the run that lost least
                        old = best.get(run.name)
                        if old is None or key < old["_key"]:
                            best[run.name] = dict(r, _key=key)
                dedup_pairs(every, size, rate)
                if rate is None:
                    kernel_share(every, size)
                for r in best.values():
                    r.pop("_key")
                    results.append(r)
                    print(f"  {r['capturer']:14} {size:5} B rate={r['rate']!s:7} sent={r['sent']:9} "
                          f"captured={r['captured']:9} dropped={r['dropped']:8} cpu={r['cpu_s']:7.3f}s "
                          f"{r['us_per_pkt']:7.3f} us/pkt rss={r['peak_rss_mib']} MiB"
                          + (f" drain={r['drain_ns_per_pkt']} ns/pkt" if r.get("drain_ns_per_pkt") else ""), flush=True)
        floors = {size: round(crypto_floor(size), 3) for size in sizes}
        report(results, floors)
        if args.json:
            Path(args.json).write_text(json.dumps({"payload": args.payload, "results": results, "crypto_floor_us": floors}, indent=1))
        if args.plot:
            plot(results, Path(args.plot))
    finally:
        for p in (vs, locals().get("socat_l")):
            if p and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(10)
        teardown()
        if args.keep:  # the vSensor's store grows by gigabytes per run: kept only on request
            print(f"bench: logs and the vSensor's store kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


def dedup_pairs(every: dict[str, list[dict]], size: int, rate) -> None:
    """Dedup's cost as the ratio within each repeat (the dedup run and the capture-only run on the
    same two interfaces, one after the other), and their median: the machine's drift between
    repeats is larger than the difference measured, and a pair shares it."""
    for build in [""] + sorted({n[n.index("@"):] for n in every if "@" in n}):
        base = every.get("ossensor-null2" + build) or every.get("ossensor-null" + build)
        dedup = every.get("ossensor-dedup" + build)
        if not base or not dedup:
            continue
        ratios = sorted(d["us_per_pkt"] / b["us_per_pkt"] for b, d in zip(base, dedup) if b["us_per_pkt"])
        if ratios:
            print(f"dedup on / capture only ({base[0]['capturer']}) {size} B rate={rate or 'max'}: median of "
                  f"{len(ratios)} pairs x{statistics.median(ratios):.3f} (pairs: "
                  f"{', '.join(f'x{x:.2f}' for x in ratios)})", flush=True)
        # the same in drain() alone (ring.c's own timer): per-packet work without the process's per-wake-up
        # costs (Python, the poll), which swing the process figures by +-25 % here
        b_ns = [r["drain_ns_per_pkt"] for r in base if r.get("drain_ns_per_pkt")]
        d_ns = [r["drain_ns_per_pkt"] for r in dedup if r.get("drain_ns_per_pkt")]
        if b_ns and d_ns:
            b, d = statistics.median(b_ns), statistics.median(d_ns)
            print(f"  in drain() alone, ns per packet (median of {len(b_ns)}): capture only {b:.2f} "
                  f"[{', '.join(f'{x:.2f}' for x in sorted(b_ns))}], dedup on {d:.2f} "
                  f"[{', '.join(f'{x:.2f}' for x in sorted(d_ns))}]: +{d - b:.2f} ns (x{d / b:.2f})", flush=True)


def kernel_share(every: dict[str, list[dict]], size: int) -> None:
    """At the generator's maximum: the kernel's share of capturing, as the generator's slowdown per
    packet against no capturer (medians over the repeats), beside the capturer's own CPU; and dedup's
    cost against that whole."""
    if "none" not in every:
        return
    per_pkt = {name: statistics.median(1e9 / r["pps"] for r in rs if r["pps"]) for name, rs in every.items()}
    own = {name: statistics.median(r["us_per_pkt"] * 1000 for r in rs) for name, rs in every.items()}
    base = per_pkt["none"]
    print(f"{size} B at the generator's maximum ({base:.0f} ns per packet with no capturer), ns per packet:")
    whole = {}
    for name in every:
        if name != "none":
            kern = per_pkt[name] - base
            whole[name] = kern + own[name]
            print(f"  {name:15} kernel (the generator's slowdown) {kern:6.1f}  own process {own[name]:6.1f}  "
                  f"capture's whole cost {whole[name]:6.1f}", flush=True)
    base_name = "ossensor-null2" if "ossensor-null2" in whole else "ossensor-null"
    if base_name in whole and "ossensor-dedup" in whole:
        extra = own["ossensor-dedup"] - own[base_name]
        print(f"  dedup on / capture only, whole cost: x{whole['ossensor-dedup'] / whole[base_name]:.3f}; dedup's "
              f"own CPU (+{extra:.1f} ns) is x{1 + extra / whole[base_name]:.3f} of the whole", flush=True)


def report(results: list[dict], floors: dict[int, float]) -> None:
    print("\nratios to tcpdump (same run; CPU = CPU seconds of the capturer's process tree per packet sent;"
          " loss = not captured or, for ossensor-full, not acknowledged by the vSensor)")
    print(f"{'capturer':14} {'size':>5} {'rate':>8} {'us/pkt':>8} {'CPU ratio':>9} {'loss %':>7} {'RSS MiB':>8}")
    base = {(r["size"], r["rate"]): r for r in results if r["capturer"] == "tcpdump"}
    for r in results:
        b = base.get((r["size"], r["rate"]))
        ratio = r["us_per_pkt"] / b["us_per_pkt"] if b and b["us_per_pkt"] else float("nan")
        loss = 100.0 * (r["sent"] - r.get("delivered", r["captured"])) / max(r["sent"], 1)
        print(f"{r['capturer']:14} {r['size']:5} {r['rate']!s:>8} {r['us_per_pkt']:8.3f} {ratio:9.2f} "
              f"{loss:7.2f} {r['peak_rss_mib']:8.1f}")
    null = {(r["size"], r["rate"]): r for r in results if r["capturer"] == "ossensor-null"}
    null.update({(r["size"], r["rate"]): r for r in results if r["capturer"] == "ossensor-null2"})
    for r in results:
        n = null.get((r["size"], r["rate"]))
        if r["capturer"] == "ossensor-dedup" and n and n["us_per_pkt"]:
            print(f"capture only, dedup on / capture only {r['size']} B rate={r['rate']}: CPU x"
                  f"{r['us_per_pkt'] / n['us_per_pkt']:.3f} (+{r['us_per_pkt'] - n['us_per_pkt']:.3f} us/pkt)")
    for size, floor in floors.items():
        b = base.get((size, MODERATE.get(size, 100_000)))
        if b:
            print(f"crypto floor {size} B: {floor:.3f} us/pkt; bar for ossensor-full = tcpdump + 1.2 x floor = "
                  f"{b['us_per_pkt'] + 1.2 * floor:.3f} us/pkt")


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, rate_kind in zip(axes, ("moderate", "max")):
        rows = [r for r in results if (r["rate"] == "max") == (rate_kind == "max")]
        names = list(dict.fromkeys(r["capturer"] for r in rows))
        sizes = sorted({r["size"] for r in rows})
        width = 0.8 / max(len(sizes), 1)
        for k, size in enumerate(sizes):
            vals = []
            for n in names:
                m = [r for r in rows if r["capturer"] == n and r["size"] == size]
                if rate_kind == "max":
                    vals.append(100.0 * (m[0]["sent"] - m[0].get("delivered", m[0]["captured"]))
                                / max(m[0]["sent"], 1) if m else 0)
                else:
                    vals.append(m[0]["us_per_pkt"] if m else 0)
            ax.bar([i + k * width for i in range(len(names))], vals, width, label=f"{size} B")
        ax.set_xticks([i + width * (len(sizes) - 1) / 2 for i in range(len(names))])
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_ylabel("CPU µs per packet" if rate_kind == "moderate" else "packets lost %")
        ax.set_title("moderate rate: CPU per packet" if rate_kind == "moderate" else "generator max: loss")
        ax.set_yscale("log" if rate_kind == "moderate" else "linear")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)


if __name__ == "__main__":
    sys.exit(main())
