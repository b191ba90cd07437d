"""Least privilege on the host: a missing capability is one clear line; once the sockets are
open the running sensor holds no capability in any thread and cannot regain one."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from support import KEY, ROOT, Topology, send_udp, sensor_env, start_sensor, start_vsensor, vsensor_packets

pytestmark = pytest.mark.timeout(90)


def test_missing_net_raw_is_one_line_naming_it(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), VSENSOR_HOSTNAME="127.0.0.1", VSENSOR_HMAC_KEY=KEY,
               OSSENSOR_CONFIG_PATH=str(tmp_path / "ossensor.cfg"), ANTIGENA_ENABLED="false")
    # capsh removes CAP_NET_RAW from the bounding set, so even uid 0 does not get it back at exec
    r = subprocess.run(["capsh", "--drop=cap_net_raw", "--", "-c", f"exec {sys.executable} -m ossensor run"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r
    errors = [l for l in (r.stdout + r.stderr).splitlines() if "ERROR" in l or l.startswith("ossensor:")]
    assert len(errors) == 1, r.stdout + r.stderr
    assert "missing capability CAP_NET_RAW" in errors[0] and "capture socket" in errors[0]
    assert "Traceback" not in r.stdout + r.stderr
    assert KEY not in r.stdout + r.stderr
    assert not (tmp_path / "ossensor.cfg").exists(), "it went on after the check"


def _status(pid: int, tid: str) -> dict[str, str]:
    out = {}
    with open(f"/proc/{pid}/task/{tid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.strip()
    return out


def test_running_sensor_holds_no_capability(tmp_path):
    with Topology() as topo:
        vs, port = start_vsensor(topo, tmp_path / "vs")
        sensor = start_sensor(topo, sensor_env(topo, tmp_path, port, BPF="udp port 9999"))
        sensor.wait_for(r"capabilities dropped after opening the sockets: had \[.*NET_RAW.*\], now none")
        sensor.wait_for(r" stats captured=")  # the threads run
        # the python process is the child of `ip netns exec` (which execs): same pid
        pid = sensor.p.pid
        tids = os.listdir(f"/proc/{pid}/task")
        assert len(tids) >= 3, tids  # main, reader, shipper
        for tid in tids:
            st = _status(pid, tid)
            assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0, (tid, st)
            assert int(st["CapInh"], 16) == 0 and int(st["CapAmb"], 16) == 0, (tid, st)
            assert st["NoNewPrivs"] == "1", (tid, st)
        # and it still works: the drop came after every socket it needs
        send_udp(topo, 30)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(vsensor_packets(tmp_path / "vs")) < 30:
            time.sleep(0.2)
        assert sensor.stop() == 0, sensor.output
        assert len(vsensor_packets(tmp_path / "vs")) == 30
        assert "still hold capabilities" not in sensor.output
