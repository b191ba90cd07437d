"""`ossensor interfaces`: every interface of this namespace, selected or not, and why.

Reads the same selection variables as `ossensor run` (OSSENSOR_NETWORK_DEVICE, the include/exclude
lists under their new or old names, NETWORK_DEVICE_ANY), checked the same way, and nothing else: it
needs neither VSENSOR_HOSTNAME nor the key. It is how a user checks their lists before deploying.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Mapping, TextIO

from ossensor.exits import EXIT_FAIL, EXIT_OK, EXIT_USAGE
from ossensor.interfaces import netlink, overlap, selection



def report(environ: Mapping[str, str]) -> dict:
    """What `--json` prints. Raises config.ConfigError for bad variables."""
    settings = selection.selection_settings(environ)
    selector = selection.Selector.from_settings(settings)
    default_dev, default_how = netlink.default_route_device()
    sel = selector.select(netlink.enumerate_interfaces())
    chosen = [v.interface.name for v in sel.verdicts if v.selected]
    overlaps = overlap.find(chosen, overlap.links())
    dedup_on, window = overlap.dedup_state(environ)
    return {
        "rules": {
            "OSSENSOR_NETWORK_DEVICE": settings.network_device,
            "device": selector.device,
            "NETWORK_DEVICE_INCLUDELIST": [rx.pattern for rx in settings.include_list],
            "NETWORK_DEVICE_EXCLUDELIST": [rx.pattern for rx in settings.exclude_list],
            "NETWORK_DEVICE_ANY": settings.device_any,
            "notes": selector.notes + list(settings.warnings),
        },
        "default_route_device": default_dev,
        "default_route": default_how,
        "interfaces": [
            {
                "index": v.interface.index,
                "name": v.interface.name,
                "selected": v.selected,
                "reason": v.reason,
                "up": v.interface.up,
                "loopback": v.interface.loopback,
                "arphrd": v.interface.arphrd,
                "linktype": v.interface.linktype,
                "addresses": list(v.interface.addresses),
                "default_route": v.interface.name == default_dev,
            }
            for v in sel.verdicts
        ],
        "selected": chosen,
        # the selection captures some packets more than once (issue 19): where, and what dedup does
        "duplicate": {"overlaps": overlaps, "dedup": dedup_on, "window_ms": window,
                      "advice": overlap.advice(dedup_on, window) if overlaps else None},
    }


def _plain(rep: dict, out: TextIO) -> None:
    rows = [("INDEX", "NAME", "STATE", "SELECTED", "WHY", "ADDRESSES")]
    for i in rep["interfaces"]:
        state = ("up" if i["up"] else "down") + (",default-route" if i["default_route"] else "")
        rows.append((str(i["index"]), i["name"], state, "yes" if i["selected"] else "no", i["reason"],
                     " ".join(i["addresses"]) or "-"))
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]) - 1)]
    for r in rows:
        out.write("  ".join(r[c].ljust(widths[c]) for c in range(len(widths))) + "  " + r[-1] + "\n")


def _rich(rep: dict, out: TextIO) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="ossensor interfaces", title_justify="left")
    for col in ("index", "name", "state", "selected", "why", "addresses"):
        table.add_column(col, overflow="fold")
    for i in rep["interfaces"]:
        state = ("up" if i["up"] else "[yellow]down[/]") + (" default-route" if i["default_route"] else "")
        table.add_row(str(i["index"]), i["name"], state, "[green]yes[/]" if i["selected"] else "[red]no[/]",
                      i["reason"], " ".join(i["addresses"]) or "-")
    Console(file=out, highlight=False).print(table)


def main(as_json: bool, environ: Mapping[str, str] | None = None, out: TextIO | None = None) -> int:
    from ossensor import config

    environ = os.environ if environ is None else environ
    out = out or sys.stdout
    try:
        rep = report(environ)
    except config.ConfigError as err:
        for problem in err.problems:
            print(f"ossensor: {problem}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as err:  # netlink unavailable (very restricted sandbox)
        print(f"ossensor: cannot list interfaces through netlink: {err.strerror or err}", file=sys.stderr)
        return EXIT_FAIL
    try:
        _write(rep, as_json, out)
    except BrokenPipeError:  # `ossensor interfaces | head`: the reader left, that is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK


def _write(rep: dict, as_json: bool, out: TextIO) -> None:
    if as_json:
        json.dump(rep, out, indent=2)
        out.write("\n")
        out.flush()
        return
    (_rich if out.isatty() else _plain)(rep, out)
    r = rep["rules"]
    lists = (f"include={' '.join(r['NETWORK_DEVICE_INCLUDELIST']) or '(empty)'} "
             f"exclude={' '.join(r['NETWORK_DEVICE_EXCLUDELIST']) or '(empty)'}")
    out.write(f"\nrules: OSSENSOR_NETWORK_DEVICE={r['OSSENSOR_NETWORK_DEVICE'] or '(not set)'} {lists} "
              f"NETWORK_DEVICE_ANY={int(r['NETWORK_DEVICE_ANY'])}\n")
    out.write(f"default route: {rep['default_route_device'] or '-'} ({rep['default_route']})\n")
    for note in r["notes"]:
        out.write(f"note: {note}\n")
    out.write(f"selected: {', '.join(rep['selected']) or 'none'}"
              + (" (NETWORK_DEVICE_ANY=1: interfaces appearing later are judged by the same rules)"
                 if r["NETWORK_DEVICE_ANY"] else "") + "\n")
    for o in rep["duplicate"]["overlaps"]:
        out.write(f"warning: duplicate copies: {o['why']}\n")
    if rep["duplicate"]["overlaps"]:
        out.write(f"duplicate handling: {rep['duplicate']['advice']}\n")
    if not rep["selected"]:
        out.write("nothing would be captured now: `ossensor run` waits INTERFACE_WAIT_ATTEMPTS x "
                  "INTERFACE_WAIT_SECS for a selected interface, then exits\n")
    out.flush()
