"""`ossensor replay FILE...`: capture files through the same BPF, batching, signing and shipping
as live capture, to the vSensor from the environment or to a local pcapng file (`--out`).

The C reader (native/filereader.c, `ossensor._filereader.Reader`) parses pcap and pcapng,
applies the filter per link type with libpcap's bpf_filter() and writes pcapng Enhanced Packet
Blocks straight into a batch buffer; Python only sees batches:

    files -> Reader.read()/take() -> batch.section() (SHB, IDBs, EPBs, ISBs) -> queue -> Shipper
                                  -> or, with --out: one pcapng section (SHB, IDBs as interfaces
                                     appear, the EPBs) written to the file

Pacing: as fast as possible (default), or the file's own timing (`--realtime`, `--speed X`).
A damaged file stops that file with one line naming it and the byte offset; what was read
before is still sent, the other files are still replayed, and the exit status is 2.
"""

from __future__ import annotations

import argparse
import math
import os
import secrets
import signal
import struct
import sys
import threading
import time
from dataclasses import dataclass, field

from ossensor.exits import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from ossensor.ops import log as L
from ossensor import pcapng
from ossensor.ship import body_limit
from ossensor.ship.batch import Batch, packet_hex, section

FRAMING_ROOM = 64 << 10  # left under the vSensor's body limit for the SHB, IDBs and ISBs around the EPBs
WAIT_SLICE = 0.2  # longest sleep while pacing: progress and Ctrl-C stay responsive


class UsageError(Exception):
    """One line naming the input; exit status 2."""


# ------------------------------------------------------------------------------ arguments

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Replay pcap/pcapng files through the same filter (BPF), batching, signing and shipping as live "
        "capture: to the vSensor configured in the environment (VSENSOR_HOSTNAME, VSENSOR_HMAC_KEY, ...), "
        "or to a local pcapng file with --out (then no vSensor variable is needed). Needs no root.")
    p.add_argument("files", nargs="+", metavar="FILE", help="pcap (micro/nanosecond) or pcapng files")
    p.add_argument("--out", "-o", metavar="PCAPNG",
                   help="write the batches' packets to this pcapng file ('-' = standard output) "
                        "instead of sending them to the vSensor")
    p.add_argument("--realtime", action="store_true",
                   help="send packets at the pace of their timestamps (default: as fast as possible)")
    p.add_argument("--speed", metavar="FACTOR", type=_speed,
                   help="with the file's timing, FACTOR times faster (2 = twice as fast); implies --realtime")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bar (it is shown only when standard output is a terminal)")
    p.add_argument("--send-timeout", metavar="SECONDS", type=_seconds, default=30.0,
                   help="give up on a batch the vSensor has not accepted after retrying this long; it is "
                        "counted as dropped (default 30)")


