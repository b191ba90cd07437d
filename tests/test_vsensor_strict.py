"""The reference vSensor parses strictly and always answers JSON after a status line: duplicated
Content-Length or X-Ossensor-* headers (request smuggling, ambiguous signatures), a missing Content-Type,
garbage request lines and unknown methods. Raw requests over real TLS on loopback."""

from __future__ import annotations

import json
import socket
import ssl
import time

import pytest

from ossensor import pcapng, protocol

from support import KEY, loopback_vsensor

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def vs(tmp_path_factory):
    out = tmp_path_factory.mktemp("vs")
    with loopback_vsensor(out) as (_, port):
        yield out, port


def raw(vs, request: bytes) -> tuple[int, dict, dict]:
    """(status, headers, JSON body) of the answer to `request`, sent as is."""
    out, port = vs
    ctx = ssl.create_default_context(cafile=str(out / "ca.pem"))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s, \
            ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
        t.sendall(request)
        data = b""
        while True:
            chunk = t.recv(65536)
            if not chunk:
                break
            data += chunk
            if b"\r\n\r\n" in data:
                head, _, body = data.partition(b"\r\n\r\n")
                length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")]
                if length and len(body) >= length[0]:
                    break
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0].startswith("HTTP/1."), f"no status line: {data[:200]!r}"
    headers = {k.strip().lower(): v.strip() for k, v in (l.split(":", 1) for l in lines[1:])}
    assert headers["content-type"] == "application/json", headers
    return int(lines[0].split()[1]), headers, json.loads(body)


def signed(extra: list[tuple[str, str]] = (), drop: str | None = None, seq: int = 1) -> bytes:
    body = pcapng.shb() + pcapng.idb("eth0", 1, 65535)
    headers = protocol.sign(KEY.encode(), sensor="strict", boot="c" * 16, seq=seq, timestamp=int(time.time()),
                            body=body)
    lines = [f"POST {protocol.PATH_BATCHES} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k != drop]
    lines += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def test_a_well_formed_batch_is_accepted(vs):
    status, _, doc = raw(vs, signed(seq=1))
    assert status == 200 and doc["status"] == "accepted"


@pytest.mark.parametrize("name,value", [("Content-Length", "92"), (protocol.H_SEQ, "7"), (protocol.H_SIGNATURE, "x"),
                                        (protocol.H_SENSOR, "other")])
def test_a_duplicated_header_is_refused(vs, name, value):
    status, headers, doc = raw(vs, signed([(name, value)], seq=2))
    assert status == 400 and doc == {"status": "refused", "reason": f"duplicate {name} header"}, doc
    assert headers.get("connection") == "close"


def test_content_type_is_required(vs):
    status, _, doc = raw(vs, signed(drop="Content-Type", seq=3))
    assert status == 415 and doc["reason"].startswith("Content-Type required"), doc


@pytest.mark.parametrize("line", [b"GARBAGE\r\n\r\n", b"GET\r\n\r\n", b"\x16\x03\x01 nonsense here HTTP/9\r\n\r\n",
                                  b"GET / HTTP/1.1 extra\r\n\r\n"])
def test_a_garbage_request_line_gets_400_json(vs, line):
    status, _, doc = raw(vs, line)
    assert status == 400 and doc["status"] == "refused", doc


@pytest.mark.parametrize("method", ["PUT", "DELETE", "OPTIONS", "BREW"])
def test_other_methods_get_405_with_allow(vs, method):
    status, headers, doc = raw(vs, f"{method} /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n".encode())
    assert status == 405 and headers["allow"] == "GET, HEAD, POST", headers
    assert method in doc["reason"], doc


def test_a_refused_request_that_expects_100_continue_is_answered_at_once(vs):
    """A client that sent 'Expect: 100-continue' waits for the 100 before it sends its body: a request
    refused on its headers (wrong key) gets its 401 at once, not after the body deadline."""
    body = pcapng.shb() + pcapng.idb("eth0", 1, 65535)
    headers = protocol.sign(b"not-the-key-0000", sensor="strict", boot="c" * 16, seq=9, timestamp=int(time.time()),
                            body=body)
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    t0 = time.monotonic()
    status, headers, doc = raw(vs, f"POST {protocol.PATH_BATCHES} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
                                   f"Expect: 100-continue\r\n{head}\r\n".encode())
    assert status == 401 and time.monotonic() - t0 < 3 and headers.get("connection") == "close", (status, headers)
