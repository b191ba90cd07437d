"""The vSensor's requests, on aiohttp's low-level server: strict header checks, the signature before any of
the body is read, the body under a deadline and a memory budget, then verification and storage in worker
threads (HMAC over megabytes, zstd, pcapng checks and file writes must not stall the event loop that
serves thousands of connections). docs/protocol.md is the contract; every answer is JSON but /healthz.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from ossensor import __version__, protocol
from ossensor.pcapng import PcapngError
from ossensor.vsensor import antigena as _antigena
from ossensor.vsensor import store as _store
from ossensor.vsensor.listener import Listener, widen_tls_reads

HELLO_MAX_BODY = 64 * 1024
BODY_GRACE_S = 10.0          # a body must arrive within this ...
MIN_BODY_RATE = 64 * 1024    # ... plus its length at this many bytes/s: a trickle cannot hold a connection
LINGER_S = 2.0               # a refused body still arriving is read and discarded this long, then close
BODY_BUDGET = 128 * 1024 * 1024  # request bodies in memory at once, at least (2 x the body limit if more)
WIDE_READS_FROM = 256 * 1024     # bodies this large are read in wider TLS steps (listener.widen_tls_reads)
WORKERS = 4                  # threads verifying and storing bodies
VSENSOR_NAME = "ossensor-reference"
# a request's head, as aiohttp's parser holds it (raw and decoded) until it is complete (10 s at most, any
# client, no key needed): a sensor sends about 15 headers of under 200 bytes. 32 x 2 KiB bounds a
# connection's head to ~130 KiB of memory (100 x 8 KiB let one connection hold 1.6 MiB)
MAX_HEADERS = 32
MAX_HEADER_LINE = 2048
SERVER = f"ossensor-vsensor/{__version__}"
ALLOW = "GET, HEAD, POST"
# headers a request may carry once only (and every X-Ossensor-* header)
_SINGLE_HEADERS = {"content-length", "content-type", "content-encoding", "transfer-encoding", "host", "expect"}


def clean(value, limit: int = 80) -> str:
    """Header-derived text made safe for a one-line log: printable ASCII, no spaces, bounded."""
    if value is None:
        return "-"
    text = "".join(c if 33 <= ord(c) < 127 else "?" for c in str(value))
    return text[:limit] + ("..." if len(text) > limit else "")


class Refused(Exception):
    """An answer decided before the route's end: status, JSON reason, whether to close."""

    def __init__(self, status: int, reason: str, *, close: bool = False, extra: dict | None = None):
        super().__init__(reason)
        self.status, self.reason, self.close, self.extra = status, reason, close, extra


def answer(status: int, payload, *, close: bool = False, extra: dict | None = None, data: bytes | None = None
           ) -> web.Response:
    if data is None:
        if isinstance(payload, (dict, list)):
            data = (json.dumps(payload) + "\n").encode()
        else:
            data = payload.encode()
    ctype = "application/json" if isinstance(payload, (dict, list)) else "text/plain"
    resp = web.Response(status=status, body=data, content_type=ctype,
                        charset=None if ctype == "application/json" else "utf-8",
                        headers={"Cache-Control": "no-store", "Server": SERVER, **(extra or {})})
    if close:
        resp.force_close()
        resp.headers["Connection"] = "close"
    return resp


def refusal(status: int, reason: str, *, close: bool = False, extra: dict | None = None) -> web.Response:
    """{"status":"refused","reason":...}; a 401 names the scheme (WWW-Authenticate)."""
    if status == 401:
        extra = {**(extra or {}), "WWW-Authenticate": protocol.SCHEME}
    return answer(status, {"status": "refused", "reason": reason}, close=close, extra=extra)


def body_deadline(n: int) -> float:
    """Seconds a body of n bytes may take to arrive: a trickle cannot hold a connection."""
    return BODY_GRACE_S + n / MIN_BODY_RATE


class BodyBudget:
    """Bytes of request bodies held in memory at once, over all connections. A body is read only once
    its signed headers have verified, so only key holders can take from it; one that does not fit is
    answered 503 (retry) rather than queued."""

    def __init__(self, limit: int):
        self.limit = limit
        self.held = 0

    def take(self, n: int) -> bool:
        if self.held + n > self.limit and self.held > 0:
            return False
        self.held += n
        return True

    def give(self, n: int) -> None:
        self.held -= n


