"""Where every packet went, through the Accounting API the pipeline uses (no private counters):
per-interface counters stay bounded under pod churn without losing what is in flight, and the
invariant captured + recovered = acknowledged + dropped + in flight holds at every step."""

import ossensor.ship.accounting as A


def _balanced(acct: A.Accounting) -> bool:
    s = acct.snapshot()
    return s["captured"] + s["recovered"] == s["acked"] + sum(s["dropped"].values()) + acct.in_flight()


def test_per_interface_counters_are_bounded_and_keep_busy_interfaces(monkeypatch):
    monkeypatch.setattr(A, "MAX_INTERFACES", 3)
    acct = A.Accounting()
    acct.add_batch(5, 50, {"busy0": (5, 50)})  # never acknowledged: must not be forgotten
    for i in range(10):
        acct.add_batch(1, 10, {f"veth{i}": (1, 10)})
        acct.ack(1, 10, {f"veth{i}": (1, 10)})
    assert len(acct.per_if) == 3
    assert "busy0" in acct.per_if
    assert acct.captured == 15 and acct.acked == 10 and acct.in_flight() == 5  # totals keep everything
    assert _balanced(acct)


def test_invariant_over_every_outcome_in_packets_and_bytes():
    acct = A.Accounting()
    acct.add_recovered(4, 400, {"eth0": (4, 400)})         # found in the spool at start
    acct.add_batch(10, 1000, {"eth0": (6, 600), "eth1": (4, 400)})
    acct.add_batch(3, 300, {"eth1": (3, 300)})
    acct.add_batch(2, 200, {"eth0": (2, 200)})
    acct.stage("spooled", 10, {"eth0": (6, 600), "eth1": (4, 400)})
    acct.stage("queued", 3, {"eth1": (3, 300)})
    assert acct.in_flight() == 19 and _balanced(acct)
    acct.drop("queue", 2, 200, {"eth0": (2, 200)})
    acct.sent(14, 1400)
    acct.sent(14, 1400, retry=True)
    acct.ack(4, 400, {"eth0": (4, 400)})
    acct.ack(10, 1000, {"eth0": (6, 600), "eth1": (4, 400)})
    acct.drop("refused", 3, 300, {"eth1": (3, 300)})
    s = acct.snapshot()
    assert acct.in_flight() == 0 and _balanced(acct)
    assert s["captured_bytes"] + s["recovered_bytes"] == s["acked_bytes"] + sum(s["dropped_bytes"].values())
    assert s["sent_batches"] == 1 and s["retries"] == 1
    assert s["per_if_stages"]["eth0"]["drop_queue"] == (2, 200)
    assert acct.isb_drops() == ({"eth0": 2, "eth1": 3}, {"queue": 2, "spool": 0, "refused": 3, "shutdown": 0, "lost_on_kill": 0})


def test_lost_on_kill_is_a_stage_in_stats_isb_and_metrics():
    """What a killed earlier run lost (ship/kill_ledger.py): recovered by this run and dropped at once at
    `lost_on_kill`, so the invariant holds; it shows in the ISB drops and in the metrics."""
    from types import SimpleNamespace

    from ossensor.ops.metrics import Collector, Health

    acct = A.Accounting()
    acct.add_batch(10, 1000, {"eth0": (10, 1000)})
    acct.lost_on_kill(7)
    s = acct.snapshot()
    assert s["dropped"]["lost_on_kill"] == 7 and s["recovered"] == 7 and acct.in_flight() == 10
    assert _balanced(acct)
    assert acct.isb_drops()[1]["lost_on_kill"] == 7
    sensor = SimpleNamespace(acct=acct, s=SimpleNamespace(sensor_name="t"), boot="b")
    for family in Collector(sensor, Health.__new__(Health)).collect():  # up to the drops family
        if family.name == "ossensor_dropped_packets":
            break
    stage = {smp.labels.get("stage"): smp.value for smp in family.samples if smp.name.endswith("_total")}
    assert stage["lost_on_kill"] == 7, stage
