"""Install without a compiler: the manylinux wheel (scripts/build-wheel.sh) into a clean Debian bookworm root
holding python3 and python3-venv only (no gcc, no libpcap, no -dev package), and the sdist into one holding
exactly the apt packages README names; in both, the commands a new user runs first.

The roots are made once with debootstrap and cached (OSSENSOR_ROOTS, default /var/cache/ossensor-roots), the
dependencies' wheels downloaded once into a wheelhouse there (pip then installs with --no-index), so a
second run takes about a minute. Only this machine is touched: chroot, no network from inside."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import capfiles
from support import ROOT

pytestmark = pytest.mark.timeout(1500)

ROOTS = Path(os.environ.get("OSSENSOR_ROOTS", "/var/cache/ossensor-roots"))
# README's "from source" line names exactly these (and python3-venv for the virtualenv)
SOURCE_APT = ["gcc", "python3-dev", "libpcap-dev"]


def sh(argv: list[str], timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    assert r.returncode == 0, f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def debian_root(name: str, packages: list[str]) -> Path:
    """A bookworm root with `packages` (and what they need), made once and cached; kept only when whole."""
    root = ROOTS / name
    if (root / ".complete").exists():
        return root
    from test_container import debian_mirror

    tmp = ROOTS / f"{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    ROOTS.mkdir(parents=True, exist_ok=True)
    sh(["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", "bookworm", str(tmp), debian_mirror()],
       timeout=900)
    (tmp / ".complete").write_text(",".join(packages) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    tmp.rename(root)
    return root


@pytest.fixture(scope="module")
def dist() -> tuple[Path, Path]:
    sh(["bash", str(ROOT / "scripts" / "build-wheel.sh")], timeout=1200, cwd=ROOT)
    wheels = sorted((ROOT / "dist").glob("ossensor-*-manylinux*.whl"))
    sdists = sorted((ROOT / "dist").glob("ossensor-*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, list((ROOT / "dist").iterdir())
    return wheels[0], sdists[0]


@pytest.fixture(scope="module")
def wheelhouse(dist) -> Path:
    """The dependencies' wheels (and the build backend's, for the sdist), downloaded once per dependency set."""
    wheel, _ = dist
    pins = (ROOT / "pyproject.toml").read_bytes()
    house = ROOTS / f"wheelhouse-{hashlib.sha256(pins).hexdigest()[:12]}"
    if not (house / ".complete").exists():
        shutil.rmtree(house, ignore_errors=True)
        sh([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(house), str(wheel),
            "setuptools>=77", "wheel"], timeout=900)
        for own in house.glob("ossensor-*"):
            own.unlink()
        (house / ".complete").write_text("")
    return house


class Chroot:
    """Commands in a root, with /proc and /dev mounted for the duration (unmounted even on failure)."""

    def __init__(self, root: Path):
        self.root = root
        self.mounts: list[Path] = []

    def __enter__(self) -> "Chroot":
        for src, dst, args in (("/dev", "dev", ["--bind"]), ("proc", "proc", ["-t", "proc"])):
            target = self.root / dst
            sh(["mount", *args, src, str(target)])
            self.mounts.append(target)
        return self

    def __exit__(self, *exc) -> None:
        for m in reversed(self.mounts):
            subprocess.run(["umount", "-l", str(m)], capture_output=True)

    def run(self, script: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        full = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root", **(env or {})}
        return subprocess.run(["chroot", str(self.root), "/bin/sh", "-c", script], env=full, capture_output=True,
                              text=True, timeout=timeout)


def stage(root: Path, files: list[Path], house: Path) -> None:
    w = root / "w"
    shutil.rmtree(w, ignore_errors=True)
    shutil.copytree(house, w / "house")
    for f in files:
        shutil.copy2(f, w / f.name)
    frames = [capfiles.eth_udp(i, 60, 9999 if i % 2 else 53) for i in range(10)]  # 5 to port 9999
    (w / "small.pcap").write_bytes(capfiles.pcap([(1_700_000_000 * 10**9 + i * 1000, f, len(f))
                                                  for i, f in enumerate(frames)]))


def first_use(ch: Chroot, install: str) -> None:
    """Install into a fresh venv of the root, then what a new user runs first."""
    r = ch.run(f"rm -rf /opt/v && python3 -m venv /opt/v && /opt/v/bin/pip install -q --no-index "
               f"--find-links /w/house {install}", timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    r = ch.run("/opt/v/bin/ossensor --help")
    assert r.returncode == 0 and "usage: ossensor" in r.stdout, r.stderr
    r = ch.run("BPF='udp port 9999' /opt/v/bin/ossensor replay /w/small.pcap --out /w/out.pcapng")
    assert r.returncode == 0, r.stdout + r.stderr
    read = subprocess.run(["tcpdump", "-nr", str(ch.root / "w" / "out.pcapng")], capture_output=True, text=True)
    assert read.returncode == 0, read.stderr
    assert len(read.stdout.splitlines()) == 5 and all(".9999:" in line for line in read.stdout.splitlines())
    r = ch.run("/opt/v/bin/ossensor interfaces --json")
    assert r.returncode == 0 and '"interfaces"' in r.stdout, r.stdout + r.stderr
    r = ch.run("VSENSOR_HOSTNAME=vsensor.example VSENSOR_HMAC_KEY=0123456789abcdef VSENSOR_PORT=0 "
               "/opt/v/bin/ossensor run")
    assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
    assert r.stderr.splitlines() == ["ossensor: VSENSOR_PORT: must be an integer 1-65535, got '0'"], r.stderr


def test_wheel_installs_and_runs_without_compiler_or_libpcap(dist, wheelhouse):
    wheel, _ = dist
    root = debian_root("bookworm-python", ["python3", "python3-venv"])
    stage(root, [wheel], wheelhouse)
    with Chroot(root) as ch:
        bare = ch.run("command -v gcc cc; ls /usr/include/pcap /usr/lib/x86_64-linux-gnu/libpcap.so* 2>/dev/null")
        assert bare.stdout.strip() == "", f"the root is not bare: {bare.stdout}"
        first_use(ch, f"/w/{wheel.name}")
        # the bundled libpcap is the one both the reader and the BPF compiler use
        r = ch.run("/opt/v/bin/python -c 'from ossensor.capture import pcapcompile as p; "
                   "print(p._bundled()); p.compile_dead(\"udp\", 1, 262144)'")
        assert r.returncode == 0 and "ossensor.libs/libpcap" in r.stdout, r.stdout + r.stderr


def test_sdist_builds_with_exactly_the_apt_packages_readme_names(dist, wheelhouse):
    _, sdist = dist
    readme = (ROOT / "README.md").read_text()
    assert f"apt-get install -y python3-venv {' '.join(SOURCE_APT)}" in readme
    root = debian_root("bookworm-source", ["python3", "python3-venv", *SOURCE_APT])
    stage(root, [sdist], wheelhouse)
    with Chroot(root) as ch:
        first_use(ch, f"/w/{sdist.name}")
