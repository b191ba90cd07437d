"""Accepted by the vSensor => the stored file reads in `tcpdump -r` and `tshark -r`, same packet count.

Hypothesis builds batches block by block with odd but plausible contents (link types, snapshot lengths,
time resolutions and offsets, SHB versions, options of every kind in every block type, some of them
wrong: lengths that overrun their block, repeated or mis-sized if_tsresol/if_tsoffset, data after the
end of options; captured lengths above the snapshot length), sometimes mutated byte-wise as well. Each
example feeds one to three batches of one sensor boot through the vSensor's own acceptance path
(store.parse_batch, then Store.append: the grouping into files and appending, exactly what the server
runs after the signature checks) and then reads every file written with the real tcpdump and tshark:
both must read it without error and count exactly the packets of the accepted batches.

Bounded: READERS_EXAMPLES examples (default 60, ~0.5 s each: two tool runs per file;
~half the batches drawn are accepted). The default run draws the same examples every time (CI stays
deterministic); READERS_RANDOM=1 draws new ones.
"""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from ossensor import pcapng
from ossensor.pcapng import PcapngError
from ossensor.vsensor import store as store_mod

from mutations import mutate, mutations

pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(not (shutil.which("tcpdump") and shutil.which("tshark")),
                                 reason="tcpdump and tshark needed")]
EXAMPLES = int(os.environ.get("READERS_EXAMPLES", "60"))


def _opt(code: int, value: bytes, length: int | None = None) -> bytes:
    n = len(value) if length is None else length
    return struct.pack("<HH", code, n) + value + b"\0" * ((4 - len(value) % 4) % 4)


@st.composite
def options(draw, kind: str) -> bytes:
    """An options area for a block of `kind`: valid options of many kinds, and now and then (1 block in
    25) one wrong in a way readers mind."""
    parts = []
    seen = set()
    for _ in range(draw(st.integers(0, 4))):
        choice = draw(st.integers(0, 4))
        if choice <= 1:     # a comment or other string option (UTF-8 or not)
            codes = [1, 3] if kind == "epb" else [1, 2, 3, 4]  # EPB: comment, hash (2 and 4 are numbers)
            parts.append(_opt(draw(st.sampled_from(codes)), draw(st.binary(max_size=12))))
        elif choice == 2 and kind == "epb":  # flags, queue (4 bytes), drop count, packet id (8), verdict
            code = draw(st.sampled_from([2, 4, 5, 6, 7]))
            if code == 7:
                vtype = draw(st.integers(0, 3))
                parts.append(_opt(7, bytes([vtype]) + draw(st.binary(min_size=8 if vtype in (1, 2) else 0,
                                                                     max_size=8))))
            else:
                parts.append(_opt(code, draw(st.binary(min_size=4 if code in (2, 6) else 8,
                                                       max_size=4 if code in (2, 6) else 8))))
        elif choice == 2:   # a 64-bit counter / timestamp / address
            parts.append(_opt(draw(st.integers(2, 8)), draw(st.binary(min_size=8, max_size=8))))
        elif choice == 3 and kind == "idb":  # if_tsresol (once), if_tsoffset (once)
            code = draw(st.sampled_from([9, 14]))
            if code not in seen:
                seen.add(code)
                parts.append(_opt(9, bytes([draw(st.sampled_from([6, 9, 0, 3, 19, 0x80 | 20, 0x80 | 63]))]))
                             if code == 9 else _opt(14, struct.pack("<q", draw(st.integers(-5, 5)))))
        elif choice == 3:   # an unknown option code
            code = draw(st.integers(10, 0xFFFF))
            value = draw(st.binary(max_size=8))
            if code in store_mod.CUSTOM_OPTIONS:  # a Private Enterprise Number first
                value = struct.pack("<I", 32473) + value
            parts.append(_opt(code, value))
        elif choice == 4 and draw(st.integers(0, 3)) == 0:  # a custom option
            parts.append(_opt(draw(st.sampled_from(store_mod.CUSTOM_OPTIONS)),
                              struct.pack("<I", 32473) + draw(st.binary(max_size=8))))
    if draw(st.integers(0, 24)) == 0:
        bad = draw(st.integers(0, 4))
        if bad == 0:        # a length that overruns what follows
            parts.append(struct.pack("<HH", draw(st.integers(1, 20)), draw(st.integers(5, 400))))
        elif bad == 1:      # an end-of-options with a length, or data after it
            parts.append(struct.pack("<HH", 0, 4) + b"\0" * 4 if draw(st.booleans())
                         else struct.pack("<HH", 0, 0) + _opt(1, b"late"))
        elif bad == 2:      # a second or mis-sized if_tsresol / if_tsoffset (harmless outside an IDB)
            parts += [_opt(9, b"\x06"), _opt(9, b"\x09")] if draw(st.booleans()) else [_opt(14, b"\0" * 4)]
        elif bad == 3:      # a resolution too fine for libpcap
            parts.append(_opt(9, bytes([draw(st.sampled_from([20, 0x80 | 64, 0xFF]))])))
        else:               # an option header cut short by the trailer is impossible (4-byte units): a long one
            parts.append(_opt(1, b"x" * draw(st.integers(100, 300)), draw(st.integers(301, 0xFFFF))))
    if parts or draw(st.booleans()):
        parts.append(struct.pack("<HH", 0, 0))
    return b"".join(parts)


