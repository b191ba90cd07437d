"""Issue 19: a node's topology (tests/node_topology.py), each packet once.

The sensor runs in the node namespace with its default selection (every interface but lo) and
NETWORK_DEVICE_ANY=1, BPF `udp` so that the counts are exactly the test's datagrams. The vSensor
runs there too, on loopback (not selected)."""

from __future__ import annotations

import collections
import os
import re
import sys
from pathlib import Path

import pytest

from support import KEY, NATIVE_PRELUDE, ROOT, Proc, free_port, sensor_env, vsensor_packets
from node_topology import NodeTopology, wait_until

pytestmark = pytest.mark.timeout(240)

N = 1000
MARK = re.compile(rb"(p2p|out|routed|same[a-z0-9]*|podA|podB)-(?:([0-9]{8})-)?")


def stored(out: Path) -> collections.Counter:
    """(flow, seq) -> copies the vSensor stored, over the test's datagrams."""
    c: collections.Counter = collections.Counter()
    for _, p in vsensor_packets(out):
        m = MARK.search(p.data[42:60])  # Ethernet 14 + IPv4 20 + UDP 8: the payload's start
        if m:
            c[(m.group(1).decode(), m.group(2))] += 1
    return c


def isb_duplicates(out: Path) -> dict[str, int]:
    """Per interface, the latest cumulative `duplicates` the vSensor read in the batches' ISBs."""
    import json

    last: dict[str, int] = {}
    for line in (out / "batches.jsonl").read_text().splitlines():
        for st in json.loads(line).get("stats", []):
            if "duplicates" in st:
                last[st["if_name"]] = max(last.get(st["if_name"], 0), st["duplicates"])
    return last