def _positive(what: str):
    """An argparse type: a finite number > 0, refused in one line naming `what` it must be."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value <= 0:
            raise argparse.ArgumentTypeError(f"must be {what} > 0, got {text!r}")
        return value
    return parse


_speed = _positive("a number")
_seconds = _positive("a number of seconds")


# ------------------------------------------------------------------------------ configuration

def load_settings(to_file: bool, environ=None):
    """config.load() with the usual rules. With --out only what a local run uses is read (config/local.py:
    the same parsers and messages, without the settings model), so a missing or odd VSENSOR_* never stops
    a local run, and a shell loop over many small files does not pay for pydantic each time."""
    env = os.environ if environ is None else environ
    if to_file:
        from ossensor.config.local import load_local

        return load_local(env)
    from ossensor import config
    from ossensor.config.values import text_problem

    env = dict(env)
    # BPF is compiled by the reader per interface of each file, for its link type (as tcpdump -r): the
    # setting's own check compiles it for Ethernet, which refuses 802.11 `type mgt` and the like
    bpf = env.pop("BPF", None)
    why = None if bpf is None else text_problem(str(bpf))
    try:
        settings = config.load(env)
    except config.ConfigError as err:
        raise config.ConfigError(err.problems + ([f"BPF: {why}"] if why else [])) from None
    if why:
        raise config.ConfigError([f"BPF: {why}"])
    if bpf is not None and bpf.strip():
        settings = settings.model_copy(update={"bpf": str(bpf)})
    return settings


# ------------------------------------------------------------------------------ counters

@dataclass
class Totals:
    files: int = 0
    read: int = 0            # packet records read from the files
    read_bytes: int = 0
    passed: int = 0          # of those, passed the filter (written into batches)
    passed_bytes: int = 0
    truncated: int = 0       # cut to OSSENSOR_SNAPLEN
    batches: int = 0
    sent: int = 0            # packets in batches handed to the sink (HTTP POST, or written to --out)
    sent_batches: int = 0
    acked: int = 0           # written (with --out)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


# ------------------------------------------------------------------------------ sinks

class FileSink:
    """One pcapng section: SHB, then an IDB as each interface appears, then the EPBs as written
    by the C reader (their interface ids are offset per input file so all share the section).
    The EPBs go from the reader's buffer to the file descriptor in C (Reader.write_to)."""

    def __init__(self, path: str, snaplen: int, totals: Totals):
        self.path = path
        self.snaplen = snaplen
        self.totals = totals
        self.n_ifs = 0
        if path == "-":
            sys.stdout.flush()
            self.fd = sys.stdout.fileno()
            self._own = False
        else:
            try:
                self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
            except OSError as err:
                raise UsageError(f"--out: cannot write {path}: {err.strerror or err}") from None
            self._own = True
        self._write(pcapng.shb())

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as err:
            raise UsageError(f"--out: cannot write {self.path}: {err.strerror or err}") from None

    def id_base(self) -> int:
        return self.n_ifs

    def add_interfaces(self, interfaces: list[tuple[str, int]], base: int, snaplens: list[int]) -> None:
        """IDBs for the interfaces of this file (ids from `base`) not written yet, each with its link type
        and its snapshot length (libpcap's for the input interface, at most OSSENSOR_SNAPLEN)."""
        start = self.n_ifs - base
        new = interfaces[start:]
        if new:
            self._write(b"".join(pcapng.idb(name, lt, min(self.snaplen, snap))
                                 for (name, lt), snap in zip(new, snaplens[start:])))
            self.n_ifs += len(new)

    def write_from(self, reader) -> tuple:
        try:
            return reader.write_to(self.fd)
        except OSError as err:
            raise UsageError(f"--out: cannot write {self.path}: {err.strerror or err}") from None

    def put(self, batch: Batch, interfaces: list[tuple[str, int]], base: int, snaplens: list[int]) -> None:
        """Count a batch; its EPBs are written already (write_from), or are in batch.body."""
        if batch.body:
            self.add_interfaces(interfaces, base, snaplens)
            self._write(batch.body)
        with self.totals.lock:
            self.totals.sent += batch.packets
            self.totals.sent_batches += 1
            self.totals.acked += batch.packets

    def interrupt(self) -> None:
        pass

    def report(self) -> tuple[int, int, dict[str, int]]:
        return self.totals.sent, self.totals.acked, {}

    def close(self, deadline: float | None = None) -> None:
        if not self.n_ifs:
            # no input had an interface (empty pcapng sections, unreadable files): pcapng readers refuse a
            # section without one ("no Interface Description Blocks"), so the file says which it would be
            self._write(pcapng.idb("(no interface)", pcapng.LINKTYPE_ETHERNET, self.snaplen))
            self.n_ifs = 1
        if self._own:
            try:
                os.close(self.fd)
            except OSError as err:
                raise UsageError(f"--out: cannot write {self.path}: {err.strerror or err}") from None


