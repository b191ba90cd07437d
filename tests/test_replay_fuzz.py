"""Fuzzing the file reader: mutated and truncated pcap/pcapng files (hypothesis) never crash the
process; each run ends either at the end of the file or with an error naming a byte offset inside
the file, and everything written before is well-formed.

In-process examples run the C reader directly (a memory error would kill pytest itself); a few run
the command line in a subprocess, which must exit 0 or 2 with one line and no traceback.
test_fuzz_under_asan runs the in-process ones again with the reader built with AddressSanitizer
(FILEREADER_SO=path loads the module from that file instead of ossensor._filereader).
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

import asan
import capfiles
from mutations import mutate, mutations
from support import ROOT

pytestmark = pytest.mark.timeout(300)
EXAMPLES = int(os.environ.get("FILEREADER_EXAMPLES", "2000"))
reader_mod = asan.load("FILEREADER_SO", "ossensor._filereader")


def _seeds() -> list[bytes]:
    ng, _ = capfiles.multi_interface_pcapng()
    pk = [(1_700_000_000 * 10**9 + i * 1000, capfiles.eth_udp(i, 20 + i), 62 + i) for i in range(6)]
    return [
        ng,
        capfiles.pcap(pk),
        capfiles.pcap(pk, nano=True, be=True),
        capfiles.pcap([(10**18 + i, capfiles.raw_ip_udp(i, 10), 38) for i in range(4)], linktype=101),
        capfiles.shb(True) + capfiles.idb(True, 1, "e0", snaplen=64) + capfiles.spb(True, b"s" * 100, 100)
        + capfiles.pb(True, 0, 5, b"p" * 30),
    ]


SEEDS = _seeds()
INTERESTING = [0, 1, 3, 4, 11, 12, 13, 0x7F, 0x80, 0xFF, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               0x0A0D0D0A, 0x1A2B3C4D, 0x4D3C2B1A, 16 << 20, (16 << 20) + 4]

mutation = mutations(INTERESTING, max_pos=1 << 20, dup_max=64, both_endians=True)


def check_epbs(epbs: bytes, n_ifs: int, snaplen: int) -> int:
    """The batch the reader wrote is well-formed whatever the input was."""
    off = n = 0
    while off < len(epbs):
        btype, total, if_id, _, _, caplen, _ = struct.unpack_from("<IIIIIII", epbs, off)
        assert btype == 6 and total % 4 == 0 and off + total <= len(epbs)
        assert if_id < n_ifs and caplen <= snaplen and 32 + caplen <= total < 32 + caplen + 4
        assert struct.unpack_from("<I", epbs, off + total - 4)[0] == total
        off += total
        n += 1
    return n


def run_reader(path: str, data: bytes, expr: str, snaplen: int, until: int | None = None,
               direct: bool = False) -> None:
    """Read the whole file; direct: the batches go through write_to(fd) (the --out path) into a
    file that is checked afterwards, else through take()."""
    FileFormatError, Reader = reader_mod.FileFormatError, reader_mod.Reader
    r = Reader(path, expr, snaplen, 64 << 10)
    total = 0
    out_path = path + ".epbs"
    with open(out_path, "wb") as out:
        for _ in range(100000):
            r.read(-1 if until is None else until)
            if r.state == "wait":  # pacing: let time pass
                until = None
            if direct:
                size, packets, _, _, _ = r.write_to(out.fileno())
            else:
                epbs, packets, _, _, _ = r.take()
                assert check_epbs(epbs, len(r.interfaces), snaplen) == packets
            total += packets
            if r.state in ("eof", "error"):
                break
        else:
            raise AssertionError("reader did not finish")
    if direct:
        with open(out_path, "rb") as f:
            assert check_epbs(f.read(), len(r.interfaces), snaplen) == total
    assert total == r.packets_passed <= r.packets_read
    if r.state == "error":
        offset, reason, kind = r.error
        assert kind in ("format", "filter") and reason
        assert 0 <= offset <= len(data)
        with pytest.raises(FileFormatError) as exc:
            r.read()
        assert (exc.value.offset, exc.value.reason, exc.value.kind) == (offset, reason, kind)
        assert str(exc.value) == f"at byte {offset}: {reason}"
    else:
        assert r.offset == len(data)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.sampled_from(range(len(SEEDS))), ops=st.lists(mutation, min_size=1, max_size=6),
       expr=st.sampled_from(["", "udp", "ip and len > 50", "port 53 or arp"]),
       snaplen=st.sampled_from([64, 262144]), paced=st.booleans(), direct=st.booleans())
def test_mutated_files_never_crash_the_reader(tmp_path_factory, seed, ops, expr, snaplen, paced, direct):
    data = mutate(SEEDS[seed], ops)
    path = tmp_path_factory.getbasetemp() / "fuzz.bin"
    path.write_bytes(data)
    run_reader(str(path), data, expr, snaplen, until=0 if paced else None, direct=direct)


@settings(max_examples=150, deadline=None)
@given(seed=st.sampled_from(range(len(SEEDS))), cut=st.integers(0, 4000))
def test_every_truncation_ends_cleanly(tmp_path_factory, seed, cut):
    data = SEEDS[seed][:cut]
    path = tmp_path_factory.getbasetemp() / "cut.bin"
    path.write_bytes(data)
    run_reader(str(path), data, "", 262144)


@settings(max_examples=12, deadline=None)
@given(seed=st.sampled_from(range(len(SEEDS))), ops=st.lists(mutation, min_size=1, max_size=4))
@example(seed=1, ops=[("dup", 0, 18)])  # found: reserved bits in the pcap link-type field crashed the IDB writer
def test_mutated_files_through_the_command_line(tmp_path_factory, seed, ops):
    d = tmp_path_factory.mktemp("cli")
    f = d / "m.pcap"
    f.write_bytes(mutate(SEEDS[seed], ops))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VSENSOR_", "OSSENSOR_", "BPF"))}
    env["PYTHONPATH"] = str(ROOT)
    r = subprocess.run([sys.executable, "-m", "ossensor", "replay", str(f), "-o", str(d / "o.pcapng")],
                       capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode in (0, 2), (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stdout + r.stderr
    if r.returncode == 2:
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"ossensor: {f}: at byte "), r.stderr
    else:
        assert r.stderr == ""
    from ossensor import pcapng

    pcapng.read_sections((d / "o.pcapng").read_bytes())  # what was written before the damage is readable


def test_fuzz_under_asan(tmp_path):
    """The in-process tests again, the reader built with -fsanitize=address and leak checking: an
    out-of-bounds access, a use after free or a leaked buffer aborts the subprocess."""
    so, libasan = asan.build(tmp_path, "ossensor._filereader")
    asan.rerun(__file__, "FILEREADER_SO", so, libasan, {"FILEREADER_EXAMPLES": "600"},
               select="not asan and not command_line", leaks_in=("filereader.c", "capfile.c", "capfilter.c"))