@st.composite
def batch(draw) -> bytes:
    shb_fixed = struct.pack("<IHHq", pcapng.BYTE_ORDER_MAGIC, 1, draw(st.sampled_from([0] * 10 + [2, 1])),
                            draw(st.sampled_from([-1, 0, 1000])))
    blocks = [pcapng._block(pcapng.BT_SHB, shb_fixed + draw(options("shb")))]
    nifs = draw(st.integers(1, 3))
    for _ in range(nifs):
        linktype = draw(st.sampled_from([1, 1, 101, 113, 147]))
        snaplen = draw(st.sampled_from([0, 64, 65535, 262144, 300000]))
        blocks.append(pcapng._block(pcapng.BT_IDB, struct.pack("<HHI", linktype, 0, snaplen) + draw(options("idb"))))
    for k in range(draw(st.integers(0, 12))):
        if_id = draw(st.integers(0, nifs - 1 if draw(st.integers(0, 20)) else nifs))
        data = draw(st.binary(max_size=120))
        caplen = len(data)
        body = struct.pack("<IIIII", if_id, 0x17A2BC44, k * 1000, caplen, caplen + draw(st.integers(0, 3)))
        body += data + b"\0" * ((4 - caplen % 4) % 4) + draw(options("epb"))
        blocks.append(pcapng._block(pcapng.BT_EPB, body))
    for i in range(draw(st.integers(0, nifs))):
        blocks.append(pcapng._block(pcapng.BT_ISB, struct.pack("<III", i, 0x17A2BC44, 1) + draw(options("isb"))))
    out = b"".join(blocks)
    if draw(st.integers(0, 7)) == 0:
        out = mutate(out, draw(st.lists(mutations([0, 1, 4, 8, 9, 14, 0xFFFF, 0x10000], max_pos=1 << 10,
                                                  dup_max=32), min_size=1, max_size=2)))
    return out


