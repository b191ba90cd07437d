"""Units of the shipping stage that need no network: spool format and recovery, queue/spool/drop
policy, proxy choice, TLS explanations, backoff, configuration of the link variables."""

from __future__ import annotations

import io

import pytest

from ossensor import config
from ossensor import log as L
from ossensor.accounting import Accounting
from ossensor.batch import Batch
from ossensor.proxy import ProxyError, choose
from ossensor.ship import Outcome, tls_explain
from ossensor.shipping import BACKOFF_CAP, Pipeline, backoff
from ossensor.spool import Spool, SpoolFull

BOOT = "0123456789abcdef"


def _batch(seq: int, size: int = 1000, packets: int = 10) -> Batch:
    return Batch(seq, bytes([seq % 256]) * size, packets, size, 1, 2, 0.0, per_if={"eth0": (packets, size)})


# ---------------------------------------------------------------------------- spool
def test_spool_roundtrip_recover_in_order_and_torn_files(tmp_path):
    sp = Spool(tmp_path / "s", 1 << 20, "node-1")
    paths = [sp.put(_batch(i), BOOT) for i in (1, 2, 3)]
    assert len(sp) == 3 and sp.load(paths[1]) == _batch(2).body
    # a torn file (cut short) and a leftover temporary file
    data = (tmp_path / "s" / paths[2].split("/")[-1]).read_bytes()
    (tmp_path / "s" / f"{BOOT}-000000000009.osb").write_bytes(data[:-10])
    (tmp_path / "s" / f"{BOOT}-000000000010.osb.tmp").write_bytes(b"x")
    again = Spool(tmp_path / "s", 1 << 20, "node-1")
    batches, torn = again.recover()
    assert [b.seq for b in batches] == [1, 2, 3]
    assert all(b.boot == BOOT and b.body is None and b.per_if == {"eth0": (10, 1000)} for b in batches)
    assert sorted(t.name for t in torn) == [f"{BOOT}-000000000009.osb", f"{BOOT}-000000000010.osb.tmp"]
    assert [t.packets for t in torn if t.name.endswith(".osb")] == [10]   # header readable: packets known
    assert not (tmp_path / "s" / f"{BOOT}-000000000009.osb").exists()
    # a flipped bit in the body is caught by the digest
    p = batches[0].spool_path
    raw = bytearray(open(p, "rb").read())
    raw[-1] ^= 1
    open(p, "wb").write(raw)
    with pytest.raises(ValueError, match="SHA-256"):
        again.load(p)


def test_spool_bound(tmp_path):
    sp = Spool(tmp_path / "s", 5000, "n")
    sp.put(_batch(1, 2000), BOOT)
    sp.put(_batch(2, 2000), BOOT)
    with pytest.raises(SpoolFull):
        sp.put(_batch(3, 2000), BOOT)
    sp.remove(str(tmp_path / "s" / f"{BOOT}-000000000001.osb"))
    sp.put(_batch(3, 2000), BOOT)
    assert len(sp) == 2


# ---------------------------------------------------------------------------- queue -> spool -> drops
class _Settings:
    def __init__(self, queue_mb=1, spool_dir=None, spool_mb=1, compression="none"):
        self.queue_mb, self.spool_dir, self.spool_mb, self.compression = queue_mb, spool_dir, spool_mb, compression
        self.sensor_name = "node-1"


def _pipeline(settings) -> tuple[Pipeline, Accounting, io.StringIO]:
    out = io.StringIO()
    acct = Accounting()
    return Pipeline(settings, L.Log(1, stream=out), acct, client=None, boot=BOOT), acct, out


def test_without_spool_a_full_queue_drops_and_counts_per_interface():
    pipe, acct, out = _pipeline(_Settings(queue_mb=1))
    results = [pipe.enqueue(_batch(i, 300_000, 7)) for i in range(5)]
    assert results == [True, True, True, False, False]
    snap = acct.snapshot()
    assert snap["queued"] == 21 and snap["dropped"]["queue"] == 14 and snap["dropped_bytes"]["queue"] == 600_000
    assert snap["per_if_stages"]["eth0"]["drop_queue"] == (14, 600_000)
    assert acct.isb_drops() == ({"eth0": 14}, {"queue": 14, "spool": 0, "refused": 0, "shutdown": 0})
    assert "queue full" in out.getvalue()
    assert pipe.queue.nbytes <= 1 << 20


