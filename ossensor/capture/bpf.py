"""The kernel filter: interface selection, own-traffic exclusion, and the user's BPF.

One socket is bound to every interface, so the program attached to it first
selects interfaces by index (ancillary load SKF_AD_IFINDEX) and then runs the
user's filter compiled by libpcap (pcapcompile.py) for that interface's link type.
libpcap's jumps are relative, so its programs can be placed after our prefix
unchanged. Conditional jumps only reach 255 instructions ahead; longer hops go
through an unconditional `ja`.
"""

from __future__ import annotations

import ipaddress

from ossensor.capture import pcapcompile
from ossensor.capture.pcapcompile import Insn

# classic BPF opcodes (linux/filter.h)
BPF_LD_W_ABS = 0x20
BPF_JMP_JA = 0x05
BPF_JMP_JEQ_K = 0x15
BPF_RET_K = 0x06
SKF_AD_OFF = -0x1000
SKF_AD_IFINDEX = 8
MAX_INSNS = 4096
LINKTYPE_TO_DLT = {101: 12}  # LINKTYPE_RAW -> DLT_RAW


class FilterError(ValueError):
    pass


def compile_expr(expr: str, linktype: int, snaplen: int, live: bool = False) -> list[Insn]:
    """libpcap's program for `expr` on a link type; the accept return value is the snaplen.

    live=True: for a Linux packet socket, where 802.1Q tags arrive out of band (see
    pcapcompile.py); files (replay) keep tags inline and use live=False, as `tcpdump -r` does."""
    try:
        if live and linktype == 1:
            prog = pcapcompile.compile_ethernet_live(expr, snaplen)
            if prog is not None:
                return prog
        # libpcap wants a DLT_ value: they equal the LINKTYPE_ values except raw IP (101 -> DLT_RAW 12)
        return pcapcompile.compile_dead(expr, LINKTYPE_TO_DLT.get(linktype, linktype), snaplen)
    except (ValueError, OSError) as err:  # libpcap's message
        raise FilterError(str(err)) from None


def combine(exclusion: str, user: str) -> str:
    """`(not <own traffic>) and (user)`: the sensor never captures its own shipping."""
    parts = [f"(not ({exclusion}))" if exclusion else "", f"({user})" if user.strip() else ""]
    return " and ".join(p for p in parts if p)


def own_traffic(endpoints: list[tuple[str, int]]) -> str:
    """A libpcap expression for TCP to/from each (address, port) the sensor talks to."""
    terms = []
    for addr, port in endpoints:
        ip = ipaddress.ip_address(addr)
        host = f"ip6 host {ip}" if ip.version == 6 else f"host {ip}"
        terms.append(f"({host} and tcp port {port})")
    return " or ".join(dict.fromkeys(terms))


def build_program(groups: list[tuple[list[int], list[Insn]]]) -> list[Insn]:
    """One program for the whole socket.

    groups: [(ifindexes, program for their link type)]. Layout:
        0: ld ifindex
        for each ifindex i of group g:  jeq #i, -> tramp[g], next
        ret #0                                  (interface not selected)
        tramp[g]: ja -> body[g]                 (one per group: reach any distance)
        body[0] ... body[n-1]                   (libpcap programs, unchanged)
    Each jeq is at most (n_ifindexes + n_groups) instructions from its trampoline,
    so past ~250 interfaces the jeqs are chained through extra `ja` stepping stones.
    """
    if not any(ix for ix, _ in groups):
        return [(BPF_RET_K, 0, 0, 0)]
    checks = [(ifindex, g) for g, (ixs, _) in enumerate(groups) for ifindex in ixs]
    # Lay out the checks in chunks so every conditional jump fits in 8 bits: after each
    # chunk of checks comes a local copy of the trampolines (ja's) for all groups.
    ng = len(groups)
    chunk = max(1, 250 - ng)
    prog: list[Insn] = [(BPF_LD_W_ABS, 0, 0, (SKF_AD_OFF + SKF_AD_IFINDEX) & 0xFFFFFFFF)]
    patch_ja: list[tuple[int, int]] = []  # (index of ja, group) to patch with body offsets
    for start in range(0, len(checks), chunk):
        part = checks[start:start + chunk]
        last_chunk = start + chunk >= len(checks)
        base = len(prog)
        # after the jeqs: either ret #0 (last chunk) or a ja over this chunk's trampolines
        after = base + len(part)
        tramp0 = after + 1
        for k, (ifindex, g) in enumerate(part):
            here = base + k
            prog.append((BPF_JMP_JEQ_K, tramp0 + g - (here + 1), 0, ifindex))
        if last_chunk:
            prog.append((BPF_RET_K, 0, 0, 0))
        else:
            prog.append((BPF_JMP_JA, 0, 0, ng))  # skip this chunk's trampolines, next chunk
        for g in range(ng):
            patch_ja.append((len(prog), g))
            prog.append((BPF_JMP_JA, 0, 0, 0))
    bodies = []
    for _, body in groups:
        bodies.append(len(prog))
        prog.extend(body)
    for idx, g in patch_ja:
        prog[idx] = (BPF_JMP_JA, 0, 0, bodies[g] - (idx + 1))
    if len(prog) > MAX_INSNS:
        raise FilterError(f"filter program too long ({len(prog)} instructions, kernel limit {MAX_INSNS}); "
                          "shorten BPF or select fewer interfaces")
    return prog
