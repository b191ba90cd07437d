"""Shipping: signed batches to the vSensor over HTTPS (urllib3: one persistent TLS connection, proxies).

Outcomes are classified so the caller can count them: acknowledged (200, or 409
"already have it" after a retry whose answer was lost), refused (401/403/4xx: wrong
key, stale clock, malformed — retrying cannot help; 413 and a batch larger than the
vSensor's known body limit: "batch too large for the vSensor (N > M bytes)", see
ship/body_limit.py), or retry (connection errors, timeouts, 5xx).

Everything goes through urllib3 directly: requests, built on it, cost more CPU per signed POST
(shipping thread, local vSensor over TLS: 109 KB 0.7-0.8 -> 0.4 ms, 4 MiB 5.4-7.2 -> 4.6-4.9 ms) and
~5 MiB of memory. The Antigena exchange posts on its own Shipper (`Shipper.request`): the same proxy,
TLS settings, and nothing from the environment.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

import urllib3
from urllib3 import exceptions as U3

from ossensor import __version__, protocol
from ossensor.ship import body_limit
from ossensor.ship.proxy import url_host


@dataclass
class Outcome:
    kind: str           # "acked" | "refused" | "retry"
    status: int | None  # HTTP status, None when no answer
    reason: str
    rtt: float
    retry_after: float | None = None  # seconds, from a 503/429's Retry-After


class Shipper:
    def __init__(self, *, host: str, port: int, key: bytes, sensor: str, boot: str,
                 ca_file: str | None = None, client_cert: tuple[str, str] | None = None,
                 connect_timeout: float = 5.0, read_timeout: float = 30.0, proxy: str | None = None,
                 connections: int = 1):
        """proxy: the http:// proxy URL to CONNECT through (ossensor.ship.proxy.choose decides it from
        HTTPS_PROXY/NO_PROXY), or None for a direct connection. The environment is not consulted
        here, so what the sensor logged at start is what it does. connections: persistent TLS
        connections kept to the vSensor, one per sender thread (batches in flight together)."""
        self.base = f"https://{url_host(host)}:{port}"
        self._key = key
        self.sensor = sensor
        self.boot = boot
        self.proxy = proxy or None
        self.client_cert = client_cert
        self.timeout = (connect_timeout, read_timeout)
        self.user_agent = f"ossensor/{__version__}"
        # TLS as requests set it up before (trust_env off): the CA file (or directory) given, else the
        # bundle requests used (certifi's) - never SSL_CERT_FILE / REQUESTS_CA_BUNDLE from the environment.
        tls: dict = {"cert_reqs": "CERT_REQUIRED"}
        if ca_file and os.path.isdir(ca_file):
            tls["ca_cert_dir"] = ca_file
        else:
            tls["ca_certs"] = ca_file or _default_ca_bundle()
        if client_cert:
            tls["cert_file"], tls["key_file"] = client_cert
        # One pool of `connections` persistent TLS connections: each sender thread takes one for a
        # request and gives it back (block: a thread waits for a free one rather than open a spare).
        # A ProxyManager reaches https:// through the proxy with CONNECT (a tunnel: the proxy sees no HTTP).
        pool = {"num_pools": 1, "maxsize": max(1, connections), "block": connections > 1}
        if self.proxy:
            self._manager = urllib3.ProxyManager(self.proxy, **pool, **tls)
        else:
            self._manager = urllib3.PoolManager(**pool, **tls)
        self._pool = self._manager.connection_from_url(self.base)
        self._timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        # the vSensor's body limit: protocol.MAX_BODY, lowered by what /v1/hello or a 413 says
        self.limit = body_limit.BodyLimit()

    @classmethod
    def for_settings(cls, s, *, boot: str, proxy: str | None, connections: int = 1) -> "Shipper":
        """The link `ossensor run` and `ossensor replay` ship on, from their settings."""
        return cls(host=s.vsensor_hostname, port=s.vsensor_port, key=s.key_bytes, sensor=s.sensor_name, boot=boot,
                   ca_file=str(s.tls_ca_file) if s.tls_ca_file else None,
                   client_cert=(str(s.tls_cert_file), str(s.tls_key_file)) if s.tls_cert_file else None,
                   proxy=proxy, connections=connections)

    def request(self, path: str, body: bytes, headers: dict[str, str], timeout: float | None = None):
        """POST `body` with `headers` (already signed) on this link: same connection pool, proxy, TLS
        and client certificate as the batches, nothing from the environment. Returns urllib3's
        response (status, headers, data); raises urllib3's exceptions (one attempt, no redirects).
        For the Antigena exchange, which verifies the signed answer itself."""
        headers = {**headers, "User-Agent": self.user_agent}
        t = self._timeout if timeout is None else urllib3.Timeout(connect=timeout, read=timeout)
        # retries=False: one attempt, urllib3's own exception (the caller retries, re-signed);
        # redirect=False: a 3xx is not an answer of this protocol
        return self._pool.urlopen("POST", path, body=body, headers=headers, timeout=t, retries=False,
                                  redirect=False, preload_content=True)

    def _post(self, path: str, seq: int, body: bytes, *, boot: str | None = None, sensor: str | None = None,
              encoding: str = "identity") -> Outcome:
        # signed now, at each attempt: a retry carries a fresh time, its boot and seq stay
        headers = protocol.sign(self._key, sensor=sensor or self.sensor, boot=boot or self.boot, seq=seq,
                                timestamp=int(time.time()), body=body, path=path, content_encoding=encoding,
                                digest_algorithm="blake3")
        cert = self.client_cert is not None
        t0 = time.monotonic()
        try:
            resp = self.request(path, body, headers)
        except U3.SSLError as err:
            return Outcome("retry", None, tls_explain(_root_cause(err), cert), time.monotonic() - t0)
        except U3.ProxyError as err:
            return Outcome("retry", None, f"proxy failure: {_root_cause(err)}", time.monotonic() - t0)
        except (U3.NewConnectionError, U3.ProtocolError) as err:  # NewConnectionError is a ConnectTimeoutError
            cause = _root_cause(err)
            if _looks_tls(cause):  # TLS 1.3: a refused client certificate shows after the handshake
                return Outcome("retry", None, tls_explain(cause, cert), time.monotonic() - t0)
            if "reset" in cause.lower() or "eof" in cause.lower():
                cause += (" (if the vSensor requires client certificates, it may have refused this sensor's)"
                          if cert else
                          " (if the vSensor requires client certificates: set OSSENSOR_TLS_CERT_FILE and "
                          "OSSENSOR_TLS_KEY_FILE)")
            return Outcome("retry", None, f"cannot connect: {cause}", time.monotonic() - t0)
        except U3.TimeoutError:  # ConnectTimeoutError, ReadTimeoutError
            return Outcome("retry", None, "timed out", time.monotonic() - t0)
        except (U3.HTTPError, OSError) as err:  # anything else urllib3 raises
            return Outcome("retry", None, f"request failed: {_root_cause(err)}", time.monotonic() - t0)
        rtt = time.monotonic() - t0
        status = resp.status
        reason = _reason(resp.data)
        if status == 200 and path == protocol.PATH_HELLO:
            self.limit.learn(body_limit.announced(resp.data))
        if status == 413:  # refused as too large: say so, learn the limit it names, never retry it
            limit = body_limit.from_reason(reason)
            self.limit.learn(limit)
            return Outcome("refused", 413, body_limit.too_large(len(body), limit or self.limit.value), rtt)
        if status == 200:
            return Outcome("acked", 200, reason or "accepted", rtt)
        if status == 409:
            return Outcome("acked", 409, reason or "duplicate (already accepted)", rtt)
        if status >= 500 or status in (408, 429):  # 408: headers or body slower than the vSensor's deadline
            return Outcome("retry", status, reason or f"HTTP {status}", rtt,
                           _retry_after(resp.headers.get("Retry-After")))
        if 300 <= status < 400:  # not followed: a batch goes to the configured vSensor or nowhere
            where = resp.headers.get("Location")
            return Outcome("retry", status, f"unexpected answer: redirect{' to ' + where if where else ''} "
                           f"({reason or 'no reason given'}); redirects are not followed: VSENSOR_HOSTNAME and "
                           f"VSENSOR_PORT must name the vSensor itself", rtt)
        if status < 400:  # 1xx/2xx other than 200: not an answer of this protocol
            return Outcome("retry", status, f"unexpected answer: {reason}", rtt)
        return Outcome("refused", status, reason, rtt)

    def send(self, seq: int, body: bytes, *, boot: str | None = None, sensor: str | None = None,
             encoding: str = "identity") -> Outcome:
        if not self.limit.fits(len(body)):  # the vSensor would answer 413 (or close mid-body): not sent
            return Outcome("refused", 413, body_limit.too_large(len(body), self.limit.value), 0.0)
        out = self._post(protocol.PATH_BATCHES, seq, body, boot=boot, sensor=sensor, encoding=encoding)
        if out.kind == "retry" and out.status is None and len(body) > body_limit.MIN_LIMIT:
            # A vSensor refusing a body as too large answers 413 and closes before reading it: over TLS
            # the sender often sees only the connection end (EOF, reset) mid-body. Ask its limit (hello)
            # before calling that a connection failure.
            self.hello()
            if not self.limit.fits(len(body)):
                return Outcome("refused", 413, body_limit.too_large(len(body), self.limit.value), out.rtt)
        return out

    def hello(self) -> Outcome:
        return self._post(protocol.PATH_HELLO, 0, b"")

    def connections_opened(self) -> int:
        """TLS connections opened so far to the vSensor (one, while the link holds)."""
        return self._pool.num_connections

    def close(self) -> None:
        self._manager.clear()


def _default_ca_bundle() -> str | None:
    """The CA bundle requests verified against when given no CA file (certifi's, which requests
    requires); None (OpenSSL's default store) if certifi is missing."""
    try:
        import certifi
    except ImportError:
        return None
    return certifi.where()


def _reason(data: bytes) -> str:
    try:
        doc = json.loads(data[:4096])
        if isinstance(doc, dict):
            return str(doc.get("reason") or doc.get("status") or "")
    except ValueError:
        pass
    return data[:200].decode("utf-8", "replace").strip().replace("\n", " ")


def _root_cause(err: BaseException) -> str:
    """The innermost exception's message: 'certificate verify failed: …', 'Connection refused'."""
    seen = err
    while True:
        nxt = seen.__cause__ or seen.__context__
        if nxt is None and seen.args and isinstance(seen.args[0], BaseException):
            nxt = seen.args[0]
        if nxt is None or nxt is seen:
            break
        seen = nxt
    verify = getattr(seen, "verify_message", None)  # ssl.SSLCertVerificationError
    if verify:
        return f"certificate verify failed: {verify}"
    text = str(seen)
    if getattr(seen, "strerror", None):
        text = seen.strerror
    return text.strip()[:300] or type(seen).__name__


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, min(300.0, float(value))) if value else None
    except ValueError:
        return None


