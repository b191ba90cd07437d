"""Interface selection: egrep semantics against the real `grep -E`, OSSENSOR_NETWORK_DEVICE and the
default-route device, `ossensor interfaces`, user errors, and a kernel filter for ~300 interfaces.

Namespaces and interfaces created here carry the prefix `osi` / `hp` and are removed by fixtures.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ossensor.interfaces.egrep import ERE
from ossensor.interfaces.netlink import Interface
from ossensor.interfaces.selection import Selector, select
from support import KEY, ROOT, sh

pytestmark = pytest.mark.timeout(60)
_n = itertools.count(1)


# --------------------------------------------------------------------------- selection vs grep -E

PATTERNS = [
    "^eth", "eth7", "[[:digit:]]$", "^veth[0-9a-f]+", "lo", "^(eth|ens)[[:digit:]]+$", "a|b", "x{2}",
    r"\.", "[[:alpha:]]{4}", "^lo$", "[[:upper:]]", "-", "^[^v]", "(ab|a)c", "e.h", "[[:punct:]]", "0$",
    "^cali", "[[:alnum:]]_", "v?eth", "(e|v)+t",
]
NAME = st.text(alphabet="abcehlotvx0127.-_EV", min_size=1, max_size=15)


def grep_matching(patterns: list[str], names: list[str]) -> set[str]:
    if not patterns:
        return set()
    argv = ["grep", "-E"] + [a for p in patterns for a in ("-e", p)]
    r = subprocess.run(argv, input="\n".join(names) + "\n", capture_output=True, text=True, timeout=10)
    assert r.returncode in (0, 1), r.stderr
    return set(r.stdout.splitlines())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(names=st.lists(NAME, min_size=1, max_size=25, unique=True).map(lambda ns: ns + ["lo"] if "lo" not in ns else ns),
       include=st.lists(st.sampled_from(PATTERNS), max_size=3, unique=True),
       exclude=st.lists(st.sampled_from(PATTERNS), max_size=3, unique=True))
def test_selection_matches_grep_E(names, include, exclude):
    ifaces = [Interface(i + 1, n, 1, True, n == "lo") for i, n in enumerate(names)]
    sel = select(ifaces, device=None, include=[ERE(p) for p in include], exclude=[ERE(p) for p in exclude])
    inc, exc = grep_matching(include, names), grep_matching(exclude, names)
    for v in sel.verdicts:
        name = v.interface.name
        want = (name in inc if include else name != "lo") and name not in exc
        assert v.selected == want, (name, include, exclude, v.reason)
        if name in exc:  # exclude wins, and the reason names a regex that does match
            assert "NETWORK_DEVICE_EXCLUDELIST" in v.reason
            rx = v.reason.split("regex ", 1)[1].strip("'\"")
            assert rx in exclude and ERE(rx).search(name)
        elif v.selected and include:
            rx = v.reason.split("regex ", 1)[1].strip("'\"")
            assert rx in include and grep_matching([rx], [name]) == {name}


def test_spec_example_include_eth_exclude_eth7():
    names = ["lo", "eth0", "eth7", "eth10", "veth1", "ens3"]
    ifaces = [Interface(i + 1, n, 1, True, n == "lo") for i, n in enumerate(names)]
    sel = select(ifaces, device=None, include=[ERE("^eth")], exclude=[ERE("eth7")])
    assert [i.name for i in sel.selected] == ["eth0", "eth10"]
    sel = select(ifaces, device=None, include=[], exclude=[])
    assert [i.name for i in sel.selected] == ["eth0", "eth7", "eth10", "veth1", "ens3"]
    # loopback only when an include regex names it
    sel = select(ifaces, device=None, include=[ERE("^lo$")], exclude=[])
    assert [i.name for i in sel.selected] == ["lo"]


# --------------------------------------------------------------------------- OSSENSOR_NETWORK_DEVICE

class _S:
    def __init__(self, device=None, include=(), exclude=()):
        self.network_device, self.include_list, self.exclude_list = device, list(include), list(exclude)


def test_device_set_wins_over_lists_and_says_so():
    sel = Selector.from_settings(_S("eth7", [ERE("^veth")], [ERE("eth7")]))
    assert sel.device == "eth7"
    assert any("are not consulted" in n for n in sel.notes)
    v = sel.judge(Interface(3, "eth7", 1, True, False))
    assert v.selected and v.reason == "OSSENSOR_NETWORK_DEVICE"
    assert not sel.judge(Interface(4, "veth1", 1, True, False)).selected


def test_device_default_resolves_to_default_route_or_falls_back():
    sel = Selector.from_settings(_S("default"), resolve=lambda: ("ens5", "IPv6 default route"))
    assert sel.device == "ens5" and "ens5 (device of the IPv6 default route)" in sel.notes[0]
    sel = Selector.from_settings(_S("default", [ERE("^e")]), resolve=lambda: (None, "no default route (IPv4 or IPv6)"))
    assert sel.device is None
    assert "no default route (IPv4 or IPv6); falling back to the interface lists" in sel.notes[0]
    assert sel.judge(Interface(2, "eth0", 1, True, False)).selected
    assert not sel.judge(Interface(3, "wg0", 1, True, False)).selected


@pytest.fixture
def ns():
    name = f"osi{os.getpid() % 100000}x{next(_n)}"
    sh(f"ip netns add {name}")
    try:
        yield name
    finally:
        sh(f"ip netns pids {name} | xargs -r kill -9", check=False)
        sh(f"ip netns del {name}", check=False)


def in_ns(ns: str, argv: list[str], env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("VSENSOR_", "OSSENSOR_", "NETWORK_DEVICE"))}
    full["PYTHONPATH"] = str(ROOT)
    full.update(env or {})
    return subprocess.run(["ip", "netns", "exec", ns] + argv, env=full, capture_output=True, text=True,
                          timeout=timeout)


DEFAULT_DEV = "from ossensor.interfaces.netlink import default_route_device as d; print(d())"


def test_default_route_device_ipv4_then_ipv6_then_none(ns):
    sh(f"ip -n {ns} link add hpa0 type veth peer name hpb0")
    sh(f"ip -n {ns} link add hpa1 type veth peer name hpb1")
    for dev in ("hpa0", "hpb0", "hpa1", "hpb1", "lo"):
        sh(f"ip -n {ns} link set {dev} up")
    r = in_ns(ns, [sys.executable, "-c", DEFAULT_DEV])
    assert r.stdout.strip() == "(None, 'no default route (IPv4 or IPv6)')", r.stderr
    sh(f"ip -n {ns} -6 addr add fd00:77::1/64 dev hpa1 nodad")
    sh(f"ip -n {ns} -6 route add default via fd00:77::2 dev hpa1")
    r = in_ns(ns, [sys.executable, "-c", DEFAULT_DEV])
    assert r.stdout.strip() == "('hpa1', 'IPv6 default route')", r.stderr
    sh(f"ip -n {ns} addr add 10.79.1.1/24 dev hpa0")
    sh(f"ip -n {ns} route add default via 10.79.1.2 dev hpa0")
    r = in_ns(ns, [sys.executable, "-c", DEFAULT_DEV])
    assert r.stdout.strip() == "('hpa0', 'IPv4 default route')", r.stderr


# --------------------------------------------------------------------------- ossensor interfaces

def _veths(ns: str, *names: str) -> None:
    for n in names:
        sh(f"ip -n {ns} link add {n} type veth peer name {n}p")


def test_interfaces_command_json_and_table(ns):
    _veths(ns, "eth0", "eth7", "veth3")
    env = {"NETWORK_DEVICE_INCLUDELIST": "^eth ^veth[[:digit:]]", "NETWORK_DEVICE_EXCLUDELIST": "eth7 p$"}
    r = in_ns(ns, [sys.executable, "-m", "ossensor", "interfaces", "--json"], env)
    assert r.returncode == 0, r.stderr
    rep = json.loads(r.stdout)
    by = {i["name"]: i for i in rep["interfaces"]}
    assert set(by) == {"lo", "eth0", "eth0p", "eth7", "eth7p", "veth3", "veth3p"}
    assert rep["selected"] == ["eth0", "veth3"] or sorted(rep["selected"]) == ["eth0", "veth3"]
    assert by["eth7"]["reason"] == "excluded by NETWORK_DEVICE_EXCLUDELIST regex 'eth7'"
    assert by["eth0p"]["reason"] == "excluded by NETWORK_DEVICE_EXCLUDELIST regex 'p$'"
    assert by["veth3"]["reason"] == "included by NETWORK_DEVICE_INCLUDELIST regex '^veth[[:digit:]]'"
    assert by["lo"]["reason"] == "matches no NETWORK_DEVICE_INCLUDELIST regex"
    assert rep["default_route_device"] is None
    # the readable table (not a terminal: plain text), one row per interface
    r = in_ns(ns, [sys.executable, "-m", "ossensor", "interfaces"], env)
    assert r.returncode == 0, r.stderr
    rows = {line.split()[1]: line for line in r.stdout.splitlines()[1:] if line[:1].isdigit()}
    assert set(rows) == set(by)
    assert " yes " in rows["eth0"] and " no " in rows["eth7"] and "regex 'eth7'" in rows["eth7"]
    assert "selected: " in r.stdout and "default route: - (no default route (IPv4 or IPv6))" in r.stdout
    assert "VSENSOR" not in r.stderr


def test_interfaces_command_old_names_and_device(ns):
    _veths(ns, "eth0")
    r = in_ns(ns, [sys.executable, "-m", "ossensor", "interfaces", "--json"],
              {"NETWORK_DEVICE_WHITELIST": "^eth0$"})
    rep = json.loads(r.stdout)
    assert rep["selected"] == ["eth0"]
    assert any("NETWORK_DEVICE_WHITELIST is deprecated" in n for n in rep["rules"]["notes"])
    r = in_ns(ns, [sys.executable, "-m", "ossensor", "interfaces", "--json"],
              {"OSSENSOR_NETWORK_DEVICE": "eth0p", "NETWORK_DEVICE_EXCLUDELIST": "eth"})
    rep = json.loads(r.stdout)
    assert rep["selected"] == ["eth0p"] and any("not consulted" in n for n in rep["rules"]["notes"])


@pytest.mark.parametrize("env, variable", [
    ({"NETWORK_DEVICE_INCLUDELIST": "^eth ("}, "NETWORK_DEVICE_INCLUDELIST"),
    ({"NETWORK_DEVICE_EXCLUDELIST": "[[:foo:]]"}, "NETWORK_DEVICE_EXCLUDELIST"),
    ({"NETWORK_DEVICE_BLACKLIST": "a{2,1}"}, "NETWORK_DEVICE_BLACKLIST"),
    ({"NETWORK_DEVICE_EXCLUDELIST": "x", "NETWORK_DEVICE_BLACKLIST": "y"}, "NETWORK_DEVICE_EXCLUDELIST"),
    ({"OSSENSOR_NETWORK_DEVICE": "a/b"}, "OSSENSOR_NETWORK_DEVICE"),
    ({"NETWORK_DEVICE_ANY": "maybe"}, "NETWORK_DEVICE_ANY"),
])
def test_bad_values_exit_2_naming_the_variable(ns, env, variable):
    for cmd in (["interfaces"], ["run"]):
        full = dict(env)
        if cmd == ["run"]:
            full.update(VSENSOR_HOSTNAME="127.0.0.1", VSENSOR_HMAC_KEY=KEY)
        r = in_ns(ns, [sys.executable, "-m", "ossensor"] + cmd, full)
        assert r.returncode == 2, (cmd, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"ossensor: {variable}: "), (cmd, r.stderr)
        assert "Traceback" not in r.stderr + r.stdout and KEY not in r.stderr + r.stdout


def _run_env(tmp_path: Path, **extra: str) -> dict:
    env = {"VSENSOR_HOSTNAME": "127.0.0.1", "VSENSOR_PORT": "9", "VSENSOR_HMAC_KEY": KEY,
           "OSSENSOR_CONFIG_PATH": str(tmp_path / "o.cfg"), "OSSENSOR_DEBUG": "0",
           "INTERFACE_WAIT_SECS": "0.1", "INTERFACE_WAIT_ATTEMPTS": "2"}
    env.update(extra)
    return env


def test_unknown_device_waits_then_exits_2(ns, tmp_path):
    r = in_ns(ns, [sys.executable, "-m", "ossensor", "run"], _run_env(tmp_path, OSSENSOR_NETWORK_DEVICE="nosuch0"))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "no interface 'nosuch0' (OSSENSOR_NETWORK_DEVICE) yet; waiting 0.1 s, 1 attempts left" in r.stdout
    assert "OSSENSOR_NETWORK_DEVICE: no such interface 'nosuch0'" in r.stdout
    assert "Traceback" not in r.stdout + r.stderr


def test_sigterm_while_waiting_for_the_device_stops_at_once_with_status_0(ns, tmp_path):
    from support import Proc

    env = _run_env(tmp_path, OSSENSOR_NETWORK_DEVICE="nosuch0", INTERFACE_WAIT_SECS="60")
    p = Proc([sys.executable, "-m", "ossensor", "run"], env=env, netns=ns)
    try:
        p.wait_for(r"no interface 'nosuch0' \(OSSENSOR_NETWORK_DEVICE\) yet; waiting 60 s")
        t0 = time.monotonic()
        assert p.stop(timeout=10) == 0, p.output
        assert time.monotonic() - t0 < 5, "the 60 s wait was not cut short"
        assert "L0 stopped by SIGTERM while waiting for interface 'nosuch0' (OSSENSOR_NETWORK_DEVICE)" in p.output
        assert "Traceback" not in p.output and "ERROR" not in p.output
    finally:
        p.kill()


def test_device_default_without_default_route_falls_back_to_lists(ns, tmp_path):
    _veths(ns, "hpd0")
    r = in_ns(ns, [sys.executable, "-m", "ossensor", "run"],
              _run_env(tmp_path, OSSENSOR_NETWORK_DEVICE="default", NETWORK_DEVICE_INCLUDELIST="^nomatch"))
    assert r.returncode == 2, r.stdout + r.stderr  # the include list is the user's input
    assert ("L0 OSSENSOR_NETWORK_DEVICE=default: no default route (IPv4 or IPv6); falling back to the "
            "interface lists") in r.stdout
    assert "NETWORK_DEVICE_INCLUDELIST: '^nomatch' selects no interface" in r.stdout


# --------------------------------------------------------------------------- ~300 interfaces, one filter

FILTER_300 = r"""
import ctypes, json, socket, struct, sys, time
from ossensor.capture import bpf
from ossensor.interfaces.netlink import enumerate_interfaces