def read_count(tool: str, path: Path) -> int:
    """Packets `tool` reads from `path`; fails the test if it reports an error."""
    if tool == "tcpdump":
        run = subprocess.run(["tcpdump", "-r", str(path), "--count"], capture_output=True, text=True, timeout=60)
        out = run.stdout.strip()
        assert run.returncode == 0 and "pcap_loop" not in run.stderr, (path, run.stderr)
        assert out.endswith("packets") or out.endswith("packet"), (path, out, run.stderr)
        return int(out.split()[0])
    run = subprocess.run(["tshark", "-n", "-r", str(path), "-T", "fields", "-e", "frame.number"],
                         capture_output=True, text=True, timeout=60)
    errors = [ln for ln in run.stderr.splitlines() if ln.strip() and "Running as user" not in ln]
    assert run.returncode == 0 and not errors, (path, run.returncode, run.stderr)
    return len(run.stdout.split())


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=os.environ.get("READERS_RANDOM") is None)
@given(bodies=st.lists(batch(), min_size=1, max_size=3))
def test_accepted_batches_read_in_tcpdump_and_tshark(tmp_path_factory, bodies):
    out = tmp_path_factory.mktemp("readers")
    store = store_mod.Store(out)
    accepted = 0
    try:
        for seq, body in enumerate(bodies, 1):
            try:
                parsed = store_mod.parse_batch(body)
            except PcapngError:
                continue
            store.append("s", "b", seq, parsed, sent=0, wire_bytes=len(body), encoding="identity")
            accepted += parsed.packets
    finally:
        store.close()
    files = sorted(out.glob("*.pcapng"))
    event(f"files written: {min(len(files), 3)}; packets stored: {'0' if not accepted else '1-9' if accepted < 10 else '10+'}")
    for tool in ("tcpdump", "tshark"):
        assert sum(read_count(tool, f) for f in files) == accepted, (tool, [f.name for f in files])


def test_the_issues_idb_is_refused_and_a_good_batch_reads(tmp_path):
    """The issue's case (an IDB option overrunning its block: 200 and a file tcpdump refuses) now refused;
    a batch as the sensor writes it reads in both tools."""
    bad = pcapng.shb() + pcapng._block(pcapng.BT_IDB, struct.pack("<HHI", 1, 0, 65535) + _opt(2, b"eth0", 40)) \
        + pcapng.epb(0, 1, b"x" * 60)
    with pytest.raises(PcapngError, match="option 2 \\(length 40\\) overruns the block"):
        store_mod.parse_batch(bad)
    good = pcapng.shb() + pcapng.idb("eth0", 1, 262144) + b"".join(pcapng.epb(0, i, b"y" * 60) for i in range(5)) \
        + pcapng.isb(0, 9, ifrecv=5, comment="c" * 70000)
    store = store_mod.Store(tmp_path)
    store.append("s", "b", 1, store_mod.parse_batch(good), sent=0, wire_bytes=len(good), encoding="identity")
    store.close()
    (f,) = tmp_path.glob("*.pcapng")
    assert read_count("tcpdump", f) == 5 and read_count("tshark", f) == 5


@pytest.mark.parametrize("linktype", [101, 100, 1])
def test_two_interfaces_of_a_link_type_libpcap_renumbers_read_in_tcpdump(tmp_path, linktype):
    """libpcap (1.10.x) compares each IDB after the first with the first one's DLT, not its link type: two
    LINKTYPE_RAW (101 -> DLT 12) interfaces in one file make tcpdump refuse it ("an interface has a type
    101 different from the type of the first interface"). Found by the property test above: such
    interfaces get a file each; others (Ethernet) still share one."""
    pkt = b"\x45" + b"\0" * 59
    body = pcapng.shb() + pcapng.idb("tun0", linktype, 65535) + pcapng.idb("tun1", linktype, 65535) \
        + b"".join(pcapng.epb(i % 2, i, pkt) for i in range(7))
    store = store_mod.Store(tmp_path)
    for seq in (1, 2):  # a second batch appends to the same files
        store.append("s", "b", seq, store_mod.parse_batch(body), sent=0, wire_bytes=len(body), encoding="identity")
    store.close()
    files = sorted(tmp_path.glob("*.pcapng"))
    assert len(files) == (1 if linktype == 1 else 2)
    for tool in ("tcpdump", "tshark"):
        assert sorted(read_count(tool, f) for f in files) == ([14] if linktype == 1 else [6, 8]), tool