_TLS_WORDS = ("ssl", "tls", "certificate", "alert", "handshake")


def _looks_tls(text: str) -> bool:
    low = text.lower()
    return any(w in low for w in _TLS_WORDS)


# (substring of OpenSSL's message, what it means for the operator)
_TLS_HINTS = [
    ("unable to get local issuer certificate", "the vSensor's certificate is signed by a CA this sensor does "
     "not trust (unknown CA): set OSSENSOR_TLS_CA_FILE to the vSensor's CA"),
    ("self-signed certificate", "the vSensor's certificate is self-signed and not trusted (unknown CA): "
     "set OSSENSOR_TLS_CA_FILE to it or to its CA"),
    ("self signed certificate", "the vSensor's certificate is self-signed and not trusted (unknown CA): "
     "set OSSENSOR_TLS_CA_FILE to it or to its CA"),
    ("hostname mismatch", "the vSensor's certificate does not name VSENSOR_HOSTNAME (name mismatch)"),
    ("ip address mismatch", "the vSensor's certificate does not name VSENSOR_HOSTNAME (name mismatch)"),
    ("certificate has expired", "the vSensor's certificate has expired (or this node's clock is wrong)"),
    ("certificate is not yet valid", "the vSensor's certificate is not yet valid (is this node's clock right?)"),
    ("certificate required", "the vSensor requires a client certificate: set OSSENSOR_TLS_CERT_FILE and "
     "OSSENSOR_TLS_KEY_FILE"),
    ("bad certificate", "the vSensor refused this sensor's client certificate (not signed by a CA it trusts?)"),
    ("unknown ca", "the vSensor refused this sensor's client certificate: signed by a CA it does not trust"),
    ("certificate unknown", "the vSensor refused this sensor's client certificate"),
    ("decrypt error", "the vSensor refused this sensor's client certificate (key does not match?)"),
    ("wrong version number", "the other end does not speak TLS (plain HTTP on VSENSOR_PORT?)"),
]


def tls_explain(cause: str, client_cert: bool = False) -> str:
    """'TLS failure: <meaning> (<OpenSSL's words>)' -- one line an operator can act on."""
    low = cause.lower()
    for needle, meaning in _TLS_HINTS:
        if needle in low:
            return f"TLS failure: {meaning} ({cause})"
    if "eof occurred in violation of protocol" in low or "unexpected eof" in low or "connection reset" in low:
        # TLS 1.3: a server that refuses the client certificate may just close the connection
        if client_cert:
            return ("TLS failure: the vSensor closed the connection during the TLS handshake: it probably "
                    f"refused this sensor's client certificate (not signed by a CA it trusts?) ({cause})")
        return ("TLS failure: the vSensor closed the connection during the TLS handshake: does it require a "
                "client certificate? (OSSENSOR_TLS_CERT_FILE and OSSENSOR_TLS_KEY_FILE are not set) "
                f"({cause})")
    return f"TLS failure: {cause}"
