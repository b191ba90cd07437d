"""TCP resets built from a packet just seen (the headers the C matcher handed over).

For a seen TCP packet S (src -> dst, seq, ack, payload length n):

* to S's **sender**: src/dst swapped, ``seq = S.ack`` (what the sender expects next from its peer;
  0 when S carries no ACK, e.g. a SYN), ``ack = S.seq + n (+1 for SYN, +1 for FIN)``, flags RST+ACK
  (a SYN_SENT socket only accepts a reset that acknowledges its SYN);
* to S's **receiver**: same direction as S, ``seq = S.seq + n (+1 SYN/FIN)`` (exactly the receiver's
  next expected sequence number once it has S), ``ack = S.ack``, flags RST(+ACK if S had one).

Linux (RFC 5961) accepts a reset only when its seq is exactly the next expected one; resets are sent
again for each new packet of the flow, so a flow that keeps talking is reset at its next packet.

Link layer: for an Ethernet frame the MAC addresses (and 802.1Q tags) come from the seen frame:
swapped for the frame that goes back where S came from, kept for the one that follows S.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass

LINKTYPE_ETHERNET, LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6 = 1, 101, 228, 229
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10
ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD


class NotTCP(ValueError):
    pass


@dataclass(frozen=True)
class Seen:
    """The headers of a seen TCP packet."""
    family: int               # 4 or 6
    src: bytes
    dst: bytes
    sport: int
    dport: int
    seq: int
    ack: int
    flags: int
    payload: int              # TCP payload length (from the IP lengths, not the captured bytes)
    eth_dst: bytes | None = None  # Ethernet only
    eth_src: bytes | None = None
    tags: bytes = b""         # 802.1Q/802.1ad tags as on the wire (4 bytes each)

    @property
    def next_seq(self) -> int:
        """The sequence number that follows this segment."""
        return (self.seq + self.payload + (1 if self.flags & SYN else 0) + (1 if self.flags & FIN else 0)) & 0xFFFFFFFF

    def flow(self) -> str:
        a, b = ipaddress.ip_address(self.src), ipaddress.ip_address(self.dst)
        return f"{a}:{self.sport} -> {b}:{self.dport}"


def parse(linktype: int, frame: bytes) -> Seen:
    """Parse link, IP and TCP headers. Raises NotTCP when the frame is not a TCP segment we can reset."""
    off, eth_dst, eth_src, tags = 0, None, None, b""
    if linktype == LINKTYPE_ETHERNET:
        if len(frame) < 14:
            raise NotTCP("short Ethernet frame")
        eth_dst, eth_src = frame[0:6], frame[6:12]
        et = int.from_bytes(frame[12:14], "big")
        off = 14
        while et in (0x8100, 0x88A8) and off + 4 <= len(frame) and len(tags) < 8:
            tags += frame[off - 2:off + 2]
            et = int.from_bytes(frame[off + 2:off + 4], "big")
            off += 4
    elif linktype in (LINKTYPE_RAW, LINKTYPE_IPV4, LINKTYPE_IPV6):
        if not frame:
            raise NotTCP("empty packet")
        et = {4: ETH_P_IP, 6: ETH_P_IPV6}.get(frame[0] >> 4, 0)
    else:
        raise NotTCP(f"link type {linktype} not supported")
    if et == ETH_P_IP:
        if len(frame) < off + 20 or frame[off] >> 4 != 4:
            raise NotTCP("short IPv4 header")
        ihl = (frame[off] & 15) * 4
        total = int.from_bytes(frame[off + 2:off + 4], "big")
        if frame[off + 9] != 6:
            raise NotTCP("not TCP")
        if int.from_bytes(frame[off + 6:off + 8], "big") & 0x1FFF:
            raise NotTCP("a later fragment")
        family, src, dst = 4, frame[off + 12:off + 16], frame[off + 16:off + 20]
        l4, ip_end = off + ihl, off + total
    elif et == ETH_P_IPV6:
        if len(frame) < off + 40 or frame[off] >> 4 != 6:
            raise NotTCP("short IPv6 header")
        family, src, dst = 6, frame[off + 8:off + 24], frame[off + 24:off + 40]
        nh, l4 = frame[off + 6], off + 40
        ip_end = l4 + int.from_bytes(frame[off + 4:off + 6], "big")
        for _ in range(4):
            if nh in (0, 43, 60, 44) and len(frame) >= l4 + 8:
                if nh == 44 and int.from_bytes(frame[l4 + 2:l4 + 4], "big") & 0xFFF8:
                    raise NotTCP("a later fragment")
                nh, l4 = frame[l4], l4 + (8 if nh == 44 else (frame[l4 + 1] + 1) * 8)
            else:
                break
        if nh != 6:
            raise NotTCP("not TCP")
    else:
        raise NotTCP("not IP")
    if len(frame) < l4 + 20:
        raise NotTCP("short TCP header")
    sport, dport, seq, ack, offres, flags = struct.unpack_from("!HHIIBB", frame, l4)
    payload = max(0, ip_end - l4 - (offres >> 4) * 4)
    return Seen(family, bytes(src), bytes(dst), sport, dport, seq, ack, flags, payload, eth_dst, eth_src, tags)


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ip_tcp(family: int, src: bytes, dst: bytes, sport: int, dport: int, seq: int, ack: int, flags: int) -> bytes:
    """An IPv4/IPv6 packet carrying a bare 20-byte TCP header (no options, no payload), checksummed."""
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq & 0xFFFFFFFF, ack & 0xFFFFFFFF, 5 << 4, flags, 0, 0, 0)
    if family == 4:
        pseudo = src + dst + struct.pack("!BBH", 0, 6, len(tcp))
        tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, 6, 0, src, dst)
        return ip[:10] + struct.pack("!H", _csum(ip)) + ip[12:] + tcp
    pseudo = src + dst + struct.pack("!I3xB", len(tcp), 6)
    tcp = tcp[:16] + struct.pack("!H", _csum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(tcp), 6, 64, src, dst)
    return ip + tcp


@dataclass(frozen=True)
class Reset:
    to: str          # "sender" | "receiver" (of the seen packet)
    family: int
    dst: bytes       # IP destination (for a routed send)
    packet: bytes    # IP packet
    eth_dst: bytes | None
    eth_src: bytes | None
    tags: bytes

    def frame(self) -> bytes:
        """The frame for an AF_PACKET send: Ethernet header + tags + packet, or the bare packet."""
        if self.eth_dst is None:
            return self.packet
        et = ETH_P_IP if self.family == 4 else ETH_P_IPV6
        return self.eth_dst + self.eth_src + self.tags + et.to_bytes(2, "big") + self.packet


def resets(seen: Seen) -> tuple[Reset, Reset]:
    """(reset to the sender, reset to the receiver) of the seen packet."""
    to_sender = ip_tcp(seen.family, seen.dst, seen.src, seen.dport, seen.sport,
                       seen.ack if seen.flags & ACK else 0, seen.next_seq, RST | ACK)
    to_receiver = ip_tcp(seen.family, seen.src, seen.dst, seen.sport, seen.dport,
                         seen.next_seq, seen.ack if seen.flags & ACK else 0, RST | (seen.flags & ACK))
    return (Reset("sender", seen.family, seen.src, to_sender, seen.eth_src, seen.eth_dst, seen.tags),
            Reset("receiver", seen.family, seen.dst, to_receiver, seen.eth_dst, seen.eth_src, seen.tags))
