#!/usr/bin/env python3
"""Duplicate suppression's cost per packet on a model of the capture path, without the kernel.

    python3 bench/dedup_cost.py [--size 64] [--packets 600000] [--repeat 5]

Compiles bench/dedup_cost.c against native/dedup.c (the code the extension runs) and times, interleaved
and repeated (medians), copying random frames from two interfaces into EPBs alone ("copy"), with the
identity hash and the table look-up per packet ("inline"), and as native/ring.c does it ("ahead": a
chunk of packets hashed and their table sets prefetched, then written). The table is made cold between
bursts of 2,000 packets, as a live capture's is after each sleep. Then, when valgrind is installed,
the instructions each mode adds per packet, counted by callgrind: deterministic, unlike the times on
a shared machine. bench/capture.py measures the real path (kernel, ring, Python); this isolates dedup.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODES = ("copy", "inline", "ahead")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=64, help="frame size in bytes (Ethernet, IPv4, UDP)")
    ap.add_argument("--packets", type=int, default=600_000)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="dedup-cost-") as tmp:
        exe = Path(tmp) / "dedup_cost"
        subprocess.run(["gcc", "-O2", "-Wall", "-Wextra", "-std=gnu11", "-I", str(ROOT / "native"),
                        str(ROOT / "bench" / "dedup_cost.c"), str(ROOT / "native" / "dedup.c"), "-o", str(exe)],
                       check=True)
        times: dict[str, list[float]] = {m: [] for m in MODES}
        for _ in range(args.repeat):
            for m in MODES:
                out = subprocess.run([str(exe), str(args.size), str(args.packets), m], check=True,
                                     capture_output=True, text=True).stdout
                times[m].append(float(re.search(r"ns_per_pkt=([\d.]+)", out).group(1)))
                assert "dups=0" in out, out
        med = {m: statistics.median(v) for m, v in times.items()}
        print(f"{args.size} B frames, {args.packets} packets, median of {args.repeat} (ns per packet):")
        for m in MODES:
            extra = f"  dedup +{med[m] - med['copy']:.2f} ns (x{med[m] / med['copy']:.2f})" if m != "copy" else ""
            print(f"  {m:7} {med[m]:6.2f}  [{', '.join(f'{t:.2f}' for t in times[m])}]{extra}")
        if shutil.which("valgrind"):
            n = 200_000
            ir = {}
            for m in MODES:
                r = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", str(exe),
                                    str(args.size), str(n), m], capture_output=True, text=True,
                                   env={"NOEVICT": "1", "PATH": "/usr/bin:/bin"})
                ir[m] = int(re.search(r"refs:\s+([\d,]+)", r.stderr).group(1).replace(",", ""))
            print(f"instructions added per packet (callgrind, {n} packets):  " +
                  "  ".join(f"{m} +{(ir[m] - ir['copy']) / n:.1f}" for m in MODES if m != "copy"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
