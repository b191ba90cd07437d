"""Which HTTPS proxy the sensor uses for the vSensor: HTTPS_PROXY / NO_PROXY, decided once at start.

* `HTTPS_PROXY`, else `https_proxy`: an `http://[user:password@]host[:port]` URL (port 80 when
  omitted). The sensor opens a TCP connection to it and asks `CONNECT vsensor:port`; TLS to the
  vSensor then runs end to end through the tunnel (the proxy sees only ciphertext).
  Anything without the `http://` scheme (`proxy:3128`, `socks5://…`, `https://…`) is an error
  naming the variable: a bare `host:port` would otherwise be misread.
* `NO_PROXY`, else `no_proxy`: comma-separated host names, domain suffixes (`.example.com` or
  `example.com` match `a.example.com`), IP addresses, CIDR blocks, or `*` (no proxy at all), as
  curl and requests read it. When the vSensor's host matches, it is reached directly.

The chosen proxy is logged at start with its password, if any, replaced by `***`.
"""

from __future__ import annotations

import ipaddress
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "NO_PROXY", "no_proxy")


def url_host(host: str) -> str:
    """Bracket a bare IPv6 address for a URL."""
    try:
        if ipaddress.ip_address(host).version == 6:
            return f"[{host}]"
    except ValueError:
        pass
    return host


class ProxyError(ValueError):
    """One line naming the variable: `HTTPS_PROXY: ...`."""


@dataclass
class Proxy:
    url: str       # as given (may hold credentials: never log it, log `shown`)
    host: str
    port: int
    variable: str  # which variable it came from

    @property
    def shown(self) -> str:
        p = urllib.parse.urlsplit(self.url)
        cred = f"{p.username}:***@" if p.password else (f"{p.username}@" if p.username else "")
        return f"http://{cred}{url_host(self.host)}:{self.port}"


def _get(environ: Mapping[str, str], *names: str) -> tuple[str, str] | None:
    for n in names:
        v = (environ.get(n) or "").strip()
        if v:
            return n, v
    return None


def choose(host: str, port: int, environ: Mapping[str, str] | None = None) -> Proxy | None:
    """The proxy for https://host:port, or None (no proxy set, or NO_PROXY matches). Raises ProxyError."""
    env = os.environ if environ is None else environ
    got = _get(env, "HTTPS_PROXY", "https_proxy")
    if not got:
        return None
    var, value = got
    phost, pport = parse(var, value)
    no_proxy = _get(env, "NO_PROXY", "no_proxy")
    if no_proxy and _bypass(f"https://{url_host(host)}:{port}/", no_proxy=no_proxy[1]):
        return None
    return Proxy(value, phost, pport, var)


def parse(var: str, value: str) -> tuple[str, int]:
    """(host, port) of an http:// proxy URL; ProxyError naming `var` otherwise."""
    try:
        parsed = urllib.parse.urlsplit(value)
        ok = parsed.scheme.lower() == "http" and parsed.netloc
    except ValueError:  # e.g. an unbalanced "[" in the host
        ok = False
    if not ok:
        raise ProxyError(f"{var}: {_shown(value)} is not an http:// proxy URL; write it as "
                         f"http://host:port (an HTTP CONNECT proxy), e.g. http://proxy.example:3128")
    try:
        port = parsed.port or 80
    except ValueError:
        raise ProxyError(f"{var}: {_shown(value)} has an invalid port") from None
    if not parsed.hostname:
        raise ProxyError(f"{var}: {_shown(value)} names no host")
    return parsed.hostname, port


def problems(environ: Mapping[str, str]) -> list[str]:
    """The proxy variables' problems, one line each, for the start-up check (config.load)."""
    got = _get(environ, "HTTPS_PROXY", "https_proxy")
    if not got:
        return []
    try:
        parse(*got)
    except ProxyError as err:
        return [str(err)]
    return []


def _shown(value: str) -> str:
    """The value, password masked, quoted and shortened for a one-line message."""
    text = _safe(value)
    return f"{text[:80]!r}... ({len(text)} characters)" if len(text) > 80 else repr(text)


def _bypass(url: str, no_proxy: str) -> bool:
    """NO_PROXY as requests reads it (host suffixes, CIDR ranges, ports); imported only when NO_PROXY
    is set: requests costs ~5 MiB of memory in every sensor."""
    from requests.utils import should_bypass_proxies

    return should_bypass_proxies(url, no_proxy=no_proxy)


def _safe(value: str) -> str:
    """The value with any password masked, for error messages."""
    try:
        p = urllib.parse.urlsplit(value)
        if p.password:
            return value.replace(":" + p.password + "@", ":***@")
    except ValueError:
        pass
    return value
