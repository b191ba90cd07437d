"""The enforcer thread: turns hits (packets of blocked flows, found in C) into TCP resets.

The reader thread only queues hits (bounded; overflow counted). This thread parses each hit's
headers, builds a reset for each end (rst.py) and sends it:

* to the end **beyond the interface** where the packet was seen - the sender of a received packet,
  the receiver of a sent one (PACKET_OUTGOING), both ends of a packet seen promiscuously
  (PACKET_OTHERHOST, e.g. a mirror port) - as a frame on that interface (AF_PACKET SOCK_RAW,
  sendto on its ifindex; MAC addresses from the seen frame);
* to the end **on this side** (this host, or reached through its routing: a veth peer, a routed
  namespace) through the host's IP stack with a raw IP socket (IPPROTO_RAW): a frame sent out of an
  interface never reaches the stack behind that same interface.

The same reset is not sent twice within RESEND_S (a burst of packets of one flow asks for the same
one); a flow that keeps sending gets new resets with new sequence numbers.
"""

from __future__ import annotations

import ipaddress
import queue
import socket
import threading
import time
from collections import OrderedDict

from ossensor.ops import log as L
from ossensor.antigena import rst
from ossensor.antigena.book import Book

PACKET_OTHERHOST, PACKET_OUTGOING = 3, 4
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
RESEND_S = 0.2
QUEUE_MAX = 4096


class Enforcer:
    def __init__(self, book: Book, log: L.Log):
        self.book = book
        self.log = log
        self.q: queue.Queue = queue.Queue(QUEUE_MAX)
        self.queue_overflow = 0
        self.not_tcp = 0
        self.stale = 0
        self._pkt = self._raw4 = self._raw6 = None
        self._names: dict[int, tuple[str, float]] = {}
        self._recent: OrderedDict[bytes, float] = OrderedDict()
        self._last_log: dict[str, float] = {}

    def open(self) -> None:
        """Open the injection sockets (needs CAP_NET_RAW). Raises OSError."""
        try:
            # protocol 0: this socket only sends, the kernel never queues received packets on it
            self._pkt = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            self._raw4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            try:
                self._raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
            except OSError as err:  # a host without IPv6
                self.log.warning(f"antigena: no IPv6 raw socket ({err.strerror}): IPv6 resets go out "
                                 "on the capture interface only")
        except OSError:
            self.close()
            raise

    def close(self) -> None:
        for s in (self._pkt, self._raw4, self._raw6):
            if s is not None:
                s.close()
        self._pkt = self._raw4 = self._raw6 = None

    # -- reader thread -------------------------------------------------------------------
    def offer(self, hits: list) -> None:
        for h in hits:
            try:
                self.q.put_nowait(h)
            except queue.Full:
                self.queue_overflow += 1

    # -- enforcer thread ------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                hit = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.handle(*hit)
            except Exception as err:  # noqa: BLE001 - one bad hit must not stop enforcement
                self.log.error(f"antigena: cannot handle a hit: {type(err).__name__}: {err}")

    def _ifname(self, ifindex: int) -> str | None:
        name, when = self._names.get(ifindex, (None, 0.0))
        if name is None or time.monotonic() - when > 5:
            try:
                name = socket.if_indextoname(ifindex)
            except OSError:
                return None
            self._names[ifindex] = (name, time.monotonic())
        return name

    def handle(self, rule_id: int, ifindex: int, linktype: int, pkttype: int, data: bytes) -> None:
        entry = self.book.entry_for_rule(rule_id)
        if entry is None:  # the action expired after the packet was matched
            self.stale += 1
            return
        try:
            seen = rst.parse(linktype, data)
        except rst.NotTCP:
            self.not_tcp += 1
            return
        to_sender, to_receiver = rst.resets(seen)
        if pkttype == PACKET_OTHERHOST:
            plan = [(to_sender, True), (to_receiver, True)]
        elif pkttype == PACKET_OUTGOING:
            plan = [(to_receiver, True), (to_sender, False)]
        else:
            plan = [(to_sender, True), (to_receiver, False)]
        sent = errors = 0
        error = ""
        now = time.monotonic()
        for reset, on_link in plan:
            if now - self._recent.get(reset.packet, -1e9) < RESEND_S:
                continue
            try:
                how = self._send_link(reset, ifindex) if on_link else self._send_routed(reset, ifindex)
                sent += 1
                self._remember(reset.packet, now)
                if self.log.enabled(L.ANTIGENA) and now - self._last_log.get(entry.id, -1e9) >= 1.0:
                    self._last_log[entry.id] = now
                    self.log(L.ANTIGENA, f"antigena enforced id={entry.id} flow={seen.flow()} "
                                         f"reset to {reset.to} seq={int.from_bytes(reset.packet[-16:-12], 'big')} "
                                         f"via {how}")
            except OSError as err:
                errors += 1
                error = f"cannot send a reset to the {reset.to} ({seen.flow()}): {err.strerror or err}"
        if errors and not sent and now - self._last_log.get("!" + str(entry.id), -1e9) >= 10.0:
            self._last_log["!" + str(entry.id)] = now  # at most every 10 s per action
            self.log.error(f"antigena id={entry.id}: {error}")
        self.book.record(entry, 1, sent, errors, error)
        if len(self._last_log) > 4096:
            self._last_log.clear()

    def _remember(self, packet: bytes, now: float) -> None:
        self._recent[packet] = now
        self._recent.move_to_end(packet)
        while len(self._recent) > 4096 or (self._recent and now - next(iter(self._recent.values())) > RESEND_S):
            self._recent.popitem(last=False)

    def _send_link(self, reset: rst.Reset, ifindex: int) -> str:
        name = self._ifname(ifindex)
        if name is None:
            raise OSError(19, f"interface index {ifindex} is gone")
        proto = ETH_P_IP if reset.family == 4 else ETH_P_IPV6
        self._pkt.sendto(reset.frame(), (name, proto))
        return f"{name} (link)"

    def _send_routed(self, reset: rst.Reset, ifindex: int) -> str:
        dst = ipaddress.ip_address(reset.dst)
        if reset.family == 4:
            self._raw4.sendto(reset.packet, (str(dst), 0))
        else:
            if self._raw6 is None:
                raise OSError(97, "no IPv6 raw socket")
            scope = ifindex if dst.is_link_local else 0
            self._raw6.sendto(reset.packet, (str(dst), 0, 0, scope))
        return "ip stack (routed)"
