"""`ossensor diagnose`: why does the vSensor see no traffic from this node?

Runs from the same environment as `ossensor run` (so `kubectl exec <pod> -- ossensor diagnose` checks
exactly what the sensor uses) and prints one verdict line per check, in the order a packet's journey
depends on them:

    configuration -> capabilities -> interfaces -> bpf -> capture ring -> dns -> tcp -> tls -> key

A line is ``ok    <check>: <detail>``, ``FAIL  <check>: <cause>``, ``warn  <check>: <detail>`` (passes,
worth knowing) or ``skip  <check>: <why>`` (an earlier check it needs failed). Indented lines after a
verdict give details. The last line sums up. Exit status: 0 when every check passes, 1 when a check
fails, 2 when the configuration itself is invalid (each problem named, as `ossensor run` does).

Nothing here changes the host: the capture ring is opened with the sensor's filter attached but never
bound to an interface, the signed hello carries no data. The HMAC key is never printed.
"""

from __future__ import annotations

import base64
import datetime as _dt
import os
import secrets
import socket
import ssl
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import Callable, TextIO

from ossensor import __version__
from ossensor.exits import EXIT_FAIL, EXIT_OK, EXIT_USAGE

CAP_NET_ADMIN, CAP_NET_RAW = 12, 13
TIMEOUT = 5.0


@dataclass
class Verdict:
    check: str
    status: str            # ok | FAIL | warn | skip
    detail: str
    more: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [f"{self.status:<5} {self.check}: {self.detail}"] + [f"      {m}" for m in self.more]


class Failed(Exception):
    def __init__(self, detail: str, more: list[str] | None = None):
        super().__init__(detail)
        self.more = more or []