class VSensorSink:
    """Batches as pcapng sections, handed to the same shipping stage as live capture
    (ossensor.ship.pipeline.Pipeline: bounded queue, signing and retries by ossensor.ship.client.Shipper).
    Replay is not live: a full queue slows reading down (enqueue(block=True)), it never drops.
    The disk spool is not used: a replay's leftovers must not be sent later by the live sensor."""

    def __init__(self, settings, boot: str, totals: Totals, log: L.Log, send_timeout: float):
        from ossensor.ship import proxy as P
        from ossensor.ship.accounting import Accounting
        from ossensor.ship.client import Shipper
        from ossensor.ship.pipeline import Pipeline, senders_for

        s = settings
        try:
            via = P.choose(s.vsensor_hostname, s.vsensor_port)
        except P.ProxyError as err:
            raise UsageError(str(err)) from None
        self.log = log
        self.send_timeout = send_timeout
        self.acct = Accounting()
        self.shipper = Shipper.for_settings(s, boot=boot, proxy=via.url if via else None,
                                            connections=senders_for(s.inflight_mb << 20, s.batch_max_bytes))
        log(L.BASIC, f"shipping to {self.shipper.base} as sensor={s.sensor_name} boot={boot} (TLS verified "
                     f"against {s.tls_ca_file or 'the system trust store'}"
                     f"{', via proxy ' + via.shown if via else ', direct'})")
        if getattr(s, "spool_dir", None):
            log(L.BASIC, f"OSSENSOR_SPOOL_DIR={s.spool_dir} is not used by replay")
            s = s.model_copy(update={"spool_dir": None})
        self.pipeline = Pipeline(s, log, self.acct, self.shipper, boot)
        # every sender opens its connection now, while the hello below is under way (one round trip
        # for all of them instead of one per sender when its first batch is ready)
        self.pipeline.start(warm=self.pipeline.senders)
        self.pipeline.learn_limit()  # the vSensor's body limit, before the first batch is cut

    def body_limit(self) -> int | None:
        """The largest section the vSensor takes (framing included): sections are cut to fit it."""
        return self.shipper.limit.value

    def id_base(self) -> int:
        return 0  # each batch is its own section

    def put(self, batch: Batch, interfaces: list[tuple[str, int]], base: int, snaplens: list[int]) -> None:
        self.acct.add_batch(batch.packets, batch.captured_bytes, batch.per_if)
        self.pipeline.enqueue(batch, block=True)  # dropped (counted) only once interrupt() was called

    def interrupt(self) -> None:
        self.pipeline.stop.set()

    def close(self, deadline: float | None = None) -> None:
        """Wait until everything is acknowledged or refused, as long as the vSensor makes progress
        (it gives up after send_timeout s without any), or until `deadline` (after Ctrl-C)."""
        acct = self.acct
        last, since = -1, time.monotonic()
        while acct.in_flight() > 0:
            now = time.monotonic()
            snap = acct.snapshot()
            done = snap["acked"] + sum(snap["dropped"].values())
            if done != last:
                last, since = done, now
            if (deadline is not None and now >= deadline) or now - since > self.send_timeout:
                break
            time.sleep(0.05)
        if acct.in_flight() > 0 and deadline is None:
            self.log.error(f"the vSensor acknowledged nothing for {self.send_timeout:g} s (--send-timeout): "
                           f"giving up on {acct.in_flight()} packets")
        self.pipeline.finish(0.5)
        self.shipper.close()

    def report(self) -> tuple[int, int, dict[str, int]]:
        snap = self.acct.snapshot()
        return snap["sent_packets"], snap["acked"], {k: v for k, v in snap["dropped"].items()}


# ------------------------------------------------------------------------------ progress

class Progress:
    """A rich progress bar on a terminal; nothing otherwise."""

    def __init__(self, enabled: bool, total_bytes: int):
        self.bar = None
        if not enabled:
            return
        from rich.progress import (BarColumn, DownloadColumn, Progress as RichProgress, TextColumn,
                                   TimeElapsedColumn, TransferSpeedColumn)

        self.bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), DownloadColumn(),
                                TransferSpeedColumn(),
                                TextColumn("{task.fields[packets]:,} pkts {task.fields[rate]:,.0f} pkt/s"),
                                TimeElapsedColumn(), transient=False)
        self.task = self.bar.add_task("replay", total=max(1, total_bytes), packets=0, rate=0.0)
        self.bar.start()
        self.t0 = time.monotonic()

    def update(self, name: str, done_bytes: int, packets: int) -> None:
        if self.bar:
            rate = packets / max(1e-6, time.monotonic() - self.t0)
            self.bar.update(self.task, description=name, completed=done_bytes, packets=packets, rate=rate)

    def stop(self) -> None:
        if self.bar:
            self.bar.stop()


# ------------------------------------------------------------------------------ the run