prefix = sys.argv[1]
ifs = [i for i in enumerate_interfaces(addresses=False) if i.name.startswith(prefix)]
# every tenth interface is not selected; of the others, even positions are group A (port 4242),
# odd ones group B (port 4243): 270 checks, more than one 8-bit jump reaches
A = [i for k, i in enumerate(ifs) if k % 10 != 9 and k % 2 == 0]
B = [i for k, i in enumerate(ifs) if k % 10 != 9 and k % 2 == 1]
prog = bpf.build_program([([i.index for i in A], bpf.compile_expr("udp dst port 4242", 1, 65535)),
                          ([i.index for i in B], bpf.compile_expr("udp dst port 4243", 1, 65535))])
# the program on a plain packet socket bound to every interface, as the ring's socket is
rx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
rx.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: hold all ~540 frames
insns = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in prog))
fprog = struct.pack("HxxxxxxQ", len(prog), ctypes.addressof(insns))
rx.setsockopt(socket.SOL_SOCKET, 26, fprog)  # SO_ATTACH_FILTER
rx.setblocking(False)
while True:  # whatever entered before the filter was attached
    try:
        rx.recv(65535)
    except BlockingIOError:
        break

def frame(dport):
    payload = b"x" * 8
    udp = struct.pack("!HHHH", 1111, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + udp
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + ip

tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
for i in ifs:
    if i.name.endswith("p"):
        continue  # send on one end of each pair: out of it (outgoing) and into its peer (incoming)
    for port in (4242, 4243, 4244):
        tx.sendto(frame(port), (i.name, 0))
seen = {}
deadline = time.monotonic() + 2
while time.monotonic() < deadline:
    try:
        data, addr = rx.recvfrom(65535)
    except BlockingIOError:
        time.sleep(0.01)
        continue
    dport = struct.unpack_from("!H", data, 14 + 20 + 2)[0]
    seen[f"{addr[0]}:{dport}"] = seen.get(f"{addr[0]}:{dport}", 0) + 1
print(json.dumps({"n": len(ifs), "prog": len(prog), "seen": seen,
                  "A": [i.name for i in A], "B": [i.name for i in B]}))
"""


@pytest.mark.timeout(60)
def test_kernel_filter_for_300_interfaces_selects_exactly(ns):
    lines = []
    for k in range(150):
        lines += [f"link add hpk{k} type veth peer name hpk{k}p", f"link set hpk{k} up", f"link set hpk{k}p up"]
    subprocess.run(["ip", "-n", ns, "-batch", "-"], input="\n".join(lines) + "\n", text=True, check=True,
                   timeout=30)
    r = in_ns(ns, [sys.executable, "-c", FILTER_300, "hpk"])
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["n"] == 300 and out["prog"] > 256  # past the 8-bit jump range: the ja chain is used
    # every interface in A saw exactly its one 4242 frame, every one in B its one 4243 frame, no other
    assert out["seen"] == {**{f"{n}:4242": 1 for n in out["A"]}, **{f"{n}:4243": 1 for n in out["B"]}}


# --------------------------------------------------------------------------- pyroute2, lean

def _python(code: str) -> str:
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_the_sensor_imports_only_the_corners_of_pyroute2_it_uses():
    # pyroute2/__init__ imports the whole library (~10 MiB on every node); the sensor needs IPRoute and
    # the rtnl parser. Both work, the rest is not loaded, and asking pyroute2 for any of its names
    # afterwards still works (its __init__ runs then).
    out = _python(
        "import sys, socket\n"
        "import ossensor.sensor, ossensor.interfaces.hotplug\n"
        "from ossensor.interfaces._pyroute2 import IPRoute\n"
        "with IPRoute() as ip:\n"
        "    names = [l.get_attr('IFLA_IFNAME') for l in ip.get_links()]\n"
        "print('lo' in names, socket.if_nametoindex('lo') in [l['index'] for l in IPRoute().get_links()])\n"
        "print(sorted({m.split('.')[1] for m in sys.modules if m.startswith('pyroute2.')} & {'ndb', 'ipdb', 'nftables', 'plan9'}))\n"
        "import pyroute2\n"
        "from pyroute2 import NDB, IPRoute as I2\n"
        "print(I2 is IPRoute, NDB.__name__, pyroute2.IPRoute is IPRoute)\n")
    assert out.splitlines() == ["True True", "[]", "True NDB True"]


def test_pyroute2_imported_first_is_used_as_it_is():
    out = _python("import pyroute2\nfrom ossensor.interfaces._pyroute2 import IPRoute\nprint(IPRoute is pyroute2.IPRoute)\n")
    assert out.strip() == "True"


def test_pyroute2_falls_back_to_the_plain_import_when_the_lean_one_fails():
    # a pyroute2 whose submodules cannot load without its __init__: the plain import, same classes
    out = _python(
        "import importlib.abc, sys\n"
        "class Once(importlib.abc.MetaPathFinder):\n"
        "    fired = False\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'pyroute2.netlink.rtnl.marshal' and not Once.fired:\n"
        "            Once.fired = True\n"
        "            raise ImportError('simulated')\n"
        "sys.meta_path.insert(0, Once())\n"
        "from ossensor.interfaces._pyroute2 import IPRoute, MarshalRtnl\n"
        "import pyroute2\n"
        "print(Once.fired, IPRoute is pyroute2.IPRoute, 'pyroute2.ndb.main' in sys.modules)\n")
    assert out.strip() == "True True True"
