"""The vSensor link: how a batch is signed by the sensor and verified by the vSensor.

docs/protocol.md is the prose of this module; its worked example is checked by
tests/test_protocol.py. Both ends import this module, so they cannot drift apart.

A batch is one pcapng section POSTed to /v1/batches. The signature is an
HMAC-SHA256, keyed with VSENSOR_HMAC_KEY, over a canonical text that binds the
body (through its SHA-256 digest) to its metadata: who sent it (sensor, boot),
which batch it is (seq), when it was sent (time), and how the body is encoded.
A TLS-intercepting proxy can read a batch but can neither alter nor forge one,
and a replay is refused by (sensor, boot, seq) and by the time window.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
from dataclasses import dataclass

SCHEME = "OSSENSOR-HMAC-SHA256-V1"
PATH_BATCHES = "/v1/batches"
PATH_HELLO = "/v1/hello"  # a signed request without data: "does the vSensor accept my key?"
PATH_ANTIGENA = "/v1/antigena"  # every ANTIGENA_TIME_PERIOD: the sensor's reports in, actions out (JSON)

H_SENSOR = "X-Ossensor-Sensor"
H_BOOT = "X-Ossensor-Boot"
H_SEQ = "X-Ossensor-Seq"
H_TIME = "X-Ossensor-Time"
H_DIGEST = "X-Ossensor-Digest"
H_SIGNATURE = "X-Ossensor-Signature"

CONTENT_TYPE = "application/x-pcapng"
JSON_CONTENT_TYPE = "application/json"
# The Content-Type each path is signed with (and must carry); any other path: CONTENT_TYPE.
CONTENT_TYPES = {PATH_ANTIGENA: JSON_CONTENT_TYPE}


def content_type_for(path: str) -> str:
    return CONTENT_TYPES.get(path, CONTENT_TYPE)
ENCODINGS = ("identity", "zstd")

MAX_SKEW_S = 300  # a batch signed more than this far from the vSensor's clock is stale
MAX_BODY = 64 * 1024 * 1024  # the vSensor refuses larger bodies (413)

_SENSOR_RE = re.compile(r"^[A-Za-z0-9._:-]{1,253}$")
_BOOT_RE = re.compile(r"^[0-9a-f]{16}$")
_DIGEST_RE = re.compile(r"^(sha256|blake3)=([0-9a-f]{64})$")
DIGESTS = ("sha256", "blake3")  # the sensor sends blake3 (about 3x faster); sha256 stays valid
_SIG_RE = re.compile(r"^v1=([0-9a-f]{64})$")
_DECIMAL_RE = re.compile(r"[0-9]{1,20}")  # ASCII digits only (fullmatch), bounded


class ProtocolError(Exception):
    """A request the vSensor refuses: HTTP status and a reason the sensor logs."""

    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def body_digest(body: bytes | memoryview, algorithm: str = "sha256") -> str:
    """`algorithm=hex`. The algorithm's name is part of the signed text, so it cannot be
    swapped. BLAKE3 (256-bit output) is a cryptographic hash like SHA-256 and runs at
    about 3x its speed here: it lowers the per-byte cost of signing large batches."""
    if algorithm == "blake3":
        import blake3

        return "blake3=" + blake3.blake3(body).hexdigest()
    if algorithm != "sha256":
        raise ValueError(f"unknown digest {algorithm!r}")
    return "sha256=" + hashlib.sha256(body).hexdigest()


def canonical(method: str, path: str, sensor: str, boot: str, seq: int, timestamp: int,
              content_type: str, content_encoding: str, digest: str) -> bytes:
    """The exact bytes the HMAC covers: one field per line, no trailing newline."""
    return "\n".join([
        SCHEME, method.upper(), path, sensor, boot, str(seq), str(timestamp),
        content_type, content_encoding, digest,
    ]).encode("utf-8")


def signature(key: bytes, canon: bytes) -> str:
    return "v1=" + hmac.new(key, canon, hashlib.sha256).hexdigest()


def sign(key: bytes, *, sensor: str, boot: str, seq: int, timestamp: int, body: bytes | memoryview,
         method: str = "POST", path: str = PATH_BATCHES, content_encoding: str = "identity",
         digest_algorithm: str = "sha256") -> dict[str, str]:
    """Headers that authenticate `body` as batch `seq` of this sensor's boot `boot`."""
    digest = body_digest(body, digest_algorithm)
    ctype = content_type_for(path)
    canon = canonical(method, path, sensor, boot, seq, timestamp, ctype, content_encoding, digest)
    return {
        "Content-Type": ctype,
        "Content-Encoding": content_encoding,
        H_SENSOR: sensor,
        H_BOOT: boot,
        H_SEQ: str(seq),
        H_TIME: str(timestamp),
        H_DIGEST: digest,
        H_SIGNATURE: signature(key, canon),
    }


