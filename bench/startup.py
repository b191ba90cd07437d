#!/usr/bin/env python3
"""Start-up cost: each command's wall time, the median of --runs runs, next to `python -c pass` (the same
interpreter, so the same site-packages) and `tcpdump -r` of the same one-packet file.

    python3 bench/startup.py [--runs 10] [--ossensor /path/to/venv/bin/ossensor] [--python /path/to/venv/bin/python]

Target (issue 20): `ossensor --help` and `ossensor replay one.pcap --out X` at most 4 x `python -c pass`.
With --ossensor (an installed console script, e.g. a venv with the wheel) the commands run through it,
else as `python -m ossensor` from this tree. Ratios are what to compare: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def one_packet_pcap(path: Path) -> None:
    frame = bytes.fromhex("ffffffffffff020000000001" "0800") + bytes(46)
    path.write_bytes(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1) +
                     struct.pack("<IIII", 1_700_000_000, 0, len(frame), len(frame)) + frame)


def median_wall(argv: list[str], runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        r = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        times.append(time.perf_counter() - t0)
        if r.returncode not in (0, 1):
            raise SystemExit(f"bench: {' '.join(argv)} failed ({r.returncode}): {r.stderr.decode()[-500:]}")
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--ossensor", help="an installed `ossensor` console script to time (default: python -m ossensor)")
    ap.add_argument("--python", default=sys.executable, help="the interpreter (of that venv) for the baseline")
    a = ap.parse_args()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VSENSOR_", "OSSENSOR_", "BPF"))}
    cmd = [a.ossensor] if a.ossensor else [a.python, "-m", "ossensor"]
    if not a.ossensor:
        env["PYTHONPATH"] = str(ROOT)
    with tempfile.TemporaryDirectory() as d:
        pcap, out = Path(d) / "one.pcap", Path(d) / "out.pcapng"
        one_packet_pcap(pcap)
        rows = [("python -c pass", [a.python, "-c", "pass"])]
        if shutil.which("tcpdump"):
            rows.append(("tcpdump -r one.pcap", ["tcpdump", "-r", str(pcap), "-w", str(out)]))
        rows += [("ossensor --help", cmd + ["--help"]),
                 ("ossensor replay one.pcap --out X", cmd + ["replay", str(pcap), "--out", str(out)]),
                 ("ossensor replay with BPF='udp'", cmd + ["replay", str(pcap), "--out", str(out)]),
                 ("ossensor interfaces", cmd + ["interfaces"])]
        base = None
        print(f"{'command':36s} {'median ms':>10s} {'x python -c pass':>17s}   (runs={a.runs}, "
              f"load average {os.getloadavg()[0]:.2f})")
        for name, argv in rows:
            e = dict(env, BPF="udp") if "BPF" in name else env
            t = median_wall(argv, a.runs, e)
            base = base or t
            print(f"{name:36s} {t * 1000:10.1f} {t / base:17.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
