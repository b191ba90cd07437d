"""Metrics, probes and the periodic rate lines: what the sensor tells about itself while it runs.

* Prometheus exposition (prometheus-client) at ``/metrics`` on ``OSSENSOR_METRICS_ADDR:OSSENSOR_METRICS_PORT``
  (off when the port is unset), built at each scrape from ``Accounting.snapshot()`` by a custom collector,
  so the numbers are the accounting's own (unknown new snapshot keys are exported too, generically).
* ``/healthz`` (liveness): the capture loop is alive — its heartbeat (set by the reader at every turn,
  at least every 50 ms) is younger than ``LIVE_STALE_S``. While the sensor is still starting (waiting
  for an interface, opening the ring) it counts as alive.
* ``/readyz`` (readiness): capturing (live, ring open) and the vSensor acknowledged a request (a batch or
  a keep-alive ``/v1/hello``) within ``OSSENSOR_READY_ACK_SECS``. With metrics on, a keep-alive thread
  says hello when nothing was acknowledged for a third of that bound, so an idle node stays ready and a
  vSensor that stops answering makes the pod unready. Readiness changes are logged at level 0.
* Level-1 ``rate`` lines (per interface packets/s and bytes/s since the previous statistics line) and,
  when the Antigena enforcer is present, an ``antigena`` line with its counters.

Antigena hook (issue 6): if the sensor has an attribute ``antigena`` whose ``counters()`` (or
``snapshot()``) returns ``{name: number}``, the numbers are exported as
``ossensor_antigena_events_total{event="<name>"}`` and logged at level 1. Nothing else is assumed.

A body answering a probe is one line saying why, so ``kubectl describe pod`` explains a failing probe.
"""

from __future__ import annotations

import http.server
import socket
import sys
import threading
import time
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from ossensor import __version__
from ossensor.exits import EXIT_USAGE, Fatal
from ossensor.ops import log as L

LIVE_STALE_S = 10.0  # the reader turns at least every 250 ms; 10 s without a turn means it is stuck

# snapshot keys exported by name (everything else numeric is exported generically)
_COUNTERS = {
    "captured": ("ossensor_captured_packets", "packets written into batches"),
    "captured_bytes": ("ossensor_captured_bytes", "bytes of packets written into batches"),
    "kernel_seen": ("ossensor_kernel_passed_packets", "packets the kernel filter passed to the ring "
                                                      "(PACKET_STATISTICS, includes ring drops)"),
    "stale": ("ossensor_stale_packets", "packets skipped: interface no longer selected"),
    "batches": ("ossensor_batches", "batches cut"),
    "sent_batches": ("ossensor_sent_batches", "batch send attempts (retries included)"),
    "sent_packets": ("ossensor_sent_packets", "packets in batch send attempts (retries included)"),
    "sent_bytes": ("ossensor_sent_bytes", "batch body bytes sent (retries included)"),
    "acked": ("ossensor_acked_packets", "packets the vSensor acknowledged"),
    "acked_batches": ("ossensor_acked_batches", "batches the vSensor acknowledged"),
}
_HANDLED = set(_COUNTERS) | {"kernel_drops", "dropped", "per_if", "per_if_stages", "duplicates"}
_ANTIGENA_GAUGES = {"active": "Antigena block actions in force now"}  # the other Antigena numbers only grow


def _antigena_counters(sensor) -> dict[str, float]:
    ag = getattr(sensor, "antigena", None)
    if ag is None:
        return {}
    for name in ("counters", "snapshot"):
        fn = getattr(ag, name, None)
        if callable(fn):
            try:
                data = fn()
            except Exception:  # an optional peer must never break a scrape
                return {}
            if isinstance(data, dict):
                return {str(k): v for k, v in data.items() if isinstance(v, (int, float))
                        and not isinstance(v, bool)}
    return {}