class Diagnosis:
    """The checks, run in order; each stores what later ones need."""

    def __init__(self, environ=None, out: TextIO | None = None):
        self.env = os.environ if environ is None else environ
        self.out = out or sys.stdout
        self.verdicts: list[Verdict] = []
        self.settings = None
        self.key_bytes: bytes | None = None
        self.chosen: list = []
        self.expr = ""
        self.addresses: list[str] = []
        self.proxy = None          # ossensor.ship.proxy.Proxy or None
        self.proxy_addresses: list[str] = []
        self.tcp_ok = False
        self.tls_ok = False

    # -- driver ------------------------------------------------------------------------------------
    def run(self) -> int:
        print(f"ossensor diagnose {__version__}: checks in order; the first failure usually explains the rest",
              file=self.out, flush=True)
        steps: list[tuple[str, Callable[[], str], Callable[[], str | None]]] = [
            ("configuration", self.check_config, lambda: None),
            ("capabilities", self.check_capabilities, lambda: None),
            ("interfaces", self.check_interfaces, self._needs_config),
            ("bpf", self.check_bpf, lambda: self._needs_config() or (None if self.chosen else
                                                                        "no interface to compile for")),
            ("capture ring", self.check_ring, lambda: self._needs_config() or (None if self.expr_ok else
                                                                              "the filter does not compile")),
            ("dns", self.check_dns, self._needs_config),
            ("tcp", self.check_tcp, lambda: self._needs_config() or (None if self.dns_ok else
                                                                    "the vSensor's address is unknown (dns)")),
            ("tls", self.check_tls, lambda: None if self.tcp_ok else "needs a TCP connection (tcp failed)"),
            ("key", self.check_key, lambda: None if self.tls_ok else "needs a TLS connection (tls failed)"),
        ]
        self.expr_ok = False
        self.dns_ok = False
        for name, check, blocker in steps:
            why = blocker()
            if why:
                self._emit(Verdict(name, "skip", why))
                continue
            try:
                detail = check()
                status = "ok"
                if detail.startswith("warn:"):
                    status, detail = "warn", detail[5:].lstrip()
                self._emit(Verdict(name, status, detail, getattr(self, "_more", [])))
            except Failed as err:
                self._emit(Verdict(name, "FAIL", str(err), err.more))
            except Exception as err:  # a check must never end the diagnosis with a traceback
                self._emit(Verdict(name, "FAIL", f"unexpected error: {type(err).__name__}: {err}"))
            self._more = []
        failed = [v.check for v in self.verdicts if v.status == "FAIL"]
        skipped = [v.check for v in self.verdicts if v.status == "skip"]
        if not failed:
            print(f"diagnose: all {len(self.verdicts)} checks passed", file=self.out, flush=True)
            return EXIT_OK
        print(f"diagnose: {len(failed)} failed ({', '.join(failed)})"
              + (f", {len(skipped)} skipped" if skipped else ""), file=self.out, flush=True)
        return EXIT_USAGE if "configuration" in failed else EXIT_FAIL

    _more: list[str] = []

    def _emit(self, v: Verdict) -> None:
        text = "\n".join(v.lines())
        if self.key_bytes and len(self.key_bytes) >= 4:  # belt and braces: never the key
            for form in (self.key_bytes.decode("utf-8", "surrogateescape"), self.key_bytes.hex()):
                text = text.replace(form, "<redacted>")
        self.verdicts.append(v)
        print(text, file=self.out, flush=True)

    def _needs_config(self) -> str | None:
        return None if self.settings is not None else "needs a valid configuration"

    # -- the checks --------------------------------------------------------------------------------
    def check_config(self) -> str:
        from ossensor import config

        try:
            s = config.load(self.env)
        except config.ConfigError as err:
            raise Failed(f"{len(err.problems)} problem{'s' if len(err.problems) > 1 else ''}", err.problems)
        self.settings, self.key_bytes = s, s.key_bytes
        source = "VSENSOR_HMAC_KEY_FILE" if (self.env.get("VSENSOR_HMAC_KEY_FILE") or "").strip() \
            else "VSENSOR_HMAC_KEY"
        from ossensor.ship import proxy as P

        try:
            self.proxy = P.choose(s.vsensor_hostname, s.vsensor_port, self.env)
        except P.ProxyError as err:
            raise Failed(str(err))
        via = f"via proxy {self.proxy.shown} ({self.proxy.variable})" if self.proxy else "direct (no proxy applies)"
        ca = s.tls_ca_file or "the system trust store"
        return (f"valid: vSensor {s.vsensor_address} {via}, TLS verified against {ca}, key set "
                f"(from {source}, not shown), debug {s.debug}")

    def check_capabilities(self) -> str:
        from ossensor.ops import privileges

        have = privileges.effective()
        raw, admin = CAP_NET_RAW in have, CAP_NET_ADMIN in have
        words = [f"CAP_NET_RAW {'present' if raw else 'MISSING'}",
                 f"CAP_NET_ADMIN {'present' if admin else 'absent'}"]
        if not raw:
            raise Failed(f"{', '.join(words)}: CAP_NET_RAW is needed to open the capture socket "
                         f"(and Antigena's); grant it: securityContext.capabilities.add: [\"NET_RAW\"] "
                         f"or --cap-add NET_RAW")
        note = "" if admin else " (CAP_NET_ADMIN is not needed by this version)"
        return f"{', '.join(words)}{note}"

    def check_interfaces(self) -> str:
        from ossensor.interfaces import netlink, selection

        s = self.settings
        selector = selection.Selector.from_settings(s)
        sel = selector.select(netlink.enumerate_interfaces())
        self._more = list(selector.notes) + [
            f"{v.interface.name}: {'selected' if v.selected else 'not selected'}: {v.reason}" for v in sel.verdicts]
        self.chosen = sel.selected
        if not self.chosen:
            if selector.device:
                raise Failed(f"OSSENSOR_NETWORK_DEVICE: no interface named {selector.device!r} here",
                             self._more)
            raise Failed("no interface would be captured: every interface is loopback or excluded "
                         "(NETWORK_DEVICE_INCLUDELIST / NETWORK_DEVICE_EXCLUDELIST)", self._more)
        return f"would capture {', '.join(i.name for i in self.chosen)}"

    def check_bpf(self) -> str:
        from ossensor.capture import bpf

        s = self.settings
        endpoints, note = [], ""
        try:
            for info in socket.getaddrinfo(s.vsensor_hostname, s.vsensor_port, type=socket.SOCK_STREAM):
                endpoints.append((info[4][0], s.vsensor_port))
            if self.proxy:
                for info in socket.getaddrinfo(self.proxy.host, self.proxy.port, type=socket.SOCK_STREAM):
                    endpoints.append((info[4][0], self.proxy.port))
        except OSError:
            note = " (own-traffic exclusion left out: a name does not resolve, see dns)"
        endpoints = list(dict.fromkeys(endpoints))
        self.expr = bpf.combine(bpf.own_traffic(endpoints) if endpoints else "", s.bpf)
        groups: dict[int, list[int]] = {}
        for iface in self.chosen:
            groups.setdefault(iface.linktype, []).append(iface.index)
        try:
            self.program = bpf.build_program([(ixs, bpf.compile_expr(self.expr, lt, s.snaplen))
                                              for lt, ixs in groups.items()])
        except bpf.FilterError as err:
            raise Failed(f"the kernel filter does not compile: {err}", [f"filter: {self.expr}"])
        self.expr_ok = True
        self._more = [f"filter: {self.expr or '(all packets)'}"]
        return f"compiles: {len(self.program)} instructions for {len(groups)} link type(s){note}"

    def check_ring(self) -> str:
        from ossensor._native import Ring
        from ossensor.capture.live import BLOCK_SIZE

        s = self.settings
        try:
            ring = Ring(ring_bytes=s.ring_mb << 20, block_size=BLOCK_SIZE, block_timeout_ms=s.block_timeout_ms,
                        snaplen=s.snaplen, batch_bytes=s.batch_max_bytes)
        except PermissionError:
            raise Failed("cannot open an AF_PACKET socket: permission denied (needs CAP_NET_RAW)") from None
        except OSError as err:
            raise Failed(f"cannot open a {s.ring_mb} MiB capture ring: {err.strerror or err} "
                         f"(try a smaller OSSENSOR_RING_MB)") from None
        try:
            got = ring.ring_bytes
            try:
                ring.attach_filter(self.program)
            except OSError as err:
                raise Failed(f"the kernel refused the filter program: {err.strerror or err}") from None
        finally:
            ring.close()
        small = (f"warn: opened only {got >> 20} MiB of the {s.ring_mb} MiB asked (OSSENSOR_RING_MB): "
                 f"not enough memory; the sensor would run with less") if got < s.ring_mb << 20 else ""
        return small or f"opened a {got >> 20} MiB TPACKET_V3 ring and attached the filter (then closed it)"

    def check_dns(self) -> str:
        s = self.settings
        parts = []
        for host, port, what, store in ((s.vsensor_hostname, s.vsensor_port, "vSensor", "addresses"),) + (
                ((self.proxy.host, self.proxy.port, "proxy", "proxy_addresses"),) if self.proxy else ()):
            if _is_ip(host):
                setattr(self, store, [host])
                parts.append(f"{what} {host} is an address (no lookup)")
                continue
            t0 = time.monotonic()
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as err:
                hint = (" (the proxy resolves the vSensor's name, but the sensor also needs it to keep its "
                        "own traffic out of capture)" if what == "vSensor" and self.proxy else "")
                raise Failed(f"cannot resolve the {what} {host!r}: {err.strerror}{hint}; "
                             f"resolver: {_resolvers()}") from None
            addrs = list(dict.fromkeys(i[4][0] for i in infos))
            setattr(self, store, addrs)
            parts.append(f"{what} {host} -> {', '.join(addrs)} ({(time.monotonic() - t0) * 1000:.0f} ms)")
        self.dns_ok = True
        return "; ".join(parts)

    def _connect(self) -> tuple[socket.socket, str]:
        """A TCP connection to the vSensor, direct or tunnelled through the proxy (HTTP CONNECT)."""
        s = self.settings
        if self.proxy:
            sock, where = _connect_any(self.proxy_addresses, self.proxy.port, "proxy " + self.proxy.shown)
            target = f"{_url_host(s.vsensor_hostname)}:{s.vsensor_port}"
            req = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", f"User-Agent: ossensor/{__version__}"]
            p = urllib.parse.urlsplit(self.proxy.url)
            if p.username:
                cred = f"{urllib.parse.unquote(p.username)}:{urllib.parse.unquote(p.password or '')}"
                req.append("Proxy-Authorization: Basic " + base64.b64encode(cred.encode()).decode())
            try:
                sock.sendall(("\r\n".join(req) + "\r\n\r\n").encode())
                head = _read_head(sock)
            except OSError as err:
                sock.close()
                raise Failed(f"proxy {self.proxy.shown}: no answer to CONNECT {target}: "
                             f"{err.strerror or err}") from None
            status_line = head.split("\r\n", 1)[0]
            parts = status_line.split(" ", 2)
            if len(parts) < 2 or parts[1] != "200":
                sock.close()
                what = {"403": "refused (forbidden by its rules: is the vSensor's host:port allowed? "
                               "is CONNECT to this port allowed?)",
                        "407": "wants authentication (put user:password in HTTPS_PROXY)",
                        "502": "could not reach the vSensor itself", "503": "could not reach the vSensor itself"
                        }.get(parts[1] if len(parts) > 1 else "", "did not open the tunnel")
                raise Failed(f"proxy {self.proxy.shown} {what}: CONNECT {target} -> "
                             f"{status_line.strip() or '(empty answer)'}")
            return sock, f"through proxy {self.proxy.shown} ({where}): CONNECT {target} -> {status_line.strip()}"
        return _connect_any(self.addresses, s.vsensor_port, "vSensor")

    def check_tcp(self) -> str:
        t0 = time.monotonic()
        sock, how = self._connect()
        sock.close()
        self.tcp_ok = True
        return f"{how} in {(time.monotonic() - t0) * 1000:.1f} ms"

    def _tls_context(self, verify: bool = True) -> ssl.SSLContext:
        s = self.settings
        if verify:
            ctx = ssl.create_default_context(cafile=str(s.tls_ca_file) if s.tls_ca_file else None)
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if s.tls_cert_file:
            try:
                ctx.load_cert_chain(str(s.tls_cert_file), str(s.tls_key_file))
            except (ssl.SSLError, OSError) as err:
                raise Failed(f"cannot load the client certificate OSSENSOR_TLS_CERT_FILE={s.tls_cert_file} / "
                             f"OSSENSOR_TLS_KEY_FILE: {err}") from None
        return ctx

    def check_tls(self) -> str:
        s = self.settings
        ca = str(s.tls_ca_file) if s.tls_ca_file else "the system trust store"
        sock, _ = self._connect()
        sock.settimeout(TIMEOUT)
        try:
            with self._tls_context().wrap_socket(sock, server_hostname=s.vsensor_hostname) as tls:
                der = tls.getpeercert(binary_form=True)
                version, cipher = tls.version(), (tls.cipher() or ("?",))[0]
        except ssl.SSLCertVerificationError as err:
            more = []
            try:
                more = self._describe_unverified()
            except (Failed, OSError, ssl.SSLError, ValueError):
                pass
            reason = err.verify_message or str(err)
            hint = {"unable to get local issuer certificate":
                    f"the certificate is not signed by a CA in {ca} (OSSENSOR_TLS_CA_FILE: is it the vSensor's CA?)",
                    "self-signed certificate in certificate chain":
                    f"the chain ends in a CA that is not in {ca} (OSSENSOR_TLS_CA_FILE)",
                    "certificate has expired": "the vSensor's certificate has expired (or this host's clock is wrong)",
                    }.get(reason, "")
            if "hostname mismatch" in reason or "IP address mismatch" in reason:
                hint = f"the certificate does not name {s.vsensor_hostname} (VSENSOR_HOSTNAME)"
            raise Failed(f"certificate verification failed: {reason}" + (f": {hint}" if hint else ""), more) \
                from None
        except ssl.SSLError as err:
            from ossensor.ship.client import tls_explain

            raise Failed(f"handshake failed: {tls_explain(str(err))}") from None
        except OSError as err:
            raise Failed(f"handshake failed: {err.strerror or err} (is it a TLS port? a proxy that intercepts?)") \
                from None
        self.tls_ok = True
        subject, issuer, not_after, days = _cert_facts(der)
        warn = "warn: " if days < 14 else ""
        return (f"{warn}{version} {cipher}; certificate subject {subject}, issuer {issuer}, expires {not_after} "
                f"({days} days); verified against {ca} for {s.vsensor_hostname}")

    def _describe_unverified(self) -> list[str]:
        """What the vSensor presented, fetched again without verification (to show, never to trust)."""
        sock, _ = self._connect()
        sock.settimeout(TIMEOUT)
        with self._tls_context(verify=False).wrap_socket(sock) as tls:
            der = tls.getpeercert(binary_form=True)
        subject, issuer, not_after, days = _cert_facts(der)
        return [f"the vSensor presents: subject {subject}, issuer {issuer}, expires {not_after} ({days} days)"]

    def check_key(self) -> str:
        from ossensor.ship.client import Shipper

        s = self.settings
        shipper = Shipper(host=s.vsensor_hostname, port=s.vsensor_port, key=s.key_bytes, sensor=s.sensor_name,
                          boot=secrets.token_hex(8),
                          ca_file=str(s.tls_ca_file) if s.tls_ca_file else None,
                          client_cert=(str(s.tls_cert_file), str(s.tls_key_file)) if s.tls_cert_file else None,
                          connect_timeout=TIMEOUT, read_timeout=TIMEOUT * 2,
                          proxy=self.proxy.url if self.proxy else None)
        try:
            out = shipper.hello()
        finally:
            shipper.close()
        answer = f"POST /v1/hello -> {out.status or '-'} {out.reason}"
        if out.kind == "acked":
            return f"the vSensor accepts the key and the clock ({answer}, {out.rtt * 1000:.1f} ms)"
        if out.status in (401, 403):
            raise Failed(f"the vSensor refuses this sensor: {answer} (is VSENSOR_HMAC_KEY the vSensor's key? "
                         f"is this host's clock right? now {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())})")
        raise Failed(f"no acknowledgment: {answer}")


