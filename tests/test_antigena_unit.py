"""Antigena pieces without a network: action validation, reset construction (checked with scapy),
the book's states, the protocol's JSON content type. The C matcher is exercised on a real veth
in tests/test_antigena.py."""

from __future__ import annotations

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Dot1Q, Ether

from ossensor import protocol
from ossensor.antigena import actions, rst
from ossensor.antigena.book import Book


def act(target, **kw):
    return {"id": "a1", "target": target, "expires_in": 30, **kw}


@pytest.mark.parametrize("doc", [
    act({"type": "connection", "src": "10.0.0.1", "sport": 40000, "dst": "10.0.0.2", "dport": 80}),
    act({"type": "pair", "a": "fd00::1", "b": "fd00::2"}),
    act({"type": "host", "address": "192.0.2.7"}),
    act({"type": "host", "address": "fd00::7"}, expires_in=0.5),
])
def test_valid_actions(doc):
    a = actions.parse(doc)
    assert a.id == "a1" and a.target.as_json()["type"] == doc["target"]["type"]
    rule = a.target.rule(5)
    assert rule[0] == 5 and rule[2] == a.target.family


@pytest.mark.parametrize("doc, why", [
    (act({"type": "subnet", "address": "10.0.0.0/8"}), "unknown type 'subnet'"),
    (act({"type": "host", "address": "10.0.0.256"}), "is not an IPv4 or IPv6 address"),
    (act({"type": "host", "address": "fe80::1%eth0"}), "is not an IPv4 or IPv6 address"),
    (act({"type": "host", "address": 167772161}), "not a string"),
    (act({"type": "host", "address": "10.0.0.1"}, expires_in=-5), "not positive"),
    (act({"type": "host", "address": "10.0.0.1"}, expires_in=0), "not positive"),
    (act({"type": "host", "address": "10.0.0.1"}, expires_in=True), "not a number"),
    (act({"type": "host", "address": "10.0.0.1"}, expires_in=10**9), "30 days"),
    ({"id": "a1", "target": {"type": "host", "address": "10.0.0.1"}}, "expires_in: missing"),
    (act({"type": "pair", "a": "10.0.0.1", "b": "fd00::1"}), "must be IPv4, or both IPv6"),
    (act({"type": "connection", "src": "10.0.0.1", "sport": 0, "dst": "10.0.0.2", "dport": 80}), "sport"),
    (act({"type": "connection", "src": "10.0.0.1", "sport": 1, "dst": "10.0.0.2", "dport": 80, "proto": "udp"}),
     "only tcp"),
    (act("10.0.0.1"), "target: missing or not an object"),
    ({"id": "bad id with spaces", "target": {"type": "host", "address": "10.0.0.1"}, "expires_in": 5}, "id:"),
    ([1, 2], "JSON object"),
])
def test_malformed_actions_are_refused_with_a_reason(doc, why):
    with pytest.raises(actions.ActionError, match=why.replace("(", r"\(").replace(")", r"\)")):
        actions.parse(doc)


def tcp_frame(payload=b"hello", flags="PA", v6=False, vlan=False, seq=1000, ack=5000):
    ip = IPv6(src="fd00::1", dst="fd00::2") if v6 else IP(src="10.1.0.1", dst="10.1.0.2")
    l2 = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    if vlan:
        l2 = l2 / Dot1Q(vlan=42)
    return bytes(l2 / ip / TCP(sport=40000, dport=80, seq=seq, ack=ack, flags=flags) / payload)


@pytest.mark.parametrize("v6", [False, True])
@pytest.mark.parametrize("vlan", [False, True])
def test_resets_for_both_ends_are_valid_and_acceptable(v6, vlan):
    seen = rst.parse(rst.LINKTYPE_ETHERNET, tcp_frame(v6=v6, vlan=vlan)[:120])  # only headers were copied
    assert (seen.sport, seen.dport, seen.seq, seen.ack, seen.payload) == (40000, 80, 1000, 5000, 5)
    to_sender, to_receiver = rst.resets(seen)

    s = Ether(to_sender.frame())
    ipl = IPv6 if v6 else IP
    assert s[Ether].dst == "02:00:00:00:00:01" and s[Ether].src == "02:00:00:00:00:02"  # back to the sender
    assert (Dot1Q in s) == vlan and (not vlan or s[Dot1Q].vlan == 42)
    assert s[ipl].src == ("fd00::2" if v6 else "10.1.0.2") and s[ipl].dst == ("fd00::1" if v6 else "10.1.0.1")
    assert (s[TCP].sport, s[TCP].dport) == (80, 40000)
    assert s[TCP].seq == 5000 and s[TCP].ack == 1005 and s[TCP].flags == "RA"  # seq = its ack number

    r = Ether(to_receiver.frame())
    assert r[Ether].dst == "02:00:00:00:00:02"  # onwards, as seen
    assert (r[TCP].sport, r[TCP].dport) == (40000, 80)
    assert r[TCP].seq == 1005 and r[TCP].flags == "RA"  # seq = seen.seq + payload

    for pkt in (s, r):  # checksums as scapy computes them
        raw = bytes(pkt[ipl])
        again = ipl(raw)
        if not v6:
            del again[IP].chksum
        del again[TCP].chksum
        assert bytes(ipl(bytes(again))) == raw


