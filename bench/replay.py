#!/usr/bin/env python3
"""Replay throughput: `ossensor replay` of a large pcap file, side by side with tcpdump and tshark.

Generates a pcap file of --size-mb (default 1100 MB: >= 1 GB) by repeating a block of packets of
mixed sizes (numpy: the timestamps advance with each repetition, no per-packet Python), warms the
page cache, then times, in this one run on this machine:

    tcpdump -r FILE -w /dev/null            the reference (ratio 1.00)
    tshark  -r FILE -w /dev/null
    ossensor replay FILE --out /dev/null    (and --out F2 vs tcpdump -w F2: a real file written)
    ossensor replay FILE                    to the reference vSensor on 127.0.0.1 over TLS (it stores it)
    with --bpf EXPR: tcpdump -r FILE -w /dev/null EXPR and ossensor with BPF=EXPR as well

and prints wall time, CPU time (user+sys of the child processes), MB/s, packets/s and each rate
divided by tcpdump's (> 1: faster than tcpdump). Ratios are what to compare: absolute numbers
depend on the machine and on what else runs on it.

    python3 bench/replay.py [--size-mb 1100] [--dir /tmp] [--bpf "udp"] [--repeat 3] [--skip-vsensor] [--keep]
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
KEY = "bench-key-0123456789abcdef"
SIZES = [64, 64, 128, 256, 576, 1024, 1500, 1500, 60, 1500, 200, 1500]  # multiples of 4 but 1500 (see below)


def make_block(reps_hint: int = 512) -> tuple[bytes, np.ndarray, int]:
    """A run of packet records (Ethernet/IPv4/UDP, mixed sizes); returns (bytes, word index of each
    record's ts_sec, packets). Every record is a multiple of 4 bytes long so ts fields are aligned."""
    recs, ts_words, off, n = [], [], 0, 0
    for i in range(reps_hint):
        size = SIZES[i % len(SIZES)] & ~3
        payload = (b"bench-%08d-" % i).ljust(size - 42, b"z")
        udp = (40000 + i % 1000).to_bytes(2, "big") + (9000 + i % 7).to_bytes(2, "big") + \
            (8 + len(payload)).to_bytes(2, "big") + b"\0\0" + payload
        ip = bytes([0x45, 0]) + (20 + len(udp)).to_bytes(2, "big") + b"\0\0\0\0\x40\x11\0\0" + \
            bytes([10, 9, i % 250, 1, 10, 9, 0, 2]) + udp
        frame = b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + ip
        hdr = np.array([0, (i * 997) % 1_000_000, len(frame), len(frame)], dtype="<u4").tobytes()
        ts_words.append(off // 4)
        recs.append(hdr + frame)
        off += 16 + len(frame)
        n += 1
    return b"".join(recs), np.array(ts_words, dtype=np.int64), n


def generate(path: Path, size_mb: int) -> tuple[int, int]:
    block, ts_words, per_block = make_block()
    arr = np.frombuffer(block, dtype="<u4").copy()
    header = np.array([0xA1B2C3D4, 0x00040002, 0, 0, 262144, 1], dtype="<u4").tobytes()
    target = size_mb * 1_000_000
    written, packets, rep = len(header), 0, 0
    with open(path, "wb", buffering=0) as f:
        f.write(header)
        while written < target:
            arr[ts_words] = 1_700_000_000 + rep  # one second per repetition
            f.write(arr.tobytes())
            written += len(block)
            packets += per_block
            rep += 1
    return written, packets


def run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 3600) -> tuple[float, float, str]:
    """(wall seconds, child CPU seconds, output)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"bench: {' '.join(argv)} failed ({r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, r.stdout + r.stderr


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VSENSOR_", "OSSENSOR_", "BPF"))}
    env["PYTHONPATH"] = str(ROOT)
    env["OSSENSOR_DEBUG"] = "0"
    return env


def start_vsensor(out: Path) -> tuple[subprocess.Popen, int]:
    env = base_env()
    env["VSENSOR_HMAC_KEY"] = KEY
    p = subprocess.Popen([sys.executable, "-m", "ossensor", "vsensor", "--listen", "127.0.0.1:0", "--out", str(out)],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        m = re.search(r"listening on https://127\.0\.0\.1:(\d+)", line)
        if m:
            return p, int(m.group(1))
        if not line and p.poll() is not None:
            break
    p.kill()
    raise SystemExit("bench: the reference vSensor did not start")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mb", type=int, default=1100, help="size of the generated pcap (default 1100)")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="where to put it (default the temp dir)")
    ap.add_argument("--bpf", default="udp port 9003", help="a filter to time as well ('' = none)")
    ap.add_argument("--skip-vsensor", action="store_true", help="do not time replay to the vSensor")
    ap.add_argument("--skip-tshark", action="store_true", help="do not time tshark (slow)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per command, the fastest counts (default 3)")
    ap.add_argument("--keep", action="store_true", help="keep the generated file")
    a = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ossensor-bench-replay-", dir=a.dir))
    vs = None
    try:
        need = a.size_mb * 1_000_000 * (3 if not a.skip_vsensor else 2)
        if shutil.disk_usage(work).free < need:
            raise SystemExit(f"bench: --dir {a.dir}: needs {need >> 20} MiB free")
        f = work / "big.pcap"
        t0 = time.monotonic()
        size, packets = generate(f, a.size_mb)
        print(f"generated {f}: {size / 1e6:.0f} MB, {packets} packets in {time.monotonic() - t0:.1f} s; "
              f"load average {os.getloadavg()[0]:.2f}, {os.cpu_count()} CPUs", flush=True)
        subprocess.run(["cat", str(f)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache

        env = base_env()
        rows: list[tuple[str, float, float, int, str]] = []  # (name, wall, cpu, packets, reference name)

        def measure(name: str, argv: list[str], env_: dict[str, str] | None = None, ref: str = "",
                    repeat: int = a.repeat, after=None) -> str:
            best = None
            for _ in range(repeat):  # the fastest of `repeat` runs: the machine is shared
                wall, cpu, out = run(argv, env_)
                if after:
                    after()
                if best is None or wall < best[0]:
                    best = (wall, cpu, out)
            wall, cpu, out = best
            rows.append((name, wall, cpu, packets, ref or name))
            print(f"  {name:<52} {wall:7.2f} s wall {cpu:7.2f} s cpu", flush=True)
            return out

        def rm_out():
            (work / "out").unlink(missing_ok=True)

        td = "tcpdump -r F -w /dev/null"
        measure(td, ["tcpdump", "-r", str(f), "-w", "/dev/null"])
        if not a.skip_tshark and shutil.which("tshark"):
            measure("tshark -r F -w /dev/null", ["tshark", "-r", str(f), "-w", "/dev/null"], ref=td)
        replay = [sys.executable, "-m", "ossensor", "replay", "--no-progress", str(f)]
        out = measure("ossensor replay F --out /dev/null", replay + ["--out", "/dev/null"], env, ref=td)
        assert f"read={packets} " in out, out
        tdf = "tcpdump -r F -w F2 (a file)"
        measure(tdf, ["tcpdump", "-r", str(f), "-w", str(work / "out")], after=rm_out)
        measure("ossensor replay F --out F2 (a file)", replay + ["--out", str(work / "out")], env, ref=tdf,
                after=rm_out)
        if a.bpf:
            tdb = f"tcpdump -r F -w /dev/null '{a.bpf}'"
            measure(tdb, ["tcpdump", "-r", str(f), "-w", "/dev/null", a.bpf])
            measure(f"ossensor replay F --out /dev/null BPF='{a.bpf}'", replay + ["--out", "/dev/null"],
                    {**env, "BPF": a.bpf}, ref=tdb)
        if not a.skip_vsensor:
            vs, port = start_vsensor(work / "vs")
            venv = {**env, "VSENSOR_HOSTNAME": "127.0.0.1", "VSENSOR_PORT": str(port), "VSENSOR_HMAC_KEY": KEY,
                    "OSSENSOR_TLS_CA_FILE": str(work / "vs" / "ca.pem")}
            out = measure("ossensor replay F -> vSensor (TLS, HMAC, stored)", replay, venv, ref=td, repeat=1)
            assert f"acknowledged={packets} " in out, out

        rate = {name: n / wall for name, wall, _, n, _ in rows}
        print(f"\nreplay of {size / 1e6:.0f} MB / {packets} packets (pcap, mixed sizes 60-1500 B), fastest of "
              f"{a.repeat} runs; ratio = rate / the rate of the tcpdump command it is compared with (> 1: faster)")
        print(f"| {'command':<52} | {'wall s':>6} | {'cpu s':>6} | {'MB/s':>6} | {'Mpkt/s':>6} | ratio | compared with")
        print(f"|{'-' * 54}|{'-' * 8}|{'-' * 8}|{'-' * 8}|{'-' * 8}|-------|{'-' * 30}")
        for name, wall, cpu, n, ref in rows:
            print(f"| {name:<52} | {wall:6.2f} | {cpu:6.2f} | {size / wall / 1e6:6.0f} | {n / wall / 1e6:6.2f} | "
                  f"{rate[name] / rate[ref]:5.2f} | {'' if ref == name else ref}")
        return 0
    finally:
        if vs is not None:
            os.killpg(vs.pid, signal.SIGTERM)
            try:
                vs.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(vs.pid, signal.SIGKILL)
        if a.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
