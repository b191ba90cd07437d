"""The reference vSensor's deadlines, each met by a real client over TLS on loopback, all at once:
an idle connection closes after --idle-timeout (also one whose request never completes, if that is
shorter than the header deadline), a kept-alive one in use does not; request headers must be
complete 10 s after their first byte (408); a body must arrive within 10 s + its length at 64 KiB/s (408);
a TCP connection without a TLS handshake closes after 5 s."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time

import pytest

from ossensor import pcapng, protocol
from ossensor.vsensor.listener import HANDSHAKE_TIMEOUT_S, HEADER_TIMEOUT_S
from ossensor.vsensor.routes import BODY_GRACE_S, MIN_BODY_RATE
from support import KEY, loopback_vsensor

pytestmark = pytest.mark.timeout(90)
IDLE = 3.0


def _tls(out, port):
    ctx = ssl.create_default_context(cafile=str(out / "ca.pem"))
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=30), server_hostname="127.0.0.1")


def _until_closed(s, t0, feed=None, every: float = 1.0) -> tuple[float, bytes]:
    """Seconds from t0 until the vSensor closes s, and what it sent; feed() gives bytes to send every `every` s."""
    got = b""
    s.settimeout(every)
    while True:
        try:
            chunk = s.recv(65536)
        except (socket.timeout, TimeoutError):
            if feed is not None:
                try:
                    s.sendall(feed())
                except OSError:
                    return time.monotonic() - t0, got
            continue
        except OSError:
            return time.monotonic() - t0, got
        if not chunk:
            return time.monotonic() - t0, got
        got += chunk


def _status(data: bytes) -> tuple[int | None, dict]:
    if not data.startswith(b"HTTP/1."):
        return None, {}
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def test_deadlines(tmp_path):
    out = tmp_path / "vs"
    results: dict[str, tuple[float, bytes]] = {}
    # two vSensors: one closes idle connections after IDLE s (shorter than the header deadline, which it
    # would then hide), one keeps the default
    with loopback_vsensor(out, extra=["--idle-timeout", str(IDLE)]) as (vs, port), \
            loopback_vsensor(tmp_path / "vs2") as (vs2, port2):
        def idle():
            s = _tls(out, port)
            results["idle"] = _until_closed(s, time.monotonic())

        def header_trickle():
            s = _tls(tmp_path / "vs2", port2)
            lines = iter([b"POST /v1/batches HTTP/1.1\r\n"] + [b"X-Pad-%d: y\r\n" % i for i in range(100)])
            t0 = time.monotonic()
            s.sendall(next(lines))
            results["headers"] = _until_closed(s, t0, lambda: next(lines))

        length = 100_000
        body_deadline = BODY_GRACE_S + length / MIN_BODY_RATE

        def body_trickle():
            body = b"\0" * length
            headers = protocol.sign(KEY.encode(), sensor="slow", boot="d" * 16, seq=1, timestamp=int(time.time()),
                                    body=body)
            s = _tls(tmp_path / "vs2", port2)
            head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            s.sendall(f"POST {protocol.PATH_BATCHES} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{head}\r\n"
                      .encode() + body[:10])
            t0 = time.monotonic()
            results["body"] = _until_closed(s, t0, lambda: b"\0")

        def bare():
            s = socket.create_connection(("127.0.0.1", port2), timeout=30)
            results["bare"] = _until_closed(s, time.monotonic())

        def kept_alive():  # a request every IDLE - 1 s on one connection, for 3 x IDLE: never closed
            s = _tls(out, port)
            body = pcapng.shb() + pcapng.idb("eth0", 1, 65535)
            answers = []
            t_end = time.monotonic() + 3 * IDLE
            seq = 0
            while time.monotonic() < t_end:
                headers = protocol.sign(KEY.encode(), sensor="alive", boot="e" * 16, seq=seq,
                                        timestamp=int(time.time()), body=body)
                head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                s.sendall(f"POST {protocol.PATH_BATCHES} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                          f"{head}\r\n".encode() + body)
                answers.append(s.recv(65536))
                seq += 1
                time.sleep(IDLE - 1)
            results["kept"] = (seq, b"".join(a[:12] for a in answers))

        def refused_then_quiet():  # a refused small body is read: the next request, 11 s later, is served
            s = _tls(tmp_path / "vs2", port2)
            body = pcapng.shb() + pcapng.idb("eth0", 1, 65535)
            answers = []
            for key, seq in ((b"not-the-key-0000", 1), (KEY.encode(), 2)):
                headers = protocol.sign(key, sensor="quiet", boot="f" * 16, seq=seq, timestamp=int(time.time()),
                                        body=body)
                head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
                s.sendall(f"POST {protocol.PATH_BATCHES} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                          f"{head}\r\n".encode())
                time.sleep(0.5)  # the body comes later than the headers, as from a distant sensor
                s.sendall(body)
                answers.append(s.recv(65536)[:12])
                time.sleep(HEADER_TIMEOUT_S + 1 if seq == 1 else 0)
            results["quiet"] = (0, b" ".join(answers))

        threads = [threading.Thread(target=f, daemon=True) for f in (idle, header_trickle, body_trickle, bare,
                                                                      kept_alive, refused_then_quiet)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        log = vs.output + vs2.output

    took, data = results["idle"]
    assert IDLE - 0.5 <= took <= IDLE + 2.5 and data == b"", results["idle"]
    took, data = results["headers"]
    assert HEADER_TIMEOUT_S - 0.5 <= took <= HEADER_TIMEOUT_S + 2.5, results["headers"]
    status, doc = _status(data)
    assert status == 408 and "headers not complete" in doc["reason"], data
    took, data = results["body"]
    assert body_deadline - 0.5 <= took <= body_deadline + 2.5, (results["body"], body_deadline)
    status, doc = _status(data)
    assert status == 408 and "not received within" in doc["reason"], data
    took, data = results["bare"]
    assert HANDSHAKE_TIMEOUT_S - 0.5 <= took <= HANDSHAKE_TIMEOUT_S + 2.5 and data == b"", results["bare"]
    seq, answers = results["kept"]
    assert seq >= 4 and answers == b"HTTP/1.1 200" * seq, results["kept"]
    assert results["quiet"][1] == b"HTTP/1.1 401 HTTP/1.1 200", results["quiet"]
    assert "tls-error" in log and "no_TLS_handshake_within_the_deadline" in log, log
    assert "status=408" in log and "Traceback" not in log