@dataclass(frozen=True)
class Verified:
    sensor: str
    boot: str
    seq: int
    timestamp: int
    content_encoding: str


@dataclass(frozen=True)
class SignedHeaders:
    """A request whose headers passed verify_headers: its body is not trusted yet (verify_body)."""
    verified: Verified
    digest: str


def _header(headers, name: str) -> str:
    value = headers.get(name)
    if value is None:
        raise ProtocolError(400, f"missing header {name}")
    return value.strip()


def verify_headers(key: bytes, *, method: str, path: str, headers, now: float,
                   max_skew: int = MAX_SKEW_S) -> SignedHeaders:
    """Everything that can be checked before a byte of the body is read: header syntax (400),
    Content-Type/Content-Encoding (415), the signature (401, constant time) and the time window
    (401). Raises ProtocolError. A receiver calls this first and refuses without reading the body.

    `headers` is any case-insensitive mapping with .get (http.server's Message is one).
    """
    sensor = _header(headers, H_SENSOR)
    boot = _header(headers, H_BOOT)
    seq_s = _header(headers, H_SEQ)
    time_s = _header(headers, H_TIME)
    digest = _header(headers, H_DIGEST)
    sig = _header(headers, H_SIGNATURE)
    ctype = headers.get("Content-Type")
    if ctype is None:
        raise ProtocolError(415, f"Content-Type required: {content_type_for(path)}")
    ctype = ctype.strip()
    encoding = (headers.get("Content-Encoding") or "identity").strip()
    if not _SENSOR_RE.match(sensor):
        raise ProtocolError(400, f"bad {H_SENSOR}")
    if not _BOOT_RE.match(boot):
        raise ProtocolError(400, f"bad {H_BOOT}")
    if not (_DECIMAL_RE.fullmatch(seq_s) and _DECIMAL_RE.fullmatch(time_s)):
        raise ProtocolError(400, f"{H_SEQ} and {H_TIME} must be decimal integers")
    if not _DIGEST_RE.match(digest) or not _SIG_RE.match(sig):
        raise ProtocolError(400, f"bad {H_DIGEST} or {H_SIGNATURE}")
    if ctype != content_type_for(path):
        raise ProtocolError(415, f"Content-Type must be {content_type_for(path)}")
    if encoding not in ENCODINGS:
        raise ProtocolError(415, f"Content-Encoding {encoding!r} not supported")
    seq, timestamp = int(seq_s), int(time_s)
    canon = canonical(method, path, sensor, boot, seq, timestamp, ctype, encoding, digest)
    if not hmac.compare_digest(signature(key, canon), sig):
        raise ProtocolError(401, "signature does not verify (wrong key, or the request was altered)")
    if abs(now - timestamp) > max_skew:
        raise ProtocolError(401, f"stale timestamp: {int(now - timestamp)} s from the vSensor's clock "
                                 f"(allowed ±{max_skew} s; check NTP)")
    return SignedHeaders(Verified(sensor, boot, seq, timestamp, encoding), digest)


def verify_body(checked: SignedHeaders, body: bytes | memoryview) -> Verified:
    """The body against the digest the signature covers (401 when it differs)."""
    if not hmac.compare_digest(body_digest(body, checked.digest.split("=", 1)[0]), checked.digest):
        raise ProtocolError(401, "body does not match its signed digest (tampered)")
    return checked.verified


def verify(key: bytes, *, method: str, path: str, headers, body: bytes, now: float,
           max_skew: int = MAX_SKEW_S) -> Verified:
    """Check a request's headers, signature, freshness and body digest. Raises ProtocolError.

    verify_headers then verify_body: the signature is compared in constant time before anything
    about the body is trusted.
    """
    return verify_body(verify_headers(key, method=method, path=path, headers=headers, now=now,
                                      max_skew=max_skew), body)


