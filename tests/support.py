"""Real parts for tests: network namespaces with veth pairs, the reference vSensor, the sensor.

Everything is created with unique names and torn down by the fixtures in
conftest.py, even when a test fails; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_counter = itertools.count(1)
KEY = "test-key-0123456789abcdef"


def sh(cmd: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, shell=True, check=check, timeout=timeout, capture_output=True, text=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """A subprocess whose output lines are collected by a thread, so waits never block."""

    def __init__(self, argv: list[str], env: dict[str, str] | None = None, netns: str | None = None):
        if netns:
            argv = ["ip", "netns", "exec", netns] + argv
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = str(ROOT) + os.pathsep + full_env.get("PYTHONPATH", "")
        full_env["PYTHONUNBUFFERED"] = "1"
        if env:
            full_env.update(env)
        self.argv = argv
        self.p = subprocess.Popen(argv, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, bufsize=1, start_new_session=True)
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self._t = threading.Thread(target=self._pump, daemon=True)
        self._t.start()

    def _pump(self) -> None:
        for line in self.p.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    @property
    def output(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 15.0) -> re.Match:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self.lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0 or (self.p.poll() is not None and not self._t.is_alive()):
                    raise AssertionError(f"{pattern!r} not seen in output of {self.argv}:\n{self.output}")
                self._cond.wait(min(left, 0.2))

    def signal(self, sig: int = signal.SIGTERM) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, sig)

    def stop(self, timeout: float = 15.0) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.argv} did not stop within {timeout} s:\n{self.output}")
        finally:
            self._t.join(2)

    def kill(self) -> None:
        if self.p.poll() is None:
            os.killpg(self.p.pid, signal.SIGKILL)
            self.p.wait(5)


def spawn_into(procs: list[Proc], argv: list[str], netns: str | None, env: dict[str, str] | None) -> Proc:
    """Start a process a topology owns (killed at its teardown)."""
    p = Proc(argv, env=env, netns=netns)
    procs.append(p)
    return p


def teardown(procs: list[Proc], namespaces) -> None:
    """Kill a topology's processes, then everything left in its namespaces, then the namespaces."""
    for p in procs:
        p.kill()
    for ns in namespaces:
        sh(f"ip netns pids {ns} | xargs -r kill -9", check=False)
        sh(f"ip netns del {ns}", check=False)


class Topology:
    """Two namespaces joined by a veth pair: `cap` (where the sensor and vSensor run,
    10.77.N.1) and `peer` (10.77.N.2). The sensor captures `cap`'s veth end."""

    def __init__(self):
        n = next(_counter)
        tag = f"{os.getpid() % 100000}x{n}"
        self.cap = f"osc{tag}"
        self.peer = f"osp{tag}"
        self.cap_if = f"ovc{tag}"[:15]
        self.peer_if = f"ovp{tag}"[:15]
        self.net = 10 + (os.getpid() + n) % 200
        self.cap_ip = f"10.77.{self.net}.1"
        self.peer_ip = f"10.77.{self.net}.2"
        self.procs: list[Proc] = []

    def __enter__(self) -> "Topology":
        sh(f"ip netns add {self.cap}")
        sh(f"ip netns add {self.peer}")
        sh(f"ip -n {self.cap} link add {self.cap_if} type veth peer name {self.peer_if} netns {self.peer}")
        sh(f"ip -n {self.cap} addr add {self.cap_ip}/24 dev {self.cap_if}")
        sh(f"ip -n {self.peer} addr add {self.peer_ip}/24 dev {self.peer_if}")
        for ns, dev in ((self.cap, self.cap_if), (self.peer, self.peer_if)):
            sh(f"ip -n {ns} link set lo up")
            sh(f"ip -n {ns} link set {dev} up")
        return self

    @property
    def namespaces(self) -> tuple[str, ...]:
        return (self.cap, self.peer)

    def __exit__(self, *exc) -> None:
        teardown(self.procs, self.namespaces)

    def spawn(self, argv: list[str], netns: str | None = None, env: dict[str, str] | None = None) -> Proc:
        return spawn_into(self.procs, argv, netns, env)

    def run_in(self, ns: str, code: str, timeout: float = 30) -> str:
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True,
                           text=True, timeout=timeout)
        assert r.returncode == 0, r.stderr
        return r.stdout


