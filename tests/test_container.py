"""The container image, for real: built with podman from the Dockerfile on a base image made here
(debootstrap + podman import), run as the manifests run it — every capability dropped but NET_RAW,
the shipped seccomp profile, a read-only root filesystem, no_new_privs, the host's network — it
captures a veth and its batches reach the reference vSensor on loopback. One capability fewer and
it stops with one line naming the capability.

Kept between runs on the same machine, to stay fast: the base image `localhost/ossensor-test-base:bookworm`
and podman's build cache (remove them with `podman rmi localhost/ossensor-test-base:bookworm` and
`podman image prune`). The image under test, containers, namespaces and veths are removed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from support import KEY, ROOT, Proc, free_port, loopback_vsensor, vsensor_packets

BASE = "localhost/ossensor-test-base:bookworm"
TAG = f"localhost/ossensor-test:{os.getpid()}"
SECCOMP = ROOT / "daemonset" / "ossensor-seccomp.json"
CONTEXT_FILES = ["pyproject.toml", "setup.py", "README.md", "LICENSE", "MANIFEST.in", "native", "ossensor", "Dockerfile",
                 ".dockerignore",
                 "daemonset/ossensor-seccomp.json"]
pytestmark = [pytest.mark.timeout(900),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (podman, namespaces)")]


def manifest_caps() -> list[str]:
    """The capabilities the shipped DaemonSet adds: the container runs with exactly these."""
    text = (ROOT / "daemonset" / "ossensor-daemonset.yaml").read_text()
    m = re.search(r"add:\s*\[([^\]]*)\]", text)
    assert m, "no capabilities.add in daemonset/ossensor-daemonset.yaml"
    return [c.strip().strip("\"'") for c in m.group(1).split(",") if c.strip()]


def debian_mirror() -> str:
    for path in ["/etc/apt/sources.list", *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for m in re.finditer(r"(?:URIs:\s*|^deb\s+(?:\[[^\]]*\]\s+)?)(\S+/debian)/?\s", text, re.M):
            return m.group(1)
    return "http://deb.debian.org/debian"


class Podman:
    def __init__(self, workdir: Path):
        conf = workdir / "containers.conf"
        # raising ulimits is refused on this machine; crun does not work here, runc does
        conf.write_text('[containers]\ndefault_ulimits = []\n[engine]\nruntime = "runc"\n')
        self.env = dict(os.environ, CONTAINERS_CONF=str(conf))

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(["podman", *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r


def ensure_base(podman: Podman, work: Path) -> None:
    if podman("image", "exists", BASE, check=False).returncode == 0:
        return
    rootfs = work / "rootfs"
    try:
        r = subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,libpcap0.8,ca-certificates",
                            "bookworm", str(rootfs), debian_mirror()], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"debootstrap failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run(["podman", "import", "-", BASE], stdin=tar.stdout, env=podman.env,
                             capture_output=True, text=True, timeout=300)
        tar.stdout.close()
        tar.wait(60)
        assert imp.returncode == 0, imp.stderr
    finally:
        shutil.rmtree(rootfs, ignore_errors=True)


@pytest.fixture(scope="module")
def podman():
    for tool in ("podman", "runc", "debootstrap"):
        assert shutil.which(tool), f"{tool} is not installed: run scripts/setup.sh"
    with tempfile.TemporaryDirectory(prefix="osdk-podman-") as d:
        yield Podman(Path(d))


@pytest.fixture(scope="module")
def image(podman):
    """Build the Dockerfile with podman on the local base. Wheels of the dependencies are built on
    the host and offered in wheelhouse/ (PIP_OPTS=--no-index: no index is reached from the build);
    ossensor itself is the manylinux wheel scripts/build-wheel.sh makes, as users install it."""
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="osdk-build-") as d:
        work = Path(d)
        ensure_base(podman, work)
        t_base = time.monotonic() - t0
        ctx = work / "ctx"
        ctx.mkdir()
        for name in CONTEXT_FILES:
            src = ROOT / name
            (ctx / name).parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree(src, ctx / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
             if src.is_dir() else shutil.copy2(src, ctx / name))
        wh = ctx / "wheelhouse"
        for args in (["setuptools>=68", "wheel"], [str(ctx)]):
            r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wh), *args],
                               capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, r.stderr[-3000:]
        for whl in wh.glob("ossensor-*.whl"):
            whl.unlink()  # not this host build: the manylinux wheel below
        r = subprocess.run(["bash", str(ROOT / "scripts" / "build-wheel.sh")], capture_output=True, text=True,
                           timeout=1200, cwd=ROOT)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        (ctx / "dist").mkdir()
        for whl in (ROOT / "dist").glob("ossensor-*-manylinux*.whl"):
            shutil.copy2(whl, ctx / "dist" / whl.name)
        podman("build", "--network", "host", "--build-arg", f"BASE_IMAGE={BASE}",
               "--build-arg", "PIP_OPTS=--no-index", "--build-arg", "REVISION=test",
               "-t", TAG, str(ctx), timeout=900)
    print(f"\nbase image ready in {t_base:.0f} s, image built in {time.monotonic() - t0 - t_base:.0f} s")
    yield TAG
    podman("rmi", "-f", TAG, check=False)


@pytest.fixture
def veth():
    """A namespace with a veth pair; the host end (`osdk…`) stays in the root namespace, where the
    container (--network host) captures it. 10.78.N.0/24 exists only on this pair."""
    n = os.getpid() % 200 + 10
    ns, host_if, peer_if = f"osdkns{os.getpid()}", f"osdk{os.getpid()}"[:15], f"osdp{os.getpid()}"[:15]
    host_ip, peer_ip = f"10.78.{n}.1", f"10.78.{n}.2"

    def sh(cmd):
        subprocess.run(cmd, shell=True, check=True, timeout=20, capture_output=True)
    try:
        sh(f"ip netns add {ns}")
        sh(f"ip link add {host_if} type veth peer name {peer_if} netns {ns}")
        sh(f"ip addr add {host_ip}/24 dev {host_if} && ip link set {host_if} up")
        sh(f"ip -n {ns} addr add {peer_ip}/24 dev {peer_if} && ip -n {ns} link set {peer_if} up "
           f"&& ip -n {ns} link set lo up")
        yield {"ns": ns, "host_if": host_if, "host_ip": host_ip}
    finally:
        subprocess.run(f"ip link del {host_if}", shell=True, capture_output=True, timeout=20)
        subprocess.run(f"ip netns pids {ns} | xargs -r kill -9; ip netns del {ns}", shell=True,
                       capture_output=True, timeout=20)


@pytest.fixture
def vsensor(tmp_path):
    out = tmp_path / "vs"
    with loopback_vsensor(out) as (p, port):
        yield {"port": port, "out": out, "proc": p}


def run_args(podman: Podman, image: str, tmp: Path, vs: dict, device: str, caps: list[str], name: str,
             **env: str) -> list[str]:
    """`podman run` as the DaemonSet runs the container."""
    etc, spool, secrets = tmp / "etc-darktrace", tmp / "spool", tmp / "secrets"
    for d in (etc, spool, secrets):
        d.mkdir(exist_ok=True)
    (secrets / "hmac-key").write_text(KEY + "\n")
    (secrets / "hmac-key").chmod(0o400)
    args = ["podman", "run", "--rm", "--name", name, "--runtime", "runc", "--network", "host",
            "--cap-drop", "ALL", *[f"--cap-add={c}" for c in caps],
            "--security-opt", f"seccomp={SECCOMP}", "--security-opt", "no-new-privileges",
            "--read-only", "--read-only-tmpfs=false",
            "-v", f"{etc}:/etc/darktrace:rw", "-v", f"{spool}:/var/lib/ossensor:rw",
            "-v", f"{secrets}:/var/run/secrets/ossensor:ro",
            "-v", f"{vs['out'] / 'ca.pem'}:/etc/ossensor-tls/ca.pem:ro",
            "-e", "VSENSOR_HOSTNAME=127.0.0.1", "-e", f"VSENSOR_PORT={vs['port']}",
            "-e", "VSENSOR_HMAC_KEY_FILE=/var/run/secrets/ossensor/hmac-key",
            "-e", "OSSENSOR_TLS_CA_FILE=/etc/ossensor-tls/ca.pem",
            "-e", f"OSSENSOR_NETWORK_DEVICE={device}", "-e", "BPF=udp port 9999",
            "-e", "OSSENSOR_DEBUG=2", "-e", "OSSENSOR_RING_MB=8",
            "-e", "OSSENSOR_BATCH_MAX_AGE_MS=100", "-e", "OSSENSOR_STATS_INTERVAL=1",
            *[a for k, v in env.items() for a in ("-e", f"{k}={v}")],
            image]
    return args


SENDER = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(int(sys.argv[2])):
    s.sendto(b"ossensor-container-%06d" % i, (sys.argv[1], 9999))
"""


