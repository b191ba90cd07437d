"""What the host has: its network interfaces, listed over netlink (pyroute2's IPRoute).

`enumerate_interfaces()` lists them once; the hot-plug watcher (hotplug.py) turns link events into the
same `Interface` objects with `from_link()`; `default_route_device()` resolves OSSENSOR_NETWORK_DEVICE=default.
Which of them are captured is selection.py's job.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

from ossensor.interfaces._pyroute2 import IPRoute  # pyroute2's IPRoute, without all of pyroute2
from ossensor.pcapng import linktype_for_arphrd

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
ARPHRD_LOOPBACK = 772


@dataclass(frozen=True)
class Interface:
    index: int
    name: str
    arphrd: int
    up: bool
    loopback: bool
    addresses: tuple[str, ...] = ()

    @property
    def linktype(self) -> int:
        return linktype_for_arphrd(self.arphrd)


def from_link(link, addresses: tuple[str, ...] = ()) -> Interface:
    """An Interface from a pyroute2 ifinfmsg (a dump answer or an RTM_NEWLINK event)."""
    flags = link["flags"]
    return Interface(
        index=link["index"],
        name=link.get_attr("IFLA_IFNAME"),
        arphrd=link["ifi_type"],
        up=bool(flags & IFF_UP),
        loopback=bool(flags & IFF_LOOPBACK) or link["ifi_type"] == ARPHRD_LOOPBACK,
        addresses=addresses,
    )


def enumerate_interfaces(addresses: bool = True) -> list[Interface]:
    with IPRoute() as ipr:
        addrs: dict[int, list[str]] = {}
        if addresses:
            for msg in ipr.get_addr():
                addr = msg.get_attr("IFA_ADDRESS")
                if addr:
                    addrs.setdefault(msg["index"], []).append(f"{addr}/{msg['prefixlen']}")
        out = [from_link(link, tuple(addrs.get(link["index"], ()))) for link in ipr.get_links()]
    return sorted(out, key=lambda i: i.index)


def default_route_device() -> tuple[str | None, str]:
    """(name, how) of the default route's device: IPv4 first, else IPv6; the lowest metric wins.
    (None, why) when there is no default route."""
    with IPRoute() as ipr:
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        for family, label in ((socket.AF_INET, "IPv4"), (socket.AF_INET6, "IPv6")):
            best: tuple[int, int] | None = None
            for route in ipr.get_default_routes(family=family):
                metric = route.get_attr("RTA_PRIORITY") or 0
                oif = route.get_attr("RTA_OIF")
                if oif is None:  # multipath: the first hop's device
                    hops = route.get_attr("RTA_MULTIPATH") or []
                    oif = hops[0]["oif"] if hops else None
                if oif in names and (best is None or metric < best[0]):
                    best = (metric, oif)
            if best:
                return names[best[1]], f"{label} default route"
    return None, "no default route (IPv4 or IPv6)"