class Replay:
    def __init__(self, args: argparse.Namespace, settings, log: L.Log, progress_enabled: bool):
        self.args = args
        self.s = settings
        self.log = log
        self.totals = Totals()
        self.boot = secrets.token_hex(8)
        self.seq = 0
        self.interrupted = False
        self.realtime = bool(args.realtime or args.speed)
        self.speed = args.speed or 1.0
        self.sizes = [_size(f) for f in args.files]
        self.progress = Progress(progress_enabled, sum(self.sizes))

    def run(self) -> int:
        s, log, args = self.s, self.log, self.args
        log(L.BASIC, f"ossensor replay: {len(args.files)} file(s) -> "
                     f"{'file ' + args.out if args.out else 'vSensor ' + s.vsensor_address}; "
                     f"filter: {s.bpf or '(all packets)'}; "
                     f"pace: {('real time x%g' % self.speed) if self.realtime else 'as fast as possible'}")
        sink = (FileSink(args.out, s.snaplen, self.totals) if args.out
                else VSensorSink(s, self.boot, self.totals, log, args.send_timeout))
        self.sink = sink
        t0 = time.monotonic()
        prev = signal.signal(signal.SIGINT, self._on_sigint)
        prev_term = signal.signal(signal.SIGTERM, self._on_sigint)
        filter_error = False
        done_before = 0
        try:
            for i, path in enumerate(args.files):
                if self.interrupted:
                    break
                err = self._one_file(i, path, sink, done_before)
                done_before += self.sizes[i]
                if err:
                    self.totals.errors.append(err)
                    print(f"ossensor: {err}", file=sys.stderr)
                    log.error(err)
                    if err.startswith("BPF:"):
                        filter_error = True
        finally:
            signal.signal(signal.SIGINT, prev)
            signal.signal(signal.SIGTERM, prev_term)
            self.progress.stop()
            deadline = time.monotonic() + getattr(s, "shutdown_timeout", 5.0) if self.interrupted else None
            sink.close(deadline)
        elapsed = time.monotonic() - t0
        lost = self._summary(elapsed)
        if self.interrupted:
            return EXIT_INTERRUPTED
        if self.totals.errors or filter_error:
            return EXIT_USAGE
        return EXIT_FAIL if lost else EXIT_OK

    def _on_sigint(self, *_):
        if self.interrupted:  # a second Ctrl-C: stop waiting for the vSensor
            raise KeyboardInterrupt
        self.interrupted = True
        # sets the shipping pipeline's stop Event: safe in a handler because the main thread never waits on
        # that Event (only the shipper thread does), so it cannot be holding its lock here (ops/stop_signals.py)
        self.sink.interrupt()

    def _one_file(self, index: int, path: str, sink, done_before: int) -> str | None:
        from ossensor._filereader import Reader

        s, log = self.s, self.log
        base = sink.id_base()
        limit = sink.body_limit() if hasattr(sink, "body_limit") else None
        epb_bytes = s.batch_max_bytes if limit is None else min(s.batch_max_bytes, limit - min(FRAMING_ROOM, limit // 4))
        try:
            reader = Reader(path, s.bpf, s.snaplen, epb_bytes, f"file{index}", base)
        except OSError as err:
            return f"{path}: cannot open: {err.strerror or err}"
        self.totals.files += 1
        delivered: dict[int, int] = {}
        batch_started = 0.0
        wall0 = file0 = None
        age = s.batch_max_age_ms / 1000
        announced = False
        while True:
            if not self.realtime:
                reader.read()
            else:
                if file0 is None:
                    reader.read(0)  # stops before the first packet: its time anchors the clock
                    if reader.state == "wait":
                        wall0, file0 = time.monotonic(), reader.next_ts
                if file0 is not None:
                    until = file0 + int((time.monotonic() - wall0) * self.speed * 1e9)
                    reader.read(min(until, (1 << 63) - 1))
            if not announced and reader.format != "unknown":
                log(L.BASIC, f"replaying {path} ({reader.format}, {self.sizes[index]} bytes)")
                announced = True
            state = reader.state
            now = time.monotonic()
            if reader.batch_packets and not batch_started:
                batch_started = now
            if state in ("full", "eof", "error") or self.interrupted or (
                    reader.batch_packets and now - batch_started >= age):
                self._cut(reader, sink, delivered, base)
                batch_started = 0.0
            self._progress(path, reader, done_before)
            if state in ("eof", "error") or self.interrupted:
                break
            if state == "wait":
                due = wall0 + (reader.next_ts - file0) / (self.speed * 1e9)
                if batch_started:
                    due = min(due, batch_started + age)
                time.sleep(max(0.0, min(WAIT_SLICE, due - time.monotonic())))
        self._count(reader)
        if isinstance(sink, FileSink):  # every interface of the file, with packets or not (as tcpdump -w)
            sink.add_interfaces(reader.interfaces, base, reader.snaplens)
        if not announced:
            log(L.BASIC, f"replaying {path} ({reader.format}, {self.sizes[index]} bytes)")
        log(L.STATS, f"file {path}: read={reader.packets_read} passed_filter={reader.packets_passed} "
                     f"bytes={reader.bytes_passed} interfaces="
                     f"{','.join(f'{n}/{lt}' for n, lt in reader.interfaces) or '(none)'}")
        if reader.cut_to_file_snaplen:
            log(L.BASIC, f"{path}: {reader.cut_to_file_snaplen} records longer than the file's snapshot length "
                         f"({', '.join(map(str, sorted(set(reader.snaplens))))}) cut to it, as tcpdump reads them")
        if reader.truncated_by_snaplen:
            log(L.BASIC, f"{path}: {reader.truncated_by_snaplen} packets cut to OSSENSOR_SNAPLEN={s.snaplen}")
        err = reader.error
        if err is not None:
            offset, reason, kind = err
            if kind == "filter":
                return f"BPF: {reason} (in {path}, at byte {offset})"
            return f"{path}: at byte {offset}: {reason}"
        if self.interrupted:
            log.warning(f"interrupted in {path} at byte {reader.offset}")
        return None

    def _count(self, reader) -> None:
        t = self.totals
        with t.lock:
            t.read += reader.packets_read
            t.read_bytes += reader.bytes_read
            t.passed += reader.packets_passed
            t.passed_bytes += reader.bytes_passed
            t.truncated += reader.truncated_by_snaplen

    def _progress(self, path: str, reader, done_before: int) -> None:
        if self.progress.bar:
            self.progress.update(os.path.basename(path), done_before + reader.offset,
                                 self.totals.passed + reader.packets_passed)

    def _cut_pieces(self, reader, sink, delivered, epbs, max_epb_bytes: int, interfaces, snaplens) -> None:
        """One batch per slice of `epbs` that fits (body_limit.split_epbs); counts per interface recounted
        per slice (per-block Python: only when the limit was crossed)."""
        for piece in body_limit.split_epbs(epbs, max(1, max_epb_bytes)):
            counts: dict[str, list[int]] = {}
            packets, first_ns, last_ns = 0, None, 0
            for blk in pcapng.iter_blocks(piece):
                if blk.btype != pcapng.BT_EPB:
                    continue
                if_id, hi, lo, caplen = struct.unpack_from("<IIII", blk.raw, 8)
                c = counts.setdefault(interfaces[if_id][0], [0, 0])
                c[0] += 1
                c[1] += caplen
                packets += 1
                ts = (hi << 32) | lo
                first_ns = ts if first_ns is None else first_ns
                last_ns = ts
            self.seq += 1
            body = section(interfaces, snaplens, bytes(piece), ts_ns=time.time_ns(),
                           delivered=[delivered.get(i, 0) for i in range(len(interfaces))],
                           kernel_seen=reader.packets_passed, kernel_drops=0)
            with self.totals.lock:
                self.totals.batches += 1
            captured = sum(b for _, b in counts.values())
            self.log(L.BATCHES, f"batch seq={self.seq} packets={packets} bytes={captured} body={len(body)} "
                                f"(one of several: the vSensor takes at most {sink.body_limit()} bytes)")
            batch = Batch(self.seq, body, packets, captured, first_ns or 0, last_ns, time.monotonic())
            batch.per_if = {name: (p, b) for name, (p, b) in counts.items()}
            sink.put(batch, interfaces, 0, reader.snaplens)

    def _cut(self, reader, sink, delivered: dict[int, int], base: int) -> None:
        if not reader.batch_packets:
            return
        log = self.log
        interfaces = reader.interfaces
        if self.args.out and not log.enabled(L.PACKETS):
            # the fast path: EPBs from the reader's buffer straight to the file, no Python copy
            sink.add_interfaces(interfaces, base, reader.snaplens)
            size, packets, first_ns, last_ns, per_if = sink.write_from(reader)
            epbs = b""
        else:
            epbs, packets, first_ns, last_ns, per_if = reader.take()
            size = len(epbs)
        for i, (p, _) in enumerate(per_if):
            delivered[i] = delivered.get(i, 0) + p
        limit = sink.body_limit() if not self.args.out else None
        if limit is not None and epbs:
            # SHB, IDBs and ISBs around the EPBs must fit the vSensor's limit too: the EPBs were cut
            # FRAMING_ROOM short of it; a section still too large (a limit learnt later, or very many
            # interfaces) goes as several
            snaplens = [min(self.s.snaplen, snap) for snap in reader.snaplens]
            head = len(section(interfaces, snaplens, b"", ts_ns=0, delivered=[0] * len(interfaces),
                               kernel_seen=0, kernel_drops=0))
            if head + len(epbs) > limit:
                self._cut_pieces(reader, sink, delivered, epbs, limit - head - 256, interfaces, snaplens)
                return
        self.seq += 1
        captured = sum(b for _, b in per_if)
        per_name = {interfaces[i][0]: (p, b) for i, (p, b) in enumerate(per_if) if p}
        if self.args.out:
            body = epbs
        else:
            snaplens = [min(self.s.snaplen, snap) for snap in reader.snaplens]  # each input interface's
            body = section(interfaces, snaplens, epbs, ts_ns=time.time_ns(),
                           delivered=[delivered.get(i, 0) for i in range(len(interfaces))],
                           kernel_seen=reader.packets_passed, kernel_drops=0)
            size = len(body)
        if log.enabled(L.BATCHES):
            log(L.BATCHES, f"batch seq={self.seq} packets={packets} bytes={captured} body={size} "
                           f"first={first_ns / 1e9:.6f} last={last_ns / 1e9:.6f} "
                           f"span_ms={(last_ns - first_ns) / 1e6:.1f}")
        if log.enabled(L.PACKETS):
            names = [n for n, _ in interfaces]
            for line in packet_hex(epbs, ([""] * base + names) if self.args.out else names):
                log(L.PACKETS, line)
        with self.totals.lock:
            self.totals.batches += 1
        batch = Batch(self.seq, body, packets, captured, first_ns, last_ns, time.monotonic())
        batch.per_if = per_name
        sink.put(batch, interfaces, base, reader.snaplens)

    def _summary(self, elapsed: float) -> int:
        """The final line; returns the packets not delivered."""
        t = self.totals
        sent, acked, dropped = self.sink.report()
        lost = sum(dropped.values())
        rate = t.read / elapsed if elapsed > 0 else 0.0
        mb = t.read_bytes / elapsed / 1e6 if elapsed > 0 else 0.0
        if self.args.out:
            where = f"written={acked} to {self.args.out}"
        else:
            stages = " ".join(f"{k}={v}" for k, v in dropped.items())
            where = f"sent={sent} acknowledged={acked} dropped={lost} ({stages})"
        self.log(L.BASIC, f"replay summary: files={t.files} read={t.read} read_bytes={t.read_bytes} "
                          f"passed_filter={t.passed} passed_bytes={t.passed_bytes} batches={t.batches} {where} "
                          f"errors={len(t.errors)} elapsed_s={elapsed:.3f} rate_pps={rate:.0f} "
                          f"rate_MBps={mb:.1f}{' INTERRUPTED' if self.interrupted else ''}")
        return lost


class _CurrentStdout:
    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def main(args: argparse.Namespace) -> int:
    from ossensor.config.problems import ConfigError

    problems = []
    for path in args.files:  # every unreadable input named at once, before anything starts
        try:
            with open(path, "rb"):
                pass
        except OSError as err:
            problems.append(f"{path}: cannot open: {err.strerror or err}")
    try:
        settings = load_settings(bool(args.out))
    except ConfigError as err:
        problems.extend(err.problems)
        settings = None
    if problems:
        for p in problems:
            print(f"ossensor: {p}", file=sys.stderr)
        return EXIT_USAGE
    to_stdout = args.out == "-"
    progress = not args.no_progress and not to_stdout and sys.stdout.isatty()
    # With the progress bar, rich moves sys.stdout while it draws: log lines follow it (above the bar).
    stream = sys.stderr if to_stdout else (_CurrentStdout() if progress else None)
    try:
        log = L.Log(settings.debug, settings.logfile, stream=stream,
                    fmt=getattr(settings, "log_format", "plain"), secrets=[settings.key_bytes])
    except OSError as err:
        print(f"ossensor: OSSENSOR_LOGFILE_PATH: cannot open {settings.logfile}: {err.strerror}", file=sys.stderr)
        return EXIT_USAGE
    try:
        replay = Replay(args, settings, log, progress)
        return replay.run()
    except UsageError as err:
        print(f"ossensor: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("ossensor: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        log.close()
