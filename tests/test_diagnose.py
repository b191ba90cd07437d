"""`ossensor diagnose` (issue 8) against the real reference vSensor over real TLS, in a namespace."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from support import KEY, ROOT, Topology, free_port, sensor_env, start_vsensor

pytestmark = pytest.mark.timeout(60)

CHECKS = ["configuration", "capabilities", "interfaces", "bpf", "capture ring", "dns", "tcp", "tls", "key"]

REFUSING_PROXY = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(8)
print("proxy listening", flush=True)
while True:
    c, _ = s.accept()
    c.recv(65536)
    c.sendall(b"HTTP/1.1 403 Forbidden\\r\\nContent-Length: 0\\r\\nConnection: close\\r\\n\\r\\n")
    c.close()
"""


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """One namespace pair with a healthy reference vSensor for every diagnose case (they only read)."""
    tmp = tmp_path_factory.mktemp("diag")
    with Topology() as topo:
        vs, port = start_vsensor(topo, tmp / "vs", port=free_port())
        yield topo, tmp, port


def diagnose(topo: Topology, env: dict[str, str]) -> tuple[int, str, dict[str, str]]:
    full = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(ROOT), "NO_PROXY": "", "no_proxy": "",
            "HTTPS_PROXY": "", "https_proxy": ""}
    full.update(env)
    r = subprocess.run(["ip", "netns", "exec", topo.cap, sys.executable, "-m", "ossensor", "diagnose"],
                       env=full, capture_output=True, text=True, timeout=45)
    assert "Traceback" not in r.stdout + r.stderr, r.stdout + r.stderr
    verdicts = {}
    for line in r.stdout.splitlines():
        m = re.match(r"^(ok|FAIL|warn|skip) +([a-z ]+): (.*)$", line)
        if m:
            verdicts[m.group(2)] = m.group(1) + " " + m.group(3)
    return r.returncode, r.stdout + r.stderr, verdicts


def test_healthy_vsensor_all_checks_pass(site):
    topo, tmp, port = site
    code, out, v = diagnose(topo, sensor_env(topo, tmp, port))
    assert code == 0, out
    assert list(v) == CHECKS, out  # one verdict each, in order
    assert all(x.startswith(("ok ", "warn ")) for x in v.values()), out
    assert out.rstrip().endswith("diagnose: all 9 checks passed")
    assert "CAP_NET_RAW present" in v["capabilities"]
    assert f"would capture {topo.cap_if}" in v["interfaces"]
    assert "host 127.0.0.1 and tcp port" in out  # the kernel filter shown, with the own-traffic exclusion
    assert "127.0.0.1 is an address" in v["dns"]
    assert f"connected to vSensor 127.0.0.1:{port}" in v["tcp"]
    assert re.search(r"certificate subject .*CN=.*, issuer .*CN=.*, expires \d{4}-\d\d-\d\dT", v["tls"]), v["tls"]
    assert "verified against" in v["tls"] and "ca.pem" in v["tls"]
    assert "the vSensor accepts the key" in v["key"] and "-> 200" in v["key"]
    assert KEY not in out and KEY.encode().hex() not in out


def test_nothing_listening(site):
    topo, tmp, _ = site
    dead = free_port()
    code, out, v = diagnose(topo, sensor_env(topo, tmp, dead))
    assert code == 1, out
    assert v["dns"].startswith("ok")
    assert v["tcp"].startswith(f"FAIL cannot connect to the vSensor: 127.0.0.1:{dead}: Connection refused"), out
    assert "nothing listens there" in v["tcp"]
    assert v["tls"].startswith("skip") and v["key"].startswith("skip")
    assert out.rstrip().endswith("diagnose: 1 failed (tcp), 2 skipped")


def test_wrong_ca(site):
    from ossensor.vsensor.tls import ensure_self_signed

    topo, tmp, port = site
    other = tmp / "other-ca"
    ensure_self_signed(other, [])
    code, out, v = diagnose(topo, sensor_env(topo, tmp, port, OSSENSOR_TLS_CA_FILE=str(other / "ca.pem")))
    assert code == 1, out
    assert v["tcp"].startswith("ok")
    assert v["tls"].startswith("FAIL certificate verification failed: unable to get local issuer certificate"), out
    assert "OSSENSOR_TLS_CA_FILE" in v["tls"]
    assert re.search(r"the vSensor presents: subject .*, issuer .*, expires", out), out
    assert v["key"].startswith("skip")


def test_wrong_key(site):
    topo, tmp, port = site
    code, out, v = diagnose(topo, sensor_env(topo, tmp, port, VSENSOR_HMAC_KEY="definitely-not-the-key"))
    assert code == 1, out
    assert v["tls"].startswith("ok")
    assert v["key"].startswith("FAIL the vSensor refuses this sensor: POST /v1/hello -> 401"), out
    assert "signature does not verify" in v["key"] and "VSENSOR_HMAC_KEY" in v["key"]
    assert "definitely-not-the-key" not in out


