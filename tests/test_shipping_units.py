"""Units of the shipping stage that need no network: spool format and recovery, queue/spool/drop
policy, proxy choice, TLS explanations, backoff, configuration of the link variables."""

from __future__ import annotations

import io
import os
import stat
import threading

import pytest

from ossensor import config
from ossensor.ops import log as L
from ossensor.ship.accounting import Accounting
from ossensor.ship.batch import Batch, BatchQueue
from ossensor.ship.proxy import ProxyError, choose
from ossensor.ship.client import Outcome, tls_explain
from ossensor.ship.pipeline import BACKOFF_CAP, Pipeline, backoff
from ossensor.ship.spool import Spool, SpoolFull

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


def test_spool_in_a_shared_directory_touches_only_its_own_files(tmp_path):
    """OSSENSOR_SPOOL_DIR=/tmp and the like: the directory keeps its mode, and nothing the spool
    did not write is read, changed or removed (not x.tmp directories, not other .tmp/.osb files)."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    earlier = Spool(tmp_path / "earlier", 1 << 20, "node-1")
    good = earlier.put(_batch(1), BOOT)
    os.replace(good, shared / os.path.basename(good))                       # a batch of an earlier run
    (shared / f"{BOOT}-000000000002.osb.tmp").write_bytes(b"half")          # its interrupted write
    (shared / "x.tmp").mkdir()                                              # foreign: a directory
    (shared / f"{BOOT}-000000000003.osb.tmp").mkdir()                       # foreign, spool-like name
    (shared / "notes.tmp").write_text("mine")                              # foreign files
    (shared / "other.osb").write_bytes(b"not a spool file")
    (shared / ("A" * 16 + "-000000000004.osb")).write_bytes(b"upper-case boot: not the spool's")
    (shared / f"{BOOT}-000000000005.osb").symlink_to(shared / "notes.tmp")  # a link: not the spool's
    foreign = sorted(p.name for p in shared.iterdir() if p.name != os.path.basename(good)
                     and not p.name.endswith("2.osb.tmp"))
    pipe, acct, out = _pipeline(_Settings(queue_mb=1, spool_dir=shared, spool_mb=1))
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777                  # not chmodded
    assert pipe.recover() == 1
    assert acct.snapshot()["torn_files"] == 1 and "000000000002.osb.tmp skipped and removed" in out.getvalue()
    assert sorted(p.name for p in shared.iterdir() if p.name != os.path.basename(good)) == foreign
    assert (shared / "notes.tmp").read_text() == "mine"
    path = pipe.spool.put(_batch(9), BOOT)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600                   # captured packets: owner only


def test_spool_directory_it_creates_is_private(tmp_path):
    old = os.umask(0o022)
    try:
        Spool(tmp_path / "new" / "spool", 1 << 20, "n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new" / "spool").stat().st_mode) == 0o700
    existing = tmp_path / "existing"
    existing.mkdir(mode=0o755)
    Spool(existing, 1 << 20, "n")
    assert stat.S_IMODE(existing.stat().st_mode) == 0o755 and not list(existing.iterdir())  # no probe left


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


def _pipeline(settings, client=None) -> tuple[Pipeline, Accounting, io.StringIO]:
    out = io.StringIO()
    acct = Accounting()
    return Pipeline(settings, L.Log(1, stream=out), acct, client=client, boot=BOOT), acct, out


class _Client:
    """A fake ship.Shipper: acknowledges every batch (refuses the seqs in `refuse`); with `gate`,
    each send waits for it (a slow vSensor)."""
    base = "https://vsensor.test:8443"

    def __init__(self, refuse=(), gate: threading.Event | None = None):
        self.refuse, self.gate = set(refuse), gate
        self.sent: list[tuple[str | None, int, bytes]] = []
        self.sending = threading.Event()

    def send(self, seq, body, *, boot=None, encoding="identity") -> Outcome:
        self.sent.append((boot, seq, bytes(body)))
        self.sending.set()
        if self.gate is not None:
            self.gate.wait(10)
        if seq in self.refuse:
            return Outcome("refused", 403, "not this one (test)", 0.001)
        return Outcome("acked", 200, "accepted", 0.001)


def _balanced(acct: Accounting) -> bool:
    """captured + recovered = acknowledged + dropped + in flight, and nothing negative in flight."""
    s = acct.snapshot()
    return (s["captured"] + s["recovered"] == s["acked"] + sum(s["dropped"].values()) + acct.in_flight()
            and acct.in_flight() >= 0)


def _captured(acct: Accounting, batch: Batch) -> Batch:
    acct.add_batch(batch.packets, batch.captured_bytes, batch.per_if)  # what the reader does
    return batch


def _pooled(seq: int, pool: bytearray) -> Batch:
    """A full batch from live capture: a view of (most of) a pooled 4 MiB capture buffer."""
    pool[0] = seq
    b = _batch(seq, 0, 10)
    b.body = memoryview(pool)[: 3 << 20]
    b.captured_bytes, b.per_if = 3 << 20, {"eth0": (10, 3 << 20)}
    return b


def test_without_spool_a_full_queue_drops_and_counts_per_interface():
    pipe, acct, out = _pipeline(_Settings(queue_mb=1))
    results = [pipe.enqueue(_batch(i, 300_000, 7)) for i in range(5)]
    assert results == [True, True, True, False, False]
    snap = acct.snapshot()
    assert snap["queued"] == 21 and snap["dropped"]["queue"] == 14 and snap["dropped_bytes"]["queue"] == 600_000
    assert snap["per_if_stages"]["eth0"]["drop_queue"] == (14, 600_000)
    assert acct.isb_drops() == ({"eth0": 14}, {"queue": 14, "spool": 0, "refused": 0, "shutdown": 0, "lost_on_kill": 0})
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


def test_queue_always_accepts_batches_held_only_by_the_spool():
    q = BatchQueue(1 << 20)
    big = _pooled(1, bytearray(4 << 20))
    assert big.size == 4 << 20 and q.put(big)  # the first batch gets in whatever its size
    assert not q.put(_batch(2, 10))              # over the bound: a batch in memory is refused
    on_disk = _batch(3)
    on_disk.body = None
    assert on_disk.size == 0 and q.put(on_disk)  # held only by its spool file: always accepted
    assert len(q) == 2 and q.nbytes == 4 << 20


def test_spooled_batches_behind_a_pooled_buffer_are_all_sent_and_counted(tmp_path):
    """OSSENSOR_QUEUE_MB below one pooled batch buffer (what the reviewer hit with QUEUE_MB=4 and
    4 MiB batches): every spooled batch is queued, kept over a restart, sent, and counted once."""
    spool = tmp_path / "s"
    pools = [bytearray(4 << 20) for _ in range(4)]
    pipe, acct, _ = _pipeline(_Settings(queue_mb=1, spool_dir=spool, spool_mb=64))
    for i, pool in enumerate(pools, 1):
        assert pipe.enqueue(_captured(acct, _pooled(i, pool)))
        assert _balanced(acct)
    assert len(pipe.queue) == 4 and pipe.queue.nbytes == 4 << 20  # 3 wait only on disk
    assert acct.in_flight() == 40 and acct.snapshot()["dropped"]["spool"] == 0
    assert pipe.finish(0) == {"kept_batches": 4, "kept_packets": 40, "lost_batches": 0, "lost_packets": 0}
    assert acct.in_flight() == 40 and _balanced(acct) and len(list(spool.glob("*.osb"))) == 4

    # the next start: the spool's batches first, then new ones; one of them refused
    client = _Client(refuse={2})
    pipe, acct, _ = _pipeline(_Settings(queue_mb=1, spool_dir=spool, spool_mb=64), client)
    assert pipe.recover() == 4 and acct.snapshot()["recovered"] == 40
    pipe.start()
    for i, pool in enumerate(pools, 11):
        assert pipe.enqueue(_captured(acct, _pooled(i, pool)))
        assert _balanced(acct)
    res = pipe.finish(10)
    assert res["lost_batches"] == res["kept_batches"] == 0, res
    s = acct.snapshot()
    assert (s["captured"], s["recovered"], s["acked"], s["dropped"]["refused"]) == (40, 40, 70, 10), s
    assert s["acked_bytes"] + s["dropped_bytes"]["refused"] == s["captured_bytes"] + s["recovered_bytes"]
    assert acct.in_flight() == 0 and _balanced(acct)
    assert [(boot, seq) for boot, seq, _ in client.sent[:4]] == [(BOOT, 1), (BOOT, 2), (BOOT, 3), (BOOT, 4)]
    assert sorted(seq for _, seq, _ in client.sent[4:]) == [11, 12, 13, 14]
    assert all(len(body) == 3 << 20 for _, _, body in client.sent)
    assert len(pipe.spool) == 0 and not list(spool.iterdir())


@pytest.mark.parametrize("with_spool", [False, True])
def test_a_batch_still_being_sent_at_shutdown_has_one_fate(tmp_path, with_spool):
    """finish() gives up on a send that outlives the timeout; when the vSensor acknowledges it
    afterwards the shipper does not count it again (acked + dropped never exceed captured)."""
    gate = threading.Event()
    client = _Client(gate=gate)
    pipe, acct, out = _pipeline(_Settings(queue_mb=8, spool_dir=tmp_path / "s" if with_spool else None),
                                client)
    assert pipe.enqueue(_captured(acct, _batch(1)))
    threads = pipe.start()
    assert client.sending.wait(5)
    res = pipe.finish(0.1)
    if with_spool:
        assert (res["kept_batches"], res["lost_batches"]) == (1, 0)  # in flight: sent again at the next start
        assert acct.in_flight() == 10 and len(pipe.spool) == 1
    else:
        assert (res["lost_batches"], res["lost_packets"]) == (1, 10)
        assert acct.snapshot()["dropped"]["shutdown"] == 10 and acct.in_flight() == 0
    gate.set()  # the slow vSensor answers 200 after all
    for thread in threads:
        thread.join(5)
        assert not thread.is_alive()
    assert acct.snapshot()["acked"] == 0 and _balanced(acct), acct.snapshot()
    assert acct.in_flight() == (10 if with_spool else 0)
    if with_spool:  # still there: the next start resends it and gets 409, counted acknowledged then
        assert len(list((tmp_path / "s").glob("*.osb"))) == 1


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


def test_auto_compression_only_where_it_pays():
    """auto: a compressible batch goes as zstd; random bytes (encrypted payloads) go as they are,
    decided on a sample, so the whole batch is not compressed in vain; small batches are judged whole."""
    import zstandard

    pipe, _, _ = _pipeline(_Settings(queue_mb=64, compression="auto"))
    text = _batch(1, 2 << 20)
    pipe.enqueue(text)
    assert text.encoding == "zstd" and len(text.body) < 10_000
    assert zstandard.ZstdDecompressor().decompress(text.body) == _batch(1, 2 << 20).body
    noise = _batch(2, 2 << 20)
    noise.body = os.urandom(2 << 20)
    raw = noise.body
    pipe.enqueue(noise)
    assert noise.encoding == "identity" and noise.body is raw
    small = _batch(3, 4000)
    small.body = os.urandom(4000)
    pipe.enqueue(small)
    assert small.encoding == "identity"
    assert (pipe.zstd_batches, pipe.plain_batches) == (1, 2) and pipe.zstd_saved_bytes > (2 << 20) - 10_000
    assert "zstd_batches=1 plain_batches=2" in pipe.stats_fields()
    # a small uncompressed view of a pooled buffer is still copied out (the buffer goes back)
    view = _batch(4)
    view.body = memoryview(bytearray(os.urandom(1000)) + bytearray(4 << 20))[:1000]
    pipe.enqueue(view)
    assert view.encoding == "identity" and isinstance(view.body, bytes)


def test_auto_compression_judges_less_often_while_it_does_not_pay():
    """After batches that did not compress, auto samples only the 2nd, 4th, 8th, 16th, then every 16th
    (a sample costs ~0.2 ms); a compressible batch among those judged switches compression back on."""
    pipe, _, out = _pipeline(_Settings(queue_mb=1024, compression="auto"))
    pipe.log = L.Log(4, stream=out)
    for seq in range(1, 41):
        b = _batch(seq, 1 << 20)
        b.body = os.urandom(1 << 20)
        pipe.enqueue(b)
        pipe.queue.drain()
    judged = [int(l.split("seq=")[1].split()[0]) for l in out.getvalue().splitlines() if "compression auto" in l]
    assert judged == [1, 2, 4, 8, 16, 32], judged
    text = _batch(48, 1 << 20)  # the next one judged
    for seq in range(41, 48):
        pipe.enqueue(_batch(seq, 1 << 20))  # compressible, but not judged: sent as they are
        pipe.queue.drain()
    pipe.enqueue(text)
    assert text.encoding == "zstd" and pipe._plain_streak == 0


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
    assert (s.spool_dir, s.spool_mb, s.compression, s.shutdown_timeout) == (None, 1024, "auto", 5.0)
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
    assert "not a directory" in lines[0] and "auto, zstd or none" in lines[2]


@pytest.mark.parametrize("queue_mb, batch_kb, need", [("4", None, 8), ("64", "65536", 128), ("1", "1024", 2)])
def test_queue_smaller_than_two_batches_is_one_line_naming_both(queue_mb, batch_kb, need):
    env = dict(BASE, OSSENSOR_QUEUE_MB=queue_mb, **({"OSSENSOR_BATCH_MAX_KB": batch_kb} if batch_kb else {}))
    with pytest.raises(config.ConfigError) as err:
        config.load(env)
    [line] = err.value.problems
    assert line.startswith("OSSENSOR_QUEUE_MB: ") and "OSSENSOR_BATCH_MAX_KB=" in line, line
    assert f"at least {need} " in line
    env["OSSENSOR_QUEUE_MB"] = str(need)  # exactly two batches: fine
    assert config.load(env).queue_mb == need


def test_queue_smaller_than_two_batches_exits_2(tmp_path):
    from linkfault_util import run_cli
    from support import KEY

    r = run_cli({"VSENSOR_HOSTNAME": "127.0.0.1", "VSENSOR_HMAC_KEY": KEY, "OSSENSOR_QUEUE_MB": "4",
                 "OSSENSOR_SPOOL_DIR": str(tmp_path / "s"), "OSSENSOR_CONFIG_PATH": str(tmp_path / "c.cfg")})
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [l for l in (r.stdout + r.stderr).splitlines() if "OSSENSOR_QUEUE_MB" in l]
    assert len(lines) == 1 and "OSSENSOR_BATCH_MAX_KB=4096" in lines[0] and "Traceback" not in r.stderr


def test_unusable_spool_dir_is_one_config_line(tmp_path):
    from ossensor.config import ConfigError
    from ossensor.ship.spool import Spool

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError) as err:
        Spool(blocker / "spool", 1 << 20, "s1")
    assert err.value.problems == [f"OSSENSOR_SPOOL_DIR: cannot use {blocker / 'spool'}: Not a directory"]
    with pytest.raises(ConfigError) as err:
        Spool(blocker, 1 << 20, "s1")  # exists, not a directory
    assert err.value.problems == [f"OSSENSOR_SPOOL_DIR: cannot use {blocker}: Not a directory"]
    gone = Spool(tmp_path / "gone", 1 << 20, "s1")
    (tmp_path / "gone").rmdir()
    with pytest.raises(ConfigError) as err:  # recover() at start: one line too, not a traceback
        gone.recover()
    assert err.value.problems == [f"OSSENSOR_SPOOL_DIR: cannot use {tmp_path / 'gone'}: No such file or directory"]