class Health:
    """Liveness and readiness facts, fed by the sensor (heartbeat) and the shipper (outcomes)."""

    def __init__(self, sensor, ready_ack_secs: float, registry: CollectorRegistry):
        self.sensor = sensor
        self.ready_ack_secs = ready_ack_secs
        self.lock = threading.Lock()
        self.last_ack: float | None = None    # monotonic
        self.last_ack_wall: float | None = None
        self.last_outcome = None              # ship.Outcome
        self.last_rtt: float | None = None
        self.requests: dict[tuple[str, str], int] = {}  # (kind, status) -> count
        self.rtt = Histogram("ossensor_vsensor_rtt_seconds", "round-trip time of answered vSensor requests",
                             buckets=(.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30),
                             registry=registry)

    def observe(self, out) -> None:
        """Every request's outcome (ship.Outcome: batches and hellos)."""
        with self.lock:
            self.last_outcome = out
            key = (out.kind, str(out.status) if out.status else "none")
            self.requests[key] = self.requests.get(key, 0) + 1
            if out.status is not None:
                self.last_rtt = out.rtt
                self.rtt.observe(out.rtt)
            if out.kind == "acked":
                self.last_ack = time.monotonic()
                self.last_ack_wall = time.time()

    def ack_age(self) -> float | None:
        with self.lock:
            return None if self.last_ack is None else time.monotonic() - self.last_ack

    def liveness(self) -> tuple[bool, str]:
        cap = getattr(self.sensor, "capture", None)
        beat = getattr(cap, "heartbeat", None) if cap is not None else None
        if beat is None:
            if self.sensor.stop.is_set():
                return False, "stopped"
            return True, "starting (capture loop not running yet)"
        age = time.monotonic() - beat
        if age > LIVE_STALE_S:
            return False, f"capture loop stuck or ended: last turn {age:.1f} s ago (bound {LIVE_STALE_S:g} s)"
        return True, f"capture loop alive (last turn {age:.2f} s ago)"

    def readiness(self) -> tuple[bool, str]:
        if self.sensor.stop.is_set():
            return False, "stopping"
        cap = getattr(self.sensor, "capture", None)
        if cap is None or getattr(cap, "heartbeat", None) is None:
            return False, "not capturing yet (starting)"
        live, why = self.liveness()
        if not live:
            return False, why
        age = self.ack_age()
        last = self.last_outcome
        detail = f"; last answer: {last.status or '-'} {last.kind}: {last.reason}" if last else ""
        if age is None:
            return False, f"capturing, but the vSensor has not acknowledged anything yet{detail}"
        if age > self.ready_ack_secs:
            return False, (f"capturing, but no acknowledgment from the vSensor for {age:.0f} s "
                           f"(bound OSSENSOR_READY_ACK_SECS={self.ready_ack_secs:g}){detail}")
        return True, f"capturing; vSensor acknowledged {age:.1f} s ago"


