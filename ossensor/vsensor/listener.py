"""The vSensor's connections, below HTTP: accept, the TLS handshake, the cap on connections, and the
deadlines a slow or silent client cannot extend. HTTP itself is aiohttp's (vsensor/routes.py).

Each accepted TCP connection gets, in this order:

* a TLS handshake that must finish within ``handshake_s`` (asyncio's own timeout; a failure is logged
  as one ``tls-error`` line naming the peer and the reason);
* at most ``max_handshakes`` handshakes under way at once: one more takes the place of the oldest,
  which is closed (a real handshake takes milliseconds; bare TCP connects that never send a ClientHello
  would otherwise hold a descriptor each for ``handshake_s``, until accept() meets EMFILE and real
  sensors wait);
* at ``max_connections`` open connections, when the handshake ends (handshakes that run at once cannot
  together pass the cap): the oldest connection that has not sent a signed request (one whose headers'
  signature verified: routes.py) is closed to make room, so that clients without the key cannot hold
  every place (idle connections reopened whenever closed, or kept alive with GET /healthz); if every
  place is held by a connection that signed, a 503 JSON answer, then close;
* else a `_Guard` in front of aiohttp's protocol. aiohttp closes a connection that has no complete
  request within its keep-alive time of becoming idle (a trickle of header bytes does not restart that
  timer); the guard adds the header deadline: once the first byte of a request has arrived, its headers
  must be complete within ``header_s``, or the connection gets a 408 and is closed. The body has its
  own deadline, set by the route from its length (routes.py: a minimum rate). Answers must be taken:
  once the TLS layer has paused writing (the client reads nothing, its buffers are full), the
  connection is closed if writing has not resumed within ``WRITE_STALL_S`` (no deadline of aiohttp's
  runs while an answer waits to be written).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

HANDSHAKE_TIMEOUT_S = 5.0
MIN_HANDSHAKES = 256  # handshakes under way at once: at least this many, else as many as connections
HEADER_TIMEOUT_S = 10.0
WRITE_STALL_S = 10.0  # answers not taken by the client (writing paused) this long: the connection is closed
IDLE_TIMEOUT_S = 60.0
MAX_CONNECTIONS = 4096
TLS_READ_BUFFER = 32 * 1024         # per connection: see tune_asyncio_tls() ...
TLS_READ_BUFFER_BODY = 256 * 1024   # ... and widen_tls_reads()
BUSY_LINGER_S = 0.5  # a refused connection's request may still be on its way: let it arrive, then close


@dataclass(frozen=True)
class Limits:
    max_connections: int = MAX_CONNECTIONS
    max_handshakes: int = MAX_CONNECTIONS
    backlog: int = 4096  # the listen backlog, also how many asyncio accepts at once
    handshake_s: float = HANDSHAKE_TIMEOUT_S
    header_s: float = HEADER_TIMEOUT_S
    idle_s: float = IDLE_TIMEOUT_S


def tune_asyncio_tls() -> None:
    """Two things asyncio's TLS layer (asyncio.sslproto.SSLProtocol, Python 3.11-3.13) does that a server
    of thousands of sensors cannot keep; the vSensor process changes them once, before it serves (start_tls
    makes the protocol itself, so a subclass cannot be slipped in):

    * every connection gets a read buffer of SSLProtocol.max_size, 256 KiB, zero-filled at once: 283 KiB of
      RSS per idle connection, 550 MiB for 2,000 sensors (bench/vsensor.py). A TLS record is at most 16 KiB:
      32 KiB reads cost a few more system calls per megabyte and nothing else (59 KiB per connection);
    * a handshake that fails (a missing or untrusted client certificate) is dropped without the alert
      OpenSSL wrote for it, so the sensor saw only "connection closed" and could not say why: the alert is
      sent before the connection closes, as a blocking ssl socket does."""
    import asyncio.sslproto

    cls = asyncio.sslproto.SSLProtocol
    if getattr(cls, "max_size", 0) > TLS_READ_BUFFER:
        cls.max_size = TLS_READ_BUFFER
    original = getattr(cls, "_on_handshake_complete", None)
    if original is None or getattr(original, "sends_alert", False):
        return

    def on_handshake_complete(self, handshake_exc):
        if handshake_exc is not None:
            try:
                alert = self._outgoing.read()
                if alert and self._transport is not None:
                    self._transport.write(alert)
            except (AttributeError, OSError, RuntimeError, ssl.SSLError):
                pass
        return original(self, handshake_exc)

    on_handshake_complete.sends_alert = True
    cls._on_handshake_complete = on_handshake_complete


def widen_tls_reads(transport) -> None:
    """A connection about to carry a large body reads TLS in 256 KiB steps again (asyncio's own size):
    each step is a trip through Python (TLS layer, aiohttp's parser and stream), 32 KiB steps cost ~1.5x the
    CPU per megabyte (bench/http_servers.py). Only connections that carry batches pay the memory; the
    buffer grows at the next read and stays with the connection."""
    proto = getattr(transport, "_ssl_protocol", None)
    if proto is not None and getattr(proto, "max_size", TLS_READ_BUFFER_BODY) < TLS_READ_BUFFER_BODY:
        proto.max_size = TLS_READ_BUFFER_BODY


def json_answer(status: int, reason_phrase: str, doc: dict, extra: str = "") -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, for the places aiohttp is not (yet) in."""
    body = (json.dumps(doc) + "\n").encode()
    return (f"HTTP/1.1 {status} {reason_phrase}\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n"
            f"{extra}Connection: close\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body


def _peer(transport: asyncio.BaseTransport) -> str:
    addr = transport.get_extra_info("peername")
    return str(addr[0]) if addr else "-"


def tls_reason(err: BaseException) -> str:
    """Why a handshake failed, in a few words for the log."""
    if isinstance(err, (asyncio.TimeoutError, TimeoutError)) or "taking longer" in str(err):
        return "no TLS handshake within the deadline"
    reason = getattr(err, "reason", None) or str(err) or err.__class__.__name__
    if reason == "HTTP_REQUEST":
        return "plain HTTP sent to the HTTPS port (use https://)"
    return str(reason)


class QuietLog:
    """Lines any client can cause without the key (a failed handshake, a timeout, a refused or unparsable
    request): at most BURST of each kind per WINDOW_S seconds, the rest counted and summed up in one line
    when the kind next logs after its window (or at stop: flush()), so that nobody can flood the log."""

    BURST = 20
    WINDOW_S = 5.0

    def __init__(self, log: Callable[[str], None]):
        self._log = log
        self._lock = threading.Lock()
        self._windows: dict[str, list] = {}  # kind -> [window start, lines logged, lines suppressed]

    def __call__(self, kind: str, line: str) -> None:
        now = time.monotonic()
        with self._lock:
            w = self._windows.get(kind)
            if w is None or now - w[0] >= self.WINDOW_S:
                if w is not None and w[2]:
                    self._summary(kind, w, now)
                w = self._windows[kind] = [now, 0, 0]
            if w[1] >= self.BURST:
                w[2] += 1
                return
            w[1] += 1
        self._log(line)

    def flush(self) -> None:
        now = time.monotonic()
        with self._lock:
            for kind, w in self._windows.items():
                if w[2]:
                    self._summary(kind, w, now)
                    w[2] = 0

    def _summary(self, kind: str, w: list, now: float) -> None:
        self._log(f"{kind} suppressed={w[2]} lines over {now - w[0]:.0f} s (more than {self.BURST} per "
                  f"{self.WINDOW_S:g} s)")


class Listener:
    """The protocol factory of the listening socket (loop.create_server), and what it counts."""

    def __init__(self, ctx: ssl.SSLContext, http_protocol: Callable[[], asyncio.Protocol], limits: Limits,
                 log: Callable[[str], None]):
        self.ctx = ctx
        self.http_protocol = http_protocol
        self.limits = limits
        self.log = log
        self.quiet = QuietLog(log)  # for what keyless clients cause
        self.open = 0             # connections past the handshake (served or being refused)
        self.busy_refused = 0
        self.evicted = 0          # handshakes closed to make room for newer ones
        self._handshakes: dict[asyncio.Transport, None] = {}  # under way, oldest first
        self.unsigned: dict[_Guard, None] = {}  # open, no signed request yet, oldest first
        self.evicted_unsigned = 0
        self._logged_at: dict[str, float] = {}  # busy lines: one of a kind per 5 s (running totals)
        self.guards: dict[asyncio.BaseTransport, _Guard] = {}  # by TLS transport: routes find theirs
        self._tasks: set[asyncio.Task] = set()

    def __call__(self) -> asyncio.Protocol:
        return _Accepted(self)

    def guard_of(self, transport) -> "_Guard | None":
        return self.guards.get(transport)

    async def handshake(self, raw: asyncio.Transport) -> None:
        loop = asyncio.get_running_loop()
        if raw.is_closing():  # evicted before its handshake began
            self._handshakes.pop(raw, None)
            return
        peer = _peer(raw)
        proto: asyncio.Protocol = _Guard(self, self.http_protocol())
        try:
            tls = await loop.start_tls(raw, proto, self.ctx, server_side=True,
                                       ssl_handshake_timeout=self.limits.handshake_s,
                                       ssl_shutdown_timeout=self.limits.handshake_s)
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError, RuntimeError, ValueError) as err:
            self.quiet("tls-error", f"tls-error peer={peer} reason={tls_reason(err).replace(' ', '_')[:120]}")
            raw.abort()
            return
        finally:
            self._handshakes.pop(raw, None)
        if tls is None or tls.is_closing():  # closed at the end of the handshake (or evicted): nothing to serve
            return
        if self.open >= self.limits.max_connections and not self._evict_unsigned():
            proto = _Busy(self)  # every place is held by a connection that signed
            tls.set_protocol(proto)
        self.open += 1
        proto.connection_made(tls)

    def _evict_oldest_handshake(self) -> None:
        oldest = next(iter(self._handshakes))
        del self._handshakes[oldest]
        self.evicted += 1
        self._now_and_then("evicted", f"busy evicted={self.evicted} limit={self.limits.max_handshakes} "
                           f"peer={_peer(oldest)} reason=oldest_TLS_handshake_closed_for_a_new_connection")
        oldest.abort()

    def _evict_unsigned(self) -> bool:
        """Close the oldest open connection that has not sent a signed request, if any."""
        if not self.unsigned:
            return False
        oldest = next(iter(self.unsigned))
        del self.unsigned[oldest]
        self.evicted_unsigned += 1
        self._now_and_then("unsigned", f"busy evicted_unsigned={self.evicted_unsigned} "
                           f"limit={self.limits.max_connections} peer={_peer(oldest.transport)} "
                           f"reason=oldest_connection_without_a_signed_request_closed")
        oldest.transport.abort()
        return True

    def admit(self, raw: asyncio.Transport) -> None:
        """A new TCP connection, about to start its handshake: it may take the oldest one's place."""
        if len(self._handshakes) >= self.limits.max_handshakes:
            self._evict_oldest_handshake()
        self._handshakes[raw] = None
        self.spawn(self.handshake(raw))

    def spawn(self, coro) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def note_busy(self, peer: str) -> None:
        self.busy_refused += 1
        self._now_and_then("refused", f"busy refused={self.busy_refused} limit={self.limits.max_connections} "
                           f"peer={peer} reason=too_many_connections_(503)")

    def _now_and_then(self, kind: str, line: str) -> None:
        """One busy line of a kind per 5 s at most: its counts are running totals."""
        now = asyncio.get_running_loop().time()
        if now - self._logged_at.get(kind, -1e9) >= 5:
            self._logged_at[kind] = now
            self.log(line)


class _Accepted(asyncio.Protocol):
    """A fresh TCP connection: nothing is read until the TLS handshake takes it over (Listener.handshake)."""

    def __init__(self, listener: Listener):
        self.listener = listener

    def connection_made(self, transport):
        transport.pause_reading()  # start_tls resumes it, with the TLS layer in place
        self.listener.admit(transport)

    def data_received(self, data):  # not reached: reading is paused until start_tls
        pass


class _Early(asyncio.Protocol):
    """TLS may hand over application data before start_tls has returned (a request sent right behind
    the handshake): keep it until connection_made."""

    def __init__(self):
        self.transport = None
        self._early: list[bytes] | None = []
        self._early_eof = False

    def data_received(self, data):
        if self._early is not None:
            self._early.append(data)
        else:
            self.received(data)

    def eof_received(self):
        if self._early is not None:
            self._early_eof = True
            return True
        return self.eof()

    def connection_made(self, transport):
        self.transport = transport
        self.started(transport)
        early, self._early = self._early, None
        for data in early or ():
            if self.transport is None or self.transport.is_closing():
                break
            self.received(data)
        if self._early_eof and self.transport is not None and not self.transport.is_closing():
            if not self.eof():
                self.transport.close()

    # for subclasses
    def started(self, transport): ...
    def received(self, data: bytes): ...
    def eof(self) -> bool | None: ...


class _Busy(_Early):
    """Over the connection limit: a 503 with Retry-After, then close once the request is in (or soon)."""

    def __init__(self, listener: Listener):
        super().__init__()
        self.listener = listener

    def started(self, transport):
        self.listener.note_busy(_peer(transport))
        transport.write(json_answer(503, "Service Unavailable",
                                    {"status": "refused", "reason": "the vSensor is busy (too many connections); retry"},
                                    "Retry-After: 1\r\n"))
        self._timer = asyncio.get_running_loop().call_later(BUSY_LINGER_S, transport.close)

    def received(self, data):
        self.transport.close()  # the request has arrived: the answer will not be reset away

    def eof(self):
        return False

    def connection_lost(self, exc):
        if self.transport is not None:
            self._timer.cancel()
            self.listener.open -= 1


class _Guard(_Early):
    """In front of aiohttp's protocol: the header deadline, and the count of open connections."""

    def __init__(self, listener: Listener, inner: asyncio.Protocol):
        super().__init__()
        self.listener = listener
        self.inner = inner
        self.in_request = False
        self._timer: asyncio.TimerHandle | None = None
        self._write_timer: asyncio.TimerHandle | None = None

    # -- what the route tells: headers done (deadline off), answer given (the next request may start) --
    def request_started(self) -> None:
        self.in_request = True
        self._stop_timer()

    def request_done(self) -> None:
        self.in_request = False

    def signed(self) -> None:
        """A request's signed headers verified: this connection keeps its place under the cap."""
        self.listener.unsigned.pop(self, None)

    # -- the protocol -----------------------------------------------------------------------------------
    def started(self, transport):
        self.listener.guards[transport] = self
        self.listener.unsigned[self] = None
        self.inner.connection_made(transport)

    def received(self, data):
        if not self.in_request and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.listener.limits.header_s, self._expired)
        self.inner.data_received(data)

    def eof(self):
        return self.inner.eof_received()

    def pause_writing(self):
        if self._write_timer is None:
            self._write_timer = asyncio.get_running_loop().call_later(WRITE_STALL_S, self._write_stalled)
        self.inner.pause_writing()

    def resume_writing(self):
        self._stop_write_timer()
        self.inner.resume_writing()

    def connection_lost(self, exc):
        self._stop_timer()
        self._stop_write_timer()
        self.listener.unsigned.pop(self, None)
        if self.transport is not None:
            self.listener.guards.pop(self.transport, None)
            self.listener.open -= 1
            self.inner.connection_lost(exc)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _stop_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_stalled(self) -> None:
        self._write_timer = None
        if self.transport is None:
            return
        self.listener.quiet("refused", f"refused peer={_peer(self.transport)} status=- "
                          f"reason=answers_not_read_within_{WRITE_STALL_S:g}_s_(closed)")
        self.transport.abort()  # nothing more can be written: no answer, no TLS close_notify

    def _expired(self) -> None:
        self._timer = None
        if self.in_request or self.transport is None or self.transport.is_closing():
            return
        limit = self.listener.limits.header_s
        self.listener.quiet("refused", f"refused peer={_peer(self.transport)} status=408 "
                          f"reason=request_headers_not_complete_within_{limit:g}_s_of_their_first_byte")
        self.transport.write(json_answer(408, "Request Timeout", {
            "status": "refused", "reason": f"request headers not complete within {limit:g} s of their first byte"}))
        self.transport.close()
