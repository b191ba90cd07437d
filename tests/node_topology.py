"""A Kubernetes node's network, in namespaces: shared by tests/ and bench/ (bench imports it
through sys.path). Issue 19.

    pod1 ──vethpod1─┐
                    cni0 (Linux bridge, 10.N.1.1/24)        bridge-CNI style (flannel, docker0)
    pod2 ──vethpod2─┘
    pod3 ──cali0001 (routed /30, no bridge)                  Calico style
    node ──eth0 (10.N.3.1/24) ── outside (10.N.3.2/24)       the uplink

Namespace `node` forwards IPv4 (and, with snat=True, masquerades what leaves by eth0). Interface
names are the node namespace's own, as on a real node; namespace names are unique per instance.
The sensor runs in `node` with its default selection: every interface there but loopback.
IPv6 is off in every namespace: no router/neighbour solicitations mixed into the counts.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time

_counter = itertools.count(1)

UDP_SENDER = """
import socket, sys, time
dst, port, n, size, gap, tag = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6].encode()
same = tag.startswith(b"same")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
if len(sys.argv) > 7:
    s.bind(("", int(sys.argv[7])))
for i in range(n):
    payload = (tag + (b"" if same else b"-%08d" % i) + b"-").ljust(size, b"x")
    s.sendto(payload, (dst, port))
    if gap:
        time.sleep(gap)
    elif i % 200 == 199:
        time.sleep(0.002)
"""


def _sh(cmd: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=30)
    if check and r.returncode:
        raise RuntimeError(f"{cmd}: {r.stderr.strip()}")
    return r


class NodeTopology:
    """Context manager: builds the namespaces on enter, deletes them (and kills what runs there)
    on exit, even on failure."""

    POD_PORT = 9999

    def __init__(self, snat: bool = False):
        n = next(_counter)
        tag = f"{os.getpid() % 100000}x{n}"
        self.node, self.outside = f"ond{tag}", f"oout{tag}"
        self.pods = [f"opd{tag}p{i}" for i in (1, 2, 3)]
        self.snat = snat
        o = 10 + (os.getpid() + n) % 200
        self.bridge_net = f"10.{o}.1"
        self.pod_ip = [f"10.{o}.1.2", f"10.{o}.1.3", f"10.{o}.2.2"]
        self.routed_gw = f"10.{o}.2.1"
        self.node_up, self.outside_ip = f"10.{o}.3.1", f"10.{o}.3.2"
        self.supernet = f"10.{o}.0.0/16"
        # the node's interfaces, by role
        self.bridge, self.pod_veths, self.uplink = "cni0", ["vethpod1", "vethpod2", "cali0001"], "eth0"

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.node, self.outside, *self.pods)

    def __enter__(self) -> "NodeTopology":
        try:
            self._build()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _build(self) -> None:
        node, out = self.node, self.outside
        for ns in self.namespaces:
            _sh(f"ip netns add {ns}")
            _sh(f"ip -n {ns} link set lo up")
            _sh(f"ip netns exec {ns} sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1")
        _sh(f"ip netns exec {node} sysctl -qw net.ipv4.ip_forward=1")
        _sh(f"ip -n {node} link add {self.bridge} type bridge")
        _sh(f"ip -n {node} addr add {self.bridge_net}.1/24 dev {self.bridge}")
        _sh(f"ip -n {node} link set {self.bridge} up")
        for i, (pod, veth) in enumerate(zip(self.pods, self.pod_veths)):
            _sh(f"ip -n {node} link add {veth} type veth peer name eth0 netns {pod}")
            _sh(f"ip -n {node} link set {veth} up")
            _sh(f"ip -n {pod} link set eth0 up")
            if i < 2:  # bridged pods
                _sh(f"ip -n {node} link set {veth} master {self.bridge}")
                _sh(f"ip -n {pod} addr add {self.pod_ip[i]}/24 dev eth0")
                _sh(f"ip -n {pod} route add default via {self.bridge_net}.1")
            else:  # routed pod
                _sh(f"ip -n {node} addr add {self.routed_gw}/30 dev {veth}")
                _sh(f"ip -n {pod} addr add {self.pod_ip[i]}/30 dev eth0")
                _sh(f"ip -n {pod} route add default via {self.routed_gw}")
        _sh(f"ip -n {node} link add {self.uplink} type veth peer name eth0 netns {out}")
        _sh(f"ip -n {node} addr add {self.node_up}/24 dev {self.uplink}")
        _sh(f"ip -n {out} addr add {self.outside_ip}/24 dev eth0")
        _sh(f"ip -n {node} link set {self.uplink} up")
        _sh(f"ip -n {out} link set eth0 up")
        if self.snat:
            _sh(f"ip netns exec {node} iptables -t nat -A POSTROUTING -o {self.uplink} -j MASQUERADE")
        else:
            _sh(f"ip -n {out} route add {self.supernet} via {self.node_up}")
        # neighbours resolved now: the flows measured carry no ARP of their own
        for i, pod in enumerate(self.pods):
            dests = [self.pod_ip[j] for j in range(3) if j != i] + [self.outside_ip]
            code = ("import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                    f"for d in {dests!r}: s.sendto(b'warm-up', (d, 9))\n"
                    "time.sleep(0.2)")
            subprocess.run(["ip", "netns", "exec", pod, sys.executable, "-c", code], timeout=30, check=False)

    def __exit__(self, *exc) -> None:
        for ns in self.namespaces:
            _sh(f"ip netns pids {ns} | xargs -r kill -9", check=False)
        for ns in self.namespaces:
            _sh(f"ip netns del {ns}", check=False)

    def send_udp(self, src_pod: int, dst_ip: str, n: int, size: int = 100, gap_s: float = 0.0,
                 tag: str = "ossensor", sport: int | None = None, timeout: float = 120) -> None:
        """n UDP datagrams from pod `src_pod` (0-2) to dst_ip; payload `tag-<seq>-` padded to size
        (tag starting "same": every datagram identical)."""
        argv = ["ip", "netns", "exec", self.pods[src_pod], sys.executable, "-c", UDP_SENDER, dst_ip,
                str(self.POD_PORT), str(n), str(size), str(gap_s), tag] + ([str(sport)] if sport else [])
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            raise RuntimeError(r.stderr)


def wait_until(pred, timeout: float, step: float = 0.1) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(step)
    return pred()
