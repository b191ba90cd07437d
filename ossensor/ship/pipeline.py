"""The shipping stage: batches -> bounded memory queue (+ optional disk spool) -> vSensor.

    producer (live capture, file replay)
        │ enqueue(batch)                     compress (OSSENSOR_COMPRESSION)
        ▼                                    spool file written first, when a spool is set
    memory queue, ≤ OSSENSOR_QUEUE_MB ──full──▶ kept only in the spool (body read back to send)
        │                                       no spool, or spool full ──▶ dropped, counted
        ▼  sender threads: up to OSSENSOR_INFLIGHT_MB of batches in flight at once, each on its own
        │  connection, each batch retried by its sender until acknowledged or refused
    vSensor ─ 200/409: acknowledged (spool file deleted), in any order
            ─ 401/403/4xx: refused, not retried, counted, logged at level 0 with the reason
            ─ connection error, TLS failure, timeout, 5xx/429: retried, exponential backoff
              0.5 s, 1 s, 2 s ... capped at 10 s, × random 0.5-1.0 (jitter); Retry-After honoured

A distant vSensor (100 ms away) answers each batch a round trip later: one batch at a time would
cap the link at one batch per round trip. Several senders keep several batches in flight, within a
byte window (`OSSENSOR_INFLIGHT_MB`); the vSensor takes each (sensor, boot, seq) once whatever the
order (protocol.ReplayGuard), so acknowledgements may come in any order and each releases exactly
its own batch (queue and spool). With a window of one batch there is one sender: stop-and-wait.

`Pipeline` is what a producer drives: `Sensor.run` for live capture, `ossensor replay` for
files. Construct it with the settings, the log and an `Accounting`; `recover()` picks up
what an earlier process left in the spool; `start()` runs the sender threads; `enqueue()`
hands over batches (`block=True` waits for room instead of dropping: for file replay);
`finish(timeout)` flushes within the shutdown timeout and reports what was not delivered.
"""

from __future__ import annotations

import random
import threading
import time

from ossensor.ops import log as L
from ossensor.ship.accounting import Accounting
from ossensor.ship.batch import Batch, BatchQueue
from ossensor.ship.client import Outcome, Shipper
from ossensor.ship.spool import Spool, SpoolFull

BACKOFF_FIRST = 0.5
BACKOFF_CAP = 10.0


def backoff(attempt: int, retry_after: float | None = None) -> float:
    """Seconds to wait before attempt `attempt + 1` (attempt >= 1): exponential with jitter."""
    pause = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** min(attempt - 1, 16)) * random.uniform(0.5, 1.0)
    if retry_after is not None:
        pause = max(pause, min(retry_after, 60.0))
    return pause


AUTO_SAMPLE = 128 << 10  # bytes of a batch compressed to decide whether the whole is worth it
MAX_SENDERS = 16  # connections to the vSensor per sensor, at most: a vSensor serves many sensors


