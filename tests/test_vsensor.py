"""The reference vSensor, end to end: a real `python -m ossensor vsensor` subprocess over real TLS."""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from ossensor import pcapng, protocol

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key-7f3a9c-not-secret"
BOOT = "00112233aabbccdd"
START_TIMEOUT = 30
ETH = bytes.fromhex("020000000002020000000001" "0800" "4500001c000100004001f6dcc0000201c0000202" "0800f7ff00000000")
RAW_IP = ETH[14:]
T0 = 1_700_000_000 * 10**9


class VSensor:
    def __init__(self, out: Path, key: str | None = KEY, args: tuple[str, ...] = ()):
        self.out = out
        env = dict(os.environ)
        env.pop("VSENSOR_HMAC_KEY_FILE", None)
        env.pop("VSENSOR_HMAC_KEY", None)
        if key is not None:
            env["VSENSOR_HMAC_KEY"] = key
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
        env["PYTHONUNBUFFERED"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ossensor", "vsensor", "--listen", "127.0.0.1:0", "--out", str(out), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))
        self.lines: queue.Queue[str] = queue.Queue()
        self.all_stdout: list[str] = []
        self.stderr = ""
        threading.Thread(target=self._pump, daemon=True).start()
        self.url = self.ca = None

    def _pump(self):
        for line in self.proc.stdout:
            self.all_stdout.append(line)
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float = 10) -> re.Match:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no line matching {pattern!r}; stdout so far: {''.join(self.all_stdout)}")
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    raise AssertionError(f"vsensor exited {self.proc.returncode}: {self.proc.stderr.read()}")
                continue
            m = re.search(pattern, line)
            if m:
                return m

    def start(self) -> "VSensor":
        m = self.wait_for(r"listening on (https://\S+) out=(\S+) ca=(\S+)", START_TIMEOUT)
        self.url, self.ca = m.group(1), m.group(3)
        assert Path(self.ca).is_file()
        return self

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        try:
            self.stderr = self.proc.stderr.read()
        except ValueError:
            pass
        return self.proc.returncode


@pytest.fixture
def vsensor(tmp_path):
    servers: list[VSensor] = []

    def start(out: Path | None = None, **kw) -> VSensor:
        vs = VSensor(out or tmp_path / "out", **kw)
        servers.append(vs)
        return vs.start()

    try:
        yield start
    finally:
        for vs in servers:
            if vs.proc.poll() is None:
                vs.proc.kill()
                vs.proc.wait(timeout=10)
            for stream in (vs.proc.stdout, vs.proc.stderr):
                try:
                    stream.close()
                except Exception:
                    pass
        for vs in servers:  # the key is never logged, at all
            assert KEY not in "".join(vs.all_stdout) + vs.stderr


def batch(n: int = 3, interfaces=(("eth0", 1),), start: int = 0, isb: bool = True) -> bytes:
    out = [pcapng.shb()]
    out += [pcapng.idb(name, lt, 262144) for name, lt in interfaces]
    for i in range(n):
        if_id = i % len(interfaces)
        frame = ETH if interfaces[if_id][1] == 1 else RAW_IP
        out.append(pcapng.epb(if_id, T0 + (start + i) * 1000, frame))
    if isb:
        out += [pcapng.isb(i, T0 + (start + n) * 1000, ifrecv=start + n, osdrop=0, usrdeliv=start + n)
                for i in range(len(interfaces))]
    return b"".join(out)


def post(vs: VSensor, body: bytes, seq: int, *, key: str = KEY, sensor: str = "node-1", boot: str = BOOT,
         timestamp: int | None = None, encoding: str = "identity", path: str = protocol.PATH_BATCHES,
         sent_body: bytes | None = None, session: requests.Session | None = None) -> requests.Response:
    headers = protocol.sign(key.encode(), sensor=sensor, boot=boot, seq=seq,
                            timestamp=int(time.time()) if timestamp is None else timestamp,
                            body=body, path=path, content_encoding=encoding)
    return (session or requests).post(vs.url + path, data=body if sent_body is None else sent_body,
                                      headers=headers, verify=vs.ca, timeout=10)


def pcap_files(out: Path) -> list[Path]:
    return sorted(out.glob("*.pcapng"))


