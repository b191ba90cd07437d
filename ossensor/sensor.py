"""`ossensor run`: config -> interfaces -> capture -> batch -> ship, until SIGTERM.

Threads: the reader (capture/live.py) cuts batches into a bounded queue; the
shipper sends them; the main thread logs statistics and waits for a signal.
On SIGTERM/SIGINT capture stops, the last batch is cut, and the queue is sent
within the shutdown timeout; what cannot be sent is counted and reported.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import threading
import time

from ossensor import __version__, config, protocol
from ossensor.exits import EXIT_FAIL, EXIT_OK, EXIT_USAGE, Fatal
from ossensor.interfaces import netlink, selection
from ossensor.ops import privileges
from ossensor.ops import log as L
from ossensor.ship.accounting import Accounting
from ossensor.antigena import Antigena  # block actions: exchange with the vSensor, TCP resets
from ossensor.ship.batch import Batch, BatchQueue
from ossensor.capture import bpf
from ossensor.ship.client import Shipper
from ossensor.ship.pipeline import Pipeline, senders_for
from ossensor.ops.stop_signals import StopSignals

class StoppedEarly(Exception):
    """SIGTERM/SIGINT before capture started (waiting for an interface): nothing to flush, exit 0."""


def resolve(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise Fatal(f"VSENSOR_HOSTNAME: cannot resolve {host!r}: {err.strerror}") from None
    return list(dict.fromkeys(info[4][0] for info in infos))


def proxy_endpoint(host: str, port: int) -> tuple[str, int] | None:
    """The HTTPS proxy used for the vSensor, if any (HTTPS_PROXY, NO_PROXY: ossensor/ship/proxy.py)."""
    from ossensor.ship import proxy as P

    try:
        chosen = P.choose(host, port)
    except P.ProxyError as err:
        raise Fatal(str(err), EXIT_USAGE) from None
    return (chosen.host, chosen.port) if chosen else None


def _proxy_choice(settings):
    from ossensor.ship import proxy as P

    try:
        return P.choose(settings.vsensor_hostname, settings.vsensor_port)
    except P.ProxyError as err:
        raise Fatal(str(err), EXIT_USAGE) from None


def own_traffic_filter(settings) -> str:
    endpoints = [(a, settings.vsensor_port) for a in resolve(settings.vsensor_hostname, settings.vsensor_port)]
    proxy = proxy_endpoint(settings.vsensor_hostname, settings.vsensor_port)
    if proxy:
        endpoints += [(a, proxy[1]) for a in resolve(proxy[0], proxy[1])]
    return bpf.own_traffic(endpoints)


def choose_interfaces(settings, log: L.Log, selector: selection.Selector | None = None,
                      stop: StopSignals | None = None) -> list[netlink.Interface]:
    if selector is None:
        selector = selection.Selector.from_settings(settings)
        for note in selector.notes:
            log(L.BASIC, note)
    attempts = max(1, settings.interface_wait_attempts)
    for attempt in range(1, attempts + 1):
        sel = selector.select(netlink.enumerate_interfaces())
        if sel.selected:
            for v in sel.verdicts:
                log(L.BASIC, f"interface {v.interface.name} index={v.interface.index} "
                             f"{'selected' if v.selected else 'not selected'}: {v.reason}")
            return sel.selected
        left = attempts - attempt
        what = (f"interface {selector.device!r} (OSSENSOR_NETWORK_DEVICE)" if selector.device
                else "interface matching the selection")
        if left:
            log.warning(f"no {what} yet; waiting {settings.interface_wait_secs:g} s, {left} attempts left")
            if stop is None:
                time.sleep(settings.interface_wait_secs)
            elif stop.wait(settings.interface_wait_secs):
                raise StoppedEarly(f"stopped by {stop.received_name} while waiting for "
                                   f"{'' if selector.device else 'an '}{what}")
    if selector.device:
        raise Fatal(f"OSSENSOR_NETWORK_DEVICE: no such interface {selector.device!r}", EXIT_USAGE)
    # the lists are the user's input: exit 2 naming the one that left nothing; none set: the host has no
    # interface but loopback, an environment problem (exit 1)
    shown = lambda rxs: " ".join(rx.pattern for rx in rxs)[:120]  # noqa: E731
    if selector.include:
        raise Fatal(f"NETWORK_DEVICE_INCLUDELIST: {shown(selector.include)!r} selects no interface"
                    f"{' that NETWORK_DEVICE_EXCLUDELIST does not exclude' if selector.exclude else ''} "
                    "(`ossensor interfaces` shows every interface and why)", EXIT_USAGE)
    if selector.exclude:
        raise Fatal(f"NETWORK_DEVICE_EXCLUDELIST: {shown(selector.exclude)!r} excludes every interface but "
                    "loopback (`ossensor interfaces` shows every interface and why)", EXIT_USAGE)
    raise Fatal("no interface to capture: this host has only loopback (`ossensor interfaces` shows why)")


class Sensor:
    def __init__(self, settings, log: L.Log):
        self.s = settings
        self.log = log
        self.acct = Accounting()
        self.stop = threading.Event()
        self.queue = BatchQueue(settings.queue_mb << 20)
        self.boot = secrets.token_hex(8)
        self.capture = None
        self.shipper = None
        self.pipeline = None  # shipping.Pipeline, built in run()
        self.signals: StopSignals | None = None  # installed in run(), until it returns
        self.ledger = None  # ship/kill_ledger.py, with a spool: what a SIGKILL would lose, counted

    # -- stages --------------------------------------------------------------------------
    def enqueue(self, batch: Batch) -> None:
        """The reader's hand-off: shipping.Pipeline (memory queue -> disk spool -> counted drops)."""
        self.pipeline.enqueue(batch)
        if self.ledger is not None:  # spooled or counted: a SIGKILL from now on does not lose it
            self.ledger.settled(batch.packets)

    def stats_line(self) -> str:
        if self.capture:
            with self.acct.lock:
                self.acct.kernel_seen, self.acct.kernel_drops = self.capture.kernel_stats()
        snap = self.acct.snapshot()
        d = snap["dropped"]
        def one(name: str, st: dict) -> str:  # captured/bytes, then acked and dropped per stage (packets)
            drops = ",".join(f"{k[5:]}:{v[0]}" for k, v in st.items() if k.startswith("drop_") and v[0])
            dup = st.get("duplicate", (0, 0))[0]  # copies counted, not sent: not a loss
            return (f"{name}={st['captured'][0]}/{st['captured'][1]}B/acked:{st['acked'][0]}"
                    f"{'/dropped:' + drops if drops else ''}{f'/duplicate:{dup}' if dup else ''}")

        per_if = " ".join(one(n, st) for n, st in sorted(snap["per_if_stages"].items()))
        return (f"stats captured={snap['captured']} bytes={snap['captured_bytes']} "
                f"kernel_drops={snap['kernel_drops']} queue_drops={d['queue']} spool_drops={d['spool']} "
                f"refused={d['refused']} shutdown_drops={d['shutdown']} lost_on_kill={d['lost_on_kill']} "
                f"acked={snap['acked']} "
                f"batches={snap['batches']} recovered={snap['recovered']} queued={snap['queued']} "
                f"spooled={snap['spooled']} sent={snap['sent_packets']} retries={snap['retries']} "
                f"{self.pipeline.stats_fields() if self.pipeline else 'in_queue=0'} "
                f"in_flight={self.acct.in_flight()} stale={snap['stale']} duplicates={snap['duplicates']} "
                f"{self._ring_fields()}"
                f"per_interface[{per_if}]")

    def _ring_fields(self) -> str:
        """How full the kernel ring is, and how often the reader left packets there while a batch
        waited to be sent (the ring is the first buffer: capture/live.py)."""
        if not self.capture:
            return ""
        try:
            fill = self.capture.ring_fill()
        except ValueError:  # closed at exit
            return f"reader_waits={self.capture.held} "
        return f"ring_fill_pct={round(fill * 100)} reader_waits={self.capture.held} "

    # -- lifecycle ------------------------------------------------------------------------
    def drop_privileges(self) -> None:
        try:
            report = privileges.drop_all()
        except OSError as err:
            raise Fatal(f"cannot drop capabilities after opening the sockets: {err.strerror or err}") from None
        self.log(L.BASIC, report.line())
        if report.threads_with_caps:
            self.log.warning(f"threads started before the drop still hold capabilities: "
                             f"{', '.join(report.threads_with_caps)}")

    def _open_ledger(self) -> None:
        """The SIGKILL ledger in the spool directory: count what a killed earlier run lost, and keep
        this run's counts there (ship/kill_ledger.py)."""
        from ossensor.ship.kill_ledger import KillLedger

        try:
            self.ledger = KillLedger.open(self.spool.dir, self.s.sensor_name)
        except BlockingIOError:
            self.log.warning(f"another ossensor named {self.s.sensor_name!r} uses the spool {self.spool.dir}: "
                             f"packets a SIGKILL would take from this one are not counted")
            return
        except OSError as err:
            self.log.warning(f"cannot keep the SIGKILL ledger in {self.spool.dir}: {err.strerror or err}; "
                             f"packets a SIGKILL would take are not counted")
            return
        prev = self.ledger.previous
        if prev is not None and prev.lost:
            self.acct.lost_on_kill(prev.lost)
            self.log(L.BASIC, f"the previous run (pid {prev.pid}) was killed: {prev.lost} packets it had "
                              f"captured were not yet batched or spooled; counted as lost_on_kill")
        self.capture.attach_ledger(self.ledger)

    def run(self) -> int:
        try:
            return self._run()
        finally:
            if self.ledger is not None:
                self.ledger.close(clean=True)  # not killed: the next start finds nothing lost
            if self.signals is not None:
                self.signals.restore()

    def _run(self) -> int:
        s, log = self.s, self.log
        log(L.BASIC, f"ossensor {__version__} starting: sensor={s.sensor_name} boot={self.boot} pid={os.getpid()}")
        # SIGTERM/SIGINT from now on: while waiting for an interface they end the wait; once capturing, the
        # main loop below; during the final flush they are noted, not fatal
        self.signals = signals = StopSignals().install()
        for name, value in s.summary():
            log(L.BASIC, f"config {name}={value}")
        for w in s.warnings:
            log.warning(w)
        try:  # before waiting for interfaces: a missing capability is a deployment error, say it now
            privileges.require(antigena=s.antigena_enabled, metrics_port=getattr(s, "metrics_port", None))
        except privileges.MissingCapability as err:
            raise Fatal(str(err), EXIT_USAGE) from None
        self.selector = selection.Selector.from_settings(s)
        for note in self.selector.notes:
            log(L.BASIC, note)
        chosen = choose_interfaces(s, log, self.selector, stop=signals)
        exclusion = own_traffic_filter(s)
        expr = bpf.combine(exclusion, s.bpf)
        log(L.BASIC, f"kernel filter: {expr or '(all packets)'}")
        config.write_config_file(s, [i.name for i in chosen])
        log(L.BASIC, f"wrote generated configuration to {s.config_path}")
        try:
            from ossensor.capture.live import LiveCapture, pool_buffers_for

            params = dict(ring_bytes=s.ring_mb << 20, block_timeout_ms=s.block_timeout_ms, snaplen=s.snaplen,
                          batch_bytes=min(s.batch_max_bytes, protocol.MAX_BODY),  # framing included
                          batch_age_s=s.batch_max_age_ms / 1000,
                          filter_expr=expr, log=log, accounting=self.acct,
                          pool_buffers=pool_buffers_for((s.queue_mb + s.inflight_mb) << 20, s.batch_max_bytes),
                          dedup_window_ms=s.dedup_window_ms if getattr(s, "dedup", False) else 0)
            if s.capture_threads > 1:  # several rings in a PACKET_FANOUT group, a reader each
                from ossensor.capture.fanout import FanoutCapture

                self.capture = FanoutCapture(s.capture_threads, **params)
            else:
                self.capture = LiveCapture(**params)
        except bpf.FilterError as err:
            raise Fatal(f"BPF: {err}", EXIT_USAGE) from None
        except PermissionError:
            raise Fatal("cannot open a capture socket: permission denied (needs CAP_NET_RAW)") from None
        except OSError as err:
            raise Fatal(f"cannot open the capture ring ({s.ring_mb} MiB): {err.strerror or err}") from None
        if self.capture.ring_bytes < s.ring_mb << 20:
            log.warning(f"capture ring reduced to {self.capture.ring_bytes >> 20} MiB "
                        f"(asked {s.ring_mb} MiB: not enough memory)")
        try:
            self.capture.set_interfaces(chosen)
        except bpf.FilterError as err:
            raise Fatal(f"BPF: {err} (interfaces {', '.join(i.name for i in chosen)})", EXIT_USAGE) from None
        via = _proxy_choice(s)
        self.shipper = Shipper.for_settings(s, boot=self.boot, proxy=via.url if via else None,
                                            connections=senders_for(s.inflight_mb << 20, s.batch_max_bytes))
        log(L.BASIC, f"shipping to {self.shipper.base} (TLS verified against "
                     f"{s.tls_ca_file or 'the system trust store'}"
                     f"{', client certificate ' + str(s.tls_cert_file) if s.tls_cert_file else ''}"
                     f"{', via proxy ' + via.shown + ' (' + via.variable + ')' if via else ', direct'})")
        # batches fit the vSensor's body limit (framing included): the ring's buffers are sized to it, and
        # to the smaller one the vSensor may announce (hello, below) or name in a 413 (ship/body_limit.py)
        self.shipper.limit.on_change(self.capture.set_batch_bytes)
        self.pipeline = Pipeline(s, log, self.acct, self.shipper, self.boot)  # queue -> spool -> vSensor
        self.queue, self.spool = self.pipeline.queue, self.pipeline.spool  # for metrics
        self.pipeline.recover()
        if self.spool is not None:
            self._open_ledger()

        from ossensor.ops.metrics import Observer  # metrics, probes, rate lines (docs/troubleshooting.md)

        self.obs = Observer(self, s, log)
        self.obs.bind()
        from ossensor.interfaces.hotplug import Watcher  # netlink link events: interfaces coming and going

        try:
            self.watcher = Watcher(self.capture, self.selector, chosen, hotplug=s.device_any, log=log).open()
        except OSError as err:
            raise Fatal(f"cannot follow interface changes (netlink): {err.strerror or err}") from None
        self.antigena = Antigena(s, log, self.boot, proxy=via).open(self.capture)  # no socket when disabled
        # Every socket that needs a capability is open by now (open new ones above this line):
        # give up all capabilities before any thread starts (capabilities are per thread).
        self.drop_privileges()
        reader_stop = threading.Event()
        reader_failed: list[BaseException] = []

        def read() -> None:
            try:
                # back-pressure (packets wait in the ring while a batch waits to be sent) only without a spool:
                # with one, every cut batch is on disk at once, and a SIGKILL must not take a half ring with it
                self.capture.run(reader_stop, self.enqueue, self.queue, hold=self.spool is None)
            except BaseException as err:  # noqa: BLE001 - reported by the main thread, exit status 1
                reader_failed.append(err)

        reader = threading.Thread(target=read, name="reader")
        self.capture.start()
        # said once the ring is bound: from this line on, every packet is captured or counted
        log(L.BASIC, f"capturing on {', '.join(i.name for i in chosen)}: ring {self.capture.ring_bytes >> 20} MiB, "
                     f"batches up to {s.batch_max_bytes >> 10} KiB or {s.batch_max_age_ms} ms")
        reader.start()
        try:
            self.pipeline.start()
            threading.Thread(target=self.pipeline.learn_limit, name="hello", daemon=True).start()
            self.watcher.start()
            self.obs.start(self.shipper)
            self.antigena.start()

            next_stats = time.monotonic() + s.stats_interval
            while not signals.wait(min(1.0, max(0.05, next_stats - time.monotonic()))):
                if not reader.is_alive() or self.stop.is_set():
                    break
                if time.monotonic() >= next_stats:
                    log(L.STATS, self.stats_line())
                    self.obs.periodic()
                    next_stats += s.stats_interval
        finally:  # whatever happened above, the reader stops and what it holds is flushed
            self.stop.set()
            why = f"{signals.received_name} received" if signals.received else "the capture ended"
            log(L.BASIC, f"stopping ({why}): flushing the last batch")
            self.watcher.stop()
            timeout = getattr(s, "shutdown_timeout", 5.0)
            t_stop = time.monotonic()
            reader_stop.set()
            self.capture.wake()
            reader.join()
        if reader_failed:
            err = reader_failed[0]
            log.error(f"capture loop failed: {type(err).__name__}: {err}; stopping")
        self.antigena.stop()
        self.pipeline.finish(max(0.0, timeout - (time.monotonic() - t_stop)))  # flush; spool or count the rest
        log(L.BASIC, "final " + self.stats_line())
        log(L.BATCHES, f"batch buffers allocated: {self.capture.buffers_made} (fresh pages; the rest reused "
                       f"from the pool); reader waits while shipping caught up: {self.capture.held}")
        lost = self.acct.snapshot()["dropped"]
        if any(lost.values()):
            log.warning(f"packets not delivered: {lost}")
        self.capture.close()
        self.obs.close()
        self.shipper.close()
        log(L.BASIC, "stopped")
        return EXIT_FAIL if reader_failed else EXIT_OK


def run(settings) -> int:
    try:
        log = L.Log(settings.debug, settings.logfile, fmt=getattr(settings, "log_format", "plain"),
                    secrets=[settings.key_bytes])
    except OSError as err:
        print(f"ossensor: OSSENSOR_LOGFILE_PATH: cannot open {settings.logfile}: {err.strerror}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return Sensor(settings, log).run()
    except config.ConfigError as err:
        for p in err.problems:
            log.error(p)
            if settings.logfile:
                print(f"ossensor: {p}", file=sys.stderr)
        return EXIT_USAGE
    except StoppedEarly as err:
        log(L.BASIC, str(err))
        return EXIT_OK
    except Fatal as err:
        log.error(str(err))
        if settings.logfile:  # the log is in a file: say it where the user looks too
            print(f"ossensor: {err}", file=sys.stderr)
        return err.status
    except Exception as err:  # a bug: one line always, the traceback from debug level 2 on
        log.error(f"internal error: {type(err).__name__}: {err} (OSSENSOR_DEBUG=2 shows the traceback)")
        if settings.debug >= 2:
            import traceback

            traceback.print_exc()
        return EXIT_FAIL
    finally:
        log.close()
