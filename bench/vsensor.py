#!/usr/bin/env python3
"""Reference vSensor throughput: CPU it spends per signed 4 MiB pcapng batch; batches/s and MB/s with
1, 10, 100, 1,000 concurrent senders; RSS per idle TLS connection.

    python3 bench/vsensor.py [--batches 40] [--sizes 64,1500] [--mb 4] [--cpu 0] [--mixed]
                             [--senders 1,10,100,1000] [--sender-kb 128] [--idle 2000]

Starts `ossensor vsensor` on loopback (pinned to --cpu, -1: not pinned), sends it signed batches
with ossensor.ship.client.Shipper (one connection, one batch after another, as the sensor's shipper does),
each a section like the sensor's (--zstd: compressed, as OSSENSOR_COMPRESSION does): SHB, two Ethernet IDBs, EPBs of the given frame size alternating
between the two interfaces, one ISB per interface. --mixed adds a raw-IP interface whose packets the
store must move to a second file (interface ids renumbered). Prints, per frame size, the vSensor's
CPU seconds per batch (from /proc/PID/stat, utime+stime, whole process), the CPU µs per MB, and the
MB/s the sender saw (the sender runs on the same machine and takes its own CPU: MB/s is a lower bound).
Then, with tests/siege.py in another process: N connections opened at once, each its own sensor sending
--sender-batches/N signed batches of --sender-kb KiB one after another (batches/s, MB/s of bodies, the
vSensor's CPU); and the vSensor's RSS before and with --idle idle TLS connections.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ossensor import pcapng  # noqa: E402
from ossensor.ship.client import Shipper  # noqa: E402

KEY = "bench-vsensor-key-0123456789"
TICKS = os.sysconf("SC_CLK_TCK")


def frame(i: int, size: int) -> bytes:
    """An Ethernet/IPv4/UDP frame of `size` bytes (contents vary a little per packet)."""
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    ip_len = size - 14
    ip = bytes([0x45, 0, ip_len >> 8, ip_len & 0xFF, i >> 8 & 0xFF, i & 0xFF, 0x40, 0, 64, 17, 0, 0,
                10, 0, 0, 1, 10, 0, 0, 2])
    udp_len = ip_len - 20
    udp = (1024 + i % 1000).to_bytes(2, "big") + b"\x13\x89" + udp_len.to_bytes(2, "big") + b"\0\0"
    return (eth + ip + udp + bytes([i % 251]) * (size - 42))[:size]


def batch(size: int, mb: float, mixed: bool) -> tuple[bytes, int]:
    ifaces = [("veth0", pcapng.LINKTYPE_ETHERNET), ("veth1", pcapng.LINKTYPE_ETHERNET)]
    if mixed:
        ifaces.append(("tun0", pcapng.LINKTYPE_RAW))
    head = pcapng.shb() + b"".join(pcapng.idb(n, lt, 262144) for n, lt in ifaces)
    ts = 1_700_000_000 * 10**9
    frames = [frame(i, size) for i in range(64)]
    raw = [f[14:] for f in frames]
    budget = int(mb * (1 << 20)) - len(head) - 200 * len(ifaces)
    epbs, n, used = [], 0, 0
    while True:
        if_id = n % len(ifaces)
        data = raw[n % 64] if ifaces[if_id][1] == pcapng.LINKTYPE_RAW else frames[n % 64]
        blk = pcapng.epb(if_id, ts + n * 1000, data)
        if used + len(blk) > budget:
            break
        epbs.append(blk)
        used += len(blk)
        n += 1
    tail = b"".join(pcapng.isb(i, ts + n * 1000, ifrecv=n, ifdrop=0, usrdeliv=n // len(ifaces))
                    for i in range(len(ifaces)))
    return head + b"".join(epbs) + tail, n


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:"))


def concurrent_senders(port: int, ca: str, n: int, total: int, kb: float, pid: int) -> dict:
    """n connections at once (tests/siege.py senders), each a sensor sending total/n batches, keep-alive."""
    per = max(1, total // n)
    c0 = cpu_seconds(pid)
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "siege.py"), "senders", "--port", str(port),
                        "--ca", ca, "--conns", str(n), "--batches", str(per), "--kb", str(kb), "--prefix", f"c{n}"],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, VSENSOR_HMAC_KEY=KEY))
    if r.returncode != 0:
        raise SystemExit(f"siege.py senders failed: {r.stderr[-2000:]}")
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    other = {k: v for k, v in doc["statuses"].items() if k != "200"}
    return {"senders": n, "sent": n * per, "accepted": doc["accepted"], "other": other or "-",
            "errors": doc["errors"], "connect_s": doc["connect_s"], "batches_per_s": doc["batches_per_s"],
            "mb_per_s": doc["mb_per_s"], "cpu_s": cpu_seconds(pid) - c0}


def idle_rss(port: int, ca: str, n: int, pid: int) -> dict:
    """The vSensor's RSS before and with n idle TLS connections (handshake done, nothing sent)."""
    before = rss_kib(pid)
    p = subprocess.Popen([sys.executable, str(ROOT / "tests" / "siege.py"), "hostile", "--port", str(port),
                          "--ca", ca, "--idle", str(n), "--trickle", "0", "--bare", "0"],
                         stdout=subprocess.PIPE, text=True)
    try:
        deadline, opened = time.monotonic() + 120, 0
        for line in p.stdout:
            opened = json.loads(line)["idle"]
            if opened >= n or time.monotonic() > deadline:
                break
        time.sleep(2)
        after = rss_kib(pid)
    finally:
        p.kill()
        p.wait()
    return {"idle_conns": n, "open": opened, "rss_before_kib": before, "rss_after_kib": after,
            "kib_per_conn": (after - before) / max(1, opened)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--sizes", default="64,1500")
    ap.add_argument("--mb", type=float, default=4.0, help="batch size in MiB (default 4)")
    ap.add_argument("--cpu", type=int, default=0, help="pin the vSensor to this CPU (-1: do not pin)")
    ap.add_argument("--mixed", action="store_true", help="add a raw-IP interface (split, renumbered)")
    ap.add_argument("--zstd", action="store_true", help="send the batches zstd-compressed (level 1)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--senders", default="1,10,100,1000",
                    help="concurrent senders (each its own TLS connection and sensor name) for the concurrency "
                         "rows; '' skips them (default 1,10,100,1000)")
    ap.add_argument("--sender-kb", type=float, default=128.0, help="batch size of the concurrency rows (KiB)")
    ap.add_argument("--sender-batches", type=int, default=2000, help="batches per concurrency row, in all")
    ap.add_argument("--idle", type=int, default=2000, help="idle TLS connections for the RSS row (0: skip)")
    args = ap.parse_args()

    out = Path(tempfile.mkdtemp(prefix="vsensor-bench-"))
    env = dict(os.environ, VSENSOR_HMAC_KEY=KEY, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "ossensor", "vsensor", "--listen", "127.0.0.1:0", "--out", str(out / "store")]
    if args.cpu >= 0:
        cmd = ["taskset", "-c", str(args.cpu)] + cmd
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    results = []
    try:
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                raise SystemExit(f"vsensor exited: {proc.wait()}")
            if "listening on https://" in line:
                port = int(line.split("listening on https://", 1)[1].split()[0].rsplit(":", 1)[1])
        # the vSensor logs a line per batch: drain its output so that it never blocks on the pipe
        import threading
        threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()
        ca = str(out / "store" / "ca.pem")
        if args.idle:  # first, while the heap is fresh: later bodies leave freed memory idle ones would reuse
            r = idle_rss(port, ca, args.idle, proc.pid)
            results.append(r)
            print(f"{args.idle} idle TLS connections: vSensor RSS {r['rss_before_kib'] / 1024:.1f} -> "
                  f"{r['rss_after_kib'] / 1024:.1f} MiB, {r['kib_per_conn']:.1f} KiB per connection "
                  f"({r['open']} open)", flush=True)
        shipper = Shipper(host="127.0.0.1", port=port, key=KEY.encode(), sensor="bench", boot="00000000000000aa",
                          ca_file=str(out / "store" / "ca.pem"))
        seq = 0
        for size in [int(s) for s in args.sizes.split(",")]:
            body, packets = batch(size, args.mb, args.mixed)
            encoding, plain_len = "identity", len(body)
            if args.zstd:
                import zstandard
                body, encoding = zstandard.ZstdCompressor(level=1).compress(body), "zstd"
            for _ in range(3):  # warm-up (connection, page cache, first file)
                o = shipper.send(seq, body, encoding=encoding)
                assert o.kind == "acked", o
                seq += 1
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            for _ in range(args.batches):
                o = shipper.send(seq, body, encoding=encoding)
                assert o.kind == "acked" and o.status == 200, o
                seq += 1
            c1, t1 = cpu_seconds(proc.pid), time.monotonic()
            mbytes = plain_len * args.batches / 1e6  # decoded bytes
            r = {"frame": size, "encoding": encoding, "batch_bytes": plain_len, "wire_bytes": len(body), "packets_per_batch": packets, "batches": args.batches,
                 "cpu_s_per_batch": (c1 - c0) / args.batches, "cpu_us_per_mb": (c1 - c0) * 1e6 / mbytes,
                 "mb_per_s": mbytes / (t1 - t0)}
            results.append(r)
            print(f"{size:5d} B frames: {packets:6d} pkts/batch  vSensor CPU {r['cpu_s_per_batch'] * 1e3:7.1f} ms/batch"
                  f"  {r['cpu_us_per_mb']:8.0f} µs/MB  {r['mb_per_s']:7.1f} MB/s (sender-bound lower bound)",
                  flush=True)
        shipper.close()
        for n in [int(x) for x in args.senders.split(",") if x.strip()]:
            r = concurrent_senders(port, ca, n, args.sender_batches, args.sender_kb, proc.pid)
            results.append(r)
            print(f"{n:5d} concurrent senders: {r['batches_per_s']:8.1f} batches/s  {r['mb_per_s']:7.1f} MB/s "
                  f"({r['accepted']} of {r['sent']} accepted, {args.sender_kb:g} KiB batches, other answers "
                  f"{r['other']}, connect {r['connect_s']} s, vSensor CPU {r['cpu_s']:.1f} s)", flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(out, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