def test_proxy_refusing_connect(site):
    topo, tmp, port = site
    pport = free_port()
    proxy = topo.spawn([sys.executable, "-c", REFUSING_PROXY, str(pport)], netns=topo.cap)
    try:
        proxy.wait_for("proxy listening")
        code, out, v = diagnose(topo, sensor_env(topo, tmp, port, HTTPS_PROXY=f"http://127.0.0.1:{pport}"))
    finally:
        proxy.kill()
    assert code == 1, out
    assert f"via proxy http://127.0.0.1:{pport} (HTTPS_PROXY)" in v["configuration"]
    assert "proxy 127.0.0.1 is an address" in v["dns"]
    assert v["tcp"].startswith(f"FAIL proxy http://127.0.0.1:{pport} refused"), out
    assert f"CONNECT 127.0.0.1:{port} -> HTTP/1.1 403 Forbidden" in v["tcp"]
    assert v["tls"].startswith("skip") and v["key"].startswith("skip")


def test_no_proxy_bypasses_the_proxy(site):
    topo, tmp, port = site
    code, out, v = diagnose(topo, sensor_env(topo, tmp, port, HTTPS_PROXY="http://127.0.0.1:9",
                                             NO_PROXY="127.0.0.1"))
    assert code == 0, out
    assert "direct (no proxy applies)" in v["configuration"]


def test_invalid_configuration_exits_2_naming_each_problem(site):
    topo, tmp, _ = site
    code, out, v = diagnose(topo, {"VSENSOR_PORT": "http", "VSENSOR_HMAC_KEY": KEY})
    assert code == 2, out
    assert v["configuration"] == "FAIL 2 problems"
    assert "      VSENSOR_HOSTNAME: required, not set" in out
    assert "      VSENSOR_PORT: must be an integer 1-65535, got 'http'" in out
    assert v["capabilities"].startswith("ok")  # still checked: it needs no configuration
    assert all(v[c].startswith("skip") for c in CHECKS[2:])
    assert KEY not in out


def test_dns_failure(site):
    topo, tmp, port = site
    code, out, v = diagnose(topo, sensor_env(topo, tmp, port, VSENSOR_HOSTNAME="vsensor.invalid"))
    assert code == 1, out
    assert "own-traffic exclusion left out" in v["bpf"] and v["bpf"].startswith("ok")
    assert v["dns"].startswith("FAIL cannot resolve the vSensor 'vsensor.invalid': "), out
    assert "resolver: " in v["dns"]
    assert all(v[c].startswith("skip") for c in ("tcp", "tls", "key"))


def test_missing_net_raw(site):
    topo, tmp, port = site
    full = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(ROOT), **sensor_env(topo, tmp, port)}
    r = subprocess.run(["ip", "netns", "exec", topo.cap, "setpriv", "--bounding-set=-net_raw", "--inh-caps=-net_raw",
                        sys.executable, "-m", "ossensor", "diagnose"], env=full, capture_output=True, text=True,
                       timeout=45)
    out = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in out, out
    assert re.search(r"^FAIL  capabilities: CAP_NET_RAW MISSING, .*add: \[\"NET_RAW\"\]", out, re.M), out
    assert re.search(r"^FAIL  capture ring: cannot open an AF_PACKET socket: permission denied "
                     r"\(needs CAP_NET_RAW\)", out, re.M), out
    assert re.search(r"^ok    key: ", out, re.M)  # the network path does not need it


def test_through_a_working_proxy(site, tmp_path):
    topo, tmp, port = site
    pport = free_port()
    conf = tmp_path / "tinyproxy.conf"
    conf.write_text(f"Port {pport}\nListen 127.0.0.1\nTimeout 30\nAllow 127.0.0.1\nConnectPort {port}\n"
                    f"MaxClients 8\nLogLevel Critical\nPidFile \"{tmp_path / 'tp.pid'}\"\n")
    proxy = topo.spawn(["tinyproxy", "-d", "-c", str(conf)], netns=topo.cap)
    try:
        topo.run_in(topo.cap, f"""
import socket, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", {pport}), 1).close()
        break
    except OSError:
        time.sleep(0.05)
""")
        code, out, v = diagnose(topo, sensor_env(topo, tmp, port, HTTPS_PROXY=f"http://127.0.0.1:{pport}"))
    finally:
        proxy.kill()
    assert code == 0, out
    assert f"through proxy http://127.0.0.1:{pport}" in v["tcp"] and f"CONNECT 127.0.0.1:{port} -> HTTP/1." in v["tcp"]
    assert " 200 " in v["tcp"], v["tcp"]
    assert v["key"].startswith("ok the vSensor accepts the key")
