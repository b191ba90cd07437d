"""native/dedup.c alone (issue 19), compiled with ASan and UBSan against tests/dedup_harness.c: routed
copies (new MACs, TTL/hop limit, IPv4 checksum) share an identity at every length, any other changed
byte gives another, frames without IP compare whole; the table's rules (another interface within the
window: a copy; the same interface: a new packet; out of order within the window; an overrun table
suppresses nothing distinct)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from support import ROOT


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_dedup_harness(tmp_path):
    exe = tmp_path / "dedup_harness"
    cc = subprocess.run(["gcc", "-O1", "-g", "-Wall", "-Wextra", "-Werror", "-std=gnu11",
                         "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-I", str(ROOT / "native"),
                         str(ROOT / "tests" / "dedup_harness.c"), str(ROOT / "native" / "dedup.c"), "-o", str(exe)],
                        capture_output=True, text=True, timeout=120)
    assert cc.returncode == 0, cc.stderr
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "OK (0 failures)" in r.stdout, r.stdout + r.stderr