def metrics(node: "Node", port: int, want_duplicates: int) -> str:
    """/metrics from the node namespace, once it counts want_duplicates (the counts reach the
    accounting when the reader cuts a batch: within OSSENSOR_BATCH_MAX_AGE_MS of the last copy)."""
    import subprocess

    code = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{port}/metrics', timeout=10).read().decode())"
    text = ""

    def done() -> bool:
        nonlocal text
        r = subprocess.run(["ip", "netns", "exec", node.topo.node, sys.executable, "-c", code], capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        text = r.stdout
        return sum(float(v) for v in re.findall(r"^ossensor_duplicates_total\{[^}]*\} (\S+)", text, re.M)) >= want_duplicates

    wait_until(done, 15, 0.5)
    return text


class Node:
    """The topology with the vSensor and the sensor running in its node namespace."""

    def __init__(self, tmp: Path, threads: int = 1, snat: bool = False, **env):
        self.tmp, self.threads, self.snat, self.env = tmp, threads, snat, env

    def __enter__(self):
        self.topo = NodeTopology(snat=self.snat).__enter__()
        self.procs: list[Proc] = []
        try:
            self.out = self.tmp / "vs"
            vs = self._spawn([sys.executable, "-m", "ossensor", "vsensor", "--listen", "127.0.0.1:0",
                              "--out", str(self.out)], {"VSENSOR_HMAC_KEY": KEY})
            port = int(vs.wait_for(r"listening on https://127\.0\.0\.1:(\d+)").group(1))
            env = sensor_env(None, self.tmp, port, NETWORK_DEVICE_ANY="1", BPF="udp",
                             OSSENSOR_CAPTURE_THREADS=str(self.threads), **self.env)
            # in the ASan rerun (tests/asan.py, test_capture_load.py) the sanitized ossensor._native
            argv = ([sys.executable, "-c", NATIVE_PRELUDE + "from ossensor.cli import main; raise SystemExit(main())",
                     "run"] if os.environ.get("NATIVE_SO") else [sys.executable, "-m", "ossensor", "run"])
            self.sensor = self._spawn(argv, env)
            self.sensor.wait_for(r"capturing on", timeout=30)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _spawn(self, argv, env):
        p = Proc(argv, env=env, netns=self.topo.node)
        self.procs.append(p)
        return p

    def stop(self) -> dict[str, int]:
        """Stop the sensor; the final stats line's numbers."""
        assert self.sensor.stop(30) == 0, self.sensor.output
        line = [ln for ln in self.sensor.lines if "final stats" in ln][-1]
        return {k: int(v) for k, v in re.findall(r" (captured|duplicates|acked)=(\d+)", line)}

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        self.topo.__exit__()


def three_flows(node: Node) -> None:
    t = node.topo
    t.send_udp(0, t.pod_ip[1], N, tag="p2p")       # pod -> pod over the bridge: vethpod1, vethpod2
    t.send_udp(0, t.outside_ip, N, tag="out")      # pod -> outside: vethpod1, cni0, eth0 (routed)
    t.send_udp(0, t.pod_ip[2], N, tag="routed")    # pod -> routed pod: vethpod1, cni0, cali0001


def wait_stored(node: Node, total: int, timeout: float = 30) -> collections.Counter:
    wait_until(lambda: sum(stored(node.out).values()) >= total, timeout, 0.5)
    return stored(node.out)


@pytest.mark.parametrize("threads", [1, 2])
def test_each_packet_once_dedup_on(tmp_path, threads):
    port = free_port()
    with Node(tmp_path, threads=threads, OSSENSOR_METRICS_PORT=str(port), OSSENSOR_METRICS_ADDR="127.0.0.1") as node:
        three_flows(node)
        got = wait_stored(node, 3 * N)
        scrape = "\n".join(ln for ln in metrics(node, port, 5 * N).splitlines() if ln.startswith("ossensor_duplicates_total"))
        stats = node.stop()
        got = stored(node.out)
    for flow in ("p2p", "out", "routed"):
        seqs = {s: n for (f, s), n in got.items() if f == flow}
        assert len(seqs) == N, (flow, len(seqs))
        assert set(seqs.values()) == {1}, (flow, collections.Counter(seqs.values()))
    # every copy beyond the first is counted: 1 + 2 + 2 per datagram (see three_flows)
    assert stats["captured"] == 3 * N, stats
    assert stats["duplicates"] == 5 * N, stats
    # ... in the metrics, per interface (the copies: vethpod2 for the bridge flow; cni0 and eth0 or cali0001)
    per_if = {m[0]: float(m[1]) for m in re.findall(r'interface="([^"]+)"} ([0-9.e+]+)', scrape)}
    assert sum(per_if.values()) == 5 * N and set(per_if) <= {"cni0", "vethpod2", "cali0001", "eth0"}, scrape
    # ... and the vSensor receives the counts: cumulative per interface in the ISBs (not a loss)
    assert sum(isb_duplicates(node.out).values()) == 5 * N, isb_duplicates(node.out)


def test_every_copy_with_dedup_off(tmp_path):
    with Node(tmp_path, OSSENSOR_DEDUP="off") as node:
        three_flows(node)
        wait_stored(node, 8 * N)
        stats = node.stop()
        got = stored(node.out)
    per_flow = collections.Counter()
    for (f, _), n in got.items():
        per_flow[f] += n
    assert per_flow == {"p2p": 2 * N, "out": 3 * N, "routed": 3 * N}, per_flow
    assert stats["captured"] == 8 * N and stats["duplicates"] == 0, stats
    # what dedup removes (test above: 5 * N duplicates) is exactly this difference
    assert sum(per_flow.values()) - 3 * N == 5 * N


def test_identical_datagrams_on_one_path_all_arrive(tmp_path):
    """300 byte-identical datagrams 3 ms apart (well inside the 20 ms window): the same bytes on
    the same interface are new packets; their copies on the other port are not."""
    with Node(tmp_path) as node:
        t = node.topo
        t.send_udp(0, t.pod_ip[1], 300, gap_s=0.003, tag="same", sport=40001)
        wait_stored(node, 300)
        stats = node.stop()
        got = stored(node.out)
    assert got[("same", None)] == 300, got
    assert stats["duplicates"] == 300, stats


def test_two_pods_identical_payloads_both_arrive(tmp_path):
    """Two pods send the same payload, from the same port, to one destination: distinct packets
    (their source addresses differ), both kept."""
    with Node(tmp_path) as node:
        t = node.topo
        for pod in (0, 1):
            t.send_udp(pod, t.pod_ip[2], 200, tag="samepods", sport=40002)
        wait_stored(node, 400)
        node.stop()
        pkts = [p for _, p in vsensor_packets(node.out) if b"samepods-" in p.data]
    by_src = collections.Counter(bytes(p.data[26:30]) for p in pkts)
    assert sorted(by_src.values()) == [200, 200], by_src


@pytest.mark.parametrize("name,value,expect", [
    ("OSSENSOR_DEDUP", "maybe", "must be on or off"),
    ("OSSENSOR_DEDUP_WINDOW_MS", "0", "1-1000"),
    ("OSSENSOR_DEDUP_WINDOW_MS", "5000", "1-1000"),
    ("OSSENSOR_DEDUP_WINDOW_MS", "20ms", "1-1000"),
])
def test_bad_values_one_line_exit_2(tmp_path, name, value, expect):
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith(("OSSENSOR_", "VSENSOR_"))}
    env.update(PYTHONPATH=str(ROOT), VSENSOR_HOSTNAME="127.0.0.1", VSENSOR_HMAC_KEY=KEY,
               OSSENSOR_CONFIG_PATH=str(tmp_path / "o.cfg"), **{name: value})
    r = subprocess.run([sys.executable, "-m", "ossensor", "run"], env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
    assert len(lines) == 1 and name in lines[0] and expect in lines[0] and "Traceback" not in lines[0], lines


def test_settings_defaults():
    from ossensor.config.settings import Settings

    s = Settings(VSENSOR_HOSTNAME="h", VSENSOR_HMAC_KEY=KEY)
    assert s.dedup is True and s.dedup_window_ms == 20
    s = Settings(VSENSOR_HOSTNAME="h", VSENSOR_HMAC_KEY=KEY, OSSENSOR_DEDUP="off", OSSENSOR_DEDUP_WINDOW_MS="5")
    assert s.dedup is False and s.dedup_window_ms == 5


def test_interfaces_warns_about_overlaps():
    """`ossensor interfaces` in the node: the bridge with its ports, the veths, a macvlan on the uplink
    (this kernel has no 8021q module: a VLAN device is found the same way, by its lower device)."""
    import json
    import subprocess

    with NodeTopology() as t:
        subprocess.run(["ip", "-n", t.node, "link", "add", "link", t.uplink, "name", "mv0", "type", "macvlan",
                        "mode", "bridge"], check=True, timeout=30)
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        argv = ["ip", "netns", "exec", t.node, sys.executable, "-m", "ossensor", "interfaces"]
        plain = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)
        js = subprocess.run(argv + ["--json"], capture_output=True, text=True, env=env, timeout=60)
        off = subprocess.run(argv + ["--json"], capture_output=True, text=True, timeout=60,
                             env=dict(env, OSSENSOR_DEDUP="off"))
    assert plain.returncode == 0 and js.returncode == 0, plain.stderr + js.stderr
    assert "warning: duplicate" in plain.stdout and "OSSENSOR_DEDUP=on" in plain.stdout, plain.stdout
    dup = json.loads(js.stdout)["duplicate"]
    kinds = {o["kind"]: o["interfaces"] for o in dup["overlaps"]}
    assert kinds["bridge-ports"] == ["cni0", "vethpod1", "vethpod2"], kinds
    assert kinds["lower-device"] == ["mv0", "eth0"], kinds
    assert set(kinds["veths"]) == {"vethpod1", "vethpod2", "cali0001", "eth0"}, kinds
    assert dup["dedup"] is True and "not a loss" in dup["advice"]
    assert json.loads(off.stdout)["duplicate"]["dedup"] is False