def test_syn_and_fin_count_one_and_raw_ip_has_no_link_header():
    pkt = bytes(IP(src="10.1.0.1", dst="10.1.0.2") / TCP(sport=1, dport=2, seq=77, flags="S"))
    seen = rst.parse(rst.LINKTYPE_RAW, pkt)
    to_sender, to_receiver = rst.resets(seen)
    s = IP(to_sender.frame())
    assert s[TCP].seq == 0 and s[TCP].ack == 78 and s[TCP].flags == "RA"  # SYN_SENT wants its SYN acked
    assert IP(to_receiver.frame())[TCP].seq == 78
    fin = rst.parse(rst.LINKTYPE_RAW, bytes(IP(src="10.1.0.1", dst="10.1.0.2") /
                                            TCP(sport=1, dport=2, seq=10, ack=3, flags="FA") / b"xy"))
    assert fin.next_seq == 13


@pytest.mark.parametrize("frame", [
    bytes(Ether() / IP(src="10.1.0.1", dst="10.1.0.2") / (b"\x00" * 20)),
    bytes(Ether() / IP(src="10.1.0.1", dst="10.1.0.2", proto=17) / (b"\x00" * 20)),
    b"\x00" * 10,
])
def test_not_tcp_is_not_reset(frame):
    with pytest.raises(rst.NotTCP):
        rst.parse(rst.LINKTYPE_ETHERNET, frame)


def test_book_states_and_reports():
    book = Book(enabled=True)
    lines = book.receive([act({"type": "host", "address": "10.0.0.1"}),
                          {"id": "x2", "target": {"type": "nope"}, "expires_in": 5},
                          {"target": {"type": "host", "address": "10.0.0.1"}, "expires_in": 5}], now=1000.0)
    assert len(lines) == 3 and any("refused id=x2" in l for l in lines)
    version, rules = book.rules()
    assert len(rules) == 1 and version == 1
    # the same action again is not installed twice
    assert book.receive([act({"type": "host", "address": "10.0.0.1"})], now=1001.0) == []
    reps = {r["id"]: r for r in book.reports()}
    assert reps["a1"]["state"] == "active" and reps["x2"]["state"] == "refused" and reps[None]["final"]
    e = book.entry_for_rule(rules[0][0])
    assert book.record(e, 1, 2, 0) is True
    assert {r["id"]: r for r in book.reports()}["a1"]["state"] == "enforced"
    book.delivered(book.reports())  # the final ones are forgotten once delivered
    assert [r["id"] for r in book.reports()] == ["a1"]
    assert book.expire(now=1031.0) and book.rules()[1] == []
    rep = book.reports()[0]
    assert rep["state"] == "expired" and rep["final"] and rep["resets_sent"] == 2
    book.delivered([rep])
    assert book.reports() == []
    assert book.receive([act({"type": "host", "address": "10.0.0.1"})]) == []  # finished ids stay finished


def test_disabled_book_refuses_everything():
    book = Book(enabled=False)
    book.receive([act({"type": "host", "address": "10.0.0.1"})])
    (rep,) = book.reports()
    assert rep["state"] == "refused" and "ANTIGENA_ENABLED=false" in rep["reason"] and book.rules()[1] == []


def test_antigena_exchange_is_signed_as_json():
    body = b'{"reports":[]}'
    h = protocol.sign(b"k", sensor="s", boot="0123456789abcdef", seq=1, timestamp=100, body=body,
                      path=protocol.PATH_ANTIGENA)
    assert h["Content-Type"] == "application/json"
    v = protocol.verify(b"k", method="POST", path=protocol.PATH_ANTIGENA, headers=h, body=body, now=100)
    assert v.seq == 1
    with pytest.raises(protocol.ProtocolError) as err:  # a JSON body cannot pass as a batch
        protocol.verify(b"k", method="POST", path=protocol.PATH_BATCHES, headers=h, body=body, now=100)
    assert err.value.status == 415
    assert protocol.sign(b"k", sensor="s", boot="0123456789abcdef", seq=1, timestamp=100, body=b"")[
        "Content-Type"] == protocol.CONTENT_TYPE


