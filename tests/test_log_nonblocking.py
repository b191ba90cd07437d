"""The capture reader never waits for the log output (ossensor/ops/log.py): its lines are queued and
written by another thread, in order; when the queue is full they are dropped and counted, never the
packets. Unit tests with an output whose write() blocks until released."""

from __future__ import annotations

import json
import threading
import time

import pytest

from ossensor.ops import log as L

pytestmark = pytest.mark.timeout(30)


class StuckOutput:
    """A text stream whose write() blocks until `free` is set (a full pipe, a throttled disk)."""

    def __init__(self):
        self.free = threading.Event()
        self.lines: list[str] = []

    def write(self, text: str) -> int:
        self.free.wait()
        self.lines.append(text)
        return len(text)

    def flush(self) -> None:
        self.free.wait()


def log_as_reader(log: L.Log, level: int, messages) -> float:
    """Log `messages` from a new thread marked as a capture reader; the seconds it took (it must not
    need the output)."""
    took: list[float] = []

    def run():
        t0 = time.monotonic()
        log.never_block_this_thread()
        for m in messages:
            log(level, m)
        took.append(time.monotonic() - t0)

    t = threading.Thread(target=run)
    t.start()
    t.join(10)
    assert not t.is_alive(), "the thread waited for the log output"
    return took[0]


def test_a_reader_thread_does_not_wait_for_a_stuck_output_and_its_lines_come_in_order():
    out = StuckOutput()
    log = L.Log(level=5, stream=out)

    assert log_as_reader(log, L.BATCHES, [f"batch seq={i}" for i in range(500)]) < 2.0
    other = threading.Thread(target=log, args=(L.BASIC, "after the batches"))  # a blocking writer
    other.start()
    time.sleep(0.1)
    assert out.lines == []
    out.free.set()
    other.join(5)
    log.close()
    text = [line.split(" ossensor ")[1].strip() for line in out.lines]
    assert text == [f"L4 batch seq={i}" for i in range(500)] + ["L0 after the batches"]


def test_a_full_queue_drops_lines_and_says_how_many(monkeypatch):
    monkeypatch.setattr(L, "HOT_QUEUE_LINES", 100)
    out = StuckOutput()
    log = L.Log(level=5, stream=out)

    log_as_reader(log, L.PACKETS, [f"packet {i}" for i in range(150)])
    out.free.set()
    log.close()
    assert [line.split(" ossensor ")[1].strip() for line in out.lines[:100]] == [f"L5 packet {i}" for i in range(100)]
    assert len(out.lines) == 101
    assert "L0 WARNING log_output_behind: dropped=50 lines of the capture thread" in out.lines[-1]
    assert "no packet was lost for them" in out.lines[-1]
    assert log.lines_dropped == 50  # the metric's count: since start, not reset by the warning


def test_the_dropped_count_is_an_event_in_json_and_the_secret_stays_out(monkeypatch):
    monkeypatch.setattr(L, "HOT_QUEUE_LINES", 3)
    out = StuckOutput()
    log = L.Log(level=5, stream=out, fmt="json", secrets=["sekrit-key-123"])

    log_as_reader(log, L.PACKETS, ["packet sekrit-key-123"] * 10)
    out.free.set()
    log.close()
    records = [json.loads(line) for line in out.lines]
    assert len(records) == 4 and all("sekrit" not in line for line in out.lines)
    assert records[-1]["event"] == "log_output_behind" and records[-1]["dropped"] == 7
    assert records[-1]["severity"] == "warning"


def test_queued_lines_are_written_soon_without_anyone_else_logging():
    out = StuckOutput()
    out.free.set()
    log = L.Log(level=4, stream=out)

    log_as_reader(log, L.BATCHES, ["batch seq=1"])
    deadline = time.monotonic() + 2
    while not out.lines and time.monotonic() < deadline:
        time.sleep(0.01)
    assert out.lines and "batch seq=1" in out.lines[0]
    log.close()