FANOUT_LB_SCRIPT = r"""
import re, sys, threading, time
sys.path.insert(0, sys.argv[1])
exec(sys.argv[2])  # NATIVE_PRELUDE: the ASan build in the ASan rerun
from ossensor import pcapng
from ossensor.capture import fanout
from ossensor.capture.fanout import FanoutCapture
from ossensor.interfaces.netlink import enumerate_interfaces
from ossensor.ops import log as L
from ossensor.ship.accounting import Accounting

fanout.PACKET_FANOUT_HASH = int(sys.argv[3])  # 1, round robin: copies of one packet land on different rings
readers, batch_bytes = int(sys.argv[5]), int(sys.argv[6])
acct = Accounting()
cap = FanoutCapture(readers, ring_bytes=8 << 20, block_timeout_ms=10, snaplen=2048, batch_bytes=batch_bytes,
                    batch_age_s=0.1, filter_expr="udp", log=L.Log(0), accounting=acct,
                    dedup_window_ms=int(sys.argv[4]))
cap.set_interfaces([i for i in enumerate_interfaces() if not i.loopback])
bodies = []
stop = threading.Event()
cap.start()
print("READY", flush=True)
sys.stdin.readline()  # sent: the rings hold every copy in full blocks; read them now
time.sleep(0.1)
t = threading.Thread(target=cap.run, args=(stop, lambda b: bodies.append(bytes(b.body)), None, False))
t.start()
time.sleep(1.0)
stop.set(); cap.wake(); t.join(10)

seqs = {}
for body in bodies:
    for sec in pcapng.read_sections(body):
        for p in sec.packets:
            m = re.search(rb"lb-([0-9]{8})-", p.data)
            if m:
                seqs[m.group(1)] = seqs.get(m.group(1), 0) + 1
print("RESULT", len(seqs), sum(seqs.values()), acct.duplicates, len(bodies), flush=True)
"""


