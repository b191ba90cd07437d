"""The interface watcher: netlink link events keep the capture set current.

A thread listens on an rtnetlink socket bound to the link group (RTMGRP_LINK), waiting in
select() on it and on a stop pipe: no polling. Each event is decoded with pyroute2 and judged
by the same rules as at start (selection.Selector):

* NETWORK_DEVICE_ANY=1: an interface that appears (created, or moved into this namespace) and is
  selected is captured; one renamed is judged again by its new name (captured, kept, or dropped);
  one deleted or moved to another namespace is dropped.
* NETWORK_DEVICE_ANY=0: the set stays as chosen at start. Interfaces that appear later are not
  captured; interfaces of the set that vanish are dropped cleanly; a renamed one stays only if its
  new name is still selected.

Up/down changes of a captured interface are logged (it stays in the set: a down interface simply
delivers nothing). Every change is one level-0 line saying why. If the kernel reports that events
were lost (ENOBUFS: the socket buffer overflowed during heavy churn), the watcher re-reads the whole
interface list and reconciles, so nothing is missed for long.

The socket is bound *before* the first reconciliation, so an interface that appears between the
start-up enumeration and the watcher's start is still seen.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import threading
import time

from ossensor.ops import log as L
from ossensor.interfaces._pyroute2 import RTMGRP_LINK, MarshalRtnl  # pyroute2's rtnl parser, without all of pyroute2
from ossensor.interfaces.netlink import Interface, enumerate_interfaces, from_link
from ossensor.interfaces.selection import Selector

RTM_NEWLINK, RTM_DELLINK = 16, 17
RCVBUF = 4 << 20  # many events at once (a node starting 100 pods) must not overflow


class Watcher:
    """Keeps `capture.set_interfaces` in step with the host's interfaces."""

    def __init__(self, capture, selector: Selector, initial: list[Interface], *, hotplug: bool, log: L.Log,
                 enumerate_fn=enumerate_interfaces):
        self.capture = capture
        self.selector = selector
        self.hotplug = hotplug
        self.log = log
        self._enumerate = enumerate_fn
        self.known: dict[int, Interface] = {}              # every interface of the namespace
        self.captured: dict[int, Interface] = {i.index: i for i in initial}
        self.changes = 0                                    # changes applied to the capture set
        self.last_change = 0.0                              # monotonic time of the last change
        self._sock: socket.socket | None = None
        self._marshal = MarshalRtnl()
        self._stop_r, self._stop_w = -1, -1
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------
    def open(self) -> "Watcher":
        """Open and bind the netlink socket (before capabilities are dropped; needs none, but a
        larger receive buffer does). Events from now on are queued in the kernel until start()."""
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, socket.NETLINK_ROUTE)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, RCVBUF)  # SO_RCVBUFFORCE (root): beyond rmem_max
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.bind((0, RTMGRP_LINK))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        return self

    def start(self) -> "Watcher":
        """Reconcile with the interfaces present now, then follow events in a thread."""
        if self._sock is None:
            self.open()
        self.known = {i.index: i for i in self._enumerate(addresses=False)}
        self._reconcile("at watcher start")  # what changed between the start-up enumeration and bind
        self.log(L.BASIC, "interface watcher: following netlink link events; " + (
            "NETWORK_DEVICE_ANY=1: selected interfaces that appear are captured" if self.hotplug else
            "NETWORK_DEVICE_ANY=0: the set stays as chosen at start (interfaces that vanish are dropped)"))
        self._thread = threading.Thread(target=self._run, name="hotplug", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            self._thread.join(5)
            self._thread = None
        for fd in (self._stop_r, self._stop_w):
            if fd >= 0:
                os.close(fd)
        self._stop_r = self._stop_w = -1
        if self._sock:
            self._sock.close()
            self._sock = None

    # -- the loop -------------------------------------------------------------------------
    def _run(self) -> None:
        assert self._sock is not None
        while True:
            try:
                ready, _, _ = select.select([self._sock, self._stop_r], [], [])
            except InterruptedError:
                continue
            if self._stop_r in ready:
                return
            try:
                data = self._sock.recv(1 << 16)
            except OSError as err:
                if err.errno == errno.ENOBUFS:
                    self.log.warning("interface watcher: netlink events were lost (socket buffer full); "
                                     "re-reading the interface list")
                    self._resync()
                    continue
                if err.errno in (errno.EINTR, errno.EAGAIN):
                    continue
                self.log.error(f"interface watcher stopped: netlink receive failed: {err.strerror or err}")
                return
            try:
                for msg in self._marshal.parse(data):
                    self._event(msg)
            except Exception as err:  # a watcher that dies silently would freeze the capture set
                self.log.error(f"interface watcher: cannot handle a netlink event ({err!r}); "
                               "re-reading the interface list")
                self._resync()

    def _resync(self) -> None:
        try:
            fresh = {i.index: i for i in self._enumerate(addresses=False)}
        except Exception as err:
            self.log.error(f"interface watcher: cannot list interfaces: {err!r}")
            return
        for index in list(self.known):
            if index not in fresh:
                self._gone(self.known.pop(index), "vanished (found missing when re-reading the list)")
        for index, iface in fresh.items():
            old = self.known.get(index)
            self.known[index] = iface
            if old is None:
                self._appeared(iface, "appeared")
            elif old.name != iface.name:
                self._renamed(old, iface)
        self._reconcile("after re-reading the interface list")

    def _reconcile(self, when: str) -> None:
        """Bring `captured` in line with `known` (used at start and after lost events)."""
        for index in list(self.captured):
            if index not in self.known:
                self._drop(self.captured[index], f"vanished ({when})")
        if self.hotplug:
            for iface in self.known.values():
                if iface.index not in self.captured:
                    v = self.selector.judge(iface)
                    if v.selected:
                        self._add(iface, f"present {when}: selected ({v.reason})")

    # -- events ---------------------------------------------------------------------------
    def _event(self, msg) -> None:
        kind = msg["header"]["type"]
        if kind == RTM_DELLINK:
            iface = self.known.pop(msg["index"], None) or from_link(msg)
            moved = msg.get_attr("IFLA_NEW_NETNSID") is not None
            self._gone(iface, "moved to another network namespace" if moved else "deleted")
        elif kind == RTM_NEWLINK:
            iface = from_link(msg)
            old = self.known.get(iface.index)
            self.known[iface.index] = iface
            if old is None:
                self._appeared(iface, "appeared")
            elif old.name != iface.name:
                self._renamed(old, iface)
            elif old.up != iface.up and iface.index in self.captured:
                self.captured[iface.index] = iface
                self.log(L.BASIC, f"interface {iface.name} index={iface.index} is {'up' if iface.up else 'down'} "
                                  f"(still captured{'' if iface.up else ': nothing arrives until it is up'})")

    def _appeared(self, iface: Interface, what: str) -> None:
        v = self.selector.judge(iface)
        if iface.index in self.captured:
            return
        if not v.selected:
            self.log(L.BASIC, f"interface {iface.name} index={iface.index} {what}: not selected ({v.reason})")
        elif not self.hotplug:
            self.log(L.BASIC, f"interface {iface.name} index={iface.index} {what}: not captured "
                              f"(NETWORK_DEVICE_ANY=0: the set is fixed at start; it would be selected: {v.reason})")
        else:
            self._add(iface, f"{what}: selected ({v.reason})")

    def _renamed(self, old: Interface, new: Interface) -> None:
        v = self.selector.judge(new)
        what = f"renamed from {old.name}"
        if new.index in self.captured:
            if v.selected:
                self.captured[new.index] = new
                self._apply()
                self.log(L.BASIC, f"interface {new.name} index={new.index} {what}: still selected ({v.reason})")
            else:
                self._drop(new, f"{what}: no longer selected ({v.reason})")
        elif v.selected and self.hotplug:
            self._add(new, f"{what}: selected now ({v.reason})")
        elif v.selected:
            self.log(L.BASIC, f"interface {new.name} index={new.index} {what}: not captured "
                              f"(NETWORK_DEVICE_ANY=0: the set is fixed at start; it would be selected: {v.reason})")
        else:
            self.log(L.BASIC, f"interface {new.name} index={new.index} {what}: not selected ({v.reason})")

    def _gone(self, iface: Interface, why: str) -> None:
        if iface.index in self.captured:
            self._drop(self.captured[iface.index], why)
        else:
            self.log(L.BASIC, f"interface {iface.name} index={iface.index} {why} (was not captured)")

    # -- changes to the capture set ------------------------------------------------------------
    def _add(self, iface: Interface, why: str) -> None:
        self.captured[iface.index] = iface
        try:
            self._apply()
        except Exception as err:  # e.g. the filter program would exceed the kernel's 4096 instructions
            self.captured.pop(iface.index, None)
            self.log.error(f"interface {iface.name} index={iface.index} {why}: cannot capture it: {err}")
            return
        self.log(L.BASIC, f"interface {iface.name} index={iface.index} {why}: capturing "
                          f"({len(self.captured)} interfaces)")

    def _drop(self, iface: Interface, why: str) -> None:
        self.captured.pop(iface.index, None)
        self._apply()
        self.log(L.BASIC, f"interface {iface.name} index={iface.index} {why}: no longer captured "
                          f"({len(self.captured)} interfaces)")
        if not self.captured:
            self.log.warning("no interface is captured now" + (
                "; waiting for a selected interface to appear" if self.hotplug
                else " (NETWORK_DEVICE_ANY=0: none will be added; restart the sensor or set NETWORK_DEVICE_ANY=1)"))

    def _apply(self) -> None:
        self.changes += 1
        self.last_change = time.monotonic()
        self.capture.set_interfaces(sorted(self.captured.values(), key=lambda i: i.index))