def test_with_spool_overflow_waits_on_disk_then_spool_full_drops(tmp_path):
    pipe, acct, out = _pipeline(_Settings(queue_mb=1, spool_dir=tmp_path / "s", spool_mb=1))
    for i in range(5):
        pipe.enqueue(_batch(i, 300_000, 7))
    snap = acct.snapshot()
    # 3 spooled (1 MiB bound), the 4th and 5th fit neither spool nor queue: counted as spool drops
    assert snap["spooled"] == 21 and snap["dropped"]["spool"] == 14, snap
    assert pipe.queue.nbytes <= 1 << 20
    pipe2, acct2, _ = _pipeline(_Settings(queue_mb=1, spool_dir=tmp_path / "s2", spool_mb=100))
    for i in range(8):
        assert pipe2.enqueue(_batch(i, 300_000, 7))
    assert len(pipe2.queue) == 8 and pipe2.queue.nbytes <= 1 << 20  # 5 wait only on disk
    assert sum(1 for b in pipe2.queue._items if b.body is None) == 5
    assert acct2.snapshot()["dropped"]["spool"] == 0


def test_finish_keeps_spooled_counts_the_rest(tmp_path):
    pipe, acct, out = _pipeline(_Settings(queue_mb=1, spool_dir=tmp_path / "s"))
    pipe.enqueue(_batch(1))
    res = pipe.finish(0)
    assert res["kept_packets"] == 10 and res["lost_packets"] == 0
    assert "kept in the spool" in out.getvalue()
    pipe, acct, out = _pipeline(_Settings(queue_mb=1))
    pipe.enqueue(_batch(1))
    assert pipe.finish(0)["lost_packets"] == 10
    assert acct.snapshot()["dropped"]["shutdown"] == 10 and "shutdown_drops" in out.getvalue()


def test_zstd_compresses_before_queue_and_spool(tmp_path):
    import zstandard

    pipe, acct, _ = _pipeline(_Settings(spool_dir=tmp_path / "s", compression="zstd"))
    b = _batch(1, 100_000)
    pipe.enqueue(b)
    assert b.encoding == "zstd" and len(b.body) < 1000
    assert zstandard.ZstdDecompressor().decompress(b.body) == _batch(1, 100_000).body
    assert pipe.spool.load(b.spool_path) == b.body


def test_pooled_buffer_views_are_copied_when_small():
    pipe, _, _ = _pipeline(_Settings(queue_mb=64))
    buf = bytearray(4 << 20)
    b = _batch(1)
    b.body = memoryview(buf)[:1000]
    pipe.enqueue(b)
    assert isinstance(b.body, bytes) and len(b.body) == 1000
    big = _batch(2)
    big.body = memoryview(buf)[: 3 << 20]
    pipe.enqueue(big)
    assert isinstance(big.body, memoryview) and big.size == 4 << 20  # counts what it pins


def test_backoff_grows_capped_with_jitter_and_retry_after():
    for attempt in range(1, 30):
        p = backoff(attempt)
        full = min(BACKOFF_CAP, 0.5 * 2 ** (attempt - 1))
        assert full * 0.5 <= p <= full
    assert backoff(1, retry_after=7) >= 7


# ---------------------------------------------------------------------------- proxy
def test_proxy_choice_and_no_proxy_forms():
    env = {"HTTPS_PROXY": "http://user:secret@proxy.example:3128"}
    p = choose("vsensor.example", 443, env)
    assert (p.host, p.port, p.variable) == ("proxy.example", 3128, "HTTPS_PROXY")
    assert p.shown == "http://user:***@proxy.example:3128" and "secret" not in p.shown
    assert choose("vsensor.example", 443, {"https_proxy": "http://p:8080"}).variable == "https_proxy"
    assert choose("vsensor.example", 443, {"HTTPS_PROXY": "http://p"}).port == 80
    for no in ("vsensor.example", ".example", "example", "10.0.0.0/8", "*", "a.b, vsensor.example"):
        host = "10.1.2.3" if "/" in no else "vsensor.example"
        assert choose(host, 443, dict(env, NO_PROXY=no)) is None, no
    assert choose("vsensor.example", 443, dict(env, no_proxy="other.example")) is not None
    assert choose("vsensor.example", 443, {}) is None


