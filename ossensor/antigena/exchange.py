"""The Antigena exchange: every ANTIGENA_TIME_PERIOD seconds the sensor POSTs its reports to
/v1/antigena (signed like a batch, JSON body) and receives the actions to enforce (docs/protocol.md).

Reports of final states are repeated until an exchange delivering them succeeds. Each exchange is
signed with a new seq (1, 2, ...; the vSensor refuses a replayed one). Expiry is checked between
exchanges (every 0.2 s), so an action ends within 0.2 s of its time.
"""

from __future__ import annotations

import json
import threading
import time

import requests

from ossensor import __version__, protocol
from ossensor import log as L
from ossensor.antigena.book import Book
from ossensor.ship import _root_cause, url_host

MAX_ANSWER = 4 << 20


class Exchange:
    def __init__(self, *, book: Book, log: L.Log, host: str, port: int, key: bytes, sensor: str, boot: str,
                 period: float, ca_file: str | None = None, client_cert: tuple[str, str] | None = None,
                 stats=None):
        self.book = book
        self.log = log
        self.base = f"https://{url_host(host)}:{port}"
        self._key = key
        self.sensor = sensor
        self.boot = boot
        self.period = period
        self.stats = stats or (lambda: {})
        self.session = requests.Session()
        self.session.headers["User-Agent"] = f"ossensor/{__version__}"
        if client_cert:
            self.session.cert = client_cert
        self.verify = ca_file if ca_file else True
        self.seq = 0
        self.ok = 0
        self.failed = 0
        self._failing = ""

    def __repr__(self) -> str:  # never show the key
        return f"Exchange({self.base}, period={self.period})"

    def run(self, stop: threading.Event) -> None:
        next_at = time.monotonic()
        while not stop.is_set():
            for line in self.book.expire():
                self.log(L.ANTIGENA, line)
            if time.monotonic() >= next_at:
                self.exchange_once()
                next_at = max(next_at + self.period, time.monotonic() + min(self.period, 0.5))
            stop.wait(max(0.0, min(0.2, next_at - time.monotonic())))

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
        headers = protocol.sign(self._key, sensor=self.sensor, boot=self.boot, seq=self.seq,
                                timestamp=int(time.time()), body=body, path=protocol.PATH_ANTIGENA)
        try:
            resp = self.session.post(self.base + protocol.PATH_ANTIGENA, data=body, headers=headers,
                                     timeout=(timeout or 5.0, timeout or max(5.0, self.period)),
                                     verify=self.verify)
        except requests.exceptions.RequestException as err:
            return self._fail(f"cannot reach the vSensor: {_root_cause(err)}")
        try:
            answer = json.loads(resp.content[:MAX_ANSWER]) if resp.content else {}
        except ValueError:
            answer = None
        if resp.status_code != 200:
            reason = answer.get("reason") if isinstance(answer, dict) else resp.text[:200]
            hint = " (is VSENSOR_HMAC_KEY the vSensor's key? is the clock right?)" if resp.status_code == 401 else ""
            return self._fail(f"vSensor answered HTTP {resp.status_code}: {reason}{hint}")
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
        self.session.close()