def senders_for(inflight_bytes: int, batch_bytes: int) -> int:
    """Sender threads (and connections) for a window of `inflight_bytes`: one per full batch it holds."""
    return max(1, min(MAX_SENDERS, inflight_bytes // max(1, batch_bytes)))


class Pipeline:
    def __init__(self, settings, log: L.Log, acct: Accounting, client: Shipper, boot: str):
        self.s = settings
        self.log = log
        self.acct = acct
        self.client = client
        self.boot = boot
        self.queue_mb = settings.queue_mb
        self.queue = BatchQueue(settings.queue_mb << 20)
        self.compression = getattr(settings, "compression", "none")
        self._zstd = None
        if self.compression in ("zstd", "auto"):
            import zstandard

            # level 1: about 1-3 GB/s here, most of level 3's ratio on packet data
            self._zstd = zstandard.ZstdCompressor(level=1)
            self._zstd.compress(bytes(AUTO_SAMPLE))  # its context is allocated now: the first sample's timing is fair
        self.zstd_batches = self.plain_batches = self.zstd_saved_bytes = 0  # what compression did
        # CPU to ship one byte (digest, TLS, kernel), learnt from plain sends; start: measured here
        # for 4 MiB batches (bench/capture.py, 1500 B frames)
        self.ship_ns_per_byte = 1.2
        self._plain_streak = 0  # batches since auto last found compression worth it (0: it did)
        self.spool: Spool | None = None
        spool_dir = getattr(settings, "spool_dir", None)
        if spool_dir:
            self.spool = Spool(spool_dir, getattr(settings, "spool_mb", 1024) << 20, settings.sensor_name)
        self.inflight_max = getattr(settings, "inflight_mb", 0) << 20
        self.senders = senders_for(self.inflight_max, getattr(settings, "batch_max_bytes", 4 << 20))
        self._window = threading.Condition()  # guards in_flight_bytes; senders wait on it for room
        self.in_flight_bytes = 0
        self.stop = threading.Event()        # set: stop waiting between retries of a batch
        self.deadline: float | None = None   # set by finish(): give up at this time
        self._threads: list[threading.Thread] = []
        self._given_up: set[int] = set()     # id() of batches finish() counted while they were being sent
        self._last_error_log = 0.0
        self._failing_since: float | None = None
        self._outage = threading.Lock()      # guards _failing_since, _outage_failures, _last_error_log
        self._outage_failures = 0            # failed sends of the current outage, all senders together
        self._last_refusal = ("", 0.0)
        self._last_full_log = 0.0
        self._bugs = 0  # unexpected exceptions in the shipper (logged, batch kept, retried)
        self.kept_in_spool = (0, 0)  # (batches, packets) left in the spool at finish()

    # -- start ----------------------------------------------------------------------------
    def recover(self) -> int:
        """Queue what an earlier process left in the spool (sent first). Returns batches found."""
        if self.spool is None:
            return 0
        batches, torn = self.spool.recover()
        for t in torn:
            with self.acct.lock:
                self.acct.torn_files += 1
            self.acct.add_recovered(t.packets, t.nbytes, None)
            self.acct.drop("spool", t.packets, t.nbytes)
            self.log.warning(f"spool file {t.name} skipped and removed: {t.reason}"
                             f"{f' ({t.packets} packets lost)' if t.packets else ''}")
        for b in batches:
            self.acct.add_recovered(b.packets, b.captured_bytes, b.per_if)
            if not self.queue.put(b):  # cannot happen: a batch without a body in memory always fits
                self.acct.drop("spool", b.packets, b.captured_bytes, b.per_if)
                self.spool.remove(b.spool_path)
                self.log.error(f"spool file {b.spool_path} could not be queued; {b.packets} packets lost")
        if batches or torn:
            self.log(L.BASIC, f"spool {self.spool.dir}: {len(batches)} batches "
                              f"({sum(b.packets for b in batches)} packets) from an earlier run to send first"
                              f"{f', {len(torn)} torn files skipped' if torn else ''}")
        return len(batches)

    def learn_limit(self) -> int:
        """Ask the vSensor (POST /v1/hello) how large a batch it takes; the Shipper keeps the answer
        (ship/body_limit.py) and tells whoever cuts batches. Returns the limit now in force."""
        out = self.client.hello()
        self.log(L.SENDS, f"hello -> {out.status or '-'} {out.kind}: {out.reason} rtt_ms={out.rtt * 1000:.1f} "
                          f"body_limit={self.client.limit.value}")
        return self.client.limit.value

    def start(self, warm: int = 0) -> list[threading.Thread]:
        """Start the sender threads. warm: how many of them open their connection at once (a hello each,
        in parallel with the caller's learn_limit()) instead of when their first batch is ready: at
        100 ms a connection costs TCP + TLS + the request's own round trip, and a sender that opens it
        with a 4 MiB batch in hand holds the batch that long. Sender 0 never warms: its pool slot is
        left to learn_limit()'s hello, which opens a connection too. `ossensor replay` warms all (its
        batches are ready at once); live capture opens connections as its rate needs them (a quiet
        node must not hold 16 idle connections against the vSensor's --max-connections)."""
        for i in range(self.senders):
            t = threading.Thread(target=self.run, args=(0 < i <= warm,),
                                 name="shipper" if i == 0 else f"shipper-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        return self._threads

    def _warm(self) -> None:
        """Open this sender's connection now: a hello (POST /v1/hello, no side effect at the vSensor) -
        urllib3 cannot open a pooled connection without a request, and a bare TLS handshake leaves the
        server's session tickets unread, which urllib3 then takes for a dropped connection. A failure
        is only logged at level 2: the batches' sends retry and say why."""
        out = self.client.hello()
        self.log(L.SENDS, f"warm: {threading.current_thread().name} opened its connection ahead of its first "
                          f"batch: hello -> {out.status or '-'} {out.kind}: {out.reason} rtt_ms={out.rtt * 1000:.1f}")

    # -- producer side ---------------------------------------------------------------------
    def enqueue(self, batch: Batch, block: bool = False) -> bool:
        """Hand over a batch. False: it was dropped (and counted)."""
        if self._zstd is not None and batch.encoding == "identity":
            self._compress(batch)
        body = batch.body
        if isinstance(body, memoryview) and body.obj is not None and len(body) * 2 < len(body.obj):
            # a small batch must not pin a large pooled capture buffer while it waits: copy it out,
            # the buffer goes back to the ring's pool (full batches stay zero-copy)
            batch.body = bytes(body)
        del body
        spooled = False
        if self.spool is not None:
            try:
                batch.spool_path = self.spool.put(batch, self.boot)
                spooled = True
                self.acct.stage("spooled", batch.packets, batch.per_if)
            except SpoolFull as err:
                self._warn_full(f"{err}: batch seq={batch.seq} kept in memory only if the queue has room")
            except OSError as err:
                self._warn_full(f"cannot write to the spool {self.spool.dir}: {err.strerror or err}")
        while True:
            if self.queue.put(batch):
                self.acct.stage("queued", batch.packets, batch.per_if)
                return True
            if spooled:
                batch.body = None  # memory queue full: the spool file holds it
                if self.queue.put(batch):  # holds no memory: always accepted (the spool bounds these)
                    return True
                self.spool.remove(batch.spool_path)  # not reached (BatchQueue.put); never lose it silently
                batch.spool_path = None
            elif block and not self.stop.is_set():
                time.sleep(0.05)
                continue
            stage = "queue" if self.spool is None else "spool"
            self.acct.drop(stage, batch.packets, batch.captured_bytes, batch.per_if)
            self._warn_full(f"{'queue' if stage == 'queue' else 'queue and spool'} full "
                            f"({self.queue_mb} MiB in memory): batch seq={batch.seq} of {batch.packets} "
                            f"packets dropped (counted as {stage}_drops)")
            return False

    def _compress(self, batch: Batch) -> None:
        """zstd always; or, with "auto", only where it saves CPU. A 128 KiB sample from the middle
        of the batch is compressed first, timed: the whole batch is compressed only when it shrinks
        to 2/3 or less *and* compressing a byte costs less CPU than shipping the bytes it saves
        (digest, encryption, the kernel's TCP; `ship_ns_per_byte`, measured on plain sends).
        Encrypted or random payloads never qualify; headers-only traffic, text and repetitive
        payloads do when they compress fast and well."""
        body = batch.body
        if self.compression == "auto" and self._plain_streak:
            # the last batches did not pay: judge only every 2nd, 4th ... 16th batch (sampling costs
            # ~0.2 ms per batch), and send the ones between as they are
            self._plain_streak += 1
            if self._plain_streak & min((1 << (self._plain_streak.bit_length() - 1)) - 1, 15):
                self.plain_batches += 1
                return
        if self.compression == "auto" and len(body) > AUTO_SAMPLE:
            sample = memoryview(body)[len(body) // 2 - AUTO_SAMPLE // 2:][:AUTO_SAMPLE]  # past the IDBs
            t0 = time.thread_time_ns()
            packed_len = len(self._zstd.compress(sample))
            cost = (time.thread_time_ns() - t0) / AUTO_SAMPLE
            saved = self.ship_ns_per_byte * (1 - packed_len / AUTO_SAMPLE)
            # x1.5: the whole batch compresses slower than the cache-warm sample, and part of the
            # shipping cost is per request, not per byte
            plain = packed_len * 3 > AUTO_SAMPLE * 2 or 1.5 * cost >= saved
            if self.log.enabled(L.BATCHES):
                self.log(L.BATCHES, f"compression auto: batch seq={batch.seq} sample {AUTO_SAMPLE // 1024} KiB -> "
                                    f"{packed_len // 1024} KiB in {cost:.2f} ns/B; saves {saved:.2f} ns/B of "
                                    f"shipping: {'sent as it is' if plain else 'zstd'}")
            if plain:
                self.plain_batches += 1
                self._plain_streak = self._plain_streak or 1
                return
            self._plain_streak = 0
        packed = self._zstd.compress(body)
        if self.compression == "auto" and len(packed) * 3 > len(body) * 2:
            self.plain_batches += 1  # a small batch, or the sample was not representative
            return
        self.zstd_batches += 1
        self.zstd_saved_bytes += len(body) - len(packed)
        batch.body = packed
        batch.encoding = "zstd"

    def _learn_ship_cost(self, nbytes: int, cpu_ns: int) -> None:
        """Shipper thread: CPU per byte of a plain (uncompressed) send of at least 1 MiB, averaged."""
        if nbytes >= 1 << 20:
            self.ship_ns_per_byte += 0.2 * (cpu_ns / nbytes - self.ship_ns_per_byte)

    def _warn_full(self, msg: str) -> None:
        now = time.monotonic()  # at most one such line per 10 s: the counters have the rest
        if now - self._last_full_log >= 10:
            self._last_full_log = now
            self.log.warning(msg)

    # -- sender threads ----------------------------------------------------------------------
    def _window_open(self, nbytes: int) -> bool:
        """Wait until `nbytes` more fit in the in-flight window (always, when nothing is in flight);
        False when the deadline passed first."""
        with self._window:
            while self.in_flight_bytes and self.in_flight_bytes + nbytes > self.inflight_max:
                left = None if self.deadline is None else self.deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._window.wait(left if left is not None else 1.0)
            self.in_flight_bytes += nbytes
            return True

    def _window_close(self, nbytes: int) -> None:
        with self._window:
            self.in_flight_bytes -= nbytes
            self._window.notify_all()

    def run(self, warm: bool = False) -> None:
        if warm and not self.stop.is_set():
            try:
                self._warm()
            except Exception as err:  # never let the warm-up cost the sender: it only saves round trips
                self.log(L.SENDS, f"warm: {type(err).__name__}: {err}")
        while True:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                return
            batch = self.queue.get(2.0)  # put() and close() notify: no need to wake often
            if batch is None:
                if self.queue.closed and not len(self.queue):
                    return  # closed only after the producer's final batch is in
                continue
            try:
                done = self.ship_one(batch)
            except Exception as err:  # a bug: keep the batch, say so, try again later (never die silently)
                self._bugs += 1
                if self._bugs == 1 or self._bugs % 100 == 0:
                    self.log.error(f"shipper: unexpected {type(err).__name__}: {err} (batch seq={batch.seq} "
                                   f"kept; occurrence {self._bugs})")
                with self.queue.lock:  # put back only if still unsettled: a settled batch is never sent again
                    unsettled = id(batch) in self.queue.in_hand
                if unsettled:
                    self.queue.requeue_front(batch)
                if self.deadline is not None:
                    return
                self.stop.wait(backoff(min(self._bugs, 6)))
                continue
            if not done:
                self.queue.requeue_front(batch)
                return
            # settled: its body (often a view of a pooled capture buffer) must not stay pinned by this
            # variable while the next get() waits, or the reader allocates fresh buffers (page faults)
            batch.body = None
            batch = None

    def _settle(self, batch: Batch, stage: str) -> bool:
        """Count the one outcome of the batch the shipper holds: "acked", or a drop stage. False
        (nothing counted) when finish() already counted it: it gave up waiting for this send."""
        with self.queue.lock:  # finish() takes the batches in hand under the same lock
            if id(batch) in self._given_up:
                return False
            self.queue.settled(batch)
            if stage == "acked":
                self.acct.ack(batch.packets, batch.captured_bytes, batch.per_if)
            else:
                self.acct.drop(stage, batch.packets, batch.captured_bytes, batch.per_if)
            return True

    def _body(self, batch: Batch) -> bytes | None:
        if batch.body is not None:
            return batch.body
        try:
            return self.spool.load(batch.spool_path)
        except (OSError, ValueError) as err:
            if not self._settle(batch, "spool"):
                return None
            with self.acct.lock:
                self.acct.torn_files += 1
            self.log.error(f"spool file {batch.spool_path} unreadable, {batch.packets} packets lost: {err}")
            self._remove_spool_file(batch.spool_path)
            return None

    def ship_one(self, batch: Batch) -> bool:
        """Send until acknowledged or refused: True. False: the deadline passed first."""
        body = self._body(batch)
        if body is None:
            return True
        if not self._window_open(len(body)):
            return False
        try:
            return self._send_until_settled(batch, body)
        finally:
            self._window_close(len(body))

    def _send_until_settled(self, batch: Batch, body) -> bool:
        attempt = 0
        while True:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                return False
            t0 = time.thread_time_ns()
            out = self.client.send(batch.seq, body, boot=batch.boot, encoding=batch.encoding)
            if out.kind == "acked" and batch.encoding == "identity":
                self._learn_ship_cost(len(body), time.thread_time_ns() - t0)
            self.acct.sent(batch.packets, len(body), batch.per_if, retry=attempt > 0)
            self.log(L.SENDS, f"send seq={batch.seq}{'' if not batch.boot else ' boot=' + batch.boot} "
                              f"packets={batch.packets} bytes={len(body)}"
                              f"{'' if batch.encoding == 'identity' else ' ' + batch.encoding} "
                              f"-> {out.status or '-'} {out.kind}: {out.reason} rtt_ms={out.rtt * 1000:.1f}")
            if out.kind == "acked":
                if not self._settle(batch, "acked"):
                    return True  # finish() counted it already (kept in the spool: a resend gets 409)
                self._forget(batch)
                with self._outage:
                    since, self._failing_since, self._outage_failures = self._failing_since, None, 0
                if since is not None:
                    self.log(L.BASIC, f"vSensor {self.client.base} reachable again after "
                                      f"{time.monotonic() - since:.1f} s; "
                                      f"{len(self.queue)} batches waiting")
                if self._last_refusal[0]:
                    self.log(L.BASIC, "vSensor accepts batches again")
                    self._last_refusal = ("", 0.0)
                return True
            if out.kind == "refused":
                if not self._settle(batch, "refused"):
                    return True
                self._forget(batch)
                self._report_refusal(out)
                return True
            attempt += 1
            pause = backoff(attempt, out.retry_after)
            now = time.monotonic()
            # one line per outage start and per 10 attempts of a sender's worth, however many senders
            # meet the failure: the failures are counted for the pipeline, not per sender
            with self._outage:
                if self._failing_since is None:
                    self._failing_since = now
                self._outage_failures += 1
                say = ((self._outage_failures == 1 and now - self._last_error_log > 5)
                       or self._outage_failures % (10 * self.senders) == 0)
                if say:
                    self._last_error_log = now
            if say:
                self.log.error(f"cannot send to vSensor {self.client.base}: {out.reason}; retrying in "
                               f"{pause:.1f} s (attempt {attempt}; {len(self.queue)} batches queued, "
                               f"{len(self.queue.in_hand)} in flight)")
            if self.deadline is not None:
                pause = min(pause, max(0.0, self.deadline - time.monotonic()))
            self.stop.wait(pause) if not self.stop.is_set() else time.sleep(pause)

    def _forget(self, batch: Batch) -> None:
        if batch.spool_path and self.spool is not None:
            self._remove_spool_file(batch.spool_path)

    def _remove_spool_file(self, path: str) -> None:
        """The batch is settled whatever happens here: a file that cannot be removed (EIO, a read-only
        remount) is said and left; the next start sends it again and the vSensor answers 409."""
        try:
            self.spool.remove(path)
        except OSError as err:
            self._warn_full(f"spool file {path} of a settled batch could not be removed: "
                            f"{err.strerror or err}; it is sent again at the next start (answered 409)")

    def _report_refusal(self, out: Outcome) -> None:
        hint = ""
        if out.status in (401, 403):
            hint = " (wrong key? is VSENSOR_HMAC_KEY the vSensor's key? is the clock right?)"
        line = f"vSensor refused the batch: HTTP {out.status}: {out.reason}{hint}"
        reason, when = self._last_refusal
        if reason != line or time.monotonic() - when > 60:
            self.log.error(line)
            self._last_refusal = (line, time.monotonic())

    # -- shutdown ---------------------------------------------------------------------------
    def finish(self, timeout: float) -> dict:
        """The producer has stopped: send what is queued within `timeout` s; then keep in the
        spool what it holds, count the rest as `shutdown` drops. Returns a summary."""
        self.deadline = time.monotonic() + timeout
        self.stop.set()  # retry pauses are cut to the deadline
        self.queue.close()
        with self._window:
            self._window.notify_all()  # senders waiting for room see the deadline
        grace = self.deadline + 0.5  # one grace for all the senders, not 0.5 s more per sender in turn
        for t in self._threads:
            t.join(max(0.0, grace - time.monotonic()))
        with self.queue.lock:  # the senders settle the batches in hand under this lock: one fate
            left = self.queue.drain()
            for cur in list(self.queue.in_hand.values()):
                # its send outlived the deadline: counted here, and its sender no longer counts
                # its outcome (if it was accepted, a resend from the spool gets 409)
                self._given_up.add(id(cur))
                left.append(cur)
            self.queue.in_hand.clear()
        kept_b = kept_p = lost_b = lost_p = 0
        for batch in left:
            if batch.spool_path:
                kept_b += 1
                kept_p += batch.packets
            else:
                lost_b += 1
                lost_p += batch.packets
                self.acct.drop("shutdown", batch.packets, batch.captured_bytes, batch.per_if)
        self.kept_in_spool = (kept_b, kept_p)
        if kept_b:
            self.log(L.BASIC, f"shutdown: {kept_p} packets ({kept_b} batches) not yet acknowledged are kept "
                              f"in the spool {self.spool.dir} and will be sent at the next start")
        if lost_b:
            self.log.warning(f"shutdown: {lost_p} packets ({lost_b} batches) could not be sent within "
                             f"OSSENSOR_SHUTDOWN_TIMEOUT={timeout:g} s and are lost (counted as shutdown_drops)")
        return {"kept_batches": kept_b, "kept_packets": kept_p, "lost_batches": lost_b, "lost_packets": lost_p}

    # -- reporting ---------------------------------------------------------------------------
    def stats_fields(self) -> str:
        sp = (f" spool_files={len(self.spool)} spool_mb={self.spool.nbytes / 2**20:.1f}"
              if self.spool is not None else "")
        z = (f" zstd_batches={self.zstd_batches} plain_batches={self.plain_batches} "
             f"zstd_saved_mb={self.zstd_saved_bytes / 2**20:.1f}" if self._zstd is not None else "")
        return (f"in_queue={len(self.queue)} queue_mb={self.queue.nbytes / 2**20:.1f} "
                f"sending={len(self.queue.in_hand)} sending_mb={self.in_flight_bytes / 2**20:.1f}{sp}{z}")