def test_ring_rule_table_validates_and_starts_empty():
    """The C side: rules are checked, hits start empty, an empty table turns matching off."""
    from ossensor._native import Ring

    ring = Ring(ring_bytes=1 << 21, block_size=1 << 20, snaplen=2048, batch_bytes=1 << 16)  # not bound: sees nothing
    try:
        assert ring.antigena_stats() == (0, 0, 0, 0, 0) and ring.take_hits() == []
        ok = actions.parse(act({"type": "pair", "a": "fd00::1", "b": "fd00::2"})).target.rule(7)
        ring.set_rules([ok, actions.parse(act({"type": "host", "address": "10.0.0.1"})).target.rule(8)])
        assert ring.antigena_stats()[0] == 2
        for bad in [(1, 9, 4, b"\0" * 4, b"", 0, 0),        # unknown kind
                    (1, 3, 4, b"\0" * 16, b"", 0, 0),       # IPv4 with 16 bytes
                    (1, 1, 6, b"\0" * 16, b"\0" * 4, 1, 2),  # connection with a short peer
                    (1, 1, 4, b"\0" * 4, b"\0" * 4, 1, 70000)]:
            with pytest.raises(ValueError):
                ring.set_rules([bad])
        assert ring.antigena_stats()[0] == 2  # a refused table leaves the old one
        ring.set_rules([])
        assert ring.antigena_stats()[0] == 0
    finally:
        ring.close()


def test_book_is_bounded():
    from ossensor.antigena import book as B

    book = Book(enabled=True)
    docs = [{"id": f"h{i}", "target": {"type": "host", "address": f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"},
             "expires_in": 60} for i in range(B.MAX_PER_EXCHANGE + 10)]
    lines = book.receive(docs)
    assert "looking at the first" in lines[0]
    assert len(book.rules()[1]) == B.MAX_ACTIVE
    book.receive([{"id": "one-more", "target": {"type": "host", "address": "192.0.2.1"}, "expires_in": 5}])
    assert {r["id"]: r for r in book.reports()}["one-more"]["state"] == "failed"


def _cli(*args):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    return subprocess.run([sys.executable, "-m", "ossensor", "vsensor", *args], capture_output=True, text=True,
                          timeout=30, env={**os.environ, "PYTHONPATH": str(root)})


@pytest.mark.parametrize("args, why", [
    (["--host", "10.0.0.300"], "--host: '10.0.0.300' is not an IPv4 or IPv6 address"),
    (["--connection", "10.0.0.1:80", "[fd00::1]:22"], "must be IPv4, or both IPv6"),
    (["--connection", "10.0.0.1", "10.0.0.2:22"], "is not ADDR:PORT"),
    (["--host", "10.0.0.1", "--expires", "-1"], "--expires: -1 is not between 0 and 30 days"),
    (["--raw", "{not json"], "--raw: not JSON"),
    (["--raw", "[1]"], "--raw: must be a JSON object"),
])
def test_block_command_user_errors(tmp_path, args, why):
    r = _cli("block", "--out", str(tmp_path), *args)
    assert r.returncode == 2 and why in r.stderr and len(r.stderr.splitlines()) == 1, r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "antigena-actions.jsonl").exists()


def test_block_then_actions_lists_it(tmp_path):
    r = _cli("block", "--out", str(tmp_path), "--pair", "fd00::1", "fd00::2", "--id", "p1", "--expires", "60",
             "--sensor", "node-1")
    assert r.returncode == 0 and r.stdout.startswith("issued p1 "), r.stderr
    r = _cli("actions", "--out", str(tmp_path))
    assert r.returncode == 0 and r.stdout.startswith("p1 ") and "state=not-reported" in r.stdout
    rec = __import__("json").loads((tmp_path / "antigena-actions.jsonl").read_text())
    assert rec["sensor"] == "node-1" and rec["action"]["target"] == {"type": "pair", "a": "fd00::1", "b": "fd00::2"}
    assert (tmp_path / "antigena-actions.jsonl").stat().st_mode & 0o777 == 0o600


# -- the exchange's link: signed answers, the sensor's proxy (real TLS, a real vSensor) ---------------------

import io  # noqa: E402
import json  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer  # noqa: E402
from types import SimpleNamespace  # noqa: E402

