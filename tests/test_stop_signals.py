"""SIGTERM/SIGINT reach the sensor's main loop without a lock in the handler (ossensor/ops/stop_signals.py)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from ossensor.ops.stop_signals import StopSignals


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_signal_from_another_thread_ends_the_wait_at_once(sig):
    before = signal.getsignal(sig)
    with StopSignals() as stop:
        assert stop.wait(0.05) is False
        threading.Timer(0.2, os.kill, (os.getpid(), sig)).start()
        t0 = time.monotonic()
        assert stop.wait(10.0) is True
        assert time.monotonic() - t0 < 5.0
        assert stop.received == sig
        assert stop.wait(10.0) is True  # stays stopped, without sleeping again
    assert signal.getsignal(sig) is before
    assert signal.set_wakeup_fd(-1) == -1  # the wake-up fd was given back too


def test_other_signals_wake_it_but_do_not_stop_it():
    seen = []
    prev = signal.signal(signal.SIGUSR1, lambda *_: seen.append(1))
    try:
        with StopSignals() as stop:
            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
            assert stop.wait(0.3) is False
            assert stop.received is None
        assert seen == [1]
    finally:
        signal.signal(signal.SIGUSR1, prev)


# The sensor's main loop, with a signal sent the moment it writes a line: the timing that once left
# it deaf to SIGTERM (an Event.set() in the handler, landing while the main thread was inside Event.wait
# holding the event's lock). With that handler, this loop hung after a few thousand signals here.
CHILD = textwrap.dedent("""
    import os, signal, sys, threading
    sys.path.insert(0, {root!r})
    from ossensor.ops.stop_signals import StopSignals
    with StopSignals((signal.SIGUSR1,)) as stop:
        i = 0
        while True:
            i += 1
            os.write(1, b"%d\\n" % i)
            if stop.wait(0.002):
                stop.received = None  # count it, go on: one signal per line
""")


def test_signals_landing_anywhere_in_the_main_loop_never_hang_it():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    child = subprocess.Popen([sys.executable, "-c", CHILD.format(root=root)], stdout=subprocess.PIPE, bufsize=0)
    sent, t0 = 0, time.monotonic()
    try:
        while time.monotonic() - t0 < 6.0:
            ready, _, _ = select.select([child.stdout], [], [], 3.0)
            assert ready, f"the loop stopped answering after {sent} signals"
            assert os.read(child.stdout.fileno(), 4096), "the loop ended"
            os.kill(child.pid, signal.SIGUSR1)
            sent += 1
    finally:
        child.kill()
        child.wait(5)
    assert sent > 1000, sent
