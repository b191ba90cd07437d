"""ship.Shipper on urllib3 directly: one persistent TLS connection for all batches (direct or through a
CONNECT proxy), nothing taken from the environment, and the same one-line reasons as with requests."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from ossensor import pcapng
from ossensor.ship.client import Shipper
from support import ConnectProxy

pytestmark = pytest.mark.timeout(60)

KEY = "ship-urllib3-key-0123456789"
BOOT = "00000000000000b1"
UNKNOWN_CA = ("TLS failure: the vSensor's certificate is signed by a CA this sensor does not trust (unknown CA): "
              "set OSSENSOR_TLS_CA_FILE to the vSensor's CA (certificate verify failed: unable to get local "
              "issuer certificate)")


@pytest.fixture(scope="module")
def vs(tmp_path_factory):
    from test_vsensor import VSensor

    v = VSensor(tmp_path_factory.mktemp("vs"), key=KEY).start()
    try:
        yield v
    finally:
        v.stop()


@pytest.fixture(autouse=True)
def no_env(monkeypatch):
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy",
                "NO_PROXY", "no_proxy", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(var, raising=False)


def _section(n: int = 20) -> bytes:
    return pcapng.shb() + pcapng.idb("x", 1, 262144) + b"".join(
        pcapng.epb(0, 1_700_000_000_000_000_000 + i, bytes([i % 256]) * 1000) for i in range(n))


def _shipper(vs, boot: str, **kw) -> Shipper:
    args = dict(host="127.0.0.1", port=vs.port, key=KEY.encode(), sensor="s", boot=boot, ca_file=vs.ca,
                connect_timeout=3, read_timeout=5)
    args.update(kw)
    return Shipper(**args)


def test_batches_reuse_one_connection(vs):
    sh = _shipper(vs, BOOT)
    body = _section()
    try:
        for seq in range(40):
            out = sh.send(seq, body if seq % 2 else memoryview(body))
            assert (out.kind, out.status) == ("acked", 200), out
        assert sh.connections_opened() == 1
        assert sh._pool.num_connections == 1
    finally:
        sh.close()


def test_through_a_proxy_one_connect_for_all_batches_and_the_environment_ignored(vs, monkeypatch):
    proxy = ConnectProxy()
    # what a library reading the environment would use: a dead proxy, a missing CA bundle
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("ALL_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/ca.pem")
    monkeypatch.setenv("SSL_CERT_FILE", "/nonexistent/ca.pem")
    try:
        sh = _shipper(vs, "00000000000000b2", proxy=proxy.url)
        body = _section()
        for seq in range(10):
            out = sh.send(seq, body)
            assert (out.kind, out.status) == ("acked", 200), out
        assert proxy.connects == 1 and sh.connections_opened() == 1
        sh.close()
        direct = _shipper(vs, "00000000000000b3")  # no proxy given: direct, whatever the environment says
        assert direct.send(0, body).kind == "acked"
        assert proxy.connects == 1
        direct.close()
    finally:
        proxy.close()


def test_proxy_refusing_connect_gives_the_same_reason(vs):
    proxy = ConnectProxy("refuse")
    try:
        sh = _shipper(vs, "00000000000000b4", proxy=proxy.url)
        out = sh.send(0, _section(1))
        assert (out.kind, out.status) == ("retry", None)
        assert out.reason == "proxy failure: Tunnel connection failed: 403 Forbidden", out.reason
        sh.close()
    finally:
        proxy.close()


def test_proxy_not_listening_and_vsensor_not_listening(vs):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    sh = _shipper(vs, "00000000000000b5", proxy=f"http://127.0.0.1:{dead}")
    assert sh.send(0, b"").reason == "proxy failure: Connection refused"
    sh.close()
    sh = _shipper(vs, "00000000000000b5", port=dead)
    assert sh.send(0, b"").reason == "cannot connect: Connection refused"
    sh.close()


def test_unknown_ca_gives_the_same_reason_direct_and_through_a_proxy(vs, tmp_path):
    from ossensor.vsensor.tls import ensure_self_signed

    other = tmp_path / "other"
    ensure_self_signed(other, ["127.0.0.1"])
    sh = _shipper(vs, "00000000000000b6", ca_file=str(other / "ca.pem"))
    out = sh.send(0, _section(1))
    assert (out.kind, out.status, out.reason) == ("retry", None, UNKNOWN_CA), out
    sh.close()
    proxy = ConnectProxy()
    try:
        sh = _shipper(vs, "00000000000000b6", ca_file=str(other / "ca.pem"), proxy=proxy.url)
        assert sh.send(0, _section(1)).reason == UNKNOWN_CA
        sh.close()
    finally:
        proxy.close()


def test_answers_classified_with_reason_and_retry_after(tmp_path):
    """A TLS peer answering 503 + Retry-After, 409 without a body, 401 in plain text, 302, then nothing."""
    import ssl

    from ossensor.vsensor.tls import ensure_self_signed

    ca, cert, key = ensure_self_signed(tmp_path / "peer", ["127.0.0.1"])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    answers = [b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 17\r\n\r\n{\"reason\":\"busy\"}",
               b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 17\r\n\r\n{\"reason\":\"slow\"}",
               b"HTTP/1.1 409 Conflict\r\nContent-Length: 0\r\n\r\n",
               b"HTTP/1.1 401 No\r\nContent-Length: 9\r\n\r\nnope\nnope",
               b"HTTP/1.1 302 Found\r\nLocation: https://127.0.0.1:9/\r\nContent-Length: 5\r\n\r\nmoved",
               None]  # read timeout
    srv = socket.create_server(("127.0.0.1", 0))

    def serve():
        c, _ = srv.accept()
        with ctx.wrap_socket(c, server_side=True) as t:
            for answer in answers:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += t.recv(4096)
                length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                                  if line.lower().startswith(b"content-length:")))
                got = len(head.split(b"\r\n\r\n", 1)[1])
                while got < length:
                    got += len(t.recv(65536))
                if answer is None:
                    time.sleep(3)
                    return
                t.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    sh = Shipper(host="127.0.0.1", port=srv.getsockname()[1], key=b"k" * 16, sensor="s", boot=BOOT,
                 ca_file=str(ca), connect_timeout=2, read_timeout=1)
    try:
        got = [sh.send(i, b"x" * 1000) for i in range(len(answers))]
    finally:
        sh.close()
        srv.close()
    assert [(o.kind, o.status, o.reason, o.retry_after) for o in got] == [
        ("retry", 503, "busy", 7.0),
        ("retry", 408, "slow", None),  # the vSensor's body deadline on a slow link: not the batch's fault
        ("acked", 409, "duplicate (already accepted)", None),
        ("refused", 401, "nope nope", None),
        ("retry", 302, "unexpected answer: redirect to https://127.0.0.1:9/ (moved); redirects are not followed: "
                       "VSENSOR_HOSTNAME and VSENSOR_PORT must name the vSensor itself", None),
        ("retry", None, "timed out", None)]
