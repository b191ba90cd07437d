"""`ossensor vsensor`: the reference vSensor receiver (HTTPS, HMAC-verified batches -> pcapng files).

Routes (docs/protocol.md is the contract):

* ``POST /v1/batches`` - one signed pcapng section; 200 ``{"status":"accepted",...}`` once stored,
  409 ``{"status":"duplicate",...}`` for a seq already accepted, else ``{"status":"refused","reason":...}``
  with 400/401/411/413/415 (503 when it cannot be stored: retry).
* ``POST /v1/hello`` - a signed empty request: "does the vSensor accept my key and clock?"
  Checked for signature and time window only (no replay bookkeeping: it changes nothing).
* ``POST /v1/antigena`` - reports in, actions out (vsensor/antigena.py); the answer is signed
  (``X-Ossensor-Response-Signature``).
* ``GET /healthz`` - 200 ``ok``.

A request whose headers fail (syntax, content type, signature, time window) is refused before any of
its body is read. Connections are served by one asyncio loop (aiohttp, vsensor/routes.py) under deadlines
a slow client cannot extend (vsensor/listener.py); over ``--max-connections`` a connection gets a fast 503.

One plain line per request on standard output (flushed). Never the key nor a signature.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import ipaddress
import logging
import math
import os
import resource
import socket
import ssl
import sys
import threading
import time
from pathlib import Path

from aiohttp import web

from ossensor import protocol
from ossensor.exits import EXIT_USAGE
from ossensor.ops.stop_signals import StopSignals
from ossensor.vsensor import antigena as _antigena
from ossensor.vsensor import listener as _listener
from ossensor.vsensor import routes as _routes
from ossensor.vsensor import store as _store
from ossensor.vsensor import tls as _tls

DEFAULT_LISTEN = "0.0.0.0:443"
DEFAULT_OUT = "./vsensor-out"
MAX_BODY_MB_RANGE = (0.001, 1024.0)
MAX_CONNECTIONS_RANGE = (1, 65536)
IDLE_TIMEOUT_RANGE = (1.0, 3600.0)
LISTEN_BACKLOG = 4096
FD_SPARE = 256  # descriptors beyond connections, handshakes and the store's files: the loop's own, logs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("Reference vSensor: receives HMAC-signed pcapng batches over HTTPS and appends them "
                          "to pcapng files (DIR/<sensor>-<boot>.pcapng) plus DIR/batches.jsonl. The key comes "
                          "from VSENSOR_HMAC_KEY or VSENSOR_HMAC_KEY_FILE, as for the sensor.")
    parser.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT",
                        help=f"address to listen on (default {DEFAULT_LISTEN}; IPv6 as [::1]:8443; port 0 picks "
                             "a free port, shown in the 'listening on' line)")
    parser.add_argument("--tls-cert", type=Path, metavar="PEM",
                        help="server certificate (chain) PEM; default: a self-made CA and certificate in --out")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="private key PEM of --tls-cert")
    parser.add_argument("--client-ca", type=Path, metavar="PEM",
                        help="require client certificates signed by this CA (mutual TLS)")
    parser.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), metavar="DIR",
                        help=f"where pcapng files, batches.jsonl and generated certificates go (default {DEFAULT_OUT})")
    parser.add_argument("--max-body-mb", type=float, default=protocol.MAX_BODY / (1024 * 1024), metavar="MB",
                        help="refuse (413) bodies, and decoded sections, larger than this "
                             f"(default {protocol.MAX_BODY // (1024 * 1024)})")
    parser.add_argument("--max-skew", type=int, default=protocol.MAX_SKEW_S, metavar="SECONDS",
                        help=f"refuse batches signed further than this from our clock (default {protocol.MAX_SKEW_S})")
    parser.add_argument("--max-connections", type=int, default=_listener.MAX_CONNECTIONS, metavar="N",
                        help="connections served at once; beyond, a new one takes the place of the oldest that has "
                             "not sent a signed request, else it is answered 503 (default "
                             f"{_listener.MAX_CONNECTIONS}; a sensor keeps up to 17 open: up to 16 shipping "
                             "batches, as OSSENSOR_INFLIGHT_MB allows, and one for Antigena)")
    parser.add_argument("--idle-timeout", type=float, default=_listener.IDLE_TIMEOUT_S, metavar="SECONDS",
                        help="close a keep-alive connection without a complete request this long "
                             f"(default {_listener.IDLE_TIMEOUT_S:g}). Fixed deadlines: TLS handshake "
                             f"{_listener.HANDSHAKE_TIMEOUT_S:g} s, request headers {_listener.HEADER_TIMEOUT_S:g} s "
                             f"from their first byte, a body {_routes.BODY_GRACE_S:g} s + its length at "
                             f"{_routes.MIN_BODY_RATE // 1024} KiB/s")


def parse_listen(value: str) -> tuple[str, int]:
    """'HOST:PORT' or '[V6]:PORT' -> (host, port). Raises ValueError with a one-line reason."""
    value = value.strip()
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ValueError(f"{value!r}: expected [IPV6]:PORT")
        port_s = rest[1:]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{value!r}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port_s = value.rpartition(":")
        if not sep:
            raise ValueError(f"{value!r}: expected HOST:PORT")
        if ":" in host:
            raise ValueError(f"{value!r}: put an IPv6 address in brackets, e.g. [::1]:8443")
        if not host:
            host = "0.0.0.0"
    if not port_s.isascii() or not port_s.isdigit() or not 0 <= int(port_s) <= 65535:
        raise ValueError(f"{value!r}: port must be a number 0-65535")
    return host, int(port_s)


_clean = _routes.clean


class App:
    """State shared by all connections: key, replay guard, store, limits, the log."""

    def __init__(self, key: bytes, store: _store.Store, *, max_body: int, max_skew: int, out=sys.stdout):
        self._key = key
        self.store = store
        self.max_body = max_body
        self.max_skew = max_skew
        self.guard = protocol.ReplayGuard()
        self._out = out
        self._log_lock = threading.Lock()
        self._stream_locks = [threading.Lock() for _ in range(64)]

    def __repr__(self) -> str:  # never show the key
        return f"App(out={self.store.out_dir}, max_body={self.max_body}, max_skew={self.max_skew})"

    def log(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
        with self._log_lock:
            try:
                self._out.write(f"{stamp}Z {line}\n")
                self._out.flush()
            except (OSError, ValueError):
                pass

    def stream_lock(self, sensor: str, boot: str) -> threading.Lock:
        return self._stream_locks[hash((sensor, boot)) % len(self._stream_locks)]

    def check_headers(self, method: str, path: str, headers) -> protocol.SignedHeaders:
        """Header syntax, content type/encoding, signature and time window, before any of the body is
        read (protocol.verify_headers). Raises ProtocolError."""
        return protocol.verify_headers(self._key, method=method, path=path, headers=headers, now=time.time(),
                                       max_skew=self.max_skew)

    def sign_answer(self, status: int, data: bytes, v: protocol.Verified, path: str) -> dict[str, str]:
        return protocol.sign_response(self._key, status=status, body=data, request=v, path=path)


class Service:
    """The asyncio loop, in its own thread (the main thread waits for SIGTERM/SIGINT: ops/stop_signals.py):
    the listening socket, aiohttp's HTTP server (routes.Routes), and the connection layer under it
    (listener.Listener)."""

    def __init__(self, app: App, ctx: ssl.SSLContext, sock: socket.socket, limits: _listener.Limits):
        self.app, self.ctx, self.sock, self.limits = app, ctx, sock, limits
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = threading.Event()

    def run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as err:  # noqa: BLE001 - reported by main() as one line
            self.failed = err
        finally:
            self.ready.set()

    def stop(self) -> None:
        """Any thread, any time: also before the loop runs (a SIGTERM right after start), which _main sees."""
        self._stopping.set()
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            try:
                loop.call_soon_threadsafe(stop.set)
            except RuntimeError:  # the loop has closed: nothing left to stop
                pass

    async def _main(self) -> None:
        stop = asyncio.Event()
        self._stop, self._loop = stop, asyncio.get_running_loop()
        loop = self._loop
        if self._stopping.is_set():  # stop() came before the loop existed
            stop.set()
        loop.set_exception_handler(self._loop_error)
        _listener.tune_asyncio_tls()
        listener = _listener.Listener(self.ctx, None, self.limits, self.app.log)
        routes = _routes.Routes(self.app, listener)
        http = web.Server(routes, loop=loop)
        http.vsensor_log = listener.quiet
        options = dict(loop=loop, keepalive_timeout=self.limits.idle_s, tcp_keepalive=True, access_log=None,
                       logger=_QUIET, lingering_time=_routes.LINGER_S, auto_decompress=False,
                       max_line_size=_routes.MAX_HEADER_LINE, max_field_size=_routes.MAX_HEADER_LINE,
                       max_headers=_routes.MAX_HEADERS)
        known = inspect.signature(web.RequestHandler.__init__).parameters
        options = {k: v for k, v in options.items() if k in known}  # max_headers is new in aiohttp 3.1x
        listener.http_protocol = lambda: _routes.Protocol(http, **options)
        server = await loop.create_server(listener, sock=self.sock, backlog=self.limits.backlog)
        self.ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for conn in list(http.connections):
                conn.close()
            await asyncio.wait_for(http.shutdown(5.0), 10.0)
            routes.close()
            listener.quiet.flush()

    def _loop_error(self, loop, context) -> None:
        exc = context.get("exception")
        if isinstance(exc, (ConnectionError, ssl.SSLError, TimeoutError)):
            return
        what = repr(exc) if exc is not None else context.get("message", "?")
        self.app.log(f"error reason=internal:_{_clean(what, 200)}")


class _Quiet(logging.Logger):
    """aiohttp's own logger: its refusals are ours to log (routes.Protocol.handle_error), one line each."""

    def __init__(self):
        super().__init__("ossensor.vsensor.aiohttp", logging.CRITICAL + 1)
        self.propagate = False
        self.addHandler(logging.NullHandler())


