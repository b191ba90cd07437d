"""Interfaces: what the host has (netlink, pyroute2) and which of them we capture.

Selection rules (SPEC, docs/configuration.md "Interface selection"):
  * OSSENSOR_NETWORK_DEVICE set to a name: exactly that device; the lists are not consulted.
  * OSSENSOR_NETWORK_DEVICE=default: the device of the default route (IPv4, else IPv6), resolved
    once at start; no default route -> a level-0 message and the lists decide, as if unset.
  * otherwise, neither list set: every interface except loopback;
  * include list set: only interfaces matching one of its regexes;
  * exclude list: never an interface matching one of its regexes (wins over include).
Regexes are egrep's (POSIX ERE, unanchored), see ossensor.egrep.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from typing import Callable, Mapping

from ossensor._pyroute2 import IPRoute  # pyroute2's IPRoute, without all of pyroute2
from ossensor.pcapng import linktype_for_arphrd

IFF_UP = 0x1
IFF_LOOPBACK = 0x8
ARPHRD_LOOPBACK = 772
DEFAULT_ROUTE = "default"  # OSSENSOR_NETWORK_DEVICE value meaning "the device of the default route"


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


def judge(iface: Interface, *, device: str | None, include: list, exclude: list) -> Verdict:
    """Why one interface is or is not captured. include/exclude hold ossensor.egrep.ERE objects."""
    if device:
        if iface.name == device:
            return Verdict(iface, True, "OSSENSOR_NETWORK_DEVICE")
        return Verdict(iface, False, f"not OSSENSOR_NETWORK_DEVICE ({device})")
    for rx in exclude:
        if rx.search(iface.name):
            return Verdict(iface, False, f"excluded by NETWORK_DEVICE_EXCLUDELIST regex '{rx.pattern}'")
    if include:
        for rx in include:
            if rx.search(iface.name):
                return Verdict(iface, True, f"included by NETWORK_DEVICE_INCLUDELIST regex '{rx.pattern}'")
        return Verdict(iface, False, "matches no NETWORK_DEVICE_INCLUDELIST regex")
    if iface.loopback:
        return Verdict(iface, False, "loopback (not captured unless included)")
    return Verdict(iface, True, "no include list: every non-loopback interface")


def select(interfaces: list[Interface], *, device: str | None, include: list, exclude: list) -> Selection:
    return Selection([judge(i, device=device, include=include, exclude=exclude) for i in interfaces])


@dataclass
class Selector:
    """The selection rules as configured, with OSSENSOR_NETWORK_DEVICE=default already resolved.
    One object shared by start-up, the hot-plug watcher and `ossensor interfaces`."""
    device: str | None
    include: list
    exclude: list
    notes: list[str] = field(default_factory=list)  # level-0 explanations of how device was chosen

    @classmethod
    def from_settings(cls, settings, resolve: Callable[[], tuple[str | None, str]] | None = None) -> "Selector":
        device, notes = settings.network_device, []
        if device == DEFAULT_ROUTE:
            name, how = (resolve or default_route_device)()
            if name:
                notes.append(f"OSSENSOR_NETWORK_DEVICE=default: {name} (device of the {how})")
                device = name
            else:
                notes.append(f"OSSENSOR_NETWORK_DEVICE=default: {how}; falling back to the interface lists "
                             "(neither set: every interface except loopback)")
                device = None
        if device and (settings.include_list or settings.exclude_list):
            notes.append(f"OSSENSOR_NETWORK_DEVICE={device} is set: NETWORK_DEVICE_INCLUDELIST/EXCLUDELIST "
                         "are not consulted")
        return cls(device, list(settings.include_list), list(settings.exclude_list), notes)

    def judge(self, iface: Interface) -> Verdict:
        return judge(iface, device=self.device, include=self.include, exclude=self.exclude)

    def select(self, interfaces: list[Interface]) -> Selection:
        return Selection([self.judge(i) for i in interfaces])


# the variables `ossensor interfaces` reads (the same as `run`, nothing else)
SELECTION_VARIABLES = ("OSSENSOR_NETWORK_DEVICE", "NETWORK_DEVICE_EXCLUDELIST", "NETWORK_DEVICE_BLACKLIST",
                       "NETWORK_DEVICE_INCLUDELIST", "NETWORK_DEVICE_WHITELIST", "NETWORK_DEVICE_ANY")


def selection_settings(environ: Mapping[str, str]):
    """Settings holding only the interface-selection variables, checked exactly as `run` checks them
    (same messages, same legacy names), without requiring VSENSOR_HOSTNAME / VSENSOR_HMAC_KEY.
    Raises config.ConfigError."""
    from ossensor import config

    env = {k: environ[k] for k in SELECTION_VARIABLES if k in environ}
    # placeholders for the required variables this command does not use; never shown
    env.update(VSENSOR_HOSTNAME="localhost", VSENSOR_HMAC_KEY="unused-by-ossensor-interfaces",
               OSSENSOR_SENSOR_NAME="interfaces")
    return config.load(env)
