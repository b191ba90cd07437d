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
its body is read. At most ``--max-connections`` connections are served at once; more get a fast 503.

One plain line per request on standard output (flushed). Never the key nor a signature.
"""

from __future__ import annotations

import argparse
import io
import ipaddress
import json
import math
import os
import socket
import socketserver
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ossensor import __version__, protocol
from ossensor.exits import EXIT_USAGE
from ossensor.pcapng import PcapngError
from ossensor.ops.stop_signals import StopSignals
from ossensor.vsensor import antigena as _antigena
from ossensor.vsensor import store as _store
from ossensor.vsensor import tls as _tls

DEFAULT_LISTEN = "0.0.0.0:443"
DEFAULT_OUT = "./vsensor-out"
HELLO_MAX_BODY = 64 * 1024
IDLE_TIMEOUT_S = 120       # a keep-alive connection idle (or a body stalled) this long is closed
HANDSHAKE_TIMEOUT_S = 15
DRAIN_CHUNK = 256 * 1024
REFUSED_DRAIN_MAX = HELLO_MAX_BODY  # a refused request's body up to this is drained (keep-alive) ...
LINGER_S = 2.0                      # ... a larger one is not read: answer, discard for this long, close
MAX_CONNECTIONS = 64                # connections served at once (one thread each)
BUSY_REFUSERS = 16                  # threads answering 503 to connections over that limit
MAX_BODY_MB_RANGE = (0.001, 1024.0)
MAX_CONNECTIONS_RANGE = (1, 4096)
VSENSOR_NAME = "ossensor-reference"
# headers a request may carry once only (and every X-Ossensor-* header)
_SINGLE_HEADERS = {"content-length", "content-type", "content-encoding", "transfer-encoding", "host", "expect"}


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
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS, metavar="N",
                        help="connections served at once, one thread each; more are answered 503 at once "
                             f"(default {MAX_CONNECTIONS}; each sensor keeps up to 2 open: batches, Antigena)")


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


def _clean(value, limit: int = 80) -> str:
    """Header-derived text made safe for a one-line log: printable ASCII, no spaces, bounded."""
    if value is None:
        return "-"
    text = "".join(c if 33 <= ord(c) < 127 else "?" for c in str(value))
    return text[:limit] + ("..." if len(text) > limit else "")


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


def decode_body(body: bytes, encoding: str, limit: int) -> bytes | bytearray:
    if encoding == "identity":
        return body
    import zstandard

    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(body), read_across_frames=True)
        out = bytearray()
        while True:
            chunk = reader.read(min(1 << 20, limit + 1 - len(out)))
            if not chunk:
                break
            out += chunk
            if len(out) > limit:
                raise protocol.ProtocolError(413, f"decoded body larger than {limit} bytes")
    except zstandard.ZstdError as err:
        raise protocol.ProtocolError(400, f"zstd body does not decode: {err}") from None
    return out  # not copied into bytes: parse_batch and the store take any buffer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = f"ossensor-vsensor/{__version__}"
    sys_version = ""
    server: "VSensorServer"

    # -- plumbing --------------------------------------------------------------------------
    def setup(self):
        super().setup()
        # Answers are small and the sensor waits for each one: without this, a write that Nagle holds
        # back meets the sensor's delayed ACK and every answer waits ~40 ms (stop-and-wait shipping
        # then tops out at one 4 MiB batch per 40 ms).
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, format, *args):  # noqa: A002 - the per-request line is ours
        pass

    def log_error(self, format, *args):  # noqa: A002 - malformed HTTP (bad request line, ...)
        self.server.app.log(f"error peer={self._peer()} reason={_clean(format % args, 200)}")

    def _peer(self) -> str:
        return _clean(self.client_address[0] if self.client_address else "-")

    def _send(self, status: int, payload, *, close: bool = False, extra: dict | None = None,
              signed_for: protocol.Verified | None = None) -> None:
        if isinstance(payload, (dict, list)):
            data, ctype = (json.dumps(payload) + "\n").encode(), "application/json"
        else:
            data, ctype = payload.encode(), "text/plain; charset=utf-8"
        if signed_for is not None:  # the answer to a verified request, signed for it (protocol.md)
            extra = {**(extra or {}), **self.server.app.sign_answer(status, data, signed_for, self.path)}
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self._headers_buffer.append(b"\r\n")  # end_headers(), with the body in the same write
        if self.command != "HEAD":
            self._headers_buffer.append(data)
        self.flush_headers()

    def _refuse(self, status: int, reason: str, *, close: bool = False, seq=None) -> None:
        app = self.server.app
        app.log(f"refused sensor={_clean(self.headers.get(protocol.H_SENSOR))} "
                f"seq={_clean(seq if seq is not None else self.headers.get(protocol.H_SEQ), 24)} "
                f"status={status} reason={_clean(reason.replace(' ', '_'), 200)} path={_clean(self.path, 40)} "
                f"peer={self._peer()}")
        extra = {"WWW-Authenticate": protocol.SCHEME} if status == 401 else None
        self._send(status, {"status": "refused", "reason": reason}, close=close, extra=extra)

    def _drain(self, n: int) -> bool:
        """Read and discard n body bytes in small chunks (memory stays bounded). False if the peer stalls."""
        try:
            while n > 0:
                chunk = self.rfile.read(min(DRAIN_CHUNK, n))
                if not chunk:
                    return False
                n -= len(chunk)
            return True
        except OSError:
            return False

    def _linger(self, n: int) -> None:
        """After answering a refused request whose body is not read: discard what the peer still sends
        for at most LINGER_S (and n bytes), so that the answer reaches it rather than a reset."""
        deadline = time.monotonic() + LINGER_S
        try:
            while n > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self.connection.settimeout(left)
                chunk = self.rfile.read1(min(DRAIN_CHUNK, n))
                if not chunk:
                    break
                n -= len(chunk)
        except (OSError, ValueError):
            pass

    def _refuse_unread(self, err: protocol.ProtocolError, n: int) -> None:
        """A header-level refusal: answered before any of the body is read. A small body is then
        drained (the connection stays usable); a larger one is never read: the connection closes."""
        if n <= REFUSED_DRAIN_MAX:
            close = not self._drain(n)
            self._refuse(err.status, err.reason, close=close)
            return
        self._refuse(err.status, err.reason, close=True)
        self._linger(n)

    def _duplicated(self) -> str | None:
        """A header that must appear once and appears more: two Content-Lengths (the first for the vSensor,
        the second for a proxy in front of it: request smuggling), or two of a signed header (which one
        would the signature cover?)."""
        seen: dict[str, int] = {}
        for name in self.headers.keys():
            low = name.lower()
            if low in _SINGLE_HEADERS or low.startswith("x-ossensor-"):
                seen[low] = seen.get(low, 0) + 1
                if seen[low] > 1:
                    return name
        return None

    def _content_length(self, limit: int) -> int | None:
        """The announced body length, or None after refusing (411/413/400) without reading the body."""
        twice = self._duplicated()
        if twice:
            self._refuse(400, f"duplicate {_clean(twice, 40)} header", close=True)
            return None
        if self.headers.get("Transfer-Encoding"):
            self._refuse(411, "Content-Length required (chunked transfer encoding is not accepted)", close=True)
            return None
        length = self.headers.get("Content-Length")
        if length is None:
            self._refuse(411, "Content-Length required", close=True)
            return None
        length = length.strip()
        if not (length.isascii() and length.isdigit()):
            self._refuse(400, "bad Content-Length", close=True)
            return None
        n = int(length)
        if n > limit:
            self._refuse(413, f"body of {n} bytes is larger than the limit of {limit} bytes", close=True)
            return None
        return n

    def handle_expect_100(self):
        """Expect: 100-continue: refuse a too-large or wrongly signed request before the body is sent."""
        path = self.path
        limit = self.server.app.max_body if path == protocol.PATH_BATCHES else HELLO_MAX_BODY
        if path == protocol.PATH_ANTIGENA:
            limit = _antigena.MAX_BODY
        if self.command == "POST" and path in (protocol.PATH_BATCHES, protocol.PATH_HELLO, protocol.PATH_ANTIGENA):
            if self._content_length(limit) is None:
                return False
            try:
                self.server.app.check_headers(self.command, path, self.headers)
            except protocol.ProtocolError as err:
                self._refuse(err.status, err.reason, close=True)
                return False
        return super().handle_expect_100()

    def send_error(self, code, message=None, explain=None):
        """http.server's own refusals (a garbage request line, an unknown method, headers too long):
        JSON like every other answer, always after a status line (even for a one-word request line,
        which http.server would answer as HTTP/0.9, bare), and the connection closed."""
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.1"
        extra = None
        if code == 501:  # a method this server does not have: not "not implemented" but "not allowed"
            code, extra = 405, {"Allow": "GET, HEAD, POST"}
            message = f"method {_clean(self.command, 20)} not allowed; use GET or POST"
        reason = message or self.responses.get(code, ("error",))[0]
        self.log_error("code %d, message %s", code, reason)
        if not hasattr(self, "command"):
            self.command = None
        self._send(code, {"status": "refused", "reason": reason}, close=True, extra=extra)

    # -- routes ----------------------------------------------------------------------------
    def do_GET(self):  # noqa: N802
        if self.path == "/healthz":
            self._send(200, "ok\n")
        elif self.path in (protocol.PATH_BATCHES, protocol.PATH_HELLO):
            self._send(405, {"status": "refused", "reason": "use POST"}, extra={"Allow": "POST"})
        else:
            self._send(404, {"status": "refused", "reason": "not found"})

    do_HEAD = do_GET  # noqa: N815

    def do_POST(self):  # noqa: N802
        if self.path == protocol.PATH_BATCHES:
            self._post(self.server.app.max_body, batch=True)
        elif self.path == protocol.PATH_HELLO:
            self._post(HELLO_MAX_BODY, batch=False)
        elif self.path == protocol.PATH_ANTIGENA and getattr(self.server.app, "antigena", None):
            self._post(_antigena.MAX_BODY, batch=False)  # reports in, actions out (vsensor/antigena.py)
        else:
            n = self._content_length(HELLO_MAX_BODY)
            if n is not None:
                close = not self._drain(n)
                self._send(404, {"status": "refused", "reason": "not found"}, close=close)

    def _post(self, limit: int, *, batch: bool) -> None:
        app = self.server.app
        n = self._content_length(limit)
        if n is None:
            return
        try:  # headers, signature and time window first: an unauthenticated body is never read
            checked = app.check_headers("POST", self.path, self.headers)
        except protocol.ProtocolError as err:
            self._refuse_unread(err, n)
            return
        try:
            body = self.rfile.read(n)
        except OSError as err:
            self.close_connection = True
            app.log(f"error peer={self._peer()} reason=reading_body:_{_clean(err, 100)}")
            return
        if len(body) != n:
            self.close_connection = True
            app.log(f"error peer={self._peer()} reason=body_shorter_than_Content-Length")
            return
        try:
            v = protocol.verify_body(checked, body)
        except protocol.ProtocolError as err:
            self._refuse(err.status, err.reason)
            return
        if self.path == protocol.PATH_ANTIGENA:
            status, payload = app.antigena.exchange(v, body, self._peer())
            self._send(status, payload, signed_for=v)
            return
        if not batch:
            app.log(f"hello sensor={v.sensor} boot={v.boot} peer={self._peer()}")
            self._send(200, {"status": "ok", "vsensor": VSENSOR_NAME, "version": __version__,
                             "time": int(time.time()), "max_body": app.max_body, "max_body_bytes": app.max_body,
                             "max_skew": app.max_skew})
            return
        self._batch(v, body)

    def _duplicate(self, v: protocol.Verified) -> None:
        app = self.server.app
        app.log(f"duplicate sensor={v.sensor} boot={v.boot} seq={v.seq} status=409 peer={self._peer()}")
        self._send(409, {"status": "duplicate", "seq": v.seq, "reason": "batch already accepted"})

    def _batch(self, v: protocol.Verified, body: bytes) -> None:
        app = self.server.app
        if app.guard.seen(v.sensor, v.boot, v.seq):
            self._duplicate(v)
            return
        try:
            section = decode_body(body, v.content_encoding, app.max_body)
            parsed = _store.parse_batch(section)
        except protocol.ProtocolError as err:
            self._refuse(err.status, err.reason, seq=v.seq)
            return
        except PcapngError as err:
            self._refuse(400, f"malformed pcapng: {err}", seq=v.seq)
            return
        with app.stream_lock(v.sensor, v.boot):
            if app.guard.seen(v.sensor, v.boot, v.seq):
                self._duplicate(v)
                return
            try:
                files = app.store.append(v.sensor, v.boot, v.seq, parsed, sent=v.timestamp,
                                         wire_bytes=len(body), encoding=v.content_encoding)
            except OSError as err:
                app.log(f"error sensor={v.sensor} seq={v.seq} reason=store_failed:_{_clean(err, 160)}")
                self._send(503, {"status": "refused", "reason": "the vSensor could not store the batch; retry"},
                           extra={"Retry-After": "5"})
                return
            app.guard.accept(v.sensor, v.boot, v.seq)
        app.log(f"accepted sensor={v.sensor} boot={v.boot} seq={v.seq} packets={parsed.packets} "
                f"bytes={parsed.size} wire_bytes={len(body)} encoding={v.content_encoding} "
                f"file={','.join(files) or '-'} peer={self._peer()}")
        self._send(200, {"status": "accepted", "seq": v.seq, "packets": parsed.packets, "bytes": parsed.size})


class VSensorServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], family: int, app: App, ctx: ssl.SSLContext,
                 max_connections: int = MAX_CONNECTIONS):
        self.address_family = family
        self.app = app
        self.ssl_context = ctx
        self.max_connections = max_connections
        self._slots = threading.BoundedSemaphore(max_connections)
        self._busy_slots = threading.BoundedSemaphore(BUSY_REFUSERS)
        self._busy_count = 0
        self._busy_logged = 0.0
        super().__init__(address, Handler, bind_and_activate=False)

    # -- bounded concurrency: one thread per connection, at most max_connections of them ------------
    def process_request(self, request, client_address):
        if self._slots.acquire(blocking=False):
            try:
                super().process_request(request, client_address)  # starts process_request_thread
            except BaseException:
                self._slots.release()
                raise
            return
        self._note_busy(client_address)
        if self._busy_slots.acquire(blocking=False):
            try:
                threading.Thread(target=self._answer_busy, args=(request,), daemon=True).start()
            except BaseException:
                self._busy_slots.release()
                self.shutdown_request(request)
            return
        self.shutdown_request(request)  # even the 503 answerers are busy: just close

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _note_busy(self, client_address) -> None:
        self._busy_count += 1
        now = time.monotonic()
        if now - self._busy_logged >= 5:
            self._busy_logged = now
            self.app.log(f"busy refused={self._busy_count} limit={self.max_connections} "
                         f"peer={_clean(client_address[0])} reason=too_many_connections_(503)")

    def _answer_busy(self, request) -> None:
        """Over the connection limit: a 503 with Retry-After right after the handshake, then close."""
        try:
            request.settimeout(5)
            conn = self.ssl_context.wrap_socket(request, server_side=True)
            data = (json.dumps({"status": "refused", "reason": "the vSensor is busy (too many connections); "
                                "retry"}) + "\n").encode()
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                         b"Retry-After: 1\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
            conn.settimeout(0.5)
            try:  # let the request arrive, so that closing does not reset the answer away
                conn.recv(65536)
            except OSError:
                pass
            conn.close()
        except (OSError, ssl.SSLError, ValueError):
            pass
        finally:
            try:
                request.close()
            except OSError:
                pass
            self._busy_slots.release()

    def server_bind(self):
        # HTTPServer.server_bind would call socket.getfqdn(), a reverse DNS lookup that can hang.
        socketserver.TCPServer.server_bind(self)
        host, port = self.socket.getsockname()[:2]
        self.server_name, self.server_port = host, port

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, in the connection's own thread, never in the accept loop.
        request.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            conn = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as err:
            reason = getattr(err, "reason", None) or err.__class__.__name__
            if reason == "HTTP_REQUEST":
                reason = "plain HTTP sent to the HTTPS port (use https://)"
            reason = _clean(str(reason).replace(" ", "_"), 120)
            self.app.log(f"tls-error peer={_clean(client_address[0])} reason={reason}")
            return
        try:
            conn.settimeout(IDLE_TIMEOUT_S)
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError, ssl.SSLError)):
            return
        self.app.log(f"error peer={_clean(client_address[0])} reason=internal:_{_clean(repr(exc), 200)}")


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

    server = VSensorServer(sockaddr[:2], family, app, ctx, max_connections=args.max_connections)
    try:
        server.server_bind()
        server.server_activate()
    except OSError as err:
        server.server_close()
        store.close()
        return _fail(f"cannot listen on {args.listen}: {err.strerror or err}")

    bound_host, bound_port = server.server_address[:2]
    ca_text = str(ca_path) if ca_path else "(given certificate)"
    app.log(f"listening on https://{_url_host(bound_host)}:{bound_port} out={out} ca={ca_text}")
    if ca_path:
        app.log(f"sensors trust this vSensor with OSSENSOR_TLS_CA_FILE={ca_path.resolve()}")
    if args.client_ca:
        app.log(f"client certificates required, signed by {args.client_ca}")
    # The server runs in a thread, the main thread waits for SIGTERM/SIGINT: a handler that stopped the
    # server itself would take locks the main thread may hold at that instant (ops/stop_signals.py).
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="serve")
    failed = False
    try:
        with StopSignals() as stop:
            serving.start()
            while not stop.wait(1.0):
                if not serving.is_alive():  # serve_forever raised (its traceback is printed)
                    failed = True
                    break
            if serving.is_alive():
                server.shutdown()  # returns once serve_forever has
            serving.join()
    finally:
        server.server_close()
        store.close()
        app.log("stopped")
    return 1 if failed else 0