def start_vsensor(topo: Topology, out: Path, port: int | None = None, key: str = KEY,
                  extra: list[str] | None = None) -> tuple[Proc, int]:
    port = port or 8443
    p = topo.spawn([sys.executable, "-m", "ossensor", "vsensor", "--listen", f"127.0.0.1:{port}",
                    "--out", str(out)] + (extra or []), netns=topo.cap, env={"VSENSOR_HMAC_KEY": key})
    p.wait_for(r"listening on")
    return p, port


@contextlib.contextmanager
def loopback_vsensor(out: Path, key: str = KEY, extra: list[str] | None = None):
    """The reference vSensor in this namespace on an ephemeral loopback port: yields (proc, port);
    killed on the way out, even on failure. extra: more command-line arguments."""
    p = Proc([sys.executable, "-m", "ossensor", "vsensor", "--listen", "127.0.0.1:0", "--out", str(out)]
             + (extra or []), env={"VSENSOR_HMAC_KEY": key})
    try:
        yield p, int(p.wait_for(r"listening on https://127\.0\.0\.1:(\d+)").group(1))
    finally:
        p.kill()


def start_tcpdump(topo: Topology, dump: Path, expr: str) -> Proc:
    """tcpdump on the capture side, writing `dump` (nanosecond stamps, unbuffered): the reference
    the sensor's stored packets are compared with."""
    td = topo.spawn(["tcpdump", "-i", topo.cap_if, "-U", "-n", "--time-stamp-precision=nano", "-w", str(dump), expr],
                    netns=topo.cap)
    td.wait_for("listening on")
    return td


def sensor_env(topo: Topology, tmp: Path, port: int, **overrides: str) -> dict[str, str]:
    env = {
        "VSENSOR_HOSTNAME": "127.0.0.1",
        "VSENSOR_PORT": str(port),
        "VSENSOR_HMAC_KEY": KEY,
        "OSSENSOR_TLS_CA_FILE": str(tmp / "vs" / "ca.pem"),
        "OSSENSOR_CONFIG_PATH": str(tmp / "ossensor.cfg"),
        "OSSENSOR_DEBUG": "2",
        "OSSENSOR_BATCH_MAX_AGE_MS": "100",
        "OSSENSOR_RING_MB": "8",
        "OSSENSOR_STATS_INTERVAL": "1",
    }
    env.update(overrides)
    return env


# In an ASan rerun of the ring's tests (tests/asan.py, NATIVE_SO set), processes started here load that
# build of ossensor._native; otherwise this loads the installed one.
NATIVE_PRELUDE = (f"import sys; sys.path.insert(0, {str(ROOT / 'tests')!r}); import asan; "
                  "asan.load('NATIVE_SO', 'ossensor._native')\n")


def start_sensor(topo: Topology, env: dict[str, str]) -> Proc:
    argv = ([sys.executable, "-c", NATIVE_PRELUDE + "from ossensor.cli import main; raise SystemExit(main())", "run"]
            if os.environ.get("NATIVE_SO") else [sys.executable, "-m", "ossensor", "run"])
    p = topo.spawn(argv, netns=topo.cap, env=env)
    p.wait_for(r"capturing on")
    return p


UDP_SENDER = """
import socket, sys, time
dst, port, n, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(n):
    payload = (b"ossensor-%08d-" % i).ljust(size, b"x")
    s.sendto(payload, (dst, port))
    if i % 200 == 199:
        time.sleep(0.002)
"""


