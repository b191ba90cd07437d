"""The Antigena exchange: every ANTIGENA_TIME_PERIOD seconds the sensor POSTs its reports to
/v1/antigena (signed like a batch, JSON body) and receives the actions to enforce (docs/protocol.md).

Reports of final states are repeated until an exchange delivering them succeeds. Each exchange is
signed with a new seq (1, 2, ...; the vSensor refuses a replayed one). The vSensor's answer is signed
for that very request (X-Ossensor-Response-Signature): an answer that is unsigned or does not verify is
refused - no action from it is installed, its reports count as undelivered - counted
(`answers_refused`) and logged at level 0. Expiry is checked between exchanges (every 0.2 s), so an
action ends within 0.2 s of its time.

The HTTPS link is a `ship.Shipper`'s (its session, built once): no proxy nor CA bundle from the
environment, the proxy ossensor.ship.proxy.choose decided (the one excluded from capture), the same TLS
verification and client certificate as batches.
"""

from __future__ import annotations

import json
import threading
import time

import urllib3

from ossensor import protocol
from ossensor.ops import log as L
from ossensor.antigena.book import Book
from ossensor.ship.client import Shipper, _root_cause

MAX_ANSWER = 4 << 20


class Exchange:
    def __init__(self, *, book: Book, log: L.Log, host: str, port: int, key: bytes, sensor: str, boot: str,
                 period: float, ca_file: str | None = None, client_cert: tuple[str, str] | None = None,
                 stats=None, proxy: str | None = None):
        """proxy: the http:// proxy URL (ossensor.ship.proxy.choose, as for batches) or None: direct."""
        self.book = book
        self.log = log
        self._key = key
        self.sensor = sensor
        self.boot = boot
        self.period = period
        self.stats = stats or (lambda: {})
        # The same link as batches: Shipper decides proxy (trust_env off), CA and client certificate.
        self._link = Shipper(host=host, port=port, key=key, sensor=sensor, boot=boot, ca_file=ca_file,
                             client_cert=client_cert, proxy=proxy)
        self.base = self._link.base
        self.seq = 0
        self.ok = 0
        self.failed = 0
        self.answers_refused = 0  # 200 answers whose signature is missing or does not verify
        self._failing = ""

    def __repr__(self) -> str:  # never show the key
        return f"Exchange({self.base}, period={self.period})"

    on_rules = None  # called when the rule set changed (the capture's wake(): install them now)

    def run(self, stop: threading.Event) -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            version = self.book.version
            for line in self.book.expire():
                self.log(L.ANTIGENA, line)
            if time.monotonic() >= next_at:
                self.exchange_once()
                next_at = max(next_at + self.period, time.monotonic() + min(self.period, 0.5))
            if self.book.version != version and self.on_rules is not None:
                self.on_rules()
            # every 0.2 s only while actions are active (they expire); else until the next exchange
            nap = 0.2 if self.book.summary()["active"] else 5.0
            stop.wait(max(0.0, min(nap, next_at - time.monotonic())))

    def final(self, timeout: float = 2.0) -> None:
        """At shutdown: one last, short exchange so the vSensor learns the final states."""
        for line in self.book.expire():
            self.log(L.ANTIGENA, line)
        self.book.stopping()
        self.exchange_once(timeout=timeout, take_actions=False)

    def exchange_once(self, timeout: float | None = None, take_actions: bool = True) -> bool:
        reports = self.book.reports()
        self.seq += 1
        doc = {"sensor": self.sensor, "boot": self.boot, "antigena_enabled": self.book.enabled,
               "time": round(time.time(), 3), "reports": reports, "stats": self.stats()}
        body = json.dumps(doc, separators=(",", ":")).encode()
        signed_at = int(time.time())
        headers = protocol.sign(self._key, sensor=self.sensor, boot=self.boot, seq=self.seq,
                                timestamp=signed_at, body=body, path=protocol.PATH_ANTIGENA)
        try:
            resp = self._link.request(protocol.PATH_ANTIGENA, body, headers,
                                      timeout=timeout or max(5.0, self.period))
        except (urllib3.exceptions.HTTPError, OSError) as err:
            return self._fail(f"cannot reach the vSensor: {_root_cause(err)}")
        content = resp.data or b""
        try:
            answer = json.loads(content[:MAX_ANSWER]) if content else {}
        except ValueError:
            answer = None
        if resp.status != 200:
            reason = (answer.get("reason") if isinstance(answer, dict)
                      else content[:200].decode("utf-8", "replace"))
            hint = " (is VSENSOR_HMAC_KEY the vSensor's key? is the clock right?)" if resp.status == 401 else ""
            return self._fail(f"vSensor answered HTTP {resp.status}: {reason}{hint}")
        try:  # before anything of the answer is believed: is it the vSensor's answer to this request?
            protocol.verify_response(self._key, status=resp.status, headers=resp.headers, body=content,
                                     sensor=self.sensor, boot=self.boot, seq=self.seq, timestamp=signed_at)
        except protocol.ResponseError as err:
            self.answers_refused += 1
            return self._fail(f"vSensor's answer refused, its actions ignored: {err.reason} (a proxy "
                              "altering or forging answers? a vSensor that does not sign its answers?)")
        if not isinstance(answer, dict) or not isinstance(answer.get("actions", []), list):
            return self._fail("vSensor's answer is not a JSON object with an \"actions\" list")
        self.book.delivered(reports)
        self.ok += 1
        if self._failing:
            self.log(L.BASIC, "antigena exchange with the vSensor works again")
            self._failing = ""
        if reports and self.log.enabled(L.ANTIGENA):
            states = " ".join(f"{r['id'] or '-'}={r['state']}/{r['resets_sent']}" for r in reports[:20])
            more = f" (+{len(reports) - 20} more)" if len(reports) > 20 else ""
            self.log(L.ANTIGENA, f"antigena reported {len(reports)} actions (id=state/resets): {states}{more}")
        if take_actions:
            for line in self.book.receive(answer.get("actions", [])):
                self.log(L.ANTIGENA, line)
        return True

    def _fail(self, reason: str) -> bool:
        self.failed += 1
        if reason != self._failing or self.failed % 10 == 0:
            self.log.error(f"antigena exchange failed: {reason}; retrying in {self.period:g} s")
            self._failing = reason
        return False

    def close(self) -> None:
        self._link.close()
