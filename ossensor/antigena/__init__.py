"""Antigena: enforce the vSensor's block actions by TCP reset, report them every ANTIGENA_TIME_PERIOD.

  actions.py   what an action is, validation (malformed -> refused with a reason)
  book.py      the actions' states and counters; the rules for the C matcher
  rst.py       resets built from a seen packet
  enforcer.py  thread: hits -> resets (AF_PACKET on the interface / raw IP through the stack)
  exchange.py  thread: POST /v1/antigena every period: reports out, actions in
The matching itself is in C (native/antigena.h): the capture path hands only hits to Python.
docs/antigena.md describes the whole.
"""

from __future__ import annotations

import threading

from ossensor.ops import log as L
from ossensor.antigena.book import Book
from ossensor.antigena.enforcer import Enforcer
from ossensor.antigena.exchange import Exchange

_CHOOSE = object()  # Antigena(proxy=...) not given: ossensor.ship.proxy.choose decides


class Antigena:
    """What sensor.py starts: the exchange always (to report), the enforcer only when enabled."""

    def __init__(self, settings, log: L.Log, boot: str, proxy=_CHOOSE):
        """proxy: the ossensor.ship.proxy.Proxy batches go through, or None (direct); by default decided
        here exactly as the sensor decides it for batches (ossensor.ship.proxy.choose), never by requests."""
        s = settings
        if proxy is _CHOOSE:
            from ossensor.ship import proxy as P

            proxy = P.choose(s.vsensor_hostname, s.vsensor_port)  # ProxyError: the sensor refused it already
        self.log = log
        self.enabled = bool(s.antigena_enabled)
        self.book = Book(enabled=self.enabled)
        self.enforcer = Enforcer(self.book, log) if self.enabled else None
        self.exchange = Exchange(book=self.book, log=log, host=s.vsensor_hostname, port=s.vsensor_port,
                                 key=s.key_bytes, sensor=s.sensor_name, boot=boot,
                                 period=s.antigena_time_period,
                                 ca_file=str(s.tls_ca_file) if s.tls_ca_file else None,
                                 client_cert=(str(s.tls_cert_file), str(s.tls_key_file))
                                 if s.tls_cert_file else None, stats=self.stats,
                                 proxy=proxy.url if proxy else None)
        # per ring (several readers in a fanout group each call the hook with their own ring)
        self._applied: dict[int, int] = {}
        self._c_stats: dict[int, tuple] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def open(self, capture) -> "Antigena":
        """Before privileges are dropped: open the injection sockets (only when enabled) and hook
        the capture's reader loop. A failure is reported, not fatal: capture goes on."""
        if not self.enabled:
            self.log(L.BASIC, "antigena disabled (ANTIGENA_ENABLED=false): no injection socket; "
                              "actions received are reported as refused")
            return self
        try:
            self.enforcer.open()
        except OSError as err:
            self.book.unavailable = f"cannot open the injection socket: {err.strerror or err} (needs CAP_NET_RAW)"
            self.log.error(f"antigena: {self.book.unavailable}; actions will be reported as failed")
            return self
        capture.antigena_hook = self.capture_hook
        self.exchange.on_rules = capture.wake  # new or removed rules reach the reader at once
        self.log(L.BASIC, f"antigena enabled: actions from the vSensor every {self.exchange.period:g} s, "
                          "enforced by TCP reset")
        return self

    def start(self) -> None:
        if self.enabled and not self.book.unavailable:
            self._threads.append(threading.Thread(target=self.enforcer.run, args=(self._stop,),
                                                  name="antigena-enforcer", daemon=True))
        self._threads.append(threading.Thread(target=self.exchange.run, args=(self._stop,),
                                              name="antigena-exchange", daemon=True))
        for t in self._threads:
            t.start()

    def capture_hook(self, ring) -> None:
        """Reader thread, after each ring.read(): new rules in, hits out. Never raises: a fault here
        must not stop capture."""
        key = id(ring)
        try:
            if self.book.version != self._applied.get(key):
                version, rules = self.book.rules()
                ring.set_rules(rules)
                self._applied[key] = version
            hits = ring.take_hits()
            if hits:
                self.enforcer.offer(hits)
            self._c_stats[key] = ring.antigena_stats()
        except Exception as err:  # noqa: BLE001
            self._applied[key] = self.book.version  # do not retry the same table at every read
            self.log.error(f"antigena: cannot update the capture's rule table: {type(err).__name__}: {err}")

    def stats(self) -> dict:
        b = self.book.summary()
        per_ring = list(self._c_stats.values())
        matched, hits, overflow, skipped = (sum(s[i] for s in per_ring) for i in range(1, 5))
        e = self.enforcer
        return {"active": b["active"], "received": b["received"], "refused": b["refused"], "failed": b["failed"],
                "expired": b["expired"], "resets_sent": b["resets_sent"], "send_errors": b["send_errors"],
                "matched": matched, "hits": hits, "hit_overflow": overflow + (e.queue_overflow if e else 0),
                "not_resettable": skipped, "exchanges_ok": self.exchange.ok, "exchanges_failed": self.exchange.failed,
                "answers_refused": self.exchange.answers_refused}

    counters = stats  # what ops/metrics.py exports and logs at level 1 ("antigena ..." line)

    def stats_text(self) -> str:
        return "antigena[" + " ".join(f"{k}={v}" for k, v in self.stats().items()) + "]"

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(3)
        if not any(t.is_alive() for t in self._threads):
            self.exchange.final()  # report the final states (2 s at most)
        if self.enforcer:
            self.enforcer.close()
        self.exchange.close()
