"""Where the selection overlaps: interfaces on which one packet is captured more than once.

A bridge and its ports, a VLAN/macvlan/ipvlan device and its lower device, a bond and its
slaves, several veths (pods: traffic between two of them crosses both, and often the bridge or
the uplink too). `ossensor interfaces` reports them with what OSSENSOR_DEDUP does about it
(issue 19; native/dedup.h suppresses the copies on the capture path).
"""

from __future__ import annotations

from typing import Mapping

from ossensor.interfaces._pyroute2 import IPRoute

_STACKED = {"vlan", "macvlan", "macvtap", "ipvlan", "ipvtap", "vxlan"}  # kinds with a lower device here


def _kind(link) -> str | None:
    info = link.get_attr("IFLA_LINKINFO")
    return info.get_attr("IFLA_INFO_KIND") if info is not None else None


def links() -> list[dict]:
    """index, name, kind, master (ifindex or None), lower (ifindex in this namespace, or None)."""
    out = []
    with IPRoute() as ipr:
        for link in ipr.get_links():
            lower = link.get_attr("IFLA_LINK")
            if link.get_attr("IFLA_LINK_NETNSID") is not None:  # a veth's peer in another namespace
                lower = None
            out.append({"index": link["index"], "name": link.get_attr("IFLA_IFNAME"), "kind": _kind(link),
                        "master": link.get_attr("IFLA_MASTER"),
                        "lower": lower if lower and lower != link["index"] else None})
    return out


def find(selected: list[str], table: list[dict]) -> list[dict]:
    """Overlaps among the selected interfaces: [{"kind", "interfaces", "why"}]."""
    sel = set(selected)
    by_index = {t["index"]: t for t in table}
    found = []
    masters: dict[str, list[str]] = {}
    for t in table:
        m = by_index.get(t["master"]) if t["master"] else None
        if t["name"] in sel and m is not None and m["name"] in sel:
            masters.setdefault(m["name"], []).append(t["name"])
    for master, ports in sorted(masters.items()):
        what = "bond" if any(x["name"] == master and x["kind"] == "bond" for x in table) else "bridge"
        found.append({"kind": f"{what}-ports", "interfaces": [master, *sorted(ports)],
                      "why": f"{what} {master} and its ports {', '.join(sorted(ports))}: a packet between two "
                             f"ports is seen on both, one to or from the node on its port and on {master}"})
    for t in table:
        low = by_index.get(t["lower"]) if t["lower"] else None
        if t["name"] in sel and low is not None and low["name"] in sel and (t["kind"] in _STACKED or t["kind"] is None):
            found.append({"kind": "lower-device", "interfaces": [t["name"], low["name"]],
                          "why": f"{t['kind'] or 'stacked device'} {t['name']} on {low['name']}: its packets "
                                 f"are seen on both"})
    veths = sorted(t["name"] for t in table if t["name"] in sel and t["kind"] == "veth")
    if len(veths) >= 2:
        found.append({"kind": "veths", "interfaces": veths,
                      "why": f"{len(veths)} veths ({', '.join(veths[:4])}{', ...' if len(veths) > 4 else ''}): "
                             "traffic between two pods is seen on both veths, and routed traffic again on "
                             "the bridge and the uplink"})
    return found


def dedup_state(environ: Mapping[str, str]) -> tuple[bool, str]:
    """(on, window) as OSSENSOR_DEDUP / OSSENSOR_DEDUP_WINDOW_MS say (`ossensor run` checks them)."""
    on = environ.get("OSSENSOR_DEDUP", "on").strip().lower() != "off"
    return on, environ.get("OSSENSOR_DEDUP_WINDOW_MS", "20").strip()


def advice(on: bool, window: str) -> str:
    if on:
        return (f"OSSENSOR_DEDUP=on: each packet is sent once; a copy captured on another of these interfaces "
                f"within {window} ms is counted as `duplicate` (not a loss) and not sent. Copies rewritten by NAT "
                "are not recognised and are all sent")
    return ("OSSENSOR_DEDUP=off: every copy is sent (more bandwidth); set OSSENSOR_DEDUP=on, or narrow the "
            "selection with NETWORK_DEVICE_EXCLUDELIST")
