"""The sensor's book of Antigena actions: their state, counters, and the rules the C matcher gets.

States reported to the vSensor (docs/antigena.md):
  active    installed, no packet of the target seen yet (nothing to reset)
  enforced  resets sent (counters say how many)
  failed    could not be enforced: the reason says why (final when it could not even be installed)
  expired   its time is over; the rule is gone
  refused   malformed, or ANTIGENA_ENABLED=false: never installed
  stopped   the sensor stopped while the action was active (reported by the last, short exchange)
A final state is reported until one exchange delivering it succeeds; then the action is forgotten
(its id is remembered, in bounded memory, so a re-delivery is not installed again).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from ossensor.antigena.actions import ActionError, Target, action_id, parse

MAX_ACTIVE = 4096          # the C table's limit (native/antigena.h AG_MAX_RULES)
MAX_PENDING_REFUSALS = 1024
MAX_FINISHED_IDS = 16384
MAX_PER_EXCHANGE = 4096    # actions looked at per answer; the rest wait for the next exchange
MAX_ENTRIES = 2 * MAX_ACTIVE


@dataclass
class Entry:
    id: str | None
    target: Target | None
    state: str
    reason: str = ""
    final: bool = False
    received: float = 0.0          # unix time
    expires: float = 0.0           # unix time
    rule_id: int = 0
    hits: int = 0
    resets_sent: int = 0
    send_errors: int = 0
    last_enforced: float | None = None
    raw: str = ""                  # refused actions: what was received (truncated)
    key: str = ""                  # actions without a usable id: a digest of what was received

    def report(self) -> dict:
        out = {"id": self.id, "state": self.state, "final": self.final}
        if self.reason:
            out["reason"] = self.reason
        if self.target is not None:
            out["target"] = self.target.as_json()
        if self.raw:
            out["received_action"] = self.raw
        out["received"] = round(self.received, 3)
        if self.expires:
            out["expires"] = round(self.expires, 3)
        out.update(hits=self.hits, resets_sent=self.resets_sent, send_errors=self.send_errors,
                   last_enforced=round(self.last_enforced, 3) if self.last_enforced else None)
        return out


class Book:
    def __init__(self, *, enabled: bool):
        self.enabled = enabled
        self.unavailable = ""        # why resets cannot be sent at all (injection socket failed)
        self.lock = threading.Lock()
        self._entries: dict[str, Entry] = {}
        self._anonymous: list[Entry] = []   # refused actions without a usable id
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._by_rule: dict[int, Entry] = {}
        self._next_rule = 1
        self.version = 0                     # bumps when the rule set changes
        self.counts = {"received": 0, "refused": 0, "expired": 0, "failed": 0, "resets_sent": 0, "send_errors": 0}

    # -- from the vSensor ----------------------------------------------------------------
    def receive(self, docs: list, now: float | None = None) -> list[str]:
        """Install new actions; return level-3 log lines. Known ids are left as they are."""
        now = time.time() if now is None else now
        lines = []
        if len(docs) > MAX_PER_EXCHANGE:
            lines.append(f"antigena: the vSensor sent {len(docs)} actions; looking at the first "
                         f"{MAX_PER_EXCHANGE} (the rest at the next exchanges)")
            docs = docs[:MAX_PER_EXCHANGE]
        with self.lock:
            for doc in docs:
                if len(self._entries) >= MAX_ENTRIES:  # bounded: unreported states must be delivered first
                    break
                aid = action_id(doc)
                key = aid if aid is not None else "#" + hashlib.sha256(_short(doc).encode()).hexdigest()[:32]
                if key in self._entries or key in self._finished or any(a.key == key for a in self._anonymous):
                    continue  # known; a malformed action without an id is refused (and reported) once
                self.counts["received"] += 1
                try:
                    action = parse(doc)
                except ActionError as err:
                    e = Entry(aid, None, "refused", str(err), True, now, raw=_short(doc), key=key)
                    self._refuse(e)
                    lines.append(f"antigena refused id={aid or '-'}: {err}")
                    continue
                e = Entry(action.id, action.target, "active", received=now, expires=now + action.expires_in)
                if not self.enabled:
                    e.state, e.final, e.reason = "refused", True, "Antigena is disabled on this sensor (ANTIGENA_ENABLED=false)"
                    e.expires = 0.0
                    self._refuse(e)
                    lines.append(f"antigena refused id={action.id} target={action.target}: {e.reason}")
                    continue
                if self.unavailable or sum(1 for x in self._by_rule.values()) >= MAX_ACTIVE:
                    e.state, e.final = "failed", True
                    e.reason = self.unavailable or f"too many active actions (limit {MAX_ACTIVE})"
                    self.counts["failed"] += 1
                    self._entries[e.id] = e
                    lines.append(f"antigena failed id={action.id} target={action.target}: {e.reason}")
                    continue
                e.rule_id = self._next_rule
                self._next_rule = self._next_rule % 0xFFFFFFFF + 1
                self._entries[e.id] = e
                self._by_rule[e.rule_id] = e
                self.version += 1
                lines.append(f"antigena received id={action.id} target={action.target} "
                             f"expires_in={action.expires_in:g}s")
        return lines

    def _refuse(self, e: Entry) -> None:
        self.counts["refused"] += 1
        if e.id is None:
            if len(self._anonymous) < MAX_PENDING_REFUSALS:
                self._anonymous.append(e)
        else:
            self._entries[e.id] = e

    # -- time ------------------------------------------------------------------------------
    def expire(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        lines = []
        with self.lock:
            for rule_id, e in list(self._by_rule.items()):
                if now >= e.expires:
                    del self._by_rule[rule_id]
                    e.state, e.final = "expired", True
                    self.counts["expired"] += 1
                    self.version += 1
                    lines.append(f"antigena expired id={e.id} target={e.target} hits={e.hits} "
                                 f"resets_sent={e.resets_sent}")
        return lines

    def stopping(self) -> None:
        """The sensor stops: active actions are no longer enforced (a restarted sensor, a new boot,
        receives them again from the vSensor)."""
        with self.lock:
            for rule_id, e in list(self._by_rule.items()):
                del self._by_rule[rule_id]
                e.state, e.final = "stopped", True
                e.reason = "the sensor stopped: no longer enforced by this sensor process"
            self.version += 1

    def next_expiry(self) -> float | None:
        with self.lock:
            return min((e.expires for e in self._by_rule.values()), default=None)

    # -- the capture side ------------------------------------------------------------------
    def rules(self) -> tuple[int, list[tuple]]:
        with self.lock:
            return self.version, [e.target.rule(rid) for rid, e in self._by_rule.items()]

    def entry_for_rule(self, rule_id: int) -> Entry | None:
        with self.lock:
            return self._by_rule.get(rule_id)

    def record(self, e: Entry, hits: int, sent: int, errors: int, error: str = "") -> bool:
        """Count an enforcement; True when it is the action's first successful one."""
        with self.lock:
            first = e.resets_sent == 0 and sent > 0
            e.hits += hits
            e.resets_sent += sent
            e.send_errors += errors
            self.counts["resets_sent"] += sent
            self.counts["send_errors"] += errors
            if sent:
                e.last_enforced = time.time()
                if e.state in ("active", "failed"):
                    e.state, e.reason = "enforced", ""
            elif errors and e.resets_sent == 0 and e.state == "active":
                e.state, e.reason = "failed", error
            return first

    # -- reports ---------------------------------------------------------------------------
    def reports(self) -> list[dict]:
        with self.lock:
            return [e.report() for e in list(self._entries.values()) + self._anonymous]

    def delivered(self, reports: list[dict]) -> None:
        """The vSensor has these reports: forget the actions whose final state it now knows."""
        with self.lock:
            anon = sum(1 for r in reports if r["id"] is None)
            for e in self._anonymous[:anon]:
                self._finished[e.key] = None
            self._anonymous = self._anonymous[anon:]
            for r in reports:
                if r["final"] and r["id"] is not None:
                    self._entries.pop(r["id"], None)
                    self._finished[r["id"]] = None
            while len(self._finished) > MAX_FINISHED_IDS:
                self._finished.popitem(last=False)

    def summary(self) -> dict:
        with self.lock:
            states: dict[str, int] = {}
            for e in self._entries.values():
                states[e.state] = states.get(e.state, 0) + 1
            return {"active": len(self._by_rule), "states": states, **self.counts}


def _short(doc) -> str:
    import json

    try:
        text = json.dumps(doc, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(doc)
    return text[:300]
