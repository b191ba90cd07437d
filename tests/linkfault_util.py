"""Helpers for the vSensor-link fault tests: certificates, a paced UDP sender, a misbehaving
HTTPS peer, and readers of the sensor's statistics and the vSensor's store."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import subprocess
import sys
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from support import Proc, Topology, vsensor_packets


# ---------------------------------------------------------------------------- certificates
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(directory: Path, cn: str) -> tuple[Path, x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{cn}-ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path, cert, key


def make_leaf(directory: Path, stem: str, ca_cert, ca_key, names: list[str], *, client: bool = False,
              expired: bool = False) -> tuple[Path, Path]:
    import ipaddress

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    start, end = (now - dt.timedelta(days=10), now - dt.timedelta(days=1)) if expired else \
        (now - dt.timedelta(days=1), now + dt.timedelta(days=10))
    sans = []
    for n in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    eku = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    cert = (x509.CertificateBuilder().subject_name(_name(names[0])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_path.chmod(0o600)
    return cert_path, key_path


# ---------------------------------------------------------------------------- traffic
PACED_SENDER = r"""
import socket, sys, time
dst, port, start, n, rate, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), int(sys.argv[6])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(b"arp warm-up", (dst, 9))  # resolve the neighbour first: packets queued behind ARP can be dropped
time.sleep(0.3)
t0 = time.perf_counter()
for k in range(n):
    i = start + k
    s.sendto((b"ossensor-%08d-" % i).ljust(size, b"x"), (dst, port))
    if k % 100 == 99:
        ahead = t0 + (k + 1) / rate - time.perf_counter()
        if ahead > 0:
            time.sleep(ahead)
print("sent", n, "in", round(time.perf_counter() - t0, 2), "s", flush=True)
"""


def start_sender(topo: Topology, start: int, n: int, rate: float, size: int = 100, port: int = 9999) -> Proc:
    """Packets ossensor-<index> for index in [start, start+n), at `rate` per second, in the background."""
    return topo.spawn([sys.executable, "-c", PACED_SENDER, topo.cap_ip, str(port), str(start), str(n),
                       str(rate), str(size)], netns=topo.peer)


_IDX = re.compile(rb"ossensor-(\d{8})-")


def stored_indices(out: Path) -> list[int]:
    """The sender's index of every packet the reference vSensor stored (in storage order)."""
    idx = []
    for _, p in vsensor_packets(out):
        m = _IDX.search(bytes(p.data[42:60]))
        if m:
            idx.append(int(m.group(1)))
    return idx


def payload_digest(out: Path) -> tuple[int, str]:
    """(count, sha256 over the UDP payloads ordered by index) of what the vSensor stored."""
    pay = {}
    for _, p in vsensor_packets(out):
        data = bytes(p.data[42:])
        m = _IDX.match(data)
        if m:
            pay.setdefault(int(m.group(1)), []).append(data)
    h = hashlib.sha256()
    for i in sorted(pay):
        for d in pay[i]:
            h.update(d)
    return sum(len(v) for v in pay.values()), h.hexdigest()


def expected_digest(start: int, n: int, size: int = 100) -> str:
    h = hashlib.sha256()
    for i in range(start, start + n):
        h.update((b"ossensor-%08d-" % i).ljust(size, b"x"))
    return h.hexdigest()


# ---------------------------------------------------------------------------- sensor statistics
def stats(sensor: Proc, final: bool = False) -> dict[str, str]:
    """name=value fields of the sensor's last (or final) level-1 statistics line."""
    for line in reversed(sensor.lines):
        if (" final stats " in line) if final else (" stats " in line):
            return dict(re.findall(r"(\w+)=([^\s\]]+)", line.split(" stats ", 1)[1]))
    return {}


def wait_stat(sensor: Proc, name: str, at_least: int, timeout: float) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = stats(sensor)
        if st and int(st.get(name, 0)) >= at_least:
            return st
        if sensor.p.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"{name} >= {at_least} not reached in {timeout} s; last {stats(sensor)}\n"
                         + "\n".join(sensor.lines[-40:]))


def vm_kib(pid: int, field: str = "VmHWM") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