def run_copies_script(window: int, readers: int, batch_bytes: int) -> tuple[int, int, int, int]:
    """500 datagrams pod -> outside (3 copies each: vethpod1, cni0, eth0) into `readers` rings, read only
    once all are in the rings; returns (distinct datagrams, written, duplicates counted, batches)."""
    import subprocess

    with NodeTopology() as t:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        p = subprocess.Popen(["ip", "netns", "exec", t.node, sys.executable, "-c", FANOUT_LB_SCRIPT, str(ROOT / "tests"),
                              NATIVE_PRELUDE if os.environ.get("NATIVE_SO") else "", "1", str(window), str(readers),
                              str(batch_bytes)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        try:
            assert p.stdout.readline().strip() == "READY"
            t.send_udp(0, t.outside_ip, 500, tag="lb")
            out, _ = p.communicate("go\n", timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
    m = re.search(r"RESULT (\d+) (\d+) (\d+) (\d+)", out)
    assert m, out
    return tuple(map(int, m.groups()))


@pytest.mark.parametrize("window", [20, 0])
def test_fanout_round_robin_copies_meet_in_the_shared_table(window):
    """Two rings in a PACKET_FANOUT_LB group (round robin: the copies of one packet are spread over
    both rings, the worst case for a per-ring table): with the shared table each datagram is written
    once; without dedup (window 0) every copy is."""
    distinct, written, dups, _ = run_copies_script(window, 2, 1 << 20)
    assert distinct == 500
    if window:
        assert (written, dups) == (500, 1000)
    else:
        assert (written, dups) == (1500, 0)


def test_copies_across_full_batches_mid_block():
    """One ring, dedup on, read only once it holds all 1,500 copies, into batches of 16 KiB (~80
    packets): the reader stops mid-block again and again, inside a chunk whose identities it took ahead
    (ring.c hash_ahead), and resumes at the packet that did not fit; each datagram is still written
    once, each other copy counted once."""
    distinct, written, dups, batches = run_copies_script(20, 1, 16384)
    assert (distinct, written, dups) == (500, 500, 1000)
    assert batches >= 5, batches


def test_snat_copies_are_not_recognised(tmp_path):
    """Documented limit: with SNAT on the uplink the copy leaving the node has another source address:
    it is a different packet to dedup, so pod -> outside arrives twice (the pod's view and the node's),
    never less than once."""
    with Node(tmp_path, snat=True) as node:
        t = node.topo
        t.send_udp(0, t.outside_ip, 300, tag="out")
        wait_stored(node, 600)
        stats = node.stop()
        got = stored(node.out)
    seqs = {s: n for (f, s), n in got.items() if f == "out"}
    assert len(seqs) == 300 and set(seqs.values()) == {2}, collections.Counter(seqs.values())
    assert stats["duplicates"] == 300, stats  # the bridge's copy of the pod's packet


@pytest.mark.timeout(420)
def test_dedup_under_asan(tmp_path):
    """The node tests that drive native/dedup.c through the ring (one reader, two sharing the table,
    round robin over two rings, identical datagrams) again with ossensor._native built with
    -fsanitize=address and leak checking (tests/asan.py, the sources setup.py declares)."""
    import asan

    so, libasan = asan.build(tmp_path, "ossensor._native")
    asan.rerun([__file__], "NATIVE_SO", so, libasan, leaks_in=("ring.c", "ring_rx.c", "dedup.c"), timeout=400,
               select="(each_packet_once or fanout_round or identical_datagrams or full_batches) and not asan")
