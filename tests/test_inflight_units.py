"""Several batches in flight (OSSENSOR_INFLIGHT_MB): the window's byte bound, acknowledgements in any
order releasing exactly their own batch (queue and spool), retries of one batch while others pass, and
shutdown with several sends outstanding. A fake vSensor answers with delays chosen per seq."""

from __future__ import annotations

import io
import random
import threading
import time

from ossensor.ops import log as L
from ossensor.ship.accounting import Accounting
from ossensor.ship.batch import Batch
from ossensor.ship.client import Outcome
from ossensor.ship.pipeline import MAX_SENDERS, Pipeline, senders_for

BOOT = "0123456789abcdef"


class _Settings:
    def __init__(self, inflight_mb=1, batch_kb=256, queue_mb=64, spool_dir=None):
        self.queue_mb, self.spool_dir, self.spool_mb, self.compression = queue_mb, spool_dir, 1024, "none"
        self.inflight_mb, self.batch_max_bytes, self.sensor_name = inflight_mb, batch_kb << 10, "node-1"


class _SlowVSensor:
    """Answers each send after a delay drawn per call (so answers come back out of order); the seqs in
    `fail_first` get a 503 on their first `fails` attempts. Remembers what was accepted, like the
    vSensor's replay guard: a seq accepted twice is answered 409 and counted as a duplicate."""
    base = "https://vsensor.test:8443"

    def __init__(self, delays=(0.0, 0.05), fail_first=(), fails=2, seed=1):
        self.rng = random.Random(seed)
        self.delays, self.fail_first, self.fails = delays, set(fail_first), fails
        self.lock = threading.Lock()
        self.attempts: dict[int, int] = {}
        self.accepted: list[int] = []
        self.duplicates = 0
        self.now_bytes = self.max_bytes = self.now_sends = self.max_sends = 0

    def send(self, seq, body, *, boot=None, encoding="identity") -> Outcome:
        with self.lock:
            self.now_bytes += len(body)
            self.now_sends += 1
            self.max_bytes, self.max_sends = max(self.max_bytes, self.now_bytes), max(self.max_sends, self.now_sends)
            n = self.attempts[seq] = self.attempts.get(seq, 0) + 1
            delay = self.rng.uniform(*self.delays)
        time.sleep(delay)
        with self.lock:
            self.now_bytes -= len(body)
            self.now_sends -= 1
            if seq in self.fail_first and n <= self.fails:
                return Outcome("retry", 503, "busy (test)", delay, retry_after=0.0)
            if seq in self.accepted:
                self.duplicates += 1
                return Outcome("acked", 409, "duplicate", delay)
            self.accepted.append(seq)
            return Outcome("acked", 200, "accepted", delay)


def _run(settings, vs, n, size, spool=False):
    out = io.StringIO()
    acct = Accounting()
    pipe = Pipeline(settings, L.Log(2, stream=out), acct, client=vs, boot=BOOT)
    pipe.start()
    for seq in range(1, n + 1):
        b = Batch(seq, bytes([seq % 256]) * size, 10, size, 1, 2, 0.0, per_if={"eth0": (10, size)})
        acct.add_batch(b.packets, b.captured_bytes, b.per_if)
        assert pipe.enqueue(b, block=True)
    deadline = time.monotonic() + 30
    while acct.in_flight() and time.monotonic() < deadline:
        time.sleep(0.02)
    summary = pipe.finish(5)
    return pipe, acct, out, summary


def test_senders_follow_the_window():
    assert senders_for(32 << 20, 4 << 20) == 8
    assert senders_for(1 << 20, 4 << 20) == 1           # a window below one batch: stop-and-wait
    assert senders_for(1024 << 20, 64 << 10) == MAX_SENDERS


def test_several_in_flight_acks_in_any_order_each_batch_once():
    vs = _SlowVSensor(delays=(0.0, 0.08))
    pipe, acct, out, summary = _run(_Settings(inflight_mb=1, batch_kb=256), vs, n=60, size=200_000)
    assert pipe.senders == 4
    assert sorted(vs.accepted) == list(range(1, 61)) and vs.duplicates == 0
    assert vs.accepted != sorted(vs.accepted)            # answered out of order...
    assert vs.max_sends > 1                              # ...because several were in flight together
    assert vs.max_bytes <= 1 << 20                       # never more than the window
    s = acct.snapshot()
    assert s["acked"] == 600 and sum(s["dropped"].values()) == 0 and acct.in_flight() == 0
    assert summary["lost_batches"] == 0 and pipe.in_flight_bytes == 0 and not pipe.queue.in_hand


