#!/usr/bin/env python3
"""Many connections at one vSensor, from one asyncio process: hostile ones and honest ones.
Shared by tests/test_vsensor_siege.py and bench/vsensor.py.

    siege.py hostile --port P --ca CA [--idle 1000] [--trickle 300] [--bare 300]
        persistent: each closed connection is opened again, until killed. Prints a JSON line a second:
        {"idle": open idle TLS connections, "trickle": open trickling ones, "bare": open bare TCP ones,
         "closed": {kind: times the vSensor closed one}, "held": {kind: longest seconds one stayed open}}
    siege.py senders --port P --ca CA --key-env VAR [--conns 2000] [--batches 1] [--kb 1]
        opens --conns TLS connections, waits until all are up, then each sends --batches signed batches
        (keep-alive) as its own sensor. Prints one JSON line: how many connected, accepted (200), other
        statuses, errors, seconds, batches/s, MB/s (of bodies).

The idle kind completes its handshake and sends nothing; the trickle kind sends one request-header line
every --every seconds and never ends its headers; the bare kind opens TCP and never sends a ClientHello.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import ssl
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ossensor import pcapng, protocol  # noqa: E402


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Hostile:
    def __init__(self, host: str, port: int, ctx: ssl.SSLContext, every: float):
        self.host, self.port, self.ctx, self.every = host, port, ctx, every
        self.open = {"idle": 0, "trickle": 0, "bare": 0}
        self.closed = {"idle": 0, "trickle": 0, "bare": 0}
        self.held = {"idle": 0.0, "trickle": 0.0, "bare": 0.0}
        self.failed = 0

    async def one(self, kind: str) -> None:
        while True:
            t0 = time.monotonic()
            try:
                if kind == "bare":
                    reader, writer = await asyncio.open_connection(self.host, self.port)
                else:
                    reader, writer = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port, ssl=self.ctx, server_hostname=self.host), 30)
            except (OSError, asyncio.TimeoutError, ssl.SSLError):
                self.failed += 1
                await asyncio.sleep(0.5)
                continue
            self.open[kind] += 1
            t0 = time.monotonic()
            try:
                if kind == "trickle":
                    lines = [b"POST /v1/batches HTTP/1.1\r\n", b"Host: x\r\n", b"Content-Length: 1000000\r\n"]
                    n = 0
                    while True:
                        writer.write(lines[n] if n < len(lines) else b"X-Filler-%d: y\r\n" % n)
                        n += 1
                        await writer.drain()
                        try:
                            if await asyncio.wait_for(reader.read(65536), self.every) == b"":
                                break
                            break  # an answer (408): it will close
                        except asyncio.TimeoutError:
                            pass
                else:
                    while await reader.read(65536):
                        pass
            except (OSError, ssl.SSLError, asyncio.IncompleteReadError):
                pass
            finally:
                self.open[kind] -= 1
                self.closed[kind] += 1
                self.held[kind] = max(self.held[kind], time.monotonic() - t0)
                writer.close()

    async def run(self, counts: dict[str, int]) -> None:
        tasks = []
        for kind, n in counts.items():
            for _ in range(n):
                tasks.append(asyncio.create_task(self.one(kind)))
                if len(tasks) % 50 == 0:
                    await asyncio.sleep(0.02)  # a ramp, not a SYN flood the backlog would drop
        while True:
            print(json.dumps({**self.open, "closed": self.closed, "held": {k: round(v, 1) for k, v in self.held.items()},
                              "failed": self.failed}), flush=True)
            await asyncio.sleep(1.0)


def small_batch(i: int, kb: float) -> bytes:
    """A pcapng section of about `kb` KiB: one Ethernet interface, UDP frames."""
    head = pcapng.shb() + pcapng.idb("eth0", pcapng.LINKTYPE_ETHERNET, 65535)
    frame = (b"\x02\0\0\0\0\x02\x02\0\0\0\0\x01\x08\x00" + bytes([0x45, 0, 0, 86, 0, 1, 0x40, 0, 64, 17, 0, 0,
                                                                  10, 0, 0, 1, 10, 0, 0, 2]) + b"\0" * 66)
    epbs, ts = [], 1_700_000_000 * 10**9 + i
    while len(head) + sum(map(len, epbs)) < kb * 1024:
        epbs.append(pcapng.epb(0, ts + len(epbs), frame))
    return head + b"".join(epbs)


async def senders(host: str, port: int, ctx: ssl.SSLContext, key: bytes, conns: int, batches: int, kb: float,
                  prefix: str) -> dict:
    body_of = [small_batch(i, kb) for i in range(min(conns, 64))]
    ready = 0
    go = asyncio.Event()
    result = {"connected": 0, "accepted": 0, "statuses": {}, "errors": 0, "bytes": 0}

    async def one(i: int) -> None:
        nonlocal ready
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(host, port, ssl=ctx, server_hostname=host), 60)
        except (OSError, asyncio.TimeoutError, ssl.SSLError):
            result["errors"] += 1
            ready += 1
            if ready == conns:
                go.set()
            return
        result["connected"] += 1
        ready += 1
        if ready == conns:
            go.set()
        await go.wait()
        body = body_of[i % len(body_of)]
        try:
            for seq in range(batches):
                headers = protocol.sign(key, sensor=f"{prefix}-{i}", boot="b" * 16, seq=seq,
                                        timestamp=int(time.time()), body=body)
                head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                writer.write(f"POST {protocol.PATH_BATCHES} HTTP/1.1\r\nHost: {host}\r\n"
                             f"Content-Length: {len(body)}\r\n{head}\r\n".encode() + body)
                status_line = await asyncio.wait_for(reader.readline(), 120)
                status = int(status_line.split()[1])
                length = 0
                while True:
                    line = await reader.readline()
                    if line in (b"\r\n", b""):
                        break
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                result["statuses"][status] = result["statuses"].get(status, 0) + 1
                if status == 200:
                    result["accepted"] += 1
                    result["bytes"] += len(body)
        except (OSError, asyncio.TimeoutError, ssl.SSLError, asyncio.IncompleteReadError, ValueError, IndexError):
            result["errors"] += 1
        finally:
            writer.close()

    tasks = []
    t_connect = time.monotonic()
    for i in range(conns):
        tasks.append(asyncio.create_task(one(i)))
        if i % 50 == 49:
            await asyncio.sleep(0.01)
    await go.wait()
    t0 = time.monotonic()
    result["connect_s"] = round(t0 - t_connect, 2)
    await asyncio.gather(*tasks)
    elapsed = time.monotonic() - t0
    result["seconds"] = round(elapsed, 3)
    result["batches_per_s"] = round(result["accepted"] / elapsed, 1) if elapsed else None
    result["mb_per_s"] = round(result["bytes"] / elapsed / 1e6, 2) if elapsed else None
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["hostile", "senders"])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--idle", type=int, default=1000)
    ap.add_argument("--trickle", type=int, default=300)
    ap.add_argument("--bare", type=int, default=300)
    ap.add_argument("--every", type=float, default=3.0, help="seconds between a trickler's header lines")
    ap.add_argument("--key-env", default="VSENSOR_HMAC_KEY")
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--batches", type=int, default=1)
    ap.add_argument("--kb", type=float, default=1.0)
    ap.add_argument("--prefix", default="siege")
    args = ap.parse_args()
    _raise_nofile()
    ctx = ssl.create_default_context(cafile=args.ca)
    if args.mode == "hostile":
        asyncio.run(Hostile(args.host, args.port, ctx, args.every).run(
            {"idle": args.idle, "trickle": args.trickle, "bare": args.bare}))
        return 0
    key = os.environ[args.key_env].encode()
    print(json.dumps(asyncio.run(senders(args.host, args.port, ctx, key, args.conns, args.batches, args.kb,
                                         args.prefix))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