class Routes:
    """aiohttp's request handler (web.Server(Routes(...)))."""

    def __init__(self, app, listener: Listener, *, workers: int = WORKERS):
        self.app = app                     # server.App: key, guard, store, limits, log
        self.listener = listener
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vsensor-store")
        self.budget = BodyBudget(max(2 * app.max_body, BODY_BUDGET))

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        guard = self.listener.guard_of(request.transport)
        if guard is not None:
            guard.request_started()
        try:
            try:
                return await self._route(request)
            except Refused as r:
                self._log_refused(request, r)
                return refusal(r.status, r.reason, close=r.close, extra=r.extra)
        finally:
            if guard is not None:
                guard.request_done()

    def close(self) -> None:
        self.pool.shutdown(wait=True)

    # -- routing ----------------------------------------------------------------------------------------
    async def _route(self, request: web.BaseRequest) -> web.StreamResponse:
        method, path = request.method, request.path_qs
        if method in ("GET", "HEAD"):
            if path == "/healthz":
                return answer(200, "ok\n")
            if path in (protocol.PATH_BATCHES, protocol.PATH_HELLO):
                return refusal(405, "use POST", extra={"Allow": "POST"})
            return refusal(404, "not found")
        if method != "POST":
            raise Refused(405, f"method {clean(method, 20)} not allowed; use GET or POST", close=True,
                          extra={"Allow": ALLOW})
        if path == protocol.PATH_BATCHES:
            return await self._post(request, self.app.max_body, kind="batch")
        if path == protocol.PATH_HELLO:
            return await self._post(request, HELLO_MAX_BODY, kind="hello")
        if path == protocol.PATH_ANTIGENA and getattr(self.app, "antigena", None):
            return await self._post(request, _antigena.MAX_BODY, kind="antigena")
        n = self._content_length(request, HELLO_MAX_BODY)
        kept = not _expects_continue(request) and await self._drain(request, n)
        return refusal(404, "not found", close=not kept)

    # -- headers ----------------------------------------------------------------------------------------
    @staticmethod
    def _duplicated(request: web.BaseRequest) -> str | None:
        """A header that must appear once and appears more: two Content-Lengths (the first for the vSensor,
        the second for a proxy in front of it: request smuggling), or two of a signed header (which one
        would the signature cover?)."""
        seen: set[str] = set()
        for raw_name, _ in request.raw_headers:
            name = raw_name.decode("latin-1")
            low = name.lower()
            if low in _SINGLE_HEADERS or low.startswith("x-ossensor-"):
                if low in seen:
                    return name
                seen.add(low)
        return None

    def _content_length(self, request: web.BaseRequest, limit: int) -> int:
        twice = self._duplicated(request)
        if twice:
            raise Refused(400, f"duplicate {clean(twice, 40)} header", close=True)
        if request.headers.get("Transfer-Encoding"):
            raise Refused(411, "Content-Length required (chunked transfer encoding is not accepted)", close=True)
        length = request.headers.get("Content-Length")
        if length is None:
            raise Refused(411, "Content-Length required", close=True)
        length = length.strip()
        if not (length.isascii() and length.isdigit()):
            raise Refused(400, "bad Content-Length", close=True)
        n = int(length)
        if n > limit:
            raise Refused(413, f"body of {n} bytes is larger than the limit of {limit} bytes", close=True)
        return n

    # -- POST -------------------------------------------------------------------------------------------
    async def _post(self, request: web.BaseRequest, limit: int, *, kind: str) -> web.StreamResponse:
        app = self.app
        n = self._content_length(request, limit)
        try:  # headers, signature and time window first: an unauthenticated body is never read
            checked = app.check_headers("POST", request.path_qs, request.headers)
        except protocol.ProtocolError as err:
            # a small body is read and dropped, the connection kept; a larger one is not read: closed
            # (aiohttp discards what still arrives for LINGER_S, so that the answer is not reset away);
            # nor is a body the client holds back until a 100 Continue that will not come
            keep = n <= HELLO_MAX_BODY and not _expects_continue(request) and await self._drain(request, n)
            raise Refused(err.status, err.reason, close=not keep) from None
        guard = self.listener.guard_of(request.transport)
        if guard is not None:
            guard.signed()  # a key holder's connection: kept under the connection cap (listener.py)
        if not self.budget.take(n):
            raise Refused(503, "the vSensor is busy (too many bodies in memory); retry", close=True,
                          extra={"Retry-After": "1"})
        try:
            if n >= WIDE_READS_FROM:
                widen_tls_reads(request.transport)
            if _expects_continue(request):
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            body = await self._read_body(request, n)
            return await asyncio.get_running_loop().run_in_executor(
                self.pool, self._handle, request.path_qs, checked, body, kind, request.remote)
        finally:
            self.budget.give(n)

    async def _drain(self, request: web.BaseRequest, n: int) -> bool:
        """Read and drop a refused request's small body before answering, so that the connection goes on
        at a request boundary (the header deadline then starts at the next request's first byte, not at
        a byte of this body). In small reads, nothing kept: a keyless client's body costs no memory here.
        False if it does not arrive in time."""
        deadline = asyncio.get_running_loop().time() + body_deadline(n)
        try:
            while n > 0:
                left = deadline - asyncio.get_running_loop().time()
                chunk = await asyncio.wait_for(request.content.read(min(n, 16384)), max(0.0, left))
                if not chunk:
                    return False
                n -= len(chunk)
            return True
        except (asyncio.TimeoutError, OSError, ConnectionError):
            return False

    async def _read_body(self, request: web.BaseRequest, n: int) -> bytes:
        if n == 0:
            return b""
        deadline = body_deadline(n)
        try:
            return await asyncio.wait_for(request.content.readexactly(n), deadline)
        except asyncio.TimeoutError:
            raise Refused(408, f"body of {n} bytes not received within {deadline:.0f} s", close=True) from None
        except asyncio.IncompleteReadError:
            raise Refused(400, "body shorter than Content-Length", close=True) from None

    # -- in a worker thread -----------------------------------------------------------------------------
    def _handle(self, path: str, checked: protocol.SignedHeaders, body: bytes, kind: str, peer) -> web.Response:
        app = self.app
        peer = clean(peer)
        try:
            v = protocol.verify_body(checked, body)
        except protocol.ProtocolError as err:
            self._log_refused_v(checked.verified, err.status, err.reason, path, peer)
            return refusal(err.status, err.reason)
        if kind == "antigena":
            status, payload = app.antigena.exchange(v, body, peer)
            data = (json.dumps(payload) + "\n").encode()
            return answer(status, payload, data=data, extra=app.sign_answer(status, data, v, path))
        if kind == "hello":
            app.log(f"hello sensor={v.sensor} boot={v.boot} peer={peer}")
            return answer(200, {"status": "ok", "vsensor": VSENSOR_NAME, "version": __version__,
                                "time": int(time.time()), "max_body": app.max_body, "max_body_bytes": app.max_body,
                                "max_skew": app.max_skew})
        return self._batch(v, body, path, peer)

    def _batch(self, v: protocol.Verified, body: bytes, path: str, peer: str) -> web.Response:
        app = self.app
        if app.guard.seen(v.sensor, v.boot, v.seq):
            return self._duplicate(v, peer)
        try:
            section = decode_body(body, v.content_encoding, app.max_body)
            parsed = _store.parse_batch(section)
        except protocol.ProtocolError as err:
            self._log_refused_v(v, err.status, err.reason, path, peer)
            return refusal(err.status, err.reason)
        except PcapngError as err:
            reason = f"malformed pcapng: {err}"
            self._log_refused_v(v, 400, reason, path, peer)
            return refusal(400, reason)
        with app.stream_lock(v.sensor, v.boot):
            if app.guard.seen(v.sensor, v.boot, v.seq):
                return self._duplicate(v, peer)
            try:
                files = app.store.append(v.sensor, v.boot, v.seq, parsed, sent=v.timestamp,
                                         wire_bytes=len(body), encoding=v.content_encoding)
            except OSError as err:
                app.log(f"error sensor={v.sensor} seq={v.seq} reason=store_failed:_{clean(err, 160)}")
                return refusal(503, "the vSensor could not store the batch; retry", extra={"Retry-After": "5"})
            app.guard.accept(v.sensor, v.boot, v.seq)
        app.log(f"accepted sensor={v.sensor} boot={v.boot} seq={v.seq} packets={parsed.packets} "
                f"bytes={parsed.size} wire_bytes={len(body)} encoding={v.content_encoding} "
                f"file={','.join(files) or '-'} peer={peer}")
        return answer(200, {"status": "accepted", "seq": v.seq, "packets": parsed.packets, "bytes": parsed.size})

    def _duplicate(self, v: protocol.Verified, peer: str) -> web.Response:
        self.app.log(f"duplicate sensor={v.sensor} boot={v.boot} seq={v.seq} status=409 peer={peer}")
        return answer(409, {"status": "duplicate", "seq": v.seq, "reason": "batch already accepted"})

    # -- the log ----------------------------------------------------------------------------------------
    def _log_refused(self, request: web.BaseRequest, r: Refused) -> None:
        headers = request.headers
        seq = headers.get(protocol.H_SEQ)
        self.listener.quiet("refused", f"refused sensor={clean(headers.get(protocol.H_SENSOR))} seq={clean(seq, 24)} "
                     f"status={r.status} reason={clean(r.reason.replace(' ', '_'), 200)} "
                     f"path={clean(request.path_qs, 40)} peer={clean(request.remote)}")

    def _log_refused_v(self, v: protocol.Verified, status: int, reason: str, path: str, peer: str) -> None:
        self.app.log(f"refused sensor={clean(v.sensor)} seq={clean(v.seq, 24)} status={status} "
                     f"reason={clean(reason.replace(' ', '_'), 200)} path={clean(path, 40)} peer={peer}")