class Collector:
    """prometheus-client custom collector: one consistent accounting snapshot per scrape."""

    def __init__(self, sensor, health: Health):
        self.sensor = sensor
        self.health = health

    def describe(self):
        return []  # families are built per scrape; no need to pre-describe

    def collect(self):
        s = self.sensor
        acct = s.acct
        cap = getattr(s, "capture", None)
        if cap is not None and hasattr(cap, "kernel_stats"):
            try:
                seen, drops = cap.kernel_stats()
                with acct.lock:
                    acct.kernel_seen, acct.kernel_drops = seen, drops
            except Exception:
                pass  # ring closed during shutdown: keep the last numbers
        snap: dict[str, Any] = acct.snapshot()

        info = GaugeMetricFamily("ossensor_info", "sensor identity", labels=["version", "sensor", "boot"])
        info.add_metric([__version__, str(getattr(s.s, "sensor_name", "")), str(getattr(s, "boot", ""))], 1)
        yield info

        for key, (name, doc) in _COUNTERS.items():
            if key in snap:
                yield CounterMetricFamily(name, doc, value=snap[key])

        dropped = CounterMetricFamily("ossensor_dropped_packets", "packets dropped, by stage: kernel_ring "
                                      "(ring full, before capture) and each stage after capture",
                                      labels=["stage"])
        dropped.add_metric(["kernel_ring"], snap.get("kernel_drops", 0))
        for stage, n in sorted((snap.get("dropped") or {}).items()):
            dropped.add_metric([str(stage)], n)
        yield dropped

        ifp = CounterMetricFamily("ossensor_interface_captured_packets", "packets captured per interface",
                                  labels=["interface"])
        ifb = CounterMetricFamily("ossensor_interface_captured_bytes", "bytes captured per interface",
                                  labels=["interface"])
        for name, value in sorted((snap.get("per_if") or {}).items()):
            p, b = (value if isinstance(value, (tuple, list)) else
                    (getattr(value, "packets", 0), getattr(value, "bytes", 0)))
            ifp.add_metric([name], p)
            ifb.add_metric([name], b)
        yield ifp
        yield ifb

        # copies of packets captured on another interface (issue 19): counted, not sent; not a loss
        dups = CounterMetricFamily("ossensor_duplicates", "copies of a packet already captured on another "
                                   "interface, counted and not sent (OSSENSOR_DEDUP); not a loss",
                                   labels=["interface"])
        for name, per_stage in sorted((snap.get("per_if_stages") or {}).items()):
            pb = per_stage.get("duplicate")
            if isinstance(pb, (tuple, list)) and pb and pb[0]:
                dups.add_metric([name], pb[0])
        yield dups

        # per interface and stage (issue 5's accounting: captured, queued, spooled, sent, acked, drop_<stage>)
        stages = snap.get("per_if_stages") or {}
        if stages:
            sp = CounterMetricFamily("ossensor_interface_stage_packets", "packets per interface that passed a "
                                     "stage (drop_<stage>: dropped there)", labels=["interface", "stage"])
            sb = CounterMetricFamily("ossensor_interface_stage_bytes", "bytes per interface that passed a stage",
                                     labels=["interface", "stage"])
            for name, per_stage in sorted(stages.items()):
                for stage, pb in sorted(per_stage.items()):
                    if isinstance(pb, (tuple, list)) and len(pb) >= 2:
                        sp.add_metric([name, stage], pb[0])
                        sb.add_metric([name, stage], pb[1])
            yield sp
            yield sb

        # the same sum as Accounting.in_flight(): batches recovered from the spool count as captured
        in_flight = (snap.get("captured", 0) + snap.get("recovered", 0) - snap.get("acked", 0)
                     - sum((snap.get("dropped") or {}).values()))
        yield GaugeMetricFamily("ossensor_in_flight_packets", "captured, neither acknowledged nor dropped yet",
                                value=in_flight)

        # anything the accounting learned since this was written (issue 5: spool, ...), generically
        extra = GaugeMetricFamily("ossensor_accounting", "other accounting values, by name",
                                  labels=["name", "key"])
        any_extra = False
        for key, value in sorted(snap.items()):
            if key in _HANDLED:
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                extra.add_metric([key, ""], value)
                any_extra = True
            elif isinstance(value, dict):
                for k, v in sorted(value.items()):
                    if isinstance(v, (int, float)) and not isinstance(v, bool):
                        extra.add_metric([key, str(k)], v)
                        any_extra = True
        if any_extra:
            yield extra

        q = getattr(s, "queue", None)
        if q is not None:
            yield GaugeMetricFamily("ossensor_queue_batches", "batches waiting to be sent", value=len(q))
            yield GaugeMetricFamily("ossensor_queue_bytes", "bytes waiting in the queue",
                                    value=getattr(q, "nbytes", 0))
            yield GaugeMetricFamily("ossensor_queue_capacity_bytes", "queue bound (OSSENSOR_QUEUE_MB)",
                                    value=getattr(q, "max_bytes", 0))
        cap = getattr(s, "capture", None)
        if cap is not None and hasattr(cap, "ring_fill"):
            try:
                yield GaugeMetricFamily("ossensor_ring_fill_ratio", "share of the kernel ring holding packets "
                                        "not read yet (the reader leaves them there while a batch waits to "
                                        "be sent, up to 0.5)", value=cap.ring_fill())
            except ValueError:  # the ring is closed (stopping)
                pass
            yield CounterMetricFamily("ossensor_reader_waits", "reader turns that left packets in the ring "
                                      "while shipping caught up", value=cap.held)
        log = getattr(s, "log", None)
        if isinstance(getattr(log, "lines_dropped", None), int):
            yield CounterMetricFamily("ossensor_log_lines_dropped", "log lines of the capture thread dropped "
                                      "because the log output did not keep up (no packet was lost for them)",
                                      value=log.lines_dropped)
        spool = getattr(s, "spool", None)
        if spool is not None:
            for attr, name, doc in (("nbytes", "ossensor_spool_bytes", "bytes in the disk spool"),
                                    ("max_bytes", "ossensor_spool_capacity_bytes", "disk spool bound")):
                v = getattr(spool, attr, None)
                if isinstance(v, (int, float)):
                    yield GaugeMetricFamily(name, doc, value=v)

        h = self.health
        req = CounterMetricFamily("ossensor_vsensor_requests", "requests to the vSensor by outcome "
                                  "(acked/refused/retry) and HTTP status (none: no answer)",
                                  labels=["outcome", "status"])
        with h.lock:
            for (kind, status), n in sorted(h.requests.items()):
                req.add_metric([kind, status], n)
            last_rtt, last_ack_wall = h.last_rtt, h.last_ack_wall
        yield req
        if last_rtt is not None:
            yield GaugeMetricFamily("ossensor_vsensor_last_rtt_seconds", "round-trip time of the last answered "
                                    "vSensor request", value=last_rtt)
        if last_ack_wall is not None:
            yield GaugeMetricFamily("ossensor_vsensor_last_ack_timestamp_seconds",
                                    "Unix time of the last vSensor acknowledgment", value=last_ack_wall)
        live, _ = h.liveness()
        ready, _ = h.readiness()
        yield GaugeMetricFamily("ossensor_live", "1 when /healthz passes", value=int(live))
        yield GaugeMetricFamily("ossensor_ready", "1 when /readyz passes", value=int(ready))

        ag = _antigena_counters(s)
        if ag:
            fam = CounterMetricFamily("ossensor_antigena_events", "Antigena counters, by event",
                                      labels=["event"])
            for k, v in sorted(ag.items()):
                if k not in _ANTIGENA_GAUGES:
                    fam.add_metric([k], v)
            yield fam
            for k, doc in _ANTIGENA_GAUGES.items():
                if k in ag:
                    yield GaugeMetricFamily(f"ossensor_antigena_{k}", doc, value=ag[k])


