"""A SIGKILL's loss is counted: the next start with the same OSSENSOR_SPOOL_DIR logs at level 0 how many
packets the killed run had captured but not yet batched or spooled, and counts them at `lost_on_kill`
(level-1 stats, the ISB comment of the batches it sends, metrics). Real capture on a veth pair in
namespaces, the real vSensor over TLS (ship/kill_ledger.py)."""

from __future__ import annotations

import re
import time

import pytest

from ossensor import pcapng
from ossensor.ship import kill_ledger
from support import Topology, final_counts, sensor_env, sh, start_sensor, start_vsensor, trafgen_udp_cfg

pytestmark = pytest.mark.timeout(120)


def test_sigkill_loss_is_counted_at_the_next_start(tmp_path):
    with Topology() as topo:
        for ns, dev in ((topo.cap, topo.cap_if), (topo.peer, topo.peer_if)):
            sh(f"ip netns exec {ns} sysctl -qw net.ipv6.conf.{dev}.disable_ipv6=1")
        vs, port = start_vsensor(topo, tmp_path / "vs")
        spool = tmp_path / "spool"
        env = sensor_env(topo, tmp_path, port, BPF="udp dst port 5678", ANTIGENA_ENABLED="false",
                         OSSENSOR_SPOOL_DIR=str(spool), OSSENSOR_BATCH_MAX_AGE_MS="3000")
        cfg = tmp_path / "udp.cfg"
        cfg.write_text(trafgen_udp_cfg(100))

        # run 1: 50 packets batched and shipped (cut by their age), then 120 in the open batch, then SIGKILL
        first = start_sensor(topo, env)
        sh(f"ip netns exec {topo.peer} trafgen -o {topo.peer_if} -i {cfg} -P 1 -n 50 -q -C", timeout=30)
        first.wait_for(r"acked=50 ", timeout=20)
        sh(f"ip netns exec {topo.peer} trafgen -o {topo.peer_if} -i {cfg} -P 1 -n 120 -q -C", timeout=30)
        first.wait_for(r"stats captured=50 ", timeout=5)  # a stats line after the burst: the reader has turned
        time.sleep(0.5)  # the ring's block timeout (10 ms) many times over: the burst is in the open batch
        first.kill()     # SIGKILL: the open batch (120 packets) dies with the process
        ledger = kill_ledger.path_for(spool, _sensor_name(first))
        assert ledger.exists() and ledger.stat().st_mode & 0o777 == 0o600

        # run 2, same spool directory: says so at level 0 and counts them
        second = start_sensor(topo, env)
        m = second.wait_for(r"L0 the previous run \(pid (\d+)\) was killed: (\d+) packets it had captured were not "
                            r"yet batched or spooled; counted as lost_on_kill", timeout=10)
        assert int(m.group(2)) == 120, second.output
        second.wait_for(r"lost_on_kill=120 ", timeout=10)  # level-1 stats line
        sh(f"ip netns exec {topo.peer} trafgen -o {topo.peer_if} -i {cfg} -P 1 -n 10 -q -C", timeout=30)
        second.wait_for(r"acked=10 ", timeout=20)
        assert second.stop(timeout=30) == 0, second.output
        c = final_counts(second)
        assert (c["lost_on_kill"], c["recovered"], c["acked"]) == (120, 120, 10), c

        # the ISB of the batch run 2 shipped names the stage and its count
        comments = []
        for f in sorted((tmp_path / "vs").glob("*.pcapng")):
            for sec in pcapng.read_sections(f.read_bytes()):
                comments += [opts.get(1, b"").decode() for _, opts in sec.stats]
        assert any("lost_on_kill=120" in cm for cm in comments), comments

        # run 3 after a clean stop: nothing lost, nothing said
        third = start_sensor(topo, env)
        assert third.stop(timeout=30) == 0
        assert "was killed" not in third.output and final_counts(third)["lost_on_kill"] == 0


def _sensor_name(proc) -> str:
    m = re.search(r"starting: sensor=(\S+) ", proc.output)
    assert m, proc.output
    return m.group(1)