def jsonl(out: Path) -> list[dict]:
    path = out / "batches.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def tcpdump_count(path: Path) -> int:
    r = subprocess.run(["tcpdump", "-nn", "-r", str(path)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return len([line for line in r.stdout.splitlines() if line.strip()])


def tshark_packets(path: Path) -> list[tuple[str, str]]:
    r = subprocess.run(["tshark", "-r", str(path), "-T", "fields", "-e", "frame.time_epoch", "-e", "frame.len"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return [tuple(line.split("\t")) for line in r.stdout.splitlines() if line.strip()]


need_tools = pytest.mark.skipif(not (shutil.which("tcpdump") and shutil.which("tshark")),
                                reason="tcpdump and tshark are needed")


@need_tools
def test_valid_batch_accepted_and_readable(vsensor):
    vs = vsensor()
    body = batch(5)
    r = post(vs, body, 0)
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "accepted", "seq": 0, "packets": 5, "bytes": len(body)}
    vs.wait_for(r"accepted sensor=node-1 boot=00112233aabbccdd seq=0 packets=5 bytes=%d" % len(body))
    files = pcap_files(vs.out)
    assert [f.name for f in files] == [f"node-1-{BOOT}.pcapng"]
    assert tcpdump_count(files[0]) == 5
    packets = tshark_packets(files[0])
    assert len(packets) == 5
    assert [int(length) for _, length in packets] == [len(ETH)] * 5
    assert [round(float(t) * 1e6) for t, _ in packets] == [(T0 + i * 1000) // 1000 for i in range(5)]
    stored = pcapng.read_sections(files[0].read_bytes())
    assert [p.data for p in stored[0].packets] == [ETH] * 5
    (entry,) = jsonl(vs.out)
    assert (entry["sensor"], entry["boot"], entry["seq"], entry["packets"], entry["bytes"]) == (
        "node-1", BOOT, 0, 5, len(body))
    assert entry["stats"] == [{"if_id": 0, "if_name": "eth0", "ifrecv": 5, "osdrop": 0, "usrdeliv": 5}]


def test_wrong_key_refused_nothing_written(vsensor):
    vs = vsensor()
    r = post(vs, batch(), 0, key="not-the-key")
    assert r.status_code == 401
    assert r.json()["status"] == "refused" and "signature" in r.json()["reason"]
    vs.wait_for(r"refused sensor=node-1 seq=0 status=401 reason=signature")
    assert pcap_files(vs.out) == [] and jsonl(vs.out) == []
    # the refusal did not consume the seq, nor break the connection for the next request
    assert post(vs, batch(), 0).status_code == 200


def test_tampered_body_refused(vsensor):
    vs = vsensor()
    body = batch()
    tampered = bytearray(body)
    tampered[-40] ^= 0xFF
    r = post(vs, body, 0, sent_body=bytes(tampered))
    assert r.status_code == 401 and "tampered" in r.json()["reason"]
    assert pcap_files(vs.out) == []


@need_tools
def test_replayed_seq_refused_not_written_twice(vsensor):
    vs = vsensor()
    body = batch(4)
    assert post(vs, body, 7).status_code == 200
    size = pcap_files(vs.out)[0].stat().st_size
    r = post(vs, body, 7)
    assert r.status_code == 409
    assert r.json()["status"] == "duplicate" and r.json()["seq"] == 7
    vs.wait_for(r"duplicate sensor=node-1 boot=00112233aabbccdd seq=7 status=409")
    assert pcap_files(vs.out)[0].stat().st_size == size
    assert len(jsonl(vs.out)) == 1
    assert tcpdump_count(pcap_files(vs.out)[0]) == 4
    # an earlier, never-seen seq is still accepted (out of order)
    assert post(vs, batch(1), 3).status_code == 200


def test_stale_timestamp_refused(vsensor):
    vs = vsensor()
    r = post(vs, batch(), 0, timestamp=int(time.time()) - 3600)
    assert r.status_code == 401 and "stale" in r.json()["reason"]
    r = post(vs, batch(), 0, timestamp=int(time.time()) + 3600)
    assert r.status_code == 401
    assert pcap_files(vs.out) == []


def _raw_request(vs: VSensor, head: str, timeout: float = 5) -> tuple[int, dict, bytes]:
    ctx = ssl.create_default_context(cafile=vs.ca)
    with socket.create_connection(("127.0.0.1", vs.port), timeout=timeout) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            s.sendall(head.encode())
            resp = http.client.HTTPResponse(s)
            resp.begin()  # would time out if the server waited for the body
            return resp.status, dict(resp.getheaders()), resp.read()


def test_oversized_content_length_refused_before_body(vsensor):
    vs = vsensor(args=("--max-body-mb", "1"))
    headers = protocol.sign(KEY.encode(), sensor="node-1", boot=BOOT, seq=0, timestamp=int(time.time()),
                            body=b"x")
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    status, resp_headers, data = _raw_request(
        vs, f"POST /v1/batches HTTP/1.1\r\nHost: x\r\nContent-Length: {2 * 1024 * 1024}\r\n{head}\r\n")
    assert status == 413
    assert json.loads(data)["status"] == "refused"
    assert resp_headers.get("Connection") == "close"
    status, _, _ = _raw_request(vs, f"POST /v1/batches HTTP/1.1\r\nHost: x\r\n{head}\r\n")
    assert status == 411
    assert pcap_files(vs.out) == []


def test_garbage_body_with_valid_signature_refused(vsensor):
    vs = vsensor()
    for body in (b"this is not pcapng at all", b"", batch()[:-3], batch() + batch(),
                 pcapng.shb() + pcapng.epb(0, T0, ETH)):
        r = post(vs, body, 1)
        assert r.status_code == 400, (body[:20], r.text)
        assert r.json()["status"] == "refused"
    assert pcap_files(vs.out) == [] and jsonl(vs.out) == []


@need_tools
def test_two_batches_same_interfaces_one_file(vsensor):
    vs = vsensor()
    with requests.Session() as s:
        assert post(vs, batch(3), 0, session=s).status_code == 200
        assert post(vs, batch(4, start=3), 1, session=s).status_code == 200
    (f,) = pcap_files(vs.out)
    assert tcpdump_count(f) == 7
    assert len(tshark_packets(f)) == 7
    sections = pcapng.read_sections(f.read_bytes())
    assert len(sections) == 1 and len(sections[0].interfaces) == 1
    assert len(sections[0].stats) == 2  # both batches' ISBs kept


@need_tools
def test_extra_interface_appended(vsensor):
    vs = vsensor()
    assert post(vs, batch(2), 0).status_code == 200
    two = (("eth0", 1), ("eth1", 1))
    assert post(vs, batch(4, interfaces=two, start=2), 1).status_code == 200
    assert post(vs, batch(1, start=6), 2).status_code == 200  # fewer interfaces again: same file
    (f,) = pcap_files(vs.out)
    assert tcpdump_count(f) == 7
    assert len(tshark_packets(f)) == 7
    sec = pcapng.read_sections(f.read_bytes())[0]
    assert [i.name for i in sec.interfaces] == ["eth0", "eth1"]
    assert [p.if_id for p in sec.packets] == [0, 0, 0, 1, 0, 1, 0]


@need_tools
def test_conflicting_interfaces_and_link_types_split_files(vsensor):
    vs = vsensor()
    assert post(vs, batch(2), 0).status_code == 200
    # eth0 replaced by a different interface at id 0 -> a new file
    assert post(vs, batch(2, interfaces=(("eth9", 1),)), 1).status_code == 200
    # Ethernet and raw IP in one batch: libpcap reads one link type per file, so it is split
    assert post(vs, batch(4, interfaces=(("eth9", 1), ("wg0", 101))), 2).status_code == 200
    files = pcap_files(vs.out)
    assert len(files) == 3
    counts = {f.name: tcpdump_count(f) for f in files}
    assert sum(counts.values()) == 8
    assert sum(len(tshark_packets(f)) for f in files) == 8
    entry = jsonl(vs.out)[-1]
    assert len(entry["files"]) == 2


@need_tools
def test_zstd_batch_and_bomb(vsensor):
    zstandard = pytest.importorskip("zstandard")
    vs = vsensor(args=("--max-body-mb", "1"))
    body = batch(10)
    r = post(vs, zstandard.ZstdCompressor().compress(body), 0, encoding="zstd")
    assert r.status_code == 200 and r.json()["bytes"] == len(body) and r.json()["packets"] == 10
    assert tcpdump_count(pcap_files(vs.out)[0]) == 10
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (3 * 1024 * 1024))
    r = post(vs, bomb, 1, encoding="zstd")
    assert r.status_code == 413
    r = post(vs, b"not zstd", 2, encoding="zstd")
    assert r.status_code == 400


def test_hello_healthz_404_keepalive(vsensor):
    vs = vsensor()
    r = post(vs, b"", 0, path=protocol.PATH_HELLO)
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["vsensor"] == "ossensor-reference"
    assert post(vs, b"", 0, path=protocol.PATH_HELLO, key="bad").status_code == 401
    r = requests.get(vs.url + "/healthz", verify=vs.ca, timeout=10)
    assert r.status_code == 200 and r.text.strip() == "ok"
    r = requests.get(vs.url + "/nope", verify=vs.ca, timeout=10)
    assert r.status_code == 404 and r.json()["status"] == "refused"
    # keep-alive: several requests on one TLS connection
    conn = http.client.HTTPSConnection("127.0.0.1", vs.port, timeout=10,
                                       context=ssl.create_default_context(cafile=vs.ca))
    try:
        socks = []
        for seq in range(3):
            body = batch(1, start=seq)
            headers = protocol.sign(KEY.encode(), sensor="ka", boot=BOOT, seq=seq, timestamp=int(time.time()),
                                    body=body)
            conn.request("POST", protocol.PATH_BATCHES, body=body, headers=headers)
            resp = conn.getresponse()
            assert resp.status == 200, resp.read()
            resp.read()
            socks.append(conn.sock)
        assert socks[0] is socks[1] is socks[2]
    finally:
        conn.close()


def test_sigterm_exits_zero(vsensor):
    vs = vsensor()
    assert post(vs, batch(), 0).status_code == 200
    assert vs.stop() == 0
    assert "Traceback" not in vs.stderr


def test_restart_keeps_ca_and_replay_memory(vsensor, tmp_path):
    out = tmp_path / "out"
    vs = vsensor(out)
    ca = Path(vs.ca).read_bytes()
    assert post(vs, batch(), 0).status_code == 200
    assert vs.stop() == 0
    assert oct((out / "server.key").stat().st_mode & 0o777) == "0o600"
    vs2 = vsensor(out)
    assert Path(vs2.ca).read_bytes() == ca
    assert post(vs2, batch(), 0).status_code == 409  # replay across a restart
    assert post(vs2, batch(), 1).status_code == 200
    assert len(pcap_files(out)) == 2  # a restarted vSensor starts a new file for the stream


def _run_bad(tmp_path, *args, key: str | None = KEY) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("VSENSOR_HMAC_KEY", None)
    env.pop("VSENSOR_HMAC_KEY_FILE", None)
    if key is not None:
        env["VSENSOR_HMAC_KEY"] = key
    return subprocess.run([sys.executable, "-m", "ossensor", "vsensor", "--out", str(tmp_path / "o"), *args],
                          capture_output=True, text=True, env=env, timeout=30, cwd=str(ROOT))


@pytest.mark.parametrize("args,key,expect", [
    (("--listen", "127.0.0.1:0", "--max-body-mb", "inf"), KEY, "--max-body-mb must be a number from 0.001 to 1024"),
    (("--listen", "127.0.0.1:0", "--max-body-mb", "1e300"), KEY, "--max-body-mb must be a number from 0.001"),
    (("--listen", "127.0.0.1:0", "--max-body-mb", "nan"), KEY, "--max-body-mb must be a number from 0.001"),
    (("--listen", "127.0.0.1:0", "--max-body-mb", "0"), KEY, "--max-body-mb must be a number from 0.001"),
    (("--listen", "127.0.0.1:0", "--max-body-mb", "-1"), KEY, "--max-body-mb must be a number from 0.001"),
    (("--listen", "127.0.0.1:0", "--max-body-mb", "1025"), KEY, "--max-body-mb must be a number from 0.001"),
    (("--listen", "127.0.0.1:0", "--max-connections", "0"), KEY, "--max-connections must be from 1 to 65536"),
    (("--listen", "nonsense"), KEY, "--listen"),
    (("--listen", "::1:8443"), KEY, "brackets"),
    (("--listen", "127.0.0.1:99999"), KEY, "port"),
    (("--listen", "127.0.0.1:0", "--tls-cert", "/nonexistent.pem", "--tls-key", "/nonexistent.key"), KEY,
     "--tls-cert"),
    (("--listen", "127.0.0.1:0"), None, "VSENSOR_HMAC_KEY: required, not set"),
])
def test_bad_options_exit_2(tmp_path, args, key, expect):
    r = _run_bad(tmp_path, *args, key=key)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert expect in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_port_in_use_exit_2(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = _run_bad(tmp_path, "--listen", f"127.0.0.1:{port}")
    assert r.returncode == 2
    assert "cannot listen" in r.stderr and "Traceback" not in r.stderr


def _head(headers: dict[str, str], length: int, path: str = protocol.PATH_BATCHES) -> str:
    fields = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n{fields}\r\n"


def test_header_failures_refused_before_the_body_is_read(vsensor):
    """A request announcing a large (allowed) body whose headers fail is answered from the headers alone:
    _raw_request sends no body at all and would time out if the vSensor waited for it."""
    vs = vsensor()
    big = 32 * 1024 * 1024  # under the 64 MiB limit: only the headers can refuse it
    now = int(time.time())
    good = protocol.sign(KEY.encode(), sensor="node-1", boot=BOOT, seq=0, timestamp=now, body=b"x")
    missing_boot = {k: v for k, v in good.items() if k != protocol.H_BOOT}
    cases = [
        ({**good, "Content-Type": "text/plain"}, 415, "Content-Type"),
        ({**good, "Content-Encoding": "gzip"}, 415, "Content-Encoding"),
        (missing_boot, 400, "missing header"),
        ({**good, protocol.H_SEQ: "\u00b2".encode().decode("latin-1")}, 400, "decimal"),
        (protocol.sign(b"wrong-key-123456", sensor="node-1", boot=BOOT, seq=0, timestamp=now, body=b"x"), 401,
         "signature does not verify"),
        (protocol.sign(KEY.encode(), sensor="node-1", boot=BOOT, seq=0, timestamp=now - 3600, body=b"x"), 401,
         "stale"),
    ]
    for headers, status, why in cases:
        t0 = time.monotonic()
        got, resp_headers, data = _raw_request(vs, _head(headers, big))
        assert (got, why in json.loads(data)["reason"]) == (status, True), (headers, data)
        assert resp_headers.get("Connection") == "close"
        assert time.monotonic() - t0 < 4
    # the same for the Antigena desk (JSON, 4 MiB limit)
    bad = protocol.sign(b"wrong-key-123456", sensor="node-1", boot=BOOT, seq=1, timestamp=now, body=b"{}",
                        path=protocol.PATH_ANTIGENA)
    got, _, data = _raw_request(vs, _head(bad, 3 * 1024 * 1024, protocol.PATH_ANTIGENA))
    assert got == 401 and "signature" in json.loads(data)["reason"]
    # a small refused body is drained and the connection stays usable (keep-alive)
    conn = http.client.HTTPSConnection("127.0.0.1", vs.port, timeout=10,
                                       context=ssl.create_default_context(cafile=vs.ca))
    try:
        body = batch(2)
        for key, expect in ((b"wrong-key-123456", 401), (KEY.encode(), 200)):
            headers = protocol.sign(key, sensor="ka", boot=BOOT, seq=0, timestamp=int(time.time()), body=body)
            conn.request("POST", protocol.PATH_BATCHES, body=body, headers=headers)
            resp = conn.getresponse()
            assert resp.status == expect, resp.read()
            resp.read()
            sock = sock if expect == 200 else conn.sock
        assert conn.sock is sock
    finally:
        conn.close()
    assert len(jsonl(vs.out)) == 1


def test_wrong_key_large_batch_still_gets_its_401(vsensor):
    """A refused body above the drain size is not read, yet the sender (requests, as the sensor) receives
    the 401 and its reason rather than a reset."""
    vs = vsensor()
    r = post(vs, batch(2) + b"\0" * (2 * 1024 * 1024), 0, key="not-the-key-1234")
    assert r.status_code == 401 and "signature" in r.json()["reason"]


def test_connection_limit_answers_503(vsensor):
    vs = vsensor(args=("--max-connections", "2"))
    ctx = ssl.create_default_context(cafile=vs.ca)
    held = []
    try:
        for i in range(2):  # two kept-alive connections that sent a signed hello take both slots (connections
            raw = socket.create_connection(("127.0.0.1", vs.port), timeout=5)  # that never signed would give
            s = ctx.wrap_socket(raw, server_hostname="127.0.0.1")              # their place: test_vsensor_cap.py)
            held.append(s)
            headers = protocol.sign(KEY.encode(), sensor=f"held-{i}", boot=BOOT, seq=0, timestamp=int(time.time()),
                                    body=b"", path=protocol.PATH_HELLO)
            s.sendall((f"POST {protocol.PATH_HELLO} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                       + "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n").encode())
            assert s.recv(65536).startswith(b"HTTP/1.1 200")
        time.sleep(0.2)
        t0 = time.monotonic()
        status, headers, data = _raw_request(vs, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert status == 503 and headers.get("Retry-After") == "1" and headers.get("Connection") == "close"
        assert "busy" in json.loads(data)["reason"] and time.monotonic() - t0 < 3
        vs.wait_for(r"busy refused=1 limit=2 ")
        held.pop().close()  # a slot frees when its connection ends
        deadline = time.monotonic() + 5
        while True:
            status, _, _ = _raw_request(vs, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 200
    finally:
        for s in held:
            s.close()


def test_restart_remembers_old_batches_resent_with_a_fresh_time(vsensor, tmp_path):
    """A batch accepted long ago (its signed time far outside the window) and re-sent after a vSensor restart
    - a retry whose answer was lost, a spooled batch - is re-signed with a fresh time: still a duplicate."""
    out = tmp_path / "out"
    vs = vsensor(out)
    for seq in (0, 1):
        assert post(vs, batch(1, start=seq), seq).status_code == 200
    assert vs.stop() == 0
    log = out / "batches.jsonl"
    entries = jsonl(out)
    for e in entries:  # as if accepted a day ago
        e["sent"] -= 86400
        e["time"] -= 86400
    log.write_text("".join(json.dumps(e) + "\n" for e in entries))
    vs2 = vsensor(out)
    for seq in (0, 1):
        r = post(vs2, batch(1, start=seq), seq)
        assert r.status_code == 409, r.text
    assert post(vs2, batch(1, start=2), 2).status_code == 200
    assert len(jsonl(out)) == 3


def test_replay_seed_is_bounded(tmp_path):
    from ossensor.vsensor.store import Store

    store = Store(tmp_path)
    with open(tmp_path / "batches.jsonl", "w") as f:
        for seq in range(1000):
            f.write(json.dumps({"sensor": "s", "boot": BOOT, "seq": seq, "sent": 0}) + "\n")
        f.write("not json\n")
    try:
        assert [seq for _, _, seq in store.accepted()] == list(range(1000))  # any age
        assert [seq for _, _, seq in store.accepted(max_entries=10)] == list(range(991, 1000))
        tail = store.accepted(tail_bytes=200)  # only whole lines from the last 200 bytes
        assert 0 < len(tail) < 10 and tail[-1][2] == 999
    finally:
        store.close()


def test_antigena_answer_is_signed_for_its_request(vsensor):
    vs = vsensor()
    r = subprocess.run([sys.executable, "-m", "ossensor", "vsensor", "block", "--out", str(vs.out), "--host",
                        "10.0.0.9", "--id", "q1", "--expires", "300"], capture_output=True, text=True, timeout=30,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    body = json.dumps({"sensor": "node-1", "boot": BOOT, "reports": []}).encode()
    now = int(time.time())
    headers = protocol.sign(KEY.encode(), sensor="node-1", boot=BOOT, seq=1, timestamp=now, body=body,
                            path=protocol.PATH_ANTIGENA)
    resp = requests.post(vs.url + protocol.PATH_ANTIGENA, data=body, headers=headers, verify=vs.ca, timeout=10)
    assert resp.status_code == 200 and [a["id"] for a in resp.json()["actions"]] == ["q1"]
    assert resp.headers[protocol.H_RESPONSE_SIGNATURE].startswith("v1=")
    protocol.verify_response(KEY.encode(), status=200, headers=resp.headers, body=resp.content, sensor="node-1",
                             boot=BOOT, seq=1, timestamp=now)
    with pytest.raises(protocol.ResponseError):  # it answers this request, no other
        protocol.verify_response(KEY.encode(), status=200, headers=resp.headers, body=resp.content,
                                 sensor="node-1", boot=BOOT, seq=2, timestamp=now)
    # the duplicate answer is signed as well; a refusal of an unverified request is not
    resp = requests.post(vs.url + protocol.PATH_ANTIGENA, data=body, headers=headers, verify=vs.ca, timeout=10)
    assert resp.status_code == 409
    protocol.verify_response(KEY.encode(), status=409, headers=resp.headers, body=resp.content, sensor="node-1",
                             boot=BOOT, seq=1, timestamp=now)


def test_racing_replays_store_one_copy(vsensor):
    """The same signed batch sent on 40 connections at once (a replay race, now that bodies are stored by
    worker threads while the loop reads others): exactly one 200, 39 409s, one copy stored."""
    from concurrent.futures import ThreadPoolExecutor

    vs = vsensor()
    body = batch(5)
    headers = protocol.sign(KEY.encode(), sensor="racer", boot=BOOT, seq=7, timestamp=int(time.time()), body=body)
    barrier = threading.Barrier(40)

    def send(_):
        s = requests.Session()
        s.get(vs.url + "/healthz", verify=vs.ca, timeout=10)  # connected and warm before the race
        barrier.wait(10)
        return s.post(vs.url + protocol.PATH_BATCHES, data=body, headers=headers, verify=vs.ca, timeout=30).status_code

    with ThreadPoolExecutor(40) as pool:
        codes = sorted(pool.map(send, range(40)))
    assert codes == [200] + [409] * 39, codes
    assert len(jsonl(vs.out)) == 1 and sum(tcpdump_count(p) for p in pcap_files(vs.out)) == 5


def test_plain_http_on_the_tls_port_is_named_in_the_log(vsensor):
    vs = vsensor()
    with socket.create_connection(("127.0.0.1", vs.port), timeout=10) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(10)
        try:
            while s.recv(65536):
                pass
        except ConnectionResetError:
            pass
    vs.wait_for(r"tls-error peer=127\.0\.0\.1 reason=plain_HTTP_sent_to_the_HTTPS_port")
    assert requests.get(vs.url + "/healthz", verify=vs.ca, timeout=10).status_code == 200


def test_store_keeps_a_bounded_number_of_files_open(tmp_path, monkeypatch):
    """Sensors come and go (every restart is a new boot): beyond MAX_OPEN_FILES the store closes the files of
    the least recently written streams, whose next batch reopens and appends to the same file; a stream
    idle for STREAM_IDLE_S is forgotten (its next batch starts a new numbered file). Every file reads in
    tcpdump with all its packets."""
    from ossensor.vsensor import store as store_mod

    def own_pcapng_fds() -> int:
        paths = []
        for fd in os.listdir("/proc/self/fd"):
            try:
                paths.append(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                pass
        return sum(str(tmp_path) in p and p.endswith(".pcapng") for p in paths)

    monkeypatch.setattr(store_mod, "MAX_OPEN_FILES", 3)
    st = store_mod.Store(tmp_path)

    def put(sensor: str, seq: int) -> list[str]:
        body = batch(2, start=2 * seq)
        return st.append(sensor, BOOT, seq, store_mod.parse_batch(body), sent=0, wire_bytes=len(body),
                         encoding="identity")

    for i in range(10):
        put(f"s{i}", 0)
        assert st.open_files <= 3
    assert own_pcapng_fds() == 3
    assert put("s0", 1) == [f"s0-{BOOT}.pcapng"]  # closed, reopened: the same file goes on
    assert st.open_files <= 3 and own_pcapng_fds() == st.open_files
    monkeypatch.setattr(store_mod, "STREAM_IDLE_S", 0.0)  # now every stream but the newest is idle
    put("s9", 1)
    assert st.open_files == 1
    assert put("s0", 2) == [f"s0-{BOOT}-1.pcapng"]  # forgotten: a new numbered file
    st.close()
    assert tcpdump_count(tmp_path / f"s0-{BOOT}.pcapng") == 4
    assert sum(tcpdump_count(p) for p in pcap_files(tmp_path)) == 26


def test_sigterm_right_after_start_stops_it(tmp_path):
    """A SIGTERM that lands as the vSensor starts (before its loop runs: seen once in the full suite, the
    vSensor then never stopped) ends it like any other."""
    for i in range(8):
        p = subprocess.Popen([sys.executable, "-m", "ossensor", "vsensor", "--listen", "127.0.0.1:0",
                              "--out", str(tmp_path / f"vs{i}")], env={**os.environ, "VSENSOR_HMAC_KEY": KEY},
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert "listening on" in p.stdout.readline()
            time.sleep(0.002 * i)
            p.send_signal(signal.SIGTERM)
            assert p.wait(10) == 0
        finally:
            if p.poll() is None:
                p.kill()
            p.wait()
            p.stdout.close()
            p.stderr.close()