from ossensor.ops import log as L  # noqa: E402
from ossensor.antigena import Antigena  # noqa: E402
from ossensor.antigena.exchange import Exchange  # noqa: E402
from support import ConnectProxy  # noqa: E402

XKEY = b"exchange-test-key-0451"
XBOOT = "0123456789abcdef"


@pytest.fixture
def real_vsensor(tmp_path):
    """The reference vSensor (subprocess, real TLS) with one action issued: quarantine 10.0.0.9."""
    from test_vsensor import VSensor

    vs = VSensor(tmp_path / "vs", key=XKEY.decode()).start()
    try:
        r = _cli("block", "--out", str(vs.out), "--host", "10.0.0.9", "--id", "q1", "--expires", "300")
        assert r.returncode == 0, r.stderr
        yield vs
    finally:
        vs.stop()


def _exchange(port: int, ca: str, book: Book | None = None, boot: str = XBOOT, **kw) -> tuple[Exchange, io.StringIO]:
    out = io.StringIO()
    ex = Exchange(book=book or Book(enabled=True), log=L.Log(level=3, stream=out), host="127.0.0.1", port=port,
                  key=XKEY, sensor="node-1", boot=boot, period=1.0, ca_file=ca, **kw)
    return ex, out


class ForgingVSensor:
    """A TLS endpoint answering /v1/antigena 200 with an action, signed as `mode` says: what a
    TLS-intercepting proxy (trusted CA) could send to a sensor."""

    def __init__(self, tmp, mode: str):
        from ossensor.vsensor import tls

        self.ca, cert, key = tls.ensure_self_signed(tmp / "forger", ["127.0.0.1"])
        self.mode = mode
        self.requests = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):  # noqa: N802
                outer.requests += 1
                self.rfile.read(int(self.headers["Content-Length"]))
                data = (json.dumps({"status": "ok", "time": int(time.time()), "actions": [
                    {"id": "evil", "target": {"type": "host", "address": "10.0.0.1"}, "expires_in": 600}]})
                    + "\n").encode()
                req = protocol.Verified(self.headers[protocol.H_SENSOR], self.headers[protocol.H_BOOT],
                                        int(self.headers[protocol.H_SEQ]), int(self.headers[protocol.H_TIME]),
                                        "identity")
                sig = {}
                if outer.mode == "valid":
                    sig = protocol.sign_response(XKEY, status=200, body=data, request=req)
                elif outer.mode == "other-key":
                    sig = protocol.sign_response(b"not-the-key-99", status=200, body=data, request=req)
                elif outer.mode == "replayed":  # genuinely signed, for the previous exchange
                    prev = protocol.Verified(req.sensor, req.boot, req.seq - 1, req.timestamp, "identity")
                    sig = protocol.sign_response(XKEY, status=200, body=data, request=prev)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in sig.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.socket = tls.server_context(cert, key).wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.parametrize("mode", ["unsigned", "other-key", "replayed"])
def test_exchange_refuses_an_answer_that_is_not_the_vsensors(tmp_path, mode):
    fake = ForgingVSensor(tmp_path, mode)
    try:
        book = Book(enabled=True)
        ex, out = _exchange(fake.port, str(fake.ca), book)
        book.receive([act({"type": "host", "address": "192.0.2.7"}, id="f1", expires_in=0.01)])
        time.sleep(0.05)
        book.expire()
        assert not ex.exchange_once() and not ex.exchange_once()
        assert fake.requests == 2 and ex.answers_refused == 2 and ex.failed == 2 and ex.ok == 0
        assert book.rules()[1] == [] and "evil" not in {r["id"] for r in book.reports()}  # nothing installed
        assert {r["id"]: r["state"] for r in book.reports()} == {"f1": "expired"}  # final report not forgotten
        log = out.getvalue()
        assert "L0 ERROR antigena exchange failed: vSensor's answer refused, its actions ignored" in log, log
        assert ("not signed" if mode == "unsigned" else "does not verify") in log
    finally:
        fake.close()


def test_exchange_accepts_a_correctly_signed_answer(tmp_path):
    fake = ForgingVSensor(tmp_path, "valid")  # same endpoint, signed with the key for this request
    try:
        book = Book(enabled=True)
        ex, _ = _exchange(fake.port, str(fake.ca), book)
        assert ex.exchange_once() and ex.answers_refused == 0
        assert [r["id"] for r in book.reports()] == ["evil"] and len(book.rules()[1]) == 1
    finally:
        fake.close()