# ---------------------------------------------------------------------------- a misbehaving vSensor
FAKE_VSENSOR = r"""
import json, os, socket, ssl, sys, threading, time
cert, key, port, out, plan = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5].split(",")
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(cert, key)
ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port)); ls.listen(16)
count = [0]; lock = threading.Lock()
print("listening", flush=True)

def handle(c):
    try:
        c = ctx.wrap_socket(c, server_side=True)
        f = c.makefile("rb")
        line = f.readline()
        headers = {}
        while True:
            h = f.readline()
            if h in (b"\r\n", b"", b"\n"):
                break
            k, _, v = h.decode().partition(":")
            headers[k.strip().lower()] = v.strip()
        body = f.read(int(headers.get("content-length", 0)))
        if not line.startswith(b"POST /v1/batches "):  # hello, antigena: not part of the plan
            data = b'{"status":"refused","reason":"not served by this test peer"}'
            c.sendall(b"HTTP/1.1 404 X\r\nContent-Type: application/json\r\nConnection: close\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(data) + data)
            return
        with lock:
            n = count[0]; count[0] += 1
        mode = plan[n] if n < len(plan) else plan[-1]
        print("request", n, mode, headers.get("x-ossensor-seq"), flush=True)
        def answer(status, doc, extra=""):
            data = json.dumps(doc).encode()
            c.sendall(f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                      f"Connection: close\r\n{extra}\r\n".encode() + data)
        if mode == "500":
            answer(500, {"status": "refused", "reason": "internal error (test)"})
        elif mode == "503":
            answer(503, {"status": "refused", "reason": "busy (test)"}, "Retry-After: 1\r\n")
        elif mode == "drop":
            pass
        elif mode == "garbage":
            c.sendall(b"\x00\x01\x02 this is not HTTP \xff\xfe\r\n\r\n")
        elif mode == "slow":
            time.sleep(3)
            mode = "ok"
        if mode == "ok":
            name = headers["x-ossensor-boot"] + "-" + headers["x-ossensor-seq"] + ".pcapng"
            if headers.get("content-encoding") == "zstd":  # OSSENSOR_COMPRESSION=auto (the default)
                import zstandard
                body = zstandard.ZstdDecompressor().decompress(body)
            with open(os.path.join(out, name), "wb") as w:
                w.write(body)
            answer(200, {"status": "accepted", "seq": int(headers["x-ossensor-seq"])})
    except Exception as e:
        print("error", type(e).__name__, e, flush=True)
    finally:
        try:
            c.close()
        except Exception:
            pass

while True:
    c, _ = ls.accept()
    threading.Thread(target=handle, args=(c,), daemon=True).start()
"""


def start_fake_vsensor(topo: Topology, cert: Path, key: Path, port: int, out: Path, plan: list[str]) -> Proc:
    out.mkdir(parents=True, exist_ok=True)
    p = topo.spawn([sys.executable, "-c", FAKE_VSENSOR, str(cert), str(key), str(port), str(out), ",".join(plan)],
                   netns=topo.cap)
    p.wait_for("listening")
    return p


def fake_store_packets(out: Path) -> list[int]:
    """Sender indices of the packets in the fake vSensor's files (one file per (boot, seq): dedup)."""
    from ossensor import pcapng

    idx = []
    for f in sorted(out.glob("*.pcapng")):
        for sec in pcapng.read_sections(f.read_bytes()):
            for p in sec.packets:
                m = _IDX.search(bytes(p.data[42:60]))
                if m:
                    idx.append(int(m.group(1)))
    return idx


def run_cli(env: dict[str, str], netns: str | None = None, timeout: float = 20) -> subprocess.CompletedProcess:
    import os

    from support import ROOT

    full = dict(os.environ)
    full["PYTHONPATH"] = str(ROOT)
    for k in ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy"):
        full.pop(k, None)
    full.update(env)
    argv = [sys.executable, "-m", "ossensor", "run"]
    if netns:
        argv = ["ip", "netns", "exec", netns] + argv
    return subprocess.run(argv, env=full, capture_output=True, text=True, timeout=timeout)
