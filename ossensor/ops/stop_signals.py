"""SIGTERM and SIGINT for the sensor's main loop, with a handler that takes no lock.

A Python signal handler runs in the main thread, between two bytecodes of whatever that thread was
doing. A handler that called ``threading.Event.set()`` would take the event's lock, and if the
main thread was itself inside ``Event.wait()`` at that moment (between taking the lock and
sleeping), it would wait forever for a lock it holds: the sensor ignored SIGTERM and was killed by
the kubelet without flushing (seen once in CI, a SIGTERM landing as the stats lines were written).

So the handler only records the signal number, and the C-level handler writes it to a
socket (``signal.set_wakeup_fd``), which the main loop waits on with ``select``: no lock anywhere.
"""

from __future__ import annotations

import select
import signal
import socket

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopSignals:
    """``with StopSignals() as sig: while not sig.wait(1.0): ...`` (main thread only)."""

    def __init__(self, signals: tuple[int, ...] = STOP_SIGNALS):
        self.signals = signals
        self.received: int | None = None  # the first stop signal, once one arrived
        self._r, self._w = socket.socketpair()
        for s in (self._r, self._w):
            s.setblocking(False)
        self._prev_fd = -1
        self._prev: dict[int, object] = {}

    def _note(self, signum: int, _frame) -> None:
        if self.received is None:  # a plain attribute store: no lock, safe wherever the main thread was
            self.received = signum

    @property
    def received_name(self) -> str:
        return signal.Signals(self.received).name if self.received else "-"

    def install(self) -> "StopSignals":
        self._prev_fd = signal.set_wakeup_fd(self._w.fileno(), warn_on_full_buffer=False)
        for s in self.signals:
            self._prev[s] = signal.signal(s, self._note)
        return self

    def wait(self, timeout: float) -> bool:
        """Sleep up to `timeout` s, less if a stop signal arrives; True once one has arrived."""
        if self.received is None:
            select.select([self._r], [], [], max(0.0, timeout))
            try:
                while chunk := self._r.recv(64):  # one byte per signal: its number
                    for signum in chunk:
                        if signum in self.signals and self.received is None:
                            self.received = signum  # the Python handler may not have run yet
            except (BlockingIOError, InterruptedError):
                pass
        return self.received is not None

    def restore(self) -> None:
        """The handlers and wake-up fd from before install()."""
        for s, prev in self._prev.items():
            signal.signal(s, prev)
        signal.set_wakeup_fd(self._prev_fd)
        self._prev.clear()
        self._r.close()
        self._w.close()

    def __enter__(self) -> "StopSignals":
        return self.install()

    def __exit__(self, *_exc) -> None:
        self.restore()