def test_a_retried_batch_does_not_hold_up_the_others(tmp_path):
    """seq 3 is refused twice (503): the other senders go on; with a spool, each acknowledgement removes
    exactly its own spool file, and seq 3's stays until it is acknowledged."""
    vs = _SlowVSensor(delays=(0.0, 0.02), fail_first={3}, fails=2)
    pipe, acct, out, summary = _run(_Settings(inflight_mb=1, batch_kb=256, spool_dir=tmp_path / "s"), vs, n=20,
                                    size=100_000)
    assert sorted(vs.accepted) == list(range(1, 21)) and vs.duplicates == 0
    assert vs.attempts[3] == 3 and vs.accepted.index(3) > vs.accepted.index(4)
    assert acct.snapshot()["acked"] == 200 and acct.in_flight() == 0
    assert not list((tmp_path / "s").glob("*.osb"))      # every spool file released, none twice
    assert out.getvalue().count("cannot send to vSensor") == 1


def test_one_sender_is_stop_and_wait():
    vs = _SlowVSensor(delays=(0.0, 0.01))
    pipe, acct, out, summary = _run(_Settings(inflight_mb=1, batch_kb=1024), vs, n=10, size=300_000)
    assert pipe.senders == 1 and vs.max_sends == 1 and vs.accepted == list(range(1, 11))


def _stalled_pipeline(tmp_path, *, inflight_mb: int, batches: int, size: int, in_hand: int):
    """A pipeline (256 KiB batches, a spool) whose vSensor holds every send until `gate` is set, with
    `batches` batches of `size` bytes (10 packets each) enqueued; returns once `in_hand` sends hang."""
    gate = threading.Event()

    class Stalled(_SlowVSensor):
        def send(self, seq, body, **kw):
            gate.wait(30)
            return super().send(seq, body, **kw)

    acct = Accounting()
    pipe = Pipeline(_Settings(inflight_mb=inflight_mb, batch_kb=256, spool_dir=tmp_path / "s"),
                    L.Log(1, stream=io.StringIO()), acct, client=Stalled(delays=(0.0, 0.0)), boot=BOOT)
    threads = pipe.start()
    for seq in range(1, batches + 1):
        b = Batch(seq, b"x" * size, 10, size, 1, 2, 0.0, per_if={"eth0": (10, size)})
        acct.add_batch(b.packets, b.captured_bytes, b.per_if)
        pipe.enqueue(b)
    deadline = time.monotonic() + 10
    while len(pipe.queue.in_hand) < in_hand and time.monotonic() < deadline:
        time.sleep(0.01)
    return pipe, acct, gate, threads


def test_shutdown_with_several_sends_outstanding_counts_each_once(tmp_path):
    """finish() while 4 sends hang: each is counted once (kept in the spool), and the answers that
    come later change nothing."""
    pipe, acct, gate, threads = _stalled_pipeline(tmp_path, inflight_mb=1, batches=6, size=200_000, in_hand=4)
    assert len(pipe.queue.in_hand) == 4
    res = pipe.finish(0.2)
    assert (res["kept_batches"], res["lost_batches"]) == (6, 0)
    gate.set()
    for t in threads:
        t.join(5)
        assert not t.is_alive()
    assert acct.snapshot()["acked"] == 0 and acct.in_flight() == 60
    assert len(list((tmp_path / "s").glob("*.osb"))) == 6  # all resent at the next start (409 where accepted)


class _DownVSensor:
    """Always unreachable: every send is a connection failure, answered at once."""
    base = "https://vsensor.test:8443"

    def __init__(self):
        self.lock = threading.Lock()
        self.sends = 0

    def send(self, seq, body, *, boot=None, encoding="identity") -> Outcome:
        with self.lock:
            self.sends += 1
        return Outcome("retry", None, "connection refused (test)", 0.0)


