"""A client key protected by a passphrase (OSSENSOR_TLS_KEY_FILE): ossensor has no passphrase setting,
so the key is refused at start in one line that says it is encrypted. OpenSSL's default is to ask for
the passphrase on the terminal: under a terminal (docker run -it, a shell) the start used to hang at
"Enter PEM pass phrase:", and without one it printed that prompt and called the pair "not a PEM
certificate and its private key (Invalid argument)"."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

from support import ROOT


def _pki(tmp_path):
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=sensor", "-passout", "pass:secret"], check=True,
                   capture_output=True, timeout=60)
    assert b"ENCRYPTED" in key.read_bytes()
    return cert, key


def test_encrypted_key_refused_in_one_line_under_a_terminal(tmp_path):
    cert, key = _pki(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), VSENSOR_HOSTNAME="127.0.0.1", VSENSOR_HMAC_KEY="k" * 16,
               OSSENSOR_CONFIG_PATH=str(tmp_path / "c.cfg"), OSSENSOR_TLS_CERT_FILE=str(cert),
               OSSENSOR_TLS_KEY_FILE=str(key))
    for k in ("HTTPS_PROXY", "https_proxy"):
        env.pop(k, None)
    pid, fd = pty.fork()  # the child's controlling terminal is the pty: OpenSSL would prompt on it
    if pid == 0:
        try:
            os.execve(sys.executable, [sys.executable, "-m", "ossensor", "run"], env)
        finally:
            os._exit(127)
    out, status = b"", None
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:
                    chunk = b""
                out += chunk
            done, st = os.waitpid(pid, os.WNOHANG)
            if done:
                status = os.waitstatus_to_exitcode(st)
                break
    finally:
        if status is None:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        os.close(fd)
    text = out.decode(errors="replace")
    assert status == 2, (status, text)              # not a hang at a passphrase prompt
    assert "pass phrase" not in text and "Traceback" not in text, text
    lines = [ln for ln in text.splitlines() if "OSSENSOR_TLS_KEY_FILE" in ln]
    assert len(lines) == 1 and "encrypted" in lines[0], text


def test_encrypted_key_refused_without_a_terminal(tmp_path):
    cert, key = _pki(tmp_path)
    sys.path.insert(0, str(ROOT))
    from ossensor.config.values import tls_problems

    r = subprocess.run([sys.executable, "-c", "import sys; from ossensor.config.values import tls_problems; "
                        "print(tls_problems(None, sys.argv[1], sys.argv[2]))", str(cert), str(key)],
                       env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=30,
                       stdin=subprocess.DEVNULL, start_new_session=True)
    assert r.returncode == 0, r.stderr
    assert "pass phrase" not in r.stdout + r.stderr
    assert "encrypted" in r.stdout and "Invalid argument" not in r.stdout, r.stdout
    assert tls_problems(None, str(cert), None) == []   # a cert alone is the model's business (pair check)