def _expects_continue(request: web.BaseRequest) -> bool:
    return request.headers.get("Expect", "").strip().lower() == "100-continue"


def decode_body(body: bytes, encoding: str, limit: int) -> bytes | bytearray:
    if encoding == "identity":
        return body
    import io

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


class Protocol(web.RequestHandler):
    """aiohttp's HTTP/1.1 connection, with its own refusals (a garbage request line, headers too long,
    a bad Content-Length...) answered in JSON like every other answer, and logged as one line."""

    def handle_error(self, request, status: int = 500, exc=None, message=None) -> web.StreamResponse:
        text = getattr(exc, "message", None) or message or (str(exc) if exc else "") or "bad request"
        reason = next((line.strip() for line in str(text).splitlines() if line.strip()), "bad request")[:200]
        low = reason.lower()
        extra = None
        if "content-length" in low and ("duplicate" in low or "multiple" in low):
            reason = "duplicate Content-Length header"
        method = _unknown_method(exc)
        if method:  # a well-formed request line with a method aiohttp's parser does not know
            status, extra = 405, {"Allow": ALLOW}
            reason = f"method {clean(method, 20)} not allowed; use GET or POST"
        log = getattr(self._manager, "vsensor_log", None)  # listener.quiet: any client can cause these
        if log is not None:
            log("error", f"error peer={clean(getattr(request, 'remote', None))} status={status} "
                f"reason={clean(reason.replace(' ', '_'), 200)}")
        if request.writer.output_size > 0:
            raise ConnectionError("answer already under way")
        return refusal(status, reason, close=True, extra=extra)


def _unknown_method(exc) -> str | None:
    """The method of a request line refused only for its method: 'BREW /path HTTP/1.1' (405), not garbage."""
    if exc is None or type(exc).__name__ != "BadHttpMethod":
        return None
    match = re.search(r"b'([^']*)'", str(getattr(exc, "message", "")))
    parts = match.group(1).split(" ") if match else []
    if len(parts) == 3 and parts[0].isascii() and parts[0].isalpha() and parts[1].startswith("/") \
            and re.fullmatch(r"HTTP/1\.[01]", parts[2]):
        return parts[0]
    return None
