#!/usr/bin/env python3
"""Candidate HTTP servers for the reference vSensor, side by side over TLS on loopback.

    python3 bench/http_servers.py [--conns 2000] [--seconds 5] [--repeat 1] [--probe-limit 40]
                                  [--only aiohttp,hypercorn,uvicorn,stdlib]

Each candidate serves the same trivial app (POST /echo reads the whole body and answers 200
{"n": len(body)}; GET /healthz answers "ok") in its own subprocess, over TLS (a throwaway self-signed
EC P-256 certificate made with `openssl req` in a temp dir), on 127.0.0.1:
  aiohttp   aiohttp.web.Server(handler, keepalive_timeout=T) on loop.create_server(ssl=, ssl_handshake_timeout=5)
  hypercorn hypercorn.asyncio.serve, asyncio worker, alpn h2 + http/1.1, keep_alive_timeout=T, ssl_handshake_timeout=5
  aiohttp<N>k (only with --only, e.g. aiohttp16k) aiohttp with asyncio.sslproto.SSLProtocol.max_size = N KiB:
            asyncio's SSL transport (all three asyncio candidates) allocates a 256 KiB read buffer per connection
  uvicorn   uvicorn.Server, loop=asyncio, http=httptools (h11 if missing), timeout_keep_alive=T
            (uvicorn has no ssl_handshake_timeout setting: asyncio's default, 60 s, applies)
  stdlib    http.server.ThreadingHTTPServer, one thread per connection, the socket wrapped in the thread
            (as ossensor/vsensor/server.py does) with a 5 s handshake timeout, then a T s socket timeout
            (no connection cap here: today's vSensor caps at 64 and answers 503 beyond)
Measured (clients are separate processes using asyncio streams; HTTP/1.1, no h2):
  rss       server RSS before/after opening --conns idle TLS connections (handshake done, nothing sent):
            KiB per connection, and how many were accepted and still open when RSS was read
            (for this phase the servers run with T = 600 s so that no idle timer fires)
  probes    servers with T = 10 s: (1) slowloris, one header line every 2 s, never finishing the headers;
            (2) POST headers with Content-Length 1000000, then 1 byte of body per second;
            (3) a TCP connect that never sends a ClientHello. Seconds until the server closed the
            connection ("never" = still open after --probe-limit s). Runs concurrently with the rss phase.
  tput      POST /echo over keep-alive connections: 1 MiB bodies with 1, 10, 100 clients, 1 KiB with 100;
            req/s, MB/s (request bodies) and the server's CPU (utime+stime from /proc) per request.
            --repeat N runs the candidates in N interleaved rounds and reports the median.
The client is one Python process: where it saturates a core, req/s is a lower bound for every server;
the server's CPU per request (and CPU %) is the figure that survives that and a noisy machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HOST = "127.0.0.1"
CANDIDATES = ("aiohttp", "hypercorn", "uvicorn", "stdlib")
HANDSHAKE_TIMEOUT = 5
TICKS = os.sysconf("SC_CLK_TCK")
BACKLOG = 1024
ME = os.path.abspath(__file__)


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max(soft, min(hard, 65536))
    if hard < 65536:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (65536, 65536))
            return
        except (ValueError, OSError):
            pass
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# ---------------------------------------------------------------------------------------- servers
def server_ctx(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    return ctx


async def asgi_app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            m = await receive()
            if m["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif m["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["method"] == "POST" and scope["path"] == "/echo":
        chunks = []
        more = True
        while more:
            m = await receive()
            chunks.append(m.get("body", b""))
            more = m.get("more_body", False)
        body = json.dumps({"n": len(b"".join(chunks))}).encode()
        status, ctype = 200, b"application/json"
    elif scope["method"] == "GET" and scope["path"] == "/healthz":
        status, ctype, body = 200, b"text/plain", b"ok"
    else:
        status, ctype, body = 404, b"text/plain", b"not found"
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def run_aiohttp(port: int, cert: str, key: str, idle: float, sslbuf: int = 0) -> None:
    import logging

    from aiohttp import web
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)  # "Connection lost" when a probe aborts
    if sslbuf:  # asyncio's SSL transport allocates a max_size (256 KiB) read buffer per connection
        from asyncio import sslproto
        sslproto.SSLProtocol.max_size = sslbuf

    async def handler(request):
        if request.method == "POST" and request.path == "/echo":
            body = await request.read()
            return web.json_response({"n": len(body)})
        if request.method == "GET" and request.path == "/healthz":
            return web.Response(text="ok")
        return web.Response(status=404, text="not found")

    async def main():
        loop = asyncio.get_running_loop()
        srv = web.Server(handler, keepalive_timeout=idle)
        await loop.create_server(srv, HOST, port, ssl=server_ctx(cert, key),
                                 ssl_handshake_timeout=HANDSHAKE_TIMEOUT, backlog=BACKLOG)
        await asyncio.Event().wait()

    asyncio.run(main())


def run_hypercorn(port: int, cert: str, key: str, idle: float) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config

    c = Config()
    c.bind = [f"{HOST}:{port}"]
    c.certfile, c.keyfile = cert, key
    c.alpn_protocols = ["h2", "http/1.1"]
    c.keep_alive_timeout = idle
    c.ssl_handshake_timeout = HANDSHAKE_TIMEOUT
    c.backlog = BACKLOG
    c.accesslog = None
    c.errorlog = None
    asyncio.run(serve(asgi_app, c))


def run_uvicorn(port: int, cert: str, key: str, idle: float) -> None:
    import uvicorn
    try:
        import httptools  # noqa: F401
        http = "httptools"
    except ImportError:
        http = "h11"
    cfg = uvicorn.Config(asgi_app, host=HOST, port=port, ssl_certfile=cert, ssl_keyfile=key, http=http,
                         loop="asyncio", timeout_keep_alive=int(idle), backlog=BACKLOG, lifespan="off",
                         log_level="critical", access_log=False)
    uvicorn.Server(cfg).run()


def run_stdlib(port: int, cert: str, key: str, idle: float) -> None:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    ctx = server_ctx(cert, key)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, ctype: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self._headers_buffer.append(b"\r\n")  # end_headers() with the body in the same write,
            self._headers_buffer.append(body)     # as ossensor/vsensor/server.py does
            self.flush_headers()

        def do_POST(self):
            if self.path != "/echo":
                return self._send(404, "text/plain", b"not found")
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self._send(200, "application/json", json.dumps({"n": len(body)}).encode())

        def do_GET(self):
            if self.path == "/healthz":
                return self._send(200, "text/plain", b"ok")
            self._send(404, "text/plain", b"not found")

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = BACKLOG

        def server_bind(self):
            import socketserver
            socketserver.TCPServer.server_bind(self)
            self.server_name, self.server_port = HOST, port

        def finish_request(self, request, client_address):
            request.settimeout(HANDSHAKE_TIMEOUT)
            conn = ctx.wrap_socket(request, server_side=True)  # handshake in this connection's thread
            conn.settimeout(idle)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as ossensor/vsensor/server.py does
            self.RequestHandlerClass(conn, client_address, self)

        def handle_error(self, request, client_address):
            pass

    Server((HOST, port), Handler).serve_forever()


RUNNERS = {"aiohttp": run_aiohttp, "hypercorn": run_hypercorn, "uvicorn": run_uvicorn, "stdlib": run_stdlib}


def runner(name: str):
    """A candidate's runner; aiohttp<N>k (e.g. aiohttp16k, only with --only) is aiohttp with an N KiB SSL buffer."""
    m = re.fullmatch(r"aiohttp(\d+)k", name)
    if m:
        return lambda *a: run_aiohttp(*a, sslbuf=int(m.group(1)) * 1024)
    return RUNNERS[name]


