"""The vSensor's C walk over a received section (native/pcapng_scan.c) against the pure-Python reference.

parse_batch (C scan + Python for SHB/IDB/ISB) must give exactly what parse_batch_py gives, result or
error (offset and reason), on valid batches and on random and mutated ones (hypothesis); split must
give what split_py gives; a Store fed by either writes the same bytes. The C module runs in-process (a
memory error would kill pytest itself); test_fuzz_under_asan runs this file again with the module built
with AddressSanitizer.

PCAPNGSCAN_SO=path loads the module from that file instead of ossensor._pcapngscan (the ASan run).
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ossensor import pcapng
from ossensor.pcapng import PcapngError
from ossensor.vsensor import store as store_mod

import asan
from mutations import mutate, mutations

pytestmark = pytest.mark.timeout(300)
EXAMPLES = int(os.environ.get("PCAPNGSCAN_EXAMPLES", "400"))
scan_mod = asan.load("PCAPNGSCAN_SO", "ossensor._pcapngscan")


@pytest.fixture(autouse=True)
def _use_loaded_module(monkeypatch):
    monkeypatch.setattr(store_mod, "_scan", scan_mod)


ETH = bytes.fromhex("020000000002020000000001" "0800" "4500001c000100004001f6dcc0000201c0000202" "0800f7ff00000000")


def make_batch(ifaces, packets, isb=True, extra_idb_at=None) -> bytes:
    """ifaces: [(name, linktype)]; packets: [(if_id, length)]."""
    parts = [pcapng.shb()] + [pcapng.idb(n, lt, 65535) for n, lt in ifaces]
    for k, (if_id, length) in enumerate(packets):
        if extra_idb_at == k:
            parts.append(pcapng.idb("late0", 1, 65535))
        parts.append(pcapng.epb(if_id, 1_700_000_000 * 10**9 + k, (ETH * (length // len(ETH) + 1))[:length]))
    if isb:
        parts += [pcapng.isb(i, 1_700_000_001 * 10**9, ifrecv=len(packets), ifdrop=i, usrdeliv=3,
                             comment="c" if i == 0 else None) for i in range(len(ifaces))]
    return b"".join(parts)


SEEDS = [
    make_batch([("eth0", 1)], [(0, 60), (0, 1), (0, 0), (0, 1514)]),
    make_batch([("eth0", 1), ("tun0", 101), ("eth1", 1)], [(i % 3, 40 + i) for i in range(9)]),
    make_batch([("a", 1), ("b", 1)], [(i % 2, 64) for i in range(6)], extra_idb_at=3),
    pcapng.shb() + pcapng.idb("x", 1, 100) + pcapng.isb(0, 5) + pcapng.epb(0, 1, b"abc") + pcapng.isb(0, 6),
    pcapng.shb(),
]

INTERESTING = [0, 1, 3, 4, 5, 6, 11, 12, 13, 16, 20, 24, 28, 31, 32, 33, 0x7F, 0xFF, 0xFFFF, 0x10000,
               0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFC, 0xFFFFFFFF, 0x0A0D0D0A, 0x1A2B3C4D, 0x4D3C2B1A]

mutation = mutations(INTERESTING, max_pos=1 << 16, dup_max=128)


def outcome(parse, data):
    try:
        b = parse(data)
    except PcapngError as err:
        return ("error", err.offset, err.reason, str(err))
    return ("ok", b.packets, b.heads, bytes(b.shb), [bytes(i) for i in b.idbs], b.groups, b.names, b.stats,
            b.size, [bytes(s) for s in b.epb_isb_slices()])


def same(data: bytes):
    ref = outcome(store_mod.parse_batch_py, data)
    got = outcome(store_mod.parse_batch, data)
    assert got == ref
    for kind in (bytearray, memoryview):  # any buffer
        assert outcome(store_mod.parse_batch, kind(data)) == ref
    return ref


def test_valid_seeds_agree():
    for seed in SEEDS:
        ref = same(seed)
        assert ref[0] == "ok"
    ok = same(SEEDS[1])
    assert ok[1] == 9 and ok[6] == ["eth0", "tun0", "eth1"]
    assert ok[7][0] == {"if_id": 0, "if_name": "eth0", "ifrecv": 9, "ifdrop": 0, "usrdeliv": 3}


@pytest.mark.parametrize("data,offset,reason", [
    (b"", 0, "empty body"),
    (b"\x0a\x0d\x0d\x0a", 0, "truncated block header"),
    (pcapng.shb()[:8] + b"\x1a\x2b\x3c\x4d" + pcapng.shb()[12:], 0, "section is not little-endian"),
    (pcapng.shb() + struct.pack("<III", 6, 13, 13), len(pcapng.shb()), "bad block length 13"),
    (pcapng.shb() + struct.pack("<III", 6, 0xFFFFFFFC, 12), len(pcapng.shb()), "bad block length 4294967292"),
    (pcapng.shb() + struct.pack("<III", 6, 12, 16), len(pcapng.shb()), "block trailer length does not match"),
    (pcapng.shb() + struct.pack("<III", 6, 12, 12), len(pcapng.shb()), "Enhanced Packet Block too short"),
    (pcapng.shb() + pcapng.epb(0, 1, b"x"), len(pcapng.shb()), "packet refers to undeclared interface 0"),
    (pcapng.epb(0, 1, b"x"), 0, "packet refers to undeclared interface 0"),
    (pcapng.shb() + pcapng.idb("e", 1, 9) + pcapng.epb(0, 1, b"x")[:20] + struct.pack("<I", 0xFFFFFFFF)
     + pcapng.epb(0, 1, b"x")[24:], len(pcapng.shb() + pcapng.idb("e", 1, 9)), "captured length exceeds block"),
    (pcapng.shb() + pcapng.shb(), len(pcapng.shb()), "a batch must be one section (second Section Header Block)"),
    (pcapng.idb("e", 1, 9), 0, "body does not start with a Section Header Block"),
    (pcapng.shb() + pcapng.isb(0, 1), len(pcapng.shb()), "statistics refer to undeclared interface 0"),
    (pcapng.shb() + struct.pack("<III", 1, 12, 12), len(pcapng.shb()), "Interface Description Block too short"),
    (pcapng.shb() + struct.pack("<III", 5, 12, 12), len(pcapng.shb()), "Interface Statistics Block too short"),
    (pcapng.shb() + struct.pack("<III", 3, 12, 12), len(pcapng.shb()),
     "unsupported block type 0x00000003 (a batch holds IDB, EPB and ISB)"),
])
def test_each_malformation_same_error(data, offset, reason):
    ref = same(data)
    assert ref[:3] == ("error", offset, reason)


def raw_block(btype: int, fixed: bytes, opts: bytes) -> bytes:
    """A block with `opts` as its options area, verbatim (however wrong)."""
    return pcapng._block(btype, fixed + opts)


def opt(code: int, length: int, value: bytes = b"") -> bytes:
    return struct.pack("<HH", code, length) + value


SHB_FIXED = struct.pack("<IHHq", pcapng.BYTE_ORDER_MAGIC, 1, 0, -1)
IDB_FIXED = struct.pack("<HHI", 1, 0, 65535)
HEAD = pcapng.shb() + pcapng.idb("e", 1, 65535)
END = opt(0, 0)


@pytest.mark.parametrize("data,offset,reason", [
    # the case: an IDB option whose length overruns its block (tcpdump: "block of type 1 ... too short")
    (pcapng.shb() + raw_block(1, IDB_FIXED, opt(2, 40, b"eth0")), len(pcapng.shb()),
     "Interface Description Block: option 2 (length 40) overruns the block"),
    (raw_block(pcapng.BT_SHB, SHB_FIXED, opt(4, 9, b"ossensor")), 0,
     "Section Header Block: option 4 (length 9) overruns the block"),
    (HEAD + raw_block(5, struct.pack("<III", 0, 0, 1), opt(4, 8, b"\0" * 4)), len(HEAD),
     "Interface Statistics Block: option 4 (length 8) overruns the block"),
    (HEAD + raw_block(6, struct.pack("<IIIII", 0, 0, 1, 1, 1), b"x\0\0\0" + opt(2, 4)), len(HEAD),
     "Enhanced Packet Block: option 2 (length 4) overruns the block"),
    (HEAD + raw_block(6, struct.pack("<IIIII", 0, 0, 1, 1, 1), b"x\0\0\0" + opt(2, 4, b"\0" * 4) + END),
     None, None),  # valid: an EPB with epb_flags
    (pcapng.shb() + raw_block(1, IDB_FIXED, opt(0, 4, b"\0" * 4)), len(pcapng.shb()),
     "Interface Description Block: end-of-options option with length 4"),
    (pcapng.shb() + raw_block(1, IDB_FIXED, END + opt(2, 1, b"e\0\0\0")), len(pcapng.shb()),
     "Interface Description Block: data after the end-of-options option"),
    (pcapng.shb() + raw_block(1, IDB_FIXED, opt(9, 2, b"\x09\0\0\0") + END), len(pcapng.shb()),
     "Interface Description Block: if_tsresol option with length 2 != 1"),
    (pcapng.shb() + raw_block(1, IDB_FIXED, opt(9, 1, b"\x09\0\0\0") * 2 + END), len(pcapng.shb()),
     "Interface Description Block: more than one if_tsresol option"),
    (pcapng.shb() + raw_block(1, IDB_FIXED, opt(9, 1, b"\x14\0\0\0") + END), len(pcapng.shb()),
     "Interface Description Block: if_tsresol 0x14 is too fine"),
    (pcapng.shb() + raw_block(1, IDB_FIXED, opt(9, 1, b"\xc0\0\0\0") + END), len(pcapng.shb()),
     "Interface Description Block: if_tsresol 0xc0 is too fine"),
    (pcapng.shb() + raw_block(1, IDB_FIXED, opt(9, 1, b"\xbf\0\0\0") + END), None, None),  # 2^-63: fine
    (pcapng.shb() + raw_block(1, IDB_FIXED, opt(14, 4, b"\0" * 4) + END), len(pcapng.shb()),
     "Interface Description Block: if_tsoffset option with length 4 != 8"),
    (pcapng.shb() + raw_block(1, IDB_FIXED, opt(14, 8, b"\0" * 8) * 2 + END), len(pcapng.shb()),
     "Interface Description Block: more than one if_tsoffset option"),
    (pcapng.shb() + pcapng.idb("e", 1, 100) + pcapng.epb(0, 1, b"y" * 101), len(pcapng.shb()) + 40,
     "captured length 101 exceeds the interface's snapshot length 100"),
    (pcapng.shb() + pcapng.idb("e", 1, 0) + pcapng.epb(0, 1, b"y" * 262145), len(pcapng.shb()) + 40,
     "captured length 262145 exceeds the interface's snapshot length 262144"),
    (HEAD + raw_block(5, struct.pack("<III", 0, 0, 1), opt(1, 65532, b"c" * 65532) * 257 + END), len(HEAD),
     "block of 16842780 bytes (more than 16 MiB)"),
    (raw_block(pcapng.BT_SHB, SHB_FIXED, opt(1, 65532, b"c" * 65532) * 17 + END), 0,
     "Section Header Block of 1114144 bytes (more than 1 MiB)"),
], ids=lambda v: "" if isinstance(v, bytes) else str(v)[:40])
def test_options_and_limits_same_error(data, offset, reason):
    """Every block's options bounded by the block, and libpcap's other limits, refused alike by C and Python."""
    ref = same(data)
    if reason is None:
        assert ref[0] == "ok"
    else:
        assert ref[:3] == ("error", offset, reason)


def test_minor_version():
    for minor, ok in ((0, True), (1, False), (2, True), (3, False)):
        shb = bytearray(pcapng.shb())
        struct.pack_into("<H", shb, 14, minor)
        got = same(bytes(shb))
        assert got[0] == ("ok" if ok else "error"), (minor, got)
        if not ok:
            assert got[2] == f"unsupported pcapng version 1.{minor} (libpcap reads 1.0 and 1.2)"


def test_short_shb_and_major_version():
    shb = bytearray(pcapng.shb())
    struct.pack_into("<H", shb, 12, 2)
    assert same(bytes(shb))[:3] == ("error", 0, "unsupported pcapng major version 2")
    short = struct.pack("<IIIHHI", pcapng.BT_SHB, 20, pcapng.BYTE_ORDER_MAGIC, 1, 0, 20)
    assert same(short)[:3] == ("error", 0, "Section Header Block too short")


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(seed=st.integers(0, len(SEEDS) - 1), ops=st.lists(mutation, min_size=1, max_size=6))
def test_mutated_batches_agree(seed, ops):
    same(mutate(SEEDS[seed], ops))


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=300))
def test_random_bytes_agree(data):
    same(data)
    same(pcapng.shb() + data)
    same(pcapng.shb() + pcapng.idb("e", 1, 9) + data)


batches = st.builds(
    lambda ifaces, pk, isb: make_batch(ifaces, [(i % len(ifaces), n) for i, n in pk], isb=isb),
    st.lists(st.tuples(st.sampled_from(["e0", "e1", "tun", "lo"]), st.sampled_from([1, 101, 113])),
             min_size=1, max_size=5),
    st.lists(st.tuples(st.integers(0, 10), st.integers(0, 200)), max_size=40),
    st.booleans(),
)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=batches, mapping=st.data())
def test_split_agrees(data, mapping):
    b = store_mod.parse_batch(data)
    n = len(b.idbs)
    ngroups = mapping.draw(st.integers(1, 4))
    group_of = mapping.draw(st.lists(st.integers(0, ngroups - 1), min_size=n, max_size=n))
    new_id = mapping.draw(st.lists(st.integers(0, 0xFFFFFFFF), min_size=n, max_size=n))
    ref = store_mod.split_py(data, group_of, new_id, ngroups)
    assert scan_mod.split(data, group_of, new_id, ngroups) == ref
    assert sum(map(len, ref)) == sum(len(s) for s in b.epb_isb_slices())


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=200), n=st.integers(0, 3))
def test_split_of_garbage_is_safe(data, n):
    """split is for scanned sections only, yet never reads or writes out of bounds on anything else."""
    for body in (data, pcapng.shb() + data):
        try:
            scan_mod.split(body, [0] * n, list(range(n)), 1)
        except ValueError:
            pass


def test_split_bad_arguments():
    good = SEEDS[1]
    with pytest.raises(ValueError):
        scan_mod.split(good, [0, 1, 5], [0, 0, 0], 2)   # group out of range
    with pytest.raises(ValueError):
        scan_mod.split(good, [0, 0], [0, 0, 0], 1)      # lengths differ
    with pytest.raises(ValueError):
        scan_mod.split(good, [0], [0], 1)               # an EPB names interface 1
    with pytest.raises(ValueError):
        scan_mod.split(good, [0, 0, 0], [0, 0, 0], 0)
    with pytest.raises((ValueError, OverflowError)):
        scan_mod.split(good, [0, 0, 0], [0, -1, 0], 1)
    with pytest.raises(TypeError):
        scan_mod.scan("not a buffer")


def _store_files(tmp_path, name, bodies, use_c) -> dict[str, bytes]:
    out = tmp_path / name
    st_ = store_mod.Store(out)
    saved = store_mod._scan
    store_mod._scan = scan_mod if use_c else None
    try:
        for seq, body in enumerate(bodies):
            st_.append("node", "00000000000000aa", seq, store_mod.parse_batch(body), sent=0,
                       wire_bytes=len(body), encoding="identity")
    finally:
        store_mod._scan = saved
        st_.close()
    files = {p.name: p.read_bytes() for p in out.glob("*.pcapng")}
    lines = [l.split(",", 1)[1] for l in (out / store_mod.BATCH_LOG).read_text().splitlines()]  # minus time
    files["log"] = "\n".join(lines).encode()
    return files


def test_store_same_bytes_with_and_without_c(tmp_path):
    bodies = [SEEDS[0], SEEDS[1], SEEDS[1], SEEDS[2], SEEDS[3],
              make_batch([("eth0", 1), ("tun0", 101), ("eth1", 1), ("x", 113)], [(i % 4, i) for i in range(50)]),
              make_batch([("eth0", 1)], [(0, 1500)] * 20)]
    c = _store_files(tmp_path, "c", bodies, True)
    py = _store_files(tmp_path, "py", bodies, False)
    assert c == py
    assert len(c) > 3
    for name, data in c.items():
        if name != "log":
            pcapng.read_sections(data)


def test_fuzz_under_asan(tmp_path):
    """This file's tests again, with the module built with -fsanitize=address (out-of-bounds reads
    or writes abort the subprocess) and leak checking (a leak allocated in pcapng_scan.c fails)."""
    so, libasan = asan.build(tmp_path, "ossensor._pcapngscan")
    asan.rerun(__file__, "PCAPNGSCAN_SO", so, libasan, {"PCAPNGSCAN_EXAMPLES": "300"}, leaks_in="pcapng_scan.c")


def test_store_drop_behind_keeps_the_bytes(tmp_path):
    """Past DROP_BEHIND, a file's older pages are written back and dropped from the page cache;
    the file holds exactly what was appended."""
    body = make_batch([("eth0", 1)], [(0, 1500)] * 2000)  # ~3 MiB
    n = store_mod.DROP_BEHIND // len(body) + 4
    st_ = store_mod.Store(tmp_path / "out")
    for seq in range(n):
        st_.append("node", "00000000000000aa", seq, store_mod.parse_batch(body), sent=0, wire_bytes=len(body),
                   encoding="identity")
    (f,) = st_._streams[("node", "00000000000000aa")].values()
    assert f.dropped > 0 and f.started == f.fh.tell()
    st_.close()
    data = f.path.read_bytes()
    first = store_mod.parse_batch(body)
    head = store_mod._file_shb(first.shb) + bytes(first.idbs[0])
    rest = b"".join(bytes(s) for s in first.epb_isb_slices())
    assert data == head + rest * n
