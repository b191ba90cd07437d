"""Which interfaces are captured, and why (the include/exclude lists, OSSENSOR_NETWORK_DEVICE).

Selection rules (SPEC, docs/configuration.md "Interface selection"):
  * OSSENSOR_NETWORK_DEVICE set to a name: exactly that device; the lists are not consulted.
  * OSSENSOR_NETWORK_DEVICE=default: the device of the default route (IPv4, else IPv6), resolved
    once at start; no default route -> a level-0 message and the lists decide, as if unset.
  * otherwise, neither list set: every interface except loopback;
  * include list set: only interfaces matching one of its regexes;
  * exclude list: never an interface matching one of its regexes (wins over include).
Regexes are egrep's (POSIX ERE, unanchored), see ossensor.interfaces.egrep.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Mapping

if TYPE_CHECKING:
    from ossensor.interfaces.netlink import Interface

DEFAULT_ROUTE = "default"  # OSSENSOR_NETWORK_DEVICE value meaning "the device of the default route"


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


def judge(iface: Interface, *, device: str | None, include: list, exclude: list) -> Verdict:
    """Why one interface is or is not captured. include/exclude hold ossensor.interfaces.egrep.ERE objects."""
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
            if resolve is None:
                from ossensor.interfaces.netlink import default_route_device as resolve  # netlink only when asked
            name, how = resolve()
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


def selection_settings(environ: Mapping[str, str]):
    """The interface-selection variables only, checked exactly as `run` checks them (same messages, same
    legacy names), without VSENSOR_HOSTNAME or the key, and without the settings model (config/local.py).
    Raises config.ConfigError."""
    from ossensor.config.local import load_selection

    return load_selection(environ)
