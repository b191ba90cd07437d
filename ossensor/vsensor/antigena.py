"""The reference vSensor's Antigena desk: actions issued by an operator, reports received from sensors.

* Issuing: ``ossensor vsensor block --out DIR ...`` appends an action to ``DIR/antigena-actions.jsonl``
  (the vSensor's own directory: whoever may write there may issue blocks - no network admin port).
  The vSensor re-reads the file when it changes.
* Delivering: each signed ``POST /v1/antigena`` from a sensor is answered with the actions meant for it
  (``sensor`` unset, ``*`` or its name) that have not expired and whose final state this sensor boot has
  not reported yet. ``expires_in`` is computed from the action's absolute ``expires`` time; an action
  written with a literal ``expires_in`` (``block --raw``, to test sensors) is passed on as written.
* Recording: every report is appended to ``DIR/antigena-reports.jsonl`` and logged as one line;
  ``ossensor vsensor actions --out DIR`` shows each action with the latest state reported for it.
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import json
import os
import secrets
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path

from ossensor import protocol
from ossensor.exits import EXIT_USAGE
from ossensor.vsensor import store as _store

ACTIONS_FILE = "antigena-actions.jsonl"
REPORTS_FILE = "antigena-reports.jsonl"
MAX_BODY = 4 << 20
MAX_ACTIONS = 4096
MAX_FILE = 16 << 20
FINAL_STREAMS = 4096


class Desk:
    def __init__(self, out: Path, log):
        self.out = Path(out)
        self.log = log
        self.guard = protocol.ReplayGuard()
        self._lock = threading.Lock()
        self._stamp = None
        self._actions: list[dict] = []
        self._done: OrderedDict[tuple[str, str], set[str]] = OrderedDict()
        self._recover()

    def _recover(self) -> None:
        """After a restart: the exchanges already recorded are refused as replays (a sensor re-signs a
        retry with a fresh seq), and actions a sensor boot reported final are not sent to it again.
        From the end of the reports file, bounded; an exchange without reports left no line, and its
        replay records nothing either."""
        for r in _store.tail_entries(self.out / REPORTS_FILE, MAX_FILE, _store.SEED_MAX_ENTRIES):
            sensor, boot, seq = r.get("sensor"), r.get("boot"), r.get("seq")
            if not (isinstance(sensor, str) and isinstance(boot, str) and isinstance(seq, int)):
                continue
            self.guard.accept(sensor, boot, seq)
            if r.get("final") and isinstance(r.get("id"), str):
                self._done.setdefault((sensor, boot), set()).add(r["id"])
                self._done.move_to_end((sensor, boot))
        while len(self._done) > FINAL_STREAMS:
            self._done.popitem(last=False)

    def _load(self) -> list[dict]:
        path = self.out / ACTIONS_FILE
        try:
            st = path.stat()
        except FileNotFoundError:
            self._stamp, self._actions = None, []
            return self._actions
        stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        if stamp != self._stamp:
            with open(path, "rb") as f:
                if st.st_size > MAX_FILE:
                    f.seek(st.st_size - MAX_FILE)
                    f.readline()
                lines = f.read().decode("utf-8", "replace").splitlines()
            actions = []
            for n, line in enumerate(lines[-MAX_ACTIONS:], 1):
                try:
                    doc = json.loads(line)
                except ValueError:
                    self.log(f"antigena-error reason=bad_line_{n}_in_{ACTIONS_FILE}")
                    continue
                if isinstance(doc, dict) and isinstance(doc.get("action"), dict):
                    actions.append(doc)
            self._stamp, self._actions = stamp, actions
        return self._actions

    def exchange(self, v: protocol.Verified, body: bytes, peer: str) -> tuple[int, dict]:
        """One signed POST /v1/antigena: record the reports, answer with the actions."""
        if not self.guard.accept(v.sensor, v.boot, v.seq):
            return 409, {"status": "duplicate", "seq": v.seq, "reason": "exchange already received"}
        try:
            doc = json.loads(body)
        except ValueError:
            return 400, {"status": "refused", "reason": "body is not JSON"}
        reports = doc.get("reports") if isinstance(doc, dict) else None
        if not isinstance(reports, list):
            return 400, {"status": "refused", "reason": "body must be an object with a \"reports\" list"}
        now = time.time()
        with self._lock:
            done = self._done.pop((v.sensor, v.boot), set())
            lines = []
            for r in reports:
                if not isinstance(r, dict):
                    continue
                rid, state = r.get("id"), r.get("state")
                if r.get("final") and isinstance(rid, str):
                    done.add(rid)
                lines.append(json.dumps({"received": round(now, 3), "sensor": v.sensor, "boot": v.boot,
                                         "seq": v.seq, **r}, separators=(",", ":")))
                self.log(f"antigena-report sensor={v.sensor} boot={v.boot} id={_c(rid)} state={_c(state)} "
                         f"hits={_c(r.get('hits'))} resets_sent={_c(r.get('resets_sent'))} "
                         f"reason={_c(str(r.get('reason') or '-').replace(' ', '_'), 160)}")
            self._done[(v.sensor, v.boot)] = done
            while len(self._done) > FINAL_STREAMS:
                self._done.popitem(last=False)
            if lines:
                with open(self.out / REPORTS_FILE, "a", encoding="utf-8") as f:
                    f.write("\n".join(lines) + "\n")
            actions = []
            for rec in self._load():
                a = dict(rec["action"])
                if rec.get("sensor") not in (None, "*", v.sensor) or a.get("id") in done:
                    continue
                if isinstance(rec.get("expires"), (int, float)):
                    left = rec["expires"] - now
                    if left <= 0:
                        continue
                    a["expires_in"] = round(left, 3)
                actions.append(a)
        stats = doc.get("stats") if isinstance(doc.get("stats"), dict) else {}
        self.log(f"antigena sensor={v.sensor} boot={v.boot} seq={v.seq} reports={len(reports)} "
                 f"actions_sent={len(actions)} enabled={_c(doc.get('antigena_enabled'))} "
                 f"resets_sent={_c(stats.get('resets_sent'))} peer={peer}")
        return 200, {"status": "ok", "time": int(now), "actions": actions[:MAX_ACTIONS]}


def _c(value, limit: int = 80) -> str:
    text = "".join(c if 33 <= ord(c) < 127 else "?" for c in str(value))
    return text[:limit] or "-"


# -- the operator's commands -----------------------------------------------------------------
def add_commands(p_vs: argparse.ArgumentParser) -> None:
    sub = p_vs.add_subparsers(dest="vsensor_command", metavar="[block|actions]",
                              description="without a command: run the vSensor")
    b = sub.add_parser("block", help="issue an Antigena block action to sensors (appends to DIR/" + ACTIONS_FILE + ")",
                       description="Issue a block action: sensors fetch it at their next exchange "
                                   "(every ANTIGENA_TIME_PERIOD s) and reset the matching TCP connections.")
    b.add_argument("--out", type=Path, default=Path("./vsensor-out"), metavar="DIR",
                   help="the vSensor's --out directory (default ./vsensor-out)")
    what = b.add_mutually_exclusive_group(required=True)
    what.add_argument("--connection", nargs=2, metavar=("SRC:PORT", "DST:PORT"),
                      help="one TCP connection (either direction); IPv6 as [fd00::1]:443")
    what.add_argument("--pair", nargs=2, metavar=("ADDR", "ADDR"), help="all traffic between two addresses")
    what.add_argument("--host", metavar="ADDR", help="all traffic of one address (quarantine)")
    what.add_argument("--raw", metavar="JSON", help="an action object sent to sensors as written, unchecked "
                                                    "(for testing a sensor's validation)")
    b.add_argument("--expires", type=float, default=300.0, metavar="SECONDS",
                   help="how long the action lasts (default 300)")
    b.add_argument("--sensor", metavar="NAME", help="only this sensor (default: every sensor)")
    b.add_argument("--id", metavar="ID", help="action id (default: a random one)")
    b.set_defaults(func=cmd_block)
    a = sub.add_parser("actions", help="list issued actions with the latest state sensors reported")
    a.add_argument("--out", type=Path, default=Path("./vsensor-out"), metavar="DIR",
                   help="the vSensor's --out directory (default ./vsensor-out)")
    a.add_argument("--json", action="store_true", help="one JSON object per action")
    a.set_defaults(func=cmd_actions)


def _fail(msg: str) -> int:
    print(f"ossensor vsensor block: {msg}", file=sys.stderr)
    return EXIT_USAGE


def _addr(value: str, what: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not an IPv4 or IPv6 address") from None


def _hostport(value: str, what: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{what}: {value!r} is not ADDR:PORT (IPv6 as [ADDR]:PORT, port 1-65535)")
    return _addr(host, what), int(port)


def cmd_block(args: argparse.Namespace) -> int:
    from ossensor.antigena.actions import ActionError, parse

    try:
        if args.raw is not None:
            action = json.loads(args.raw)
            if not isinstance(action, dict):
                return _fail("--raw: must be a JSON object")
        else:
            if not 0 < args.expires <= 30 * 86400:
                return _fail(f"--expires: {args.expires:g} is not between 0 and 30 days")
            if args.connection:
                (s, sp), (d, dp) = (_hostport(args.connection[0], "--connection SRC"),
                                    _hostport(args.connection[1], "--connection DST"))
                target = {"type": "connection", "src": s, "sport": sp, "dst": d, "dport": dp}
            elif args.pair:
                target = {"type": "pair", "a": _addr(args.pair[0], "--pair"), "b": _addr(args.pair[1], "--pair")}
            else:
                target = {"type": "host", "address": _addr(args.host, "--host")}
            action = {"id": args.id or "a-" + secrets.token_hex(4), "target": target}
            parse({**action, "expires_in": args.expires})  # the sensor's own check, before issuing
    except ValueError as err:  # JSON errors, addresses, ActionError
        return _fail(f"--raw: not JSON: {err}" if isinstance(err, json.JSONDecodeError) else str(err))
    except ActionError as err:
        return _fail(str(err))
    rec = {"issued": round(time.time(), 3), "action": action}
    if args.raw is None:
        rec["expires"] = round(time.time() + args.expires, 3)
    if args.sensor:
        rec["sensor"] = args.sensor
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        fd = os.open(args.out / ACTIONS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")
    except OSError as err:
        return _fail(f"--out {args.out}: {err.strerror or err}")
    print(f"issued {action.get('id')} {json.dumps(action.get('target'))}"
          f"{' expires in ' + format(args.expires, 'g') + ' s' if args.raw is None else ''}"
          f"{' for sensor ' + args.sensor if args.sensor else ''}")
    return 0


def cmd_actions(args: argparse.Namespace) -> int:
    out: Path = args.out
    latest: dict[str, dict] = {}
    try:
        if (out / REPORTS_FILE).exists():
            for line in (out / REPORTS_FILE).read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                if isinstance(r, dict) and isinstance(r.get("id"), str):
                    latest[r["id"]] = r
        issued = []
        if (out / ACTIONS_FILE).exists():
            for line in (out / ACTIONS_FILE).read_text(encoding="utf-8", errors="replace").splitlines():
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                if isinstance(rec, dict) and isinstance(rec.get("action"), dict):
                    issued.append(rec)
    except OSError as err:
        print(f"ossensor vsensor actions: --out {out}: {err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    for rec in issued:
        aid = rec["action"].get("id")
        r = latest.get(aid if isinstance(aid, str) else "", {})
        if args.json:
            print(json.dumps({"action": rec["action"], "expires": rec.get("expires"), "sensor": rec.get("sensor"),
                              "latest_report": r or None}))
        else:
            print(f"{aid} {json.dumps(rec['action'].get('target'))} state={r.get('state', 'not-reported')} "
                  f"sensor={r.get('sensor', '-')} resets_sent={r.get('resets_sent', 0)}"
                  f"{' reason=' + r['reason'] if r.get('reason') else ''}")
    return 0