def test_an_outage_met_by_every_sender_logs_like_one_sender(monkeypatch):
    # 16 senders each retrying its own batch through the same outage: the error lines must follow the
    # outage (one at its start, then one per 10 failed attempts of a sender's worth), not each sender's
    # own attempt counter (16 lines at every 10th attempt)
    import ossensor.ship.pipeline as P
    monkeypatch.setattr(P, "backoff", lambda attempt, retry_after=None: 0.002)
    vs = _DownVSensor()
    out = io.StringIO()
    acct = Accounting()
    pipe = Pipeline(_Settings(inflight_mb=4, batch_kb=256), L.Log(2, stream=out), acct, client=vs, boot=BOOT)
    assert pipe.senders == MAX_SENDERS
    pipe.start()
    for seq in range(1, MAX_SENDERS + 1):
        b = Batch(seq, b"x" * 1000, 10, 1000, 1, 2, 0.0, per_if={"eth0": (10, 1000)})
        acct.add_batch(b.packets, b.captured_bytes, b.per_if)
        assert pipe.enqueue(b)
    deadline = time.monotonic() + 20
    while vs.sends < MAX_SENDERS * 25 and time.monotonic() < deadline:
        time.sleep(0.01)
    summary = pipe.finish(0.5)
    sends = vs.sends
    assert sends >= MAX_SENDERS * 25
    errors = [ln for ln in out.getvalue().splitlines() if "cannot send to vSensor" in ln]
    # one sender making `sends` attempts would log 1 + sends // 10 lines; 16 senders no more than that
    # would, in sender-sized steps (one line per 10 attempts of each of the 16)
    assert 1 <= len(errors) <= 1 + sends // (10 * MAX_SENDERS) + 1, (len(errors), sends)
    assert summary["lost_batches"] == MAX_SENDERS   # nothing delivered, each counted once
    assert acct.in_flight() == 0


def test_a_spool_file_that_cannot_be_removed_does_not_send_its_batch_again(tmp_path, monkeypatch):
    """The spool file of an acknowledged batch cannot be removed (EIO, a read-only remount): the batch
    is acknowledged once, counted once, not put back in the queue and sent again; the file is said."""
    import errno
    from ossensor.ship.spool import Spool

    real_remove = Spool.remove
    failed: list[str] = []

    def remove(self, path):
        if not failed:
            failed.append(str(path))
            raise OSError(errno.EIO, "Input/output error", str(path))
        return real_remove(self, path)

    monkeypatch.setattr(Spool, "remove", remove)
    vs = _SlowVSensor(delays=(0.0, 0.01))
    pipe, acct, out, summary = _run(_Settings(inflight_mb=1, batch_kb=256, spool_dir=tmp_path / "s"), vs, n=8,
                                    size=100_000)
    assert failed
    assert sorted(vs.accepted) == list(range(1, 9))
    assert vs.duplicates == 0 and sum(vs.attempts.values()) == 8, vs.attempts   # each sent once
    s = acct.snapshot()
    assert s["acked"] == 80 and s["acked_batches"] == 8 and acct.in_flight() == 0, s
    assert "unexpected" not in out.getvalue()
    assert failed[0] in out.getvalue() and "Input/output error" in out.getvalue()


def test_finish_with_16_sends_hanging_keeps_to_the_shutdown_timeout(tmp_path):
    """16 senders each stuck in a send that does not return (a vSensor that stalls): finish(timeout) gives
    them all the same deadline, not half a second more each in turn (timeout + 8 s with 16 senders)."""
    pipe, acct, gate, _ = _stalled_pipeline(tmp_path, inflight_mb=4, batches=MAX_SENDERS, size=1000,
                                            in_hand=MAX_SENDERS)
    assert pipe.senders == MAX_SENDERS
    assert len(pipe.queue.in_hand) == MAX_SENDERS
    try:
        t0 = time.monotonic()
        res = pipe.finish(0.5)
        took = time.monotonic() - t0
    finally:
        gate.set()
    assert (res["kept_batches"], res["lost_batches"]) == (MAX_SENDERS, 0)
    # a bound, not a speed: 0.5 s of timeout and one 0.5 s grace for all the threads (was 0.5 + 16 x 0.5)
    assert took < 0.5 + 0.5 + 2.0, took