# -- the signed answer -------------------------------------------------------------------------
# The vSensor signs its answer to /v1/antigena (the only answer whose content a sensor acts on):
# HMAC-SHA256 over a text binding the answer's status and body (SHA-256 digest) to the request it
# answers (method, path, sensor, boot, seq, time). A TLS-intercepting proxy can read an answer but
# can neither forge one, alter one, nor replay one to another request.

RESPONSE_SCHEME = "OSSENSOR-HMAC-SHA256-V1-RESPONSE"
H_RESPONSE_SIGNATURE = "X-Ossensor-Response-Signature"


class ResponseError(Exception):
    """An answer the sensor refuses: not signed, or not signed for this request with our key."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def response_canonical(status: int, method: str, path: str, sensor: str, boot: str, seq: int, timestamp: int,
                       digest: str) -> bytes:
    """The exact bytes the answer's HMAC covers: one field per line, no trailing newline."""
    return "\n".join([
        RESPONSE_SCHEME, str(int(status)), method.upper(), path, sensor, boot, str(seq), str(timestamp), digest,
    ]).encode("utf-8")


def sign_response(key: bytes, *, status: int, body: bytes, request: Verified, method: str = "POST",
                  path: str = PATH_ANTIGENA) -> dict[str, str]:
    """The header that authenticates `body` (exactly as sent) as the answer to `request`."""
    canon = response_canonical(status, method, path, request.sensor, request.boot, request.seq,
                               request.timestamp, body_digest(body))
    return {H_RESPONSE_SIGNATURE: signature(key, canon)}


def verify_response(key: bytes, *, status: int, headers, body: bytes, sensor: str, boot: str, seq: int,
                    timestamp: int, method: str = "POST", path: str = PATH_ANTIGENA) -> None:
    """Check the answer to the request (sensor, boot, seq, timestamp) this sensor signed.
    Raises ResponseError; compares in constant time."""
    sig = (headers.get(H_RESPONSE_SIGNATURE) or "").strip()
    if not sig:
        raise ResponseError(f"the answer is not signed (no {H_RESPONSE_SIGNATURE} header)")
    if not _SIG_RE.match(sig):
        raise ResponseError(f"malformed {H_RESPONSE_SIGNATURE}")
    canon = response_canonical(status, method, path, sensor, boot, seq, timestamp, body_digest(body))
    if not hmac.compare_digest(signature(key, canon), sig):
        raise ResponseError("the answer's signature does not verify (altered or forged on the way, "
                            "or the vSensor has another key)")


class ReplayGuard:
    """Remembers which (sensor, boot, seq) were accepted, in bounded memory.

    Per (sensor, boot) it keeps a low-water mark (every seq <= it was seen) and the
    set of seqs above it; the set is capped, and when it overflows the mark jumps
    up, so very late out-of-order batches are refused as replays rather than
    letting memory grow. A sensor process draws a new random boot id at start.
    """

    def __init__(self, window: int = 65536, max_streams: int = 4096):
        self._window = window
        self._max_streams = max_streams
        self._streams: dict[tuple[str, str], tuple[int, set[int]]] = {}
        self._lock = threading.Lock()

    def seen(self, sensor: str, boot: str, seq: int) -> bool:
        with self._lock:
            low, above = self._streams.get((sensor, boot), (-1, set()))
            return seq <= low or seq in above

    def accept(self, sensor: str, boot: str, seq: int) -> bool:
        """Record seq; False if it was already accepted (a replay or a retry)."""
        with self._lock:
            key = (sensor, boot)
            low, above = self._streams.pop(key, (-1, set()))
            if seq <= low or seq in above:
                self._streams[key] = (low, above)
                return False
            above.add(seq)
            while low + 1 in above:
                low += 1
                above.discard(low)
            if len(above) > self._window:
                cut = sorted(above)[len(above) - self._window]
                low = cut - 1
                above = {s for s in above if s > low}
            self._streams[key] = (low, above)  # re-inserted last: most recently used
            while len(self._streams) > self._max_streams:
                self._streams.pop(next(iter(self._streams)))
            return True