def test_image_has_no_compiler_pip_or_network_tools_and_is_labelled(podman, image):
    r = podman("run", "--rm", "--runtime", "runc", "--network", "none", "--entrypoint", "/bin/sh", image, "-c",
               "for t in gcc cc g++ make pip pip3 apt-get curl wget ping ip ss nc tcpdump ssh; do "
               "command -v $t; done; /opt/ossensor/bin/ossensor --version; "
               "ls /opt/ossensor/lib/python3*/site-packages/ossensor.libs/", check=False)
    found = [l for l in r.stdout.splitlines() if l.startswith("/")]
    assert found in ([], ["/usr/bin/apt-get"]), f"tools in the runtime image: {found}"
    assert "ossensor 0.1.0" in r.stdout, r.stdout + r.stderr
    assert "libpcap-" in r.stdout, "the image did not install the manylinux wheel (libpcap bundled)"
    info = json.loads(podman("image", "inspect", image).stdout)[0]
    labels = info["Labels"] if "Labels" in info else info["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == "0.1.0"
    assert labels["org.opencontainers.image.source"].startswith("https://")
    assert info["Config"]["Entrypoint"] == ["/opt/ossensor/bin/ossensor", "run"]


def test_least_privilege_container_captures_a_veth_into_the_vsensor(podman, image, veth, vsensor, tmp_path):
    caps = manifest_caps()
    assert caps == ["NET_RAW"], caps
    name = f"osdk-run-{os.getpid()}"
    mport = free_port()
    # as the DaemonSet: metrics/probes listening, the spool on its volume; Antigena on too, so its send
    # socket is opened before the drop
    p = Proc(run_args(podman, image, tmp_path, vsensor, veth["host_if"], caps, name, ANTIGENA_ENABLED="true",
                      OSSENSOR_METRICS_PORT=str(mport), OSSENSOR_METRICS_ADDR="127.0.0.1",
                      OSSENSOR_SPOOL_DIR="/var/lib/ossensor/spool"), env=podman.env)
    try:
        p.wait_for(r"capturing on " + veth["host_if"], timeout=60)
        p.wait_for(r"capabilities dropped after opening the sockets: had \[NET_RAW\], now none", timeout=10)
        p.wait_for(r" stats captured=", timeout=20)
        with urllib.request.urlopen(f"http://127.0.0.1:{mport}/healthz", timeout=10) as resp:
            assert resp.status == 200  # the liveness probe, served under the seccomp profile
        n = 200
        r = subprocess.run(["ip", "netns", "exec", veth["ns"], sys.executable, "-c", SENDER, veth["host_ip"], str(n)],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(vsensor_packets(vsensor["out"])) < n:
            time.sleep(0.25)
        podman("stop", "-t", "15", name, timeout=60)
        assert p.p.wait(30) == 0, p.output
    finally:
        podman("rm", "-f", name, check=False)
        p.kill()
    got = vsensor_packets(vsensor["out"])
    assert len(got) == n, p.output
    assert {ifname for ifname, _ in got} == {veth["host_if"]}
    assert all(b"ossensor-container-" in pkt.data for _, pkt in got)
    final = [l for l in p.lines if "final stats" in l][-1]
    assert f"captured={n} " in final and f"acked={n} " in final, final
    assert "stopped" in p.output
    assert KEY not in p.output
    cfg = (tmp_path / "etc-darktrace" / "ossensor.cfg").read_text()
    assert "[osSensor]" in cfg and KEY not in cfg


def test_one_capability_fewer_is_one_line_naming_it(podman, image, vsensor, veth, tmp_path):
    name = f"osdk-nocap-{os.getpid()}"
    args = run_args(podman, image, tmp_path, vsensor, veth["host_if"], [], name, ANTIGENA_ENABLED="false")
    try:
        r = subprocess.run(args, env=podman.env, capture_output=True, text=True, timeout=120)
    finally:
        podman("rm", "-f", name, check=False)
    out = r.stdout + r.stderr
    assert r.returncode == 2, out
    errors = [l for l in out.splitlines() if " ERROR " in l or l.startswith("ossensor:")]
    assert len(errors) == 1, out
    assert "missing capability CAP_NET_RAW" in errors[0], out
    assert "Traceback" not in out and KEY not in out