_QUIET = _Quiet()


def _listen(family: int, sockaddr: tuple) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(sockaddr)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def _raise_fd_limit(wanted: int) -> int:
    """Each connection is a file descriptor: raise the soft limit up to the hard one. The limit after."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        new = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (OSError, ValueError):
            pass
    return soft


def _fail(message: str) -> int:
    print(f"ossensor vsensor: {message}", file=sys.stderr)
    return EXIT_USAGE


def _resolve(host: str, port: int) -> tuple[int, tuple]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = infos[0]
    return family, sockaddr


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def main(args: argparse.Namespace) -> int:
    from ossensor.config.key import read_hmac_key

    try:
        host, port = parse_listen(args.listen)
    except ValueError as err:
        return _fail(f"--listen {err}")
    lo, hi = MAX_BODY_MB_RANGE
    if not (math.isfinite(args.max_body_mb) and lo <= args.max_body_mb <= hi):
        return _fail(f"--max-body-mb must be a number from {lo:g} to {hi:g} (MiB), got {args.max_body_mb:g}")
    lo, hi = MAX_CONNECTIONS_RANGE
    if not lo <= args.max_connections <= hi:
        return _fail(f"--max-connections must be from {lo} to {hi}, got {args.max_connections}")
    lo, hi = IDLE_TIMEOUT_RANGE
    if not (math.isfinite(args.idle_timeout) and lo <= args.idle_timeout <= hi):
        return _fail(f"--idle-timeout must be from {lo:g} to {hi:g} seconds, got {args.idle_timeout:g}")
    if args.max_skew < 0:
        return _fail("--max-skew must be 0 or more")
    if (args.tls_cert is None) != (args.tls_key is None):
        return _fail("--tls-cert and --tls-key go together")

    key, problems = read_hmac_key(os.environ)
    if problems:
        for problem in problems:
            print(f"ossensor vsensor: {problem}", file=sys.stderr)
        return EXIT_USAGE
    if not key:
        return _fail("VSENSOR_HMAC_KEY: required, not set")

    try:
        family, sockaddr = _resolve(host, port)
    except (socket.gaierror, UnicodeError) as err:
        return _fail(f"--listen {args.listen!r}: cannot resolve {host!r}: {getattr(err, 'strerror', None) or err}")

    out: Path = args.out
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not os.access(out, os.W_OK | os.X_OK):
            return _fail(f"--out {out}: not writable")
    except OSError as err:
        return _fail(f"--out {out}: {err.strerror or err}")

    ca_path = None
    try:
        if args.tls_cert is None:
            specific = [] if host in ("0.0.0.0", "::", "") else [host]
            ca_path, cert, tls_key = _tls.ensure_self_signed(out, specific)
        else:
            cert, tls_key = args.tls_cert, args.tls_key
            for opt, path in (("--tls-cert", cert), ("--tls-key", tls_key)):
                if not path.is_file():
                    return _fail(f"{opt} {path}: no such file")
        if args.client_ca is not None and not args.client_ca.is_file():
            return _fail(f"--client-ca {args.client_ca}: no such file")
        ctx = _tls.server_context(cert, tls_key, args.client_ca)
    except _tls.TLSSetupError as err:
        return _fail(str(err))
    except OSError as err:
        return _fail(f"TLS setup in {out}: {err.strerror or err}")

    try:
        store = _store.Store(out)
    except OSError as err:
        return _fail(f"--out {out}: {err.strerror or err}")
    app = App(key, store, max_body=int(args.max_body_mb * 1024 * 1024), max_skew=args.max_skew)
    app.antigena = _antigena.Desk(out, app.log)  # POST /v1/antigena; actions from `ossensor vsensor block`
    # A restart must not reopen the replay window: re-seed the guard from the batches accepted before,
    # whatever their age (a retry or a spooled batch is re-signed with a fresh time). Bounded: the last
    # entries of batches.jsonl (store.SEED_TAIL_BYTES, store.SEED_MAX_ENTRIES).
    for sensor, boot, seq in store.accepted():
        app.guard.accept(sensor, boot, seq)

    try:
        sock = _listen(family, sockaddr[:2])
    except OSError as err:
        store.close()
        return _fail(f"cannot listen on {args.listen}: {err.strerror or err}")
    # descriptors: the connections, as many again in their TLS handshake (bare TCP connects hold one up
    # to 5 s each; past max_handshakes the oldest handshake under way is closed: listener.py), and one
    # accept burst (asyncio accepts up to the backlog at once, before any of them reaches the listener)
    max_connections = args.max_connections
    max_handshakes = max(max_connections, _listener.MIN_HANDSHAKES)
    backlog = LISTEN_BACKLOG
    files = store.max_open_files  # pcapng files kept open for appending (store.py)
    fds = _raise_fd_limit(max_connections + max_handshakes + backlog + files + FD_SPARE)
    if fds < max_connections + max_handshakes + backlog + files + FD_SPARE:
        room = max(4, fds - FD_SPARE)
        store.max_open_files = files = max(8, min(files, room // 8))
        room = max(4, room - files)
        backlog = max(1, min(backlog, room // 4))
        max_connections = min(max_connections, (room - backlog) // 2)
        max_handshakes = room - backlog - max_connections
        app.log(f"warning: only {fds} file descriptors (ulimit -n): at most {max_connections} connections, "
                f"not {args.max_connections} ({max_handshakes} TLS handshakes at once, listen backlog {backlog}, "
                f"{files} files open for appending)")
    limits = _listener.Limits(max_connections=max_connections, max_handshakes=max_handshakes, backlog=backlog,
                              idle_s=args.idle_timeout)

    bound_host, bound_port = sock.getsockname()[:2]
    ca_text = str(ca_path) if ca_path else "(given certificate)"
    app.log(f"listening on https://{_url_host(bound_host)}:{bound_port} out={out} ca={ca_text}")
    if ca_path:
        app.log(f"sensors trust this vSensor with OSSENSOR_TLS_CA_FILE={ca_path.resolve()}")
    if args.client_ca:
        app.log(f"client certificates required, signed by {args.client_ca}")
    service = Service(app, ctx, sock, limits)
    serving = threading.Thread(target=service.run, name="serve")
    try:
        with StopSignals() as stop:
            serving.start()
            while not stop.wait(1.0):
                if not serving.is_alive():
                    break
            service.stop()
            serving.join()
    finally:
        sock.close()
        store.close()
        if service.failed is not None:
            app.log(f"error reason=internal:_{_clean(repr(service.failed), 200)}")
        app.log("stopped")
    return 1 if service.failed is not None else 0