class _Handler(http.server.BaseHTTPRequestHandler):
    server_version = f"ossensor/{__version__}"
    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802 (http.server naming)
        obs: Observer = self.server.observer
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            try:
                body, status, ctype = generate_latest(obs.registry), 200, CONTENT_TYPE_LATEST
            except Exception as err:  # never a traceback on the wire: say what broke
                body, status, ctype = f"metrics failed: {err}\n".encode(), 500, "text/plain; charset=utf-8"
        elif path in ("/healthz", "/livez"):
            ok, why = obs.health.liveness()
            body, status, ctype = f"{'ok' if ok else 'not live'}: {why}\n".encode(), 200 if ok else 503, \
                "text/plain; charset=utf-8"
        elif path == "/readyz":
            ok, why = obs.health.readiness()
            body, status, ctype = f"{'ready' if ok else 'not ready'}: {why}\n".encode(), 200 if ok else 503, \
                "text/plain; charset=utf-8"
        else:
            body, status, ctype = b"not found: try /metrics, /healthz, /readyz\n", 404, "text/plain; charset=utf-8"
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):  # probes every few seconds must not flood the log
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):  # a scraper hanging up: one line, no traceback
        err = sys.exc_info()[1]
        obs = getattr(self, "observer", None)
        if obs is not None:
            obs.log(L.SENDS, f"metrics: request from {client_address[0]} failed: {type(err).__name__}: {err}")


