"""Small parts of the reference vSensor, without a network."""

from __future__ import annotations

import time

from ossensor.vsensor.listener import QuietLog


def test_quiet_log_bounds_what_keyless_clients_can_write(monkeypatch):
    lines: list[str] = []
    q = QuietLog(lines.append)
    monkeypatch.setattr(QuietLog, "WINDOW_S", 0.2)
    for i in range(50):
        q("tls-error", f"tls-error peer=10.0.0.{i}")
        q("refused", f"refused {i}")
    assert len(lines) == 2 * QuietLog.BURST  # 20 of each kind, in order
    assert lines[:2] == ["tls-error peer=10.0.0.0", "refused 0"]
    time.sleep(0.25)
    q("tls-error", "tls-error peer=10.0.0.99")  # a new window: the summary first, then the line
    assert lines[-2].startswith("tls-error suppressed=30 lines over ") and lines[-1] == "tls-error peer=10.0.0.99"
    q.flush()  # at stop: what is still counted is said
    assert lines[-1].startswith("refused suppressed=30 lines")
    q.flush()
    assert lines[-1].startswith("refused suppressed=30 lines") and len(lines) == 2 * QuietLog.BURST + 3
