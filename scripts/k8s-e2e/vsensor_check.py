"""What the reference vSensor stored during the e2e run, as one JSON line: for each marker payload given on
the command line, how many stored packets carry it and on which interfaces; and how many stored packets are
the sensor's own (TCP to or from the vSensor's address and port), which must be none.

usage: python3 vsensor_check.py OUT_DIR VSENSOR_IP VSENSOR_PORT MARKER...
"""
import ipaddress
import json
import struct
import sys
from pathlib import Path

from ossensor import pcapng


def ipv4_tcp_ports(frame: bytes):
    """(src, dst, sport, dport) of an Ethernet/IPv4/TCP frame (one 802.1Q tag allowed), else None."""
    off = 12
    etype = struct.unpack_from("!H", frame, off)[0] if len(frame) >= 14 else 0
    if etype == 0x8100 and len(frame) >= 18:
        off += 4
        etype = struct.unpack_from("!H", frame, off)[0]
    off += 2
    if etype != 0x0800 or len(frame) < off + 20 or frame[off + 9] != 6:
        return None
    ihl = (frame[off] & 0x0F) * 4
    if len(frame) < off + ihl + 4:
        return None
    src, dst = (str(ipaddress.IPv4Address(frame[off + 12:off + 16])), str(ipaddress.IPv4Address(frame[off + 16:off + 20])))
    sport, dport = struct.unpack_from("!HH", frame, off + ihl)
    return src, dst, sport, dport


def main(argv: list[str]) -> int:
    out, vs_ip, vs_port, markers = Path(argv[1]), argv[2], int(argv[3]), [m.encode() for m in argv[4:]]
    found = {m.decode(): {"packets": 0, "interfaces": set()} for m in markers}
    total = own = 0
    for f in sorted(out.glob("*.pcapng")):
        for sec in pcapng.read_sections(f.read_bytes()):
            for p in sec.packets:
                total += 1
                t = ipv4_tcp_ports(p.data)
                if t and ((t[0] == vs_ip and t[2] == vs_port) or (t[1] == vs_ip and t[3] == vs_port)):
                    own += 1
                for m in markers:
                    if m in p.data:
                        found[m.decode()]["packets"] += 1
                        found[m.decode()]["interfaces"].add(sec.interfaces[p.if_id].name)
    print(json.dumps({"packets": total, "own": own,
                      "markers": {k: {"packets": v["packets"], "interfaces": sorted(v["interfaces"])}
                                  for k, v in found.items()}}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