class Observer:
    """Owns the registry, the probe facts, the HTTP endpoint and the keep-alive thread."""

    def __init__(self, sensor, settings, log: L.Log):
        self.sensor = sensor
        self.s = settings
        self.log = log
        self.registry = CollectorRegistry(auto_describe=False)
        self.health = Health(sensor, getattr(settings, "ready_ack_secs", 60.0), self.registry)
        self.registry.register(Collector(sensor, self.health))
        self.httpd: _Server | None = None
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        self._prev: tuple[float, dict] | None = None
        self._ready: bool | None = None

    # -- HTTP endpoint ---------------------------------------------------------------------------
    def bind(self) -> None:
        """Open the listening socket (before the sensor gives up its capabilities: a port below 1024
        needs CAP_NET_BIND_SERVICE). Serving starts in start(), after the drop."""
        port = getattr(self.s, "metrics_port", None)
        if not port:
            return
        addr = getattr(self.s, "metrics_addr", "0.0.0.0")
        server_cls = _Server
        if ":" in addr:
            server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        try:
            self.httpd = server_cls((addr, port), _Handler)
        except OSError as err:
            raise Fatal(f"OSSENSOR_METRICS_PORT: cannot listen on {addr}:{port}: {err.strerror or err}",
                        EXIT_USAGE) from None
        self.httpd.observer = self

    def start(self, shipper) -> None:
        """Count every outcome of `shipper`; with metrics on, serve HTTP and keep readiness fresh
        with hellos when no batch was acknowledged lately."""
        for name in ("send", "hello"):  # wrap this instance's methods: ship/client.py stays untouched
            orig = getattr(shipper, name)

            def observed(*args, _orig=orig, **kwargs):
                out = _orig(*args, **kwargs)
                self.health.observe(out)
                return out

            setattr(shipper, name, observed)
        if self.httpd is None:
            return
        t = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.2}, name="metrics",
                             daemon=True)
        t.start()
        self._threads.append(t)
        addr, port = self.httpd.server_address[:2]
        host = f"[{addr}]" if ":" in addr else addr
        self.log(L.BASIC, f"metrics and probes on http://{host}:{port}/ "
                          f"(/metrics, /healthz liveness, /readyz readiness: vSensor acknowledged within "
                          f"{self.health.ready_ack_secs:g} s)")
        t = threading.Thread(target=self._keepalive, args=(shipper,), name="keepalive", daemon=True)
        t.start()
        self._threads.append(t)

    def _keepalive(self, shipper) -> None:
        """Say hello when nothing was acknowledged for a third of the readiness bound (an idle node, or
        a vSensor that stopped answering), and log readiness changes. The shipper's HTTP session is
        shared with the shipper thread; urllib3's connection pool is thread-safe."""
        every = max(0.5, self.health.ready_ack_secs / 3)
        while not self._stop.is_set():
            age = self.health.ack_age()
            if age is None or age >= every:
                out = shipper.hello()
                self.log(L.SENDS, f"hello -> {out.status or '-'} {out.kind}: {out.reason} "
                                  f"rtt_ms={out.rtt * 1000:.1f}")
            self._note_readiness()
            self._stop.wait(min(every, 5.0) if not self._ready else every)

    def _note_readiness(self) -> None:
        ready, why = self.health.readiness()
        if ready != self._ready:
            self._ready = ready
            self.log(L.BASIC, f"readiness: {'ready' if ready else 'not ready'}: {why}")

    # -- level-1 lines beside the stats line --------------------------------------------------------
    def periodic(self) -> None:
        """Level 1: per-interface rates since the previous call, and Antigena counters if any."""
        if not self.log.enabled(L.STATS):
            return
        now = time.monotonic()
        snap = self.sensor.acct.snapshot()
        per_if = {k: (v if isinstance(v, (tuple, list)) else (v.packets, v.bytes))
                  for k, v in (snap.get("per_if") or {}).items()}
        drops_if = {name: {s[5:]: pb[0] for s, pb in st.items() if s.startswith("drop_") and pb[0]}
                    for name, st in (snap.get("per_if_stages") or {}).items()}
        dups_if = {name: st.get("duplicate", (0, 0))[0] for name, st in (snap.get("per_if_stages") or {}).items()}
        cur = {"per_if": per_if, "kernel_drops": snap.get("kernel_drops", 0),
               "dropped": sum((snap.get("dropped") or {}).values())}
        if self._prev is not None:
            t0, prev = self._prev
            dt = max(1e-3, now - t0)
            for name, (p, b) in sorted(per_if.items()):
                p0, b0 = prev["per_if"].get(name, (0, 0))
                dropped = drops_if.get(name) or {}
                self.log(L.STATS, f"rate interface={name} packets_per_s={(p - p0) / dt:.1f} "
                                  f"bytes_per_s={(b - b0) / dt:.0f} packets={p} bytes={b} "
                                  f"dropped={sum(dropped.values())} "
                                  f"duplicate={dups_if.get(name, 0)}"
                                  + "".join(f" drop_{s}={n}" for s, n in sorted(dropped.items())))
            self.log(L.STATS, f"rate drops kernel_ring_per_s={(cur['kernel_drops'] - prev['kernel_drops']) / dt:.1f} "
                              f"after_capture_per_s={(cur['dropped'] - prev['dropped']) / dt:.1f}")
        self._prev = (now, cur)
        ag = _antigena_counters(self.sensor)
        if ag:
            self.log(L.STATS, "antigena " + " ".join(f"{k}={v}" for k, v in sorted(ag.items())))

    def close(self) -> None:
        self._stop.set()
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
        for t in self._threads:
            t.join(2)
