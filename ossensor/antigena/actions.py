"""Antigena actions: what the vSensor asks the sensor to block, validated before anything is installed.

An action (docs/antigena.md, docs/protocol.md) is a JSON object
``{"id": "a-1", "target": {...}, "expires_in": 60}`` where the target is one of

* ``{"type": "connection", "src": ADDR, "sport": PORT, "dst": ADDR, "dport": PORT}`` - one TCP
  connection (either direction);
* ``{"type": "pair", "a": ADDR, "b": ADDR}`` - all traffic between two addresses;
* ``{"type": "host", "address": ADDR}`` - all traffic of one address (quarantine).

Addresses are IPv4 or IPv6 (both of one target in the same family). ``expires_in`` is the number of
seconds the action lasts from when the sensor receives it (0 < expires_in <= 30 days).
Anything else is refused with a one-line reason that is reported back to the vSensor.
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass

MAX_EXPIRES_S = 30 * 86400
MAX_ID_LEN = 128
_ID_RE = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")

# kinds as the C matcher knows them (native/antigena.h)
KIND_CONNECTION, KIND_PAIR, KIND_HOST = 1, 2, 3
KINDS = {"connection": KIND_CONNECTION, "pair": KIND_PAIR, "host": KIND_HOST}


class ActionError(ValueError):
    """An action that cannot be enforced: `reason` is reported to the vSensor."""


@dataclass(frozen=True)
class Target:
    kind: str                      # "connection" | "pair" | "host"
    a: ipaddress._BaseAddress      # connection: src; pair: a; host: address
    b: ipaddress._BaseAddress | None = None   # connection: dst; pair: b
    pa: int = 0                    # connection: sport
    pb: int = 0                    # connection: dport

    @property
    def family(self) -> int:
        return self.a.version

    def rule(self, rule_id: int) -> tuple:
        """The tuple Ring.set_rules takes."""
        return (rule_id, KINDS[self.kind], self.family, self.a.packed,
                self.b.packed if self.b is not None else b"", self.pa, self.pb)

    def as_json(self) -> dict:
        if self.kind == "connection":
            return {"type": "connection", "src": str(self.a), "sport": self.pa, "dst": str(self.b), "dport": self.pb}
        if self.kind == "pair":
            return {"type": "pair", "a": str(self.a), "b": str(self.b)}
        return {"type": "host", "address": str(self.a)}

    def __str__(self) -> str:
        if self.kind == "connection":
            return f"connection {_hp(self.a, self.pa)} <-> {_hp(self.b, self.pb)}"
        if self.kind == "pair":
            return f"pair {self.a} <-> {self.b}"
        return f"host {self.a}"


def _hp(addr, port: int) -> str:
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


@dataclass(frozen=True)
class Action:
    id: str
    target: Target
    expires_in: float


def action_id(doc) -> str | None:
    """The id to report an action under, even when the action is malformed (None if unusable)."""
    if isinstance(doc, dict) and isinstance(doc.get("id"), str) and _ID_RE.match(doc["id"]):
        return doc["id"]
    return None


def _address(target: dict, field: str):
    value = target.get(field)
    if not isinstance(value, str):
        raise ActionError(f"target.{field}: missing or not a string")
    if "%" in value or len(value) > 64:
        raise ActionError(f"target.{field}: {value[:64]!r} is not an IPv4 or IPv6 address")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise ActionError(f"target.{field}: {value!r} is not an IPv4 or IPv6 address") from None


def _port(target: dict, field: str) -> int:
    value = target.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ActionError(f"target.{field}: {str(value)[:20]!r} is not a port number 1-65535")
    return value


def parse(doc) -> Action:
    """Validate one action from the vSensor. Raises ActionError with a reason."""
    if not isinstance(doc, dict):
        raise ActionError("an action must be a JSON object")
    raw_id = doc.get("id")
    if not isinstance(raw_id, str) or not _ID_RE.match(raw_id):
        raise ActionError(f"id: missing or invalid (1-{MAX_ID_LEN} of A-Z a-z 0-9 . _ : @ / + = -)")
    expires = doc.get("expires_in")
    if isinstance(expires, bool) or not isinstance(expires, (int, float)) or not math.isfinite(expires):
        raise ActionError("expires_in: missing or not a number of seconds")
    if expires <= 0:
        raise ActionError(f"expires_in: {expires} is not positive")
    if expires > MAX_EXPIRES_S:
        raise ActionError(f"expires_in: {expires} is more than {MAX_EXPIRES_S} s (30 days)")
    target = doc.get("target")
    if not isinstance(target, dict):
        raise ActionError("target: missing or not an object")
    kind = target.get("type")
    if kind == "connection":
        proto = target.get("proto", "tcp")
        if proto != "tcp":
            raise ActionError(f"target.proto: {str(proto)[:20]!r} cannot be reset (only tcp)")
        t = Target("connection", _address(target, "src"), _address(target, "dst"),
                   _port(target, "sport"), _port(target, "dport"))
    elif kind == "pair":
        t = Target("pair", _address(target, "a"), _address(target, "b"))
    elif kind == "host":
        t = Target("host", _address(target, "address"))
    else:
        raise ActionError(f"target.type: unknown type {str(kind)[:40]!r} (connection, pair or host)")
    if t.b is not None and t.a.version != t.b.version:
        raise ActionError("target: both addresses must be IPv4, or both IPv6")
    return Action(raw_id, t, float(expires))