def send_udp(topo: Topology, n: int, size: int = 100, port: int = 9999) -> None:
    r = subprocess.run(["ip", "netns", "exec", topo.peer, sys.executable, "-c", UDP_SENDER, topo.cap_ip,
                        str(port), str(n), str(size)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr


def trafgen_udp_cfg(size: int = 64) -> str:
    """A trafgen config: UDP frames of `size` bytes (1234 -> 5678) to a MAC nobody has (the receiving
    stack drops them silently; capture sees them)."""
    eth = "0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x08, 0x00"
    ip = (f"0x45, 0x00, const16({size - 14}), 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, csumip(14, 33), "
          f"10, 78, 0, 1, 10, 78, 0, 2")
    udp = f"const16(1234), const16(5678), const16({size - 34}), 0x00, 0x00"
    return f"{{ {eth}, {ip}, {udp}, fill(0x41, {size - 42}) }}\n"


def final_counts(sensor: Proc) -> dict[str, int]:
    """The numbers of the sensor's last `final stats` line."""
    line = [l for l in sensor.lines if "final stats" in l][-1]
    return {k: int(v) for k, v in re.findall(r"\b(\w+)=(\d+)\b", line)}


def replay_env(vs_out: Path, port: int, **extra: str) -> dict[str, str]:
    """The environment of an `ossensor replay` to a loopback vSensor (loopback_vsensor) whose --out is
    vs_out: none of this process's sensor variables, the vSensor's CA trusted."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VSENSOR_", "OSSENSOR_", "BPF"))}
    env.update(PYTHONPATH=str(ROOT), VSENSOR_HOSTNAME="127.0.0.1", VSENSOR_PORT=str(port), VSENSOR_HMAC_KEY=KEY,
               OSSENSOR_TLS_CA_FILE=str(vs_out / "ca.pem"), OSSENSOR_DEBUG="2")
    env.update(extra)
    return env


def read_pcap(path: Path) -> list[tuple[int, bytes, int]]:
    """(ts_ns, data, wirelen) from a classic pcap file (tcpdump -w), micro or nano."""
    data = path.read_bytes()
    magic = struct.unpack_from("<I", data, 0)[0]
    scale = {0xA1B2C3D4: 1000, 0xA1B23C4D: 1}[magic]
    off, out = 24, []
    while off + 16 <= len(data):
        sec, frac, caplen, wirelen = struct.unpack_from("<IIII", data, off)
        out.append(((sec * 10**9 + frac * scale), data[off + 16: off + 16 + caplen], wirelen))
        off += 16 + caplen
    return out


def vsensor_packets(out: Path) -> list:
    """Every packet the reference vSensor stored, from its pcapng files."""
    from ossensor import pcapng

    pkts = []
    for f in sorted(out.glob("*.pcapng")):
        for sec in pcapng.read_sections(f.read_bytes()):
            for p in sec.packets:
                pkts.append((sec.interfaces[p.if_id].name, p))
    return pkts


class ConnectProxy:
    """A plain HTTP CONNECT proxy on loopback: tunnels (mode "ok") or answers 403 Forbidden
    ("refuse"); records the host:port of every CONNECT it was asked for (`targets`)."""

    def __init__(self, mode: str = "ok"):
        self.mode = mode
        self.targets: list[str] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def connects(self) -> int:
        return len(self.targets)

    def _accept(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        with c:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = c.recv(4096)
                if not chunk:
                    return
                head += chunk
            target = head.split(b" ")[1].decode()
            self.targets.append(target)
            if self.mode == "refuse":
                c.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                time.sleep(0.2)
                return
            host, port = target.rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=10) as up:
                c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
                pipe = threading.Thread(target=self._pipe, args=(up, c), daemon=True)
                pipe.start()
                self._pipe(c, up)
                pipe.join(5)

    @staticmethod
    def _pipe(a, b):
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        try:
            b.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self.sock.close()
