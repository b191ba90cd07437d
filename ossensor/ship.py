"""Shipping: signed batches to the vSensor over HTTPS (requests: connection reuse, TLS, proxies).

Outcomes are classified so the caller can count them: acknowledged (200, or 409
"already have it" after a retry whose answer was lost), refused (401/403/4xx: wrong
key, stale clock, malformed — retrying cannot help), or retry (connection errors,
timeouts, 5xx).
"""

from __future__ import annotations

import ipaddress
import json
import time
from dataclasses import dataclass

import requests

from ossensor import __version__, protocol


@dataclass
class Outcome:
    kind: str           # "acked" | "refused" | "retry"
    status: int | None  # HTTP status, None when no answer
    reason: str
    rtt: float


def url_host(host: str) -> str:
    """Bracket a bare IPv6 address for a URL."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


class Shipper:
    def __init__(self, *, host: str, port: int, key: bytes, sensor: str, boot: str,
                 ca_file: str | None = None, client_cert: tuple[str, str] | None = None,
                 connect_timeout: float = 5.0, read_timeout: float = 30.0):
        self.base = f"https://{url_host(host)}:{port}"
        self._key = key
        self.sensor = sensor
        self.boot = boot
        self.session = requests.Session()  # honours HTTPS_PROXY / NO_PROXY from the environment
        # Passed with every request: a session-level `verify` loses to REQUESTS_CA_BUNDLE /
        # CURL_CA_BUNDLE in the environment (requests issue #3829), and OSSENSOR_TLS_CA_FILE must win.
        self.verify = ca_file if ca_file else True
        if client_cert:
            self.session.cert = client_cert
        self.session.headers["User-Agent"] = f"ossensor/{__version__}"
        self.timeout = (connect_timeout, read_timeout)

    def _post(self, path: str, seq: int, body: bytes) -> Outcome:
        headers = protocol.sign(self._key, sensor=self.sensor, boot=self.boot, seq=seq,
                                timestamp=int(time.time()), body=body, path=path)
        t0 = time.monotonic()
        try:
            resp = self.session.post(self.base + path, data=body, headers=headers,
                                     timeout=self.timeout, verify=self.verify)
        except requests.exceptions.SSLError as err:
            return Outcome("retry", None, f"TLS failure: {_root_cause(err)}", time.monotonic() - t0)
        except requests.exceptions.ProxyError as err:
            return Outcome("retry", None, f"proxy failure: {_root_cause(err)}", time.monotonic() - t0)
        except requests.exceptions.Timeout:
            return Outcome("retry", None, "timed out", time.monotonic() - t0)
        except requests.exceptions.ConnectionError as err:
            return Outcome("retry", None, f"cannot connect: {_root_cause(err)}", time.monotonic() - t0)
        rtt = time.monotonic() - t0
        reason = _reason(resp)
        if resp.status_code == 200:
            return Outcome("acked", 200, reason or "accepted", rtt)
        if resp.status_code == 409:
            return Outcome("acked", 409, reason or "duplicate (already accepted)", rtt)
        if resp.status_code >= 500 or resp.status_code == 429:
            return Outcome("retry", resp.status_code, reason, rtt)
        return Outcome("refused", resp.status_code, reason, rtt)

    def send(self, seq: int, body: bytes) -> Outcome:
        return self._post(protocol.PATH_BATCHES, seq, body)

    def hello(self) -> Outcome:
        return self._post(protocol.PATH_HELLO, 0, b"")

    def close(self) -> None:
        self.session.close()


def _reason(resp: requests.Response) -> str:
    try:
        doc = json.loads(resp.content[:4096])
        if isinstance(doc, dict):
            return str(doc.get("reason") or doc.get("status") or "")
    except ValueError:
        pass
    return resp.text[:200].strip().replace("\n", " ")


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