# -- helpers -------------------------------------------------------------------------------------------
def _is_ip(host: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in host else socket.AF_INET, host)
        return True
    except OSError:
        return False


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _resolvers() -> str:
    try:
        with open("/etc/resolv.conf") as fh:
            servers = [line.split()[1] for line in fh if line.startswith("nameserver") and len(line.split()) > 1]
        return ", ".join(servers) or "no nameserver in /etc/resolv.conf"
    except OSError as err:
        return f"/etc/resolv.conf unreadable ({err.strerror})"


def _connect_any(addresses: list[str], port: int, what: str) -> tuple[socket.socket, str]:
    errors = []
    for addr in addresses:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(TIMEOUT)
        try:
            sock.connect((addr, port))
            return sock, f"connected to {what} {_url_host(addr)}:{port}"
        except socket.timeout:
            errors.append(f"{_url_host(addr)}:{port}: no answer within {TIMEOUT:g} s (a firewall or "
                          f"NetworkPolicy dropping packets?)")
        except OSError as err:
            hint = {111: " (nothing listens there: is the vSensor running, on this port?)",
                    113: " (no route to host)", 101: " (network unreachable)"}.get(err.errno or 0, "")
            errors.append(f"{_url_host(addr)}:{port}: {err.strerror or err}{hint}")
        sock.close()
    raise Failed(f"cannot connect to the {what}: " + "; ".join(errors))


def _read_head(sock: socket.socket, limit: int = 16384) -> str:
    sock.settimeout(TIMEOUT)
    data = b""
    while b"\r\n\r\n" not in data and len(data) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data.decode("latin-1")


def _cert_facts(der: bytes) -> tuple[str, str, str, int]:
    from cryptography import x509

    cert = x509.load_der_x509_certificate(der)
    not_after = cert.not_valid_after_utc
    days = (not_after - _dt.datetime.now(_dt.timezone.utc)).days
    return cert.subject.rfc4514_string() or "(empty)", cert.issuer.rfc4514_string() or "(empty)", \
        not_after.strftime("%Y-%m-%dT%H:%M:%SZ"), days


def main(environ=None, out: TextIO | None = None) -> int:
    return Diagnosis(environ, out).run()
