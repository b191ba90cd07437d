"""The signing contract (ossensor/protocol.py) against the worked example in docs/protocol.md."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from ossensor import pcapng, protocol

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"


def _examples() -> dict[str, str]:
    text = DOC.read_text(encoding="utf-8")
    blocks = dict(re.findall(r"^```\w* worked-example:([\w-]+)\n(.*?)^```", text, re.S | re.M))
    assert {"key", "params", "body-hex", "canonical", "request", "hello", "answer-body", "answer-canonical",
            "answer"} <= blocks.keys()
    return blocks


def _headers(block: str) -> tuple[str, str, dict[str, str]]:
    lines = block.strip("\n").split("\n")
    method, path, _version = lines[0].split(" ")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(": ")
        headers[name] = value
    return method, path, headers


@pytest.fixture(scope="module")
def example():
    ex = _examples()
    params = dict(line.split(" = ", 1) for line in ex["params"].strip().splitlines())
    return {
        "key": ex["key"].strip().encode(),
        "sensor": params["sensor"],
        "boot": params["boot"],
        "seq": int(params["seq"]),
        "time": int(params["time"]),
        "body": bytes.fromhex("".join(ex["body-hex"].split())),
        "canonical": ex["canonical"].rstrip("\n").encode(),
        "request": _headers(ex["request"]),
        "hello": _headers(ex["hello"]),
        "answer-body": ex["answer-body"].encode(),
        "answer-canonical": ex["answer-canonical"].rstrip("\n").encode(),
        "answer": _headers(ex["answer"]),
    }


def _sign(ex, **over):
    args = dict(sensor=ex["sensor"], boot=ex["boot"], seq=ex["seq"], timestamp=ex["time"], body=ex["body"])
    args.update(over)
    key = args.pop("key", ex["key"])
    return protocol.sign(key, **args)


def test_example_body_is_the_documented_section(example):
    frame = pcapng.read_sections(example["body"])
    assert len(frame) == 1
    sec = frame[0]
    assert [(i.name, i.linktype, i.snaplen) for i in sec.interfaces] == [("eth0", 1, 262144)]
    assert len(sec.packets) == 1 and sec.packets[0].ts_ns == 1700000000123456789
    assert len(example["body"]) == 160
    # it is exactly what ossensor.pcapng builds
    rebuilt = pcapng.shb() + pcapng.idb("eth0", 1, 262144) + pcapng.epb(0, 1700000000123456789,
                                                                          sec.packets[0].data)
    assert rebuilt == example["body"]


def test_example_canonical_text(example):
    digest = protocol.body_digest(example["body"])
    canon = protocol.canonical("POST", protocol.PATH_BATCHES, example["sensor"], example["boot"], example["seq"],
                               example["time"], protocol.CONTENT_TYPE, "identity", digest)
    assert canon == example["canonical"]
    assert canon.count(b"\n") == 9 and not canon.endswith(b"\n")


def test_sign_reproduces_documented_headers(example):
    method, path, documented = example["request"]
    assert (method, path) == ("POST", protocol.PATH_BATCHES)
    assert documented.pop("Content-Length") == str(len(example["body"]))
    assert _sign(example) == documented


def test_verify_accepts_documented_request(example):
    _, path, headers = example["request"]
    v = protocol.verify(example["key"], method="POST", path=path, headers=headers, body=example["body"],
                        now=example["time"] + 299)
    assert (v.sensor, v.boot, v.seq, v.timestamp, v.content_encoding) == (
        example["sensor"], example["boot"], example["seq"], example["time"], "identity")


def test_documented_hello(example):
    method, path, documented = example["hello"]
    assert (method, path) == ("POST", protocol.PATH_HELLO)
    assert documented.pop("Content-Length") == "0"
    assert _sign(example, seq=0, body=b"", path=protocol.PATH_HELLO) == documented
    protocol.verify(example["key"], method="POST", path=path, headers=documented, body=b"", now=example["time"])
    # a hello signature is not valid for the batch path
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.verify(example["key"], method="POST", path=protocol.PATH_BATCHES, headers=documented, body=b"",
                        now=example["time"])
    assert err.value.status == 401


def _refusal(example, headers, body=None, now=None, key=None) -> protocol.ProtocolError:
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.verify(key or example["key"], method="POST", path=protocol.PATH_BATCHES, headers=headers,
                        body=example["body"] if body is None else body,
                        now=example["time"] if now is None else now)
    return err.value


def test_wrong_key_refused(example):
    err = _refusal(example, _sign(example, key=b"another-key"))
    assert err.status == 401 and "signature" in err.reason


def test_tampered_body_refused(example):
    body = bytearray(example["body"])
    body[-10] ^= 1
    err = _refusal(example, _sign(example), body=bytes(body))
    assert err.status == 401 and "tampered" in err.reason


def test_tampered_header_refused(example):
    headers = _sign(example)
    headers[protocol.H_SEQ] = "2"
    assert _refusal(example, headers).status == 401
    headers = _sign(example)
    headers[protocol.H_SENSOR] = "node-2.example"
    assert _refusal(example, headers).status == 401


def test_digest_swapped_with_body_refused(example):
    """A proxy replacing body and digest together still fails: the digest is inside the signature."""
    other = example["body"][:-4] + b"\0\0\0\0"
    headers = _sign(example)
    headers[protocol.H_DIGEST] = protocol.body_digest(other)
    err = _refusal(example, headers, body=other)
    assert err.status == 401 and "signature" in err.reason


@pytest.mark.parametrize("delta", [-301, 301, -100000])
def test_stale_timestamp_refused(example, delta):
    err = _refusal(example, _sign(example), now=example["time"] + delta)
    assert err.status == 401 and "stale" in err.reason


def test_time_window_edges_accepted(example):
    for delta in (-300, 0, 300):
        protocol.verify(example["key"], method="POST", path=protocol.PATH_BATCHES, headers=_sign(example),
                        body=example["body"], now=example["time"] + delta)


def test_malformed_headers(example):
    for name, value, status in [(protocol.H_BOOT, "XYZ", 400), (protocol.H_SEQ, "-1", 400),
                                (protocol.H_SENSOR, "a b", 400), (protocol.H_SIGNATURE, "deadbeef", 400),
                                ("Content-Type", "text/plain", 415), ("Content-Encoding", "gzip", 415)]:
        headers = _sign(example)
        headers[name] = value
        assert _refusal(example, headers).status == status, name
    headers = _sign(example)
    del headers[protocol.H_TIME]
    assert _refusal(example, headers).status == 400


def test_zstd_encoding_is_signed(example):
    zstandard = pytest.importorskip("zstandard")
    wire = zstandard.ZstdCompressor().compress(example["body"])
    headers = _sign(example, body=wire, content_encoding="zstd")
    v = protocol.verify(example["key"], method="POST", path=protocol.PATH_BATCHES, headers=headers, body=wire,
                        now=example["time"])
    assert v.content_encoding == "zstd"
    headers["Content-Encoding"] = "identity"  # stripping the encoding breaks the signature
    assert _refusal(example, headers, body=wire).status == 401


def test_replay_guard_refuses_repeats_accepts_out_of_order():
    g = protocol.ReplayGuard()
    assert g.accept("s", "0" * 16, 5)
    assert not g.accept("s", "0" * 16, 5)
    assert g.seen("s", "0" * 16, 5)
    for seq in (3, 0, 4, 1, 2, 7):
        assert not g.seen("s", "0" * 16, seq)
        assert g.accept("s", "0" * 16, seq)
    for seq in range(8):
        assert g.seen("s", "0" * 16, seq) == (seq != 6)
        assert g.accept("s", "0" * 16, seq) == (seq == 6)
    # another boot (a restarted sensor) or another sensor is a separate stream
    assert g.accept("s", "1" * 16, 5)
    assert g.accept("t", "0" * 16, 5)


def test_replay_guard_memory_bound():
    g = protocol.ReplayGuard(window=100, max_streams=10)
    boot = "0" * 16
    # every other seq: nothing ever becomes contiguous, so only the cap limits the set
    for seq in range(0, 2000, 2):
        assert g.accept("s", boot, seq)
    low, above = g._streams[("s", boot)]
    assert len(above) <= 100
    # very late seqs fall below the moved mark and are refused (as replays), recent gaps still accepted
    assert not g.accept("s", boot, 1)
    assert g.accept("s", boot, 1997)
    # the number of streams is capped too, least recently used forgotten first
    for i in range(50):
        g.accept(f"sensor{i}", boot, 0)
    assert len(g._streams) <= 10
    assert ("sensor49", boot) in g._streams and ("s", boot) not in g._streams


def test_blake3_digest_is_signed_and_checked():
    import time as _t

    from ossensor import protocol as P

    body = b"\x0a\x0d\x0d\x0a" + b"x" * 1000
    now = int(_t.time())
    h = P.sign(b"k" * 16, sensor="s1", boot="0123456789abcdef", seq=7, timestamp=now, body=body,
               digest_algorithm="blake3")
    assert h[P.H_DIGEST].startswith("blake3=")
    v = P.verify(b"k" * 16, method="POST", path=P.PATH_BATCHES, headers=h, body=body, now=now)
    assert v.seq == 7
    with pytest.raises(P.ProtocolError) as err:
        P.verify(b"k" * 16, method="POST", path=P.PATH_BATCHES, headers=h, body=body[:-1] + b"y", now=now)
    assert err.value.status == 401
    # the algorithm is signed: relabelling the digest breaks the signature
    forged = dict(h)
    forged[P.H_DIGEST] = "sha256=" + h[P.H_DIGEST].split("=", 1)[1]
    with pytest.raises(P.ProtocolError) as err:
        P.verify(b"k" * 16, method="POST", path=P.PATH_BATCHES, headers=forged, body=body, now=now)
    assert err.value.status == 401


def test_documented_antigena_answer(example):
    """The signed answer of the worked example: text, header, and what a sensor refuses."""
    body = example["answer-body"]
    version, status, documented = example["answer"]  # status line "HTTP/1.1 200 OK", then the headers
    assert (version, status) == ("HTTP/1.1", "200")
    headers = dict(documented)
    assert body.endswith(b"}\n") and headers.pop("Content-Length") == str(len(body))
    assert headers.pop("Content-Type") == "application/json"
    assert json.loads(body)["actions"][0]["id"] == "q1"
    canon = protocol.response_canonical(200, "POST", protocol.PATH_ANTIGENA, example["sensor"], example["boot"],
                                        example["seq"], example["time"], protocol.body_digest(body))
    assert canon == example["answer-canonical"] and canon.count(b"\n") == 8
    request = protocol.Verified(example["sensor"], example["boot"], example["seq"], example["time"], "identity")
    assert protocol.sign_response(example["key"], status=200, body=body, request=request) == headers
    ok = dict(sensor=example["sensor"], boot=example["boot"], seq=example["seq"], timestamp=example["time"])
    protocol.verify_response(example["key"], status=200, headers=headers, body=body, **ok)

    def refused(**over) -> str:
        args = dict(status=200, headers=headers, body=body, **ok)
        args.update(over)
        key = args.pop("key", example["key"])
        with pytest.raises(protocol.ResponseError) as err:
            protocol.verify_response(key, **args)
        return err.value.reason

    assert "not signed" in refused(headers={})
    assert "malformed" in refused(headers={protocol.H_RESPONSE_SIGNATURE: "deadbeef"})
    injected = body.replace(b'"actions": [', b'"actions": [{"id": "x", "target": {"type": "host", '
                                             b'"address": "10.0.0.1"}, "expires_in": 60}, ')
    assert "does not verify" in refused(body=injected)          # actions injected by a proxy
    assert "does not verify" in refused(seq=example["seq"] + 1)  # replayed to the next exchange
    assert "does not verify" in refused(timestamp=example["time"] + 1)
    assert "does not verify" in refused(boot="f" * 16)
    assert "does not verify" in refused(sensor="node-2.example")
    assert "does not verify" in refused(status=409)
    assert "does not verify" in refused(key=b"another-key")
    # a request signature can never pass as an answer signature (different first line)
    req_headers = protocol.sign(example["key"], sensor=example["sensor"], boot=example["boot"], seq=example["seq"],
                                timestamp=example["time"], body=body, path=protocol.PATH_ANTIGENA)
    assert "does not verify" in refused(
        headers={protocol.H_RESPONSE_SIGNATURE: req_headers[protocol.H_SIGNATURE]})


def test_verify_headers_needs_no_body(example):
    """verify = verify_headers (syntax, type, signature, time) + verify_body (digest): a receiver can refuse
    on the headers before reading a byte of the body."""
    _, path, headers = example["request"]
    headers = {k: v for k, v in headers.items() if k != "Content-Length"}
    checked = protocol.verify_headers(example["key"], method="POST", path=path, headers=headers, now=example["time"])
    assert protocol.verify_body(checked, example["body"]) == protocol.verify(
        example["key"], method="POST", path=path, headers=headers, body=example["body"], now=example["time"])
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.verify_body(checked, example["body"][:-1] + b"\1")
    assert err.value.status == 401 and "tampered" in err.value.reason
    for change, status in [({"Content-Type": "text/plain"}, 415), ({"Content-Encoding": "br"}, 415),
                           ({protocol.H_SEQ: "\u00b2"}, 400), ({protocol.H_TIME: "1" * 40}, 400),
                           ({protocol.H_SIGNATURE: "v1=" + "0" * 64}, 401),
                           ({protocol.H_TIME: str(example["time"] - 301)}, 401)]:
        with pytest.raises(protocol.ProtocolError) as err:
            protocol.verify_headers(example["key"], method="POST", path=path, headers={**headers, **change},
                                    now=example["time"])
        assert err.value.status == status, change
    with pytest.raises(protocol.ProtocolError) as err:  # a stale request is refused without its body
        protocol.verify_headers(example["key"], method="POST", path=path, headers=headers, now=example["time"] + 301)
    assert "stale" in err.value.reason