# ---------------------------------------------------------------------------------------- clients
def client_ctx() -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


async def idle_client(port: int, n: int) -> None:
    """Open n TLS connections (at most 100 handshakes in flight), report, wait for a line on stdin,
    report how many the server closed meanwhile, close all."""
    ctx = client_ctx()
    sem = asyncio.Semaphore(100)
    conns, errors = [], []

    async def one():
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(HOST, port, ssl=ctx), 30)
                conns.append((r, w))
            except Exception as e:  # noqa: BLE001
                errors.append(type(e).__name__)

    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(n)))
    secs = time.monotonic() - t0
    watchers = [asyncio.ensure_future(r.read(1)) for r, _ in conns]
    await asyncio.sleep(1.0)
    closed = sum(1 for t in watchers if t.done())
    print(json.dumps({"ok": len(conns), "errors": sorted(set(errors)), "n_errors": len(errors),
                      "closed_after_1s": closed, "secs": round(secs, 2)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    closed = sum(1 for t in watchers if t.done())
    print(json.dumps({"closed_at_measure": closed}), flush=True)
    for t in watchers:
        t.cancel()
    for _, w in conns:
        w.transport.abort()


async def load_client(port: int, conc: int, size: int, seconds: float) -> None:
    ctx = client_ctx()
    body = os.urandom(size)
    req = (f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/octet-stream\r\n"
           f"Content-Length: {size}\r\n\r\n").encode() + body
    expect = json.dumps({"n": size}).encode()
    conns = list(await asyncio.gather(*(asyncio.open_connection(HOST, port, ssl=ctx) for _ in range(conc))))
    counts = [0] * conc
    errors = []
    reconnects = [0]
    go = asyncio.Event()
    deadline = [0.0]

    async def worker(i, r, w):
        await go.wait()
        try:
            while time.monotonic() < deadline[0]:
                w.write(req)
                await w.drain()
                head = await r.readuntil(b"\r\n\r\n")
                status = head[9:12]
                cl, close = 0, False
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    k = k.strip().lower()
                    if k == b"content-length":
                        cl = int(v)
                    elif k == b"connection" and v.strip().lower() == b"close":
                        close = True
                data = await r.readexactly(cl)
                if status != b"200" or data.replace(b" ", b"") != expect.replace(b" ", b""):
                    errors.append(f"{status!r} {data[:60]!r}")
                    return
                counts[i] += 1
                if close:  # e.g. hypercorn's keep_alive_max_requests (1000): reconnect, inside the timed run
                    w.transport.abort()
                    r, w = await asyncio.open_connection(HOST, port, ssl=ctx)
                    conns[i] = (r, w)
                    reconnects[0] += 1
        except Exception as e:  # noqa: BLE001
            errors.append(type(e).__name__ + ": " + str(e)[:80])

    tasks = [asyncio.ensure_future(worker(i, r, w)) for i, (r, w) in enumerate(conns)]
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    deadline[0] = t0 + seconds
    go.set()
    await asyncio.gather(*tasks)
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    for _, w in conns:
        w.transport.abort()
    print(json.dumps({"reqs": sum(counts), "wall": wall, "errors": errors[:3], "n_errors": len(errors),
                      "reconnects": reconnects[0],
                      "client_cpu": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)}), flush=True)


async def probe_client(targets: list, limit: float) -> None:
    """For each (name, port): slow headers, slow body, no ClientHello, all at once."""
    ctx = client_ctx()

    async def watch(r, t0):
        got = b""
        try:
            while True:
                d = await r.read(65536)
                if not d:
                    return time.monotonic() - t0, got
                got += d
        except Exception as e:  # noqa: BLE001
            return time.monotonic() - t0, got or type(e).__name__.encode()

    async def drip(w, first: bytes, unit: bytes, every: float):
        try:
            w.write(first)
            await w.drain()
            i = 0
            while True:
                await asyncio.sleep(every)
                w.write(unit % i if b"%d" in unit else unit)
                await w.drain()
                i += 1
        except Exception:  # noqa: BLE001
            pass

    async def slow(port, first, unit, every):
        try:
            r, w = await asyncio.open_connection(HOST, port, ssl=ctx)
        except Exception as e:  # noqa: BLE001
            return f"connect failed: {type(e).__name__}"
        t0 = time.monotonic()
        feeder = asyncio.ensure_future(drip(w, first, unit, every))
        try:
            secs, got = await asyncio.wait_for(watch(r, t0), limit)
            res = f"{secs:.1f}"
            if got:
                res += " (" + got.split(b"\r\n")[0][:24].decode("latin-1") + ")"
        except asyncio.TimeoutError:
            res = "never"
        feeder.cancel()
        w.transport.abort()
        return res

    async def no_hello(port):
        r, w = await asyncio.open_connection(HOST, port)
        t0 = time.monotonic()
        try:
            secs, got = await asyncio.wait_for(watch(r, t0), limit)
            res = f"{secs:.1f}"
        except asyncio.TimeoutError:
            res = "never"
        w.transport.abort()
        return res

    jobs = {}
    for name, port in targets:
        jobs[(name, "slow_headers")] = slow(port, f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n".encode(),
                                           b"X-Slow-%d: y\r\n", 2.0)
        jobs[(name, "slow_body")] = slow(port, f"POST /echo HTTP/1.1\r\nHost: {HOST}\r\n"
                                               f"Content-Length: 1000000\r\n\r\n".encode(), b"x", 1.0)
        jobs[(name, "no_hello")] = no_hello(port)
    res = await asyncio.gather(*jobs.values())
    print(json.dumps({f"{k[0]}|{k[1]}": v for k, v in zip(jobs, res)}), flush=True)


# ---------------------------------------------------------------------------------------- parent
def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_secs(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


class Srv:
    def __init__(self, name: str, cert: str, key: str, idle: float):
        self.name, self.port = name, free_port()
        self.proc = subprocess.Popen([sys.executable, ME, "_server", name, str(self.port), cert, key, str(idle)],
                                     stdin=subprocess.DEVNULL)

    def wait_ready(self, timeout: float = 30) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} server exited with {self.proc.returncode}")
            try:
                ctx = client_ctx()
                with socket.create_connection((HOST, self.port), 1) as s, ctx.wrap_socket(s) as t:
                    t.sendall(f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
                    data = b""
                    while True:
                        d = t.recv(4096)
                        if not d:
                            break
                        data += d
                    if data.startswith(b"HTTP/1.1 200") and data.endswith(b"ok"):
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} server not ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def client(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, ME, *args], stdout=subprocess.PIPE, text=True, **kw)


def measure_rss(srv: Srv, n: int) -> dict:
    time.sleep(0.5)
    before = rss_kib(srv.proc.pid)
    c = client("_idle", str(srv.port), str(n), stdin=subprocess.PIPE)
    first = json.loads(c.stdout.readline())
    time.sleep(0.5)
    after = rss_kib(srv.proc.pid)
    c.stdin.write("\n")
    c.stdin.flush()
    second = json.loads(c.stdout.readline())
    c.wait(30)
    time.sleep(1.0)
    return {"before": before, "after": after, "per_conn": (after - before) / n, **first, **second}


def measure_load(srv: Srv, conc: int, size: int, seconds: float) -> dict:
    c0 = cpu_secs(srv.proc.pid)
    c = client("_load", str(srv.port), str(conc), str(size), str(seconds))
    out = json.loads(c.stdout.readline())
    c.wait(30)
    c1 = cpu_secs(srv.proc.pid)
    out["srv_cpu"] = c1 - c0
    out["rps"] = out["reqs"] / out["wall"]
    out["mbps"] = out["reqs"] * size / out["wall"] / 1e6
    return out


LOADS = [("1MiB x1", 1, 1 << 20), ("1MiB x10", 10, 1 << 20), ("1MiB x100", 100, 1 << 20), ("1KiB x100", 100, 1024)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conns", type=int, default=2000)
    ap.add_argument("--seconds", type=float, default=5.0, help="per throughput run")
    ap.add_argument("--repeat", type=int, default=1, help="interleaved throughput rounds (median)")
    ap.add_argument("--probe-limit", type=float, default=40.0)
    ap.add_argument("--only", default=",".join(CANDIDATES))
    ap.add_argument("--skip", default="", help="comma list of phases to skip: rss,probes,tput")
    a = ap.parse_args()
    names = [n for n in a.only.split(",") if n]
    for n in names:
        if n not in RUNNERS and not re.fullmatch(r"aiohttp\d+k", n):
            ap.error(f"unknown candidate {n}")
    skip = set(a.skip.split(","))
    raise_nofile()
    t_start = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="bench-httplibs-")
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-subj", "/CN=127.0.0.1", "-days", "1", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    servers, probe_servers = {}, {}
    res: dict = {n: {} for n in names}
    try:
        for n in names:
            servers[n] = Srv(n, cert, key, 600)
            if "probes" not in skip:
                probe_servers[n] = Srv(n, cert, key, 10)
        for s in list(servers.values()) + list(probe_servers.values()):
            s.wait_ready()
        probes = None
        if "probes" not in skip:
            probes = client("_probes", json.dumps([[n, s.port] for n, s in probe_servers.items()]),
                            str(a.probe_limit))
        if "rss" not in skip:
            for n in names:
                res[n]["rss"] = r = measure_rss(servers[n], a.conns)
                print(f"# rss {n}: {r}", file=sys.stderr, flush=True)
        if probes is not None:
            out = json.loads(probes.stdout.readline())
            probes.wait(30)
            for k, v in out.items():
                n, what = k.split("|")
                res[n][what] = v
            for s in probe_servers.values():
                s.stop()
        if "tput" not in skip:
            for rnd in range(a.repeat):
                for label, conc, size in LOADS:
                    for n in names:
                        r = measure_load(servers[n], conc, size, a.seconds)
                        res[n].setdefault(label, []).append(r)
                        print(f"# round {rnd} {label} {n}: {r['rps']:.1f} req/s {r['mbps']:.1f} MB/s "
                              f"srv_cpu {r['srv_cpu']:.2f}s client_cpu {r['client_cpu']:.2f}s "
                              f"reconnects {r['reconnects']} errors {r['n_errors']} {r['errors']}", file=sys.stderr, flush=True)
    finally:
        for s in list(servers.values()) + list(probe_servers.values()):
            s.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    rows: list[tuple[str, list[str]]] = []

    def row(label, f):
        vals = []
        for n in names:
            try:
                vals.append(f(res[n]))
            except (KeyError, ZeroDivisionError, statistics.StatisticsError):
                vals.append("-")
        rows.append((label, vals))

    if "rss" not in skip:
        row("RSS idle server (MiB)", lambda r: f"{r['rss']['before'] / 1024:.1f}")
        row(f"RSS with {a.conns} conns (MiB)", lambda r: f"{r['rss']['after'] / 1024:.1f}")
        row("KiB per idle TLS conn", lambda r: f"{r['rss']['per_conn']:.1f}")
        row(f"conns accepted/open of {a.conns}",
            lambda r: f"{r['rss']['ok']}/{r['rss']['ok'] - r['rss']['closed_at_measure']}"
                      + ("" if not r['rss']['n_errors'] else f" ({','.join(r['rss']['errors'])})"))
        row(f"secs to open {a.conns}", lambda r: f"{r['rss']['secs']:.1f}")
    if "probes" not in skip:
        row("slow headers (line/2s): closed after s", lambda r: r["slow_headers"])
        row("slow body (1 B/s): closed after s", lambda r: r["slow_body"])
        row("no ClientHello: closed after s", lambda r: r["no_hello"])
    if "tput" not in skip:
        def med(r, label, key):
            return statistics.median(x[key] for x in r[label])

        def errs(r, label):
            return sum(x["n_errors"] for x in r[label])

        for label, conc, size in LOADS:
            row(f"{label} req/s", lambda r, l=label: f"{med(r, l, 'rps'):.0f}"
                + (f" ({errs(r, l)} err)" if errs(r, l) else "")
                + (f" ({sum(x['reconnects'] for x in r[l])} reconn)" if any(x['reconnects'] for x in r[l]) else ""))
            if size > 1024:
                row(f"{label} MB/s", lambda r, l=label: f"{med(r, l, 'mbps'):.0f}")
            row(f"{label} server CPU %", lambda r, l=label: f"{statistics.median(x['srv_cpu'] / x['wall'] * 100 for x in r[l]):.0f}")
            row(f"{label} server CPU ms/req" if size > 1024 else f"{label} server CPU us/req",
                lambda r, l=label, k=(1e3 if size > 1024 else 1e6):
                f"{statistics.median(x['srv_cpu'] / max(x['reqs'], 1) * k for x in r[l]):.{2 if size > 1024 else 0}f}")
            row(f"{label} client CPU %", lambda r, l=label: f"{statistics.median(x['client_cpu'] / x['wall'] * 100 for x in r[l]):.0f}")

    w0 = max(len(l) for l, _ in rows)
    ws = [max(len(n), *(len(v[i]) for _, v in rows)) for i, n in enumerate(names)]
    print("$ " + " ".join(["python3", "bench/http_servers.py", *sys.argv[1:]]))
    print(f"versions: {versions()}; python {sys.version.split()[0]}; {os.cpu_count()} cpus; "
          f"run took {time.monotonic() - t_start:.0f} s")
    print(" | ".join([" " * w0] + [n.rjust(w) for n, w in zip(names, ws)]))
    for label, vals in rows:
        print(" | ".join([label.ljust(w0)] + [v.rjust(w) for v, w in zip(vals, ws)]))
    return 0


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version
    out = []
    for p in ("aiohttp", "hypercorn", "h11", "h2", "uvicorn", "httptools"):
        try:
            out.append(f"{p} {version(p)}")
        except PackageNotFoundError:
            out.append(f"{p} -")
    return ", ".join(out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("_"):
        raise_nofile()
        cmd, args = sys.argv[1], sys.argv[2:]
        if cmd == "_server":
            runner(args[0])(int(args[1]), args[2], args[3], float(args[4]))
        elif cmd == "_idle":
            asyncio.run(idle_client(int(args[0]), int(args[1])))
        elif cmd == "_load":
            asyncio.run(load_client(int(args[0]), int(args[1]), int(args[2]), float(args[3])))
        elif cmd == "_probes":
            asyncio.run(probe_client(json.loads(args[0]), float(args[1])))
        sys.exit(0)
    sys.exit(main())