@pytest.mark.parametrize("value", ["proxy:3128", "10.0.0.1:3128", "socks5://p:1080", "https://p:443", "http://"])
def test_proxy_without_http_scheme_is_an_error_naming_the_variable(value):
    with pytest.raises(ProxyError) as err:
        choose("vsensor.example", 443, {"https_proxy": value})
    assert str(err.value).startswith("https_proxy: ")


def test_proxy_error_masks_password():
    with pytest.raises(ProxyError) as err:
        choose("v", 443, {"HTTPS_PROXY": "socks5://u:topsecret@p:1080"})
    assert "topsecret" not in str(err.value)


# ---------------------------------------------------------------------------- TLS messages, outcomes
@pytest.mark.parametrize("cause, expect", [
    ("certificate verify failed: unable to get local issuer certificate", "unknown CA"),
    ("certificate verify failed: Hostname mismatch, certificate is not valid for 'x'", "name mismatch"),
    ("certificate verify failed: certificate has expired", "has expired"),
    ("[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required", "requires a client certificate"),
    ("[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca", "client certificate"),
    ("[SSL: WRONG_VERSION_NUMBER] wrong version number", "does not speak TLS"),
])
def test_tls_failures_are_explained(cause, expect):
    line = tls_explain(cause)
    assert line.startswith("TLS failure: ") and expect in line and cause in line


def test_outcome_defaults():
    assert Outcome("retry", 503, "busy", 0.1).retry_after is None


# ---------------------------------------------------------------------------- configuration
BASE = {"VSENSOR_HOSTNAME": "v.example", "VSENSOR_HMAC_KEY": "k" * 16}


def test_link_variables_defaults_and_values(tmp_path):
    s = config.load(BASE)
    assert (s.spool_dir, s.spool_mb, s.compression, s.shutdown_timeout) == (None, 1024, "none", 5.0)
    s = config.load(dict(BASE, OSSENSOR_SPOOL_DIR=str(tmp_path / "new" / "spool"), OSSENSOR_SPOOL_MB="64",
                         OSSENSOR_COMPRESSION="ZSTD", OSSENSOR_SHUTDOWN_TIMEOUT="12.5"))
    assert (s.spool_mb, s.compression, s.shutdown_timeout) == (64, "zstd", 12.5)
    rows = dict(s.summary())
    assert rows["OSSENSOR_SPOOL_DIR"].endswith("spool") and rows["OSSENSOR_COMPRESSION"] == "zstd"


def test_link_variables_bad_values_one_line_each(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(config.ConfigError) as err:
        config.load(dict(BASE, OSSENSOR_SPOOL_DIR=str(f), OSSENSOR_SPOOL_MB="0", OSSENSOR_COMPRESSION="lz4",
                         OSSENSOR_SHUTDOWN_TIMEOUT="soon"))
    lines = err.value.problems
    assert [l.split(":")[0] for l in lines] == ["OSSENSOR_SPOOL_DIR", "OSSENSOR_SPOOL_MB", "OSSENSOR_COMPRESSION",
                                               "OSSENSOR_SHUTDOWN_TIMEOUT"], lines
    assert "not a directory" in lines[0] and "none or zstd" in lines[2]


def test_unusable_spool_dir_is_one_config_line(tmp_path):
    from ossensor.config import ConfigError
    from ossensor.spool import Spool

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as err:
        Spool(blocker / "spool", 1 << 20, "s1")
    assert err.value.problems == [f"OSSENSOR_SPOOL_DIR: cannot use {blocker / 'spool'}: Not a directory"]