def test_exchange_with_the_reference_vsensor_verifies_its_answers(real_vsensor):
    book = Book(enabled=True)
    ex, out = _exchange(real_vsensor.port, real_vsensor.ca, book)
    assert ex.exchange_once(), out.getvalue()
    assert ex.exchange_once() and ex.answers_refused == 0
    assert [(r["id"], r["state"]) for r in book.reports()] == [("q1", "active")]
    real_vsensor.wait_for(r"antigena sensor=node-1 boot=0123456789abcdef seq=2 reports=1 actions_sent=1")


def _settings(vs) -> SimpleNamespace:
    from pathlib import Path

    return SimpleNamespace(antigena_enabled=False, vsensor_hostname="127.0.0.1", vsensor_port=vs.port,
                           key_bytes=XKEY, sensor_name="node-1", antigena_time_period=1.0,
                           tls_ca_file=Path(vs.ca), tls_cert_file=None, tls_key_file=None)


def test_exchange_uses_the_sensors_proxy_choice_not_requests(real_vsensor, monkeypatch):
    """The exchange goes where the batches go: through the proxy ossensor.ship.proxy.choose picked (which the
    capture filter excludes), or direct when NO_PROXY says so - never a proxy requests finds by itself."""
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    proxy = ConnectProxy()
    try:
        target = f"127.0.0.1:{real_vsensor.port}"
        monkeypatch.setenv("HTTPS_PROXY", proxy.url)
        ag = Antigena(_settings(real_vsensor), L.Log(level=0, stream=io.StringIO()), XBOOT)
        assert ag.exchange._link.proxy == proxy.url  # the proxy ossensor.ship.proxy.choose picked, nothing else
        assert ag.exchange.exchange_once() and proxy.targets == [target]
        ag.exchange.close()

        monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # the sensor goes direct: so does the exchange
        ag = Antigena(_settings(real_vsensor), L.Log(level=0, stream=io.StringIO()), "1" * 16)  # a new boot
        assert ag.exchange.exchange_once(), ag.exchange._failing
        assert proxy.targets == [target]
        ag.exchange.close()

        # what requests alone would honour (ALL_PROXY, a dead proxy, another CA bundle) is ignored
        monkeypatch.delenv("NO_PROXY")
        monkeypatch.delenv("HTTPS_PROXY")
        monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/ca.pem")
        ag = Antigena(_settings(real_vsensor), L.Log(level=0, stream=io.StringIO()), "2" * 16)
        assert ag.exchange.exchange_once(), ag.exchange._failing
        monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")  # given explicitly, the proxy is used as is
        ex, _ = _exchange(real_vsensor.port, real_vsensor.ca, boot="3" * 16, proxy=proxy.url)
        assert ex.exchange_once() and proxy.targets == [target, target]
        ex.close()
        ag.exchange.close()
    finally:
        proxy.close()


def test_a_restarted_vsensor_refuses_recorded_exchanges_and_remembers_final_reports(tmp_path):
    """The reference vSensor's Desk re-reads its reports file: a replayed exchange is not recorded twice,
    and an action this sensor boot reported final is not sent to it again."""
    from ossensor.vsensor.antigena import REPORTS_FILE, Desk

    lines = []
    issued = {"action": {"id": "q1", "target": {"type": "host", "address": "10.0.0.9"}, "expires_in": 300}}
    (tmp_path / "antigena-actions.jsonl").write_text(json.dumps(issued) + "\n")
    req = protocol.Verified("node-1", XBOOT, 1, int(time.time()), "identity")
    body = json.dumps({"reports": [{"id": "q1", "state": "expired", "final": True}]}).encode()
    desk = Desk(tmp_path, lines.append)
    assert desk.exchange(req, body, "peer")[0] == 200
    (tmp_path / REPORTS_FILE).open("a").write("not json\n[1]\n")  # damaged lines are skipped, not fatal
    again = Desk(tmp_path, lines.append)  # the vSensor restarted
    status, answer = again.exchange(req, body, "peer")
    assert status == 409 and answer["status"] == "duplicate"
    assert len((tmp_path / REPORTS_FILE).read_text().splitlines()) == 3  # recorded once
    status, answer = again.exchange(protocol.Verified("node-1", XBOOT, 2, int(time.time()), "identity"),
                                    b'{"reports": []}', "peer")
    assert status == 200 and answer["actions"] == []  # q1 was final for this boot
    other_boot = protocol.Verified("node-1", "fedcba9876543210", 1, int(time.time()), "identity")
    assert [a["id"] for a in again.exchange(other_boot, b'{"reports": []}', "peer")[1]["actions"]] == ["q1"]
