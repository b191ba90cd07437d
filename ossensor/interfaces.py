"""Interfaces: what the host has (netlink, pyroute2) and which of them we capture.

Selection rules (SPEC, docs/configuration.md):
  * OSSENSOR_NETWORK_DEVICE set: exactly that device; the lists are not consulted.
  * otherwise, neither list set: every interface except loopback;
  * include list set: only interfaces matching one of its regexes;
  * exclude list: never an interface matching one of its regexes (wins over include).
Regexes are egrep's (POSIX ERE, unanchored), see ossensor.egrep.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pyroute2 import IPRoute

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


@dataclass
class Verdict:
    interface: Interface
    selected: bool
    reason: str


@dataclass
class Selection:
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def selected(self) -> list[Interface]:
        return [v.interface for v in self.verdicts if v.selected]


def enumerate_interfaces() -> list[Interface]:
    with IPRoute() as ipr:
        addrs: dict[int, list[str]] = {}
        for msg in ipr.get_addr():
            addr = msg.get_attr("IFA_ADDRESS")
            if addr:
                addrs.setdefault(msg["index"], []).append(f"{addr}/{msg['prefixlen']}")
        out = []
        for link in ipr.get_links():
            flags = link["flags"]
            out.append(Interface(
                index=link["index"],
                name=link.get_attr("IFLA_IFNAME"),
                arphrd=link["ifi_type"],
                up=bool(flags & IFF_UP),
                loopback=bool(flags & IFF_LOOPBACK) or link["ifi_type"] == ARPHRD_LOOPBACK,
                addresses=tuple(addrs.get(link["index"], ())),
            ))
    return sorted(out, key=lambda i: i.index)


def judge(iface: Interface, *, device: str | None, include: list, exclude: list) -> Verdict:
    """Why one interface is or is not captured. include/exclude hold ossensor.egrep.ERE objects."""
    if device:
        if iface.name == device:
            return Verdict(iface, True, "OSSENSOR_NETWORK_DEVICE")
        return Verdict(iface, False, f"not OSSENSOR_NETWORK_DEVICE ({device})")
    for rx in exclude:
        if rx.search(iface.name):
            return Verdict(iface, False, f"excluded by NETWORK_DEVICE_EXCLUDELIST regex {rx.pattern!r}")
    if include:
        for rx in include:
            if rx.search(iface.name):
                return Verdict(iface, True, f"included by NETWORK_DEVICE_INCLUDELIST regex {rx.pattern!r}")
        return Verdict(iface, False, "matches no NETWORK_DEVICE_INCLUDELIST regex")
    if iface.loopback:
        return Verdict(iface, False, "loopback (not captured unless included)")
    return Verdict(iface, True, "no include list: every non-loopback interface")


def select(interfaces: list[Interface], *, device: str | None, include: list, exclude: list) -> Selection:
    return Selection([judge(i, device=device, include=include, exclude=exclude) for i in interfaces])
