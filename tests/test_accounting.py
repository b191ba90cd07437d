"""Per-interface counters stay bounded under pod churn, without losing what is in flight."""

import ossensor.accounting as A


def test_per_interface_counters_are_bounded_and_keep_busy_interfaces(monkeypatch):
    monkeypatch.setattr(A, "MAX_INTERFACES", 3)
    acct = A.Accounting()
    acct.add_batch(5, 50, {"busy0": (5, 50)})  # never acknowledged: must not be forgotten
    for i in range(10):
        acct.add_batch(1, 10, {f"veth{i}": (1, 10)})
        acct._per_if("acked", {f"veth{i}": (1, 10)})
        acct.acked += 1
    assert len(acct.per_if) == 3
    assert "busy0" in acct.per_if
    assert acct.captured == 15 and acct.in_flight() == 5  # totals keep everything
