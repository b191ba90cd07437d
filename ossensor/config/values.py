"""One parser per kind of value a variable holds, each with the wording of its problems.

Every parser takes the raw text and returns the typed value, or raises ValueError(reason): the reason
completes the line ``VARIABLE: reason`` that load() (settings.py) reports. A user value is always quoted
through show(), shortened, and never the key.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ossensor.interfaces.egrep import ERE, compile_list

_TRUE = {"1", "true", "yes", "on", "y", "t"}
_FALSE = {"0", "false", "no", "off", "n", "f"}

_DNS_LABEL_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")
_IFNAME_MAX = 15  # IFNAMSIZ - 1


def env_value(environ: Mapping[str, str], name: str) -> str | None:
    """A variable's value; empty or all-blank counts as not set."""
    value = environ.get(name)
    if value is None or not str(value).strip():
        return None
    return value


def show(value: Any, limit: int = 80) -> str:
    """Quote a user value for a one-line message (never used for the key)."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text)


def parse_int(value: Any, lo: int, hi: int | None) -> int:
    what = f"an integer {lo}-{hi}" if hi is not None else f"an integer >= {lo}"
    if isinstance(value, bool):
        raise ValueError(f"must be {what}, got {show(value)}")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise ValueError(f"must be {what}, got {show(value)}")
        number = int(text, 10)
    if number < lo or (hi is not None and number > hi):
        raise ValueError(f"must be {what}, got {show(value)}")
    return number


def parse_float(value: Any, *, minimum: float = 0.0, strict_min: bool = True,
                 maximum: float | None = None) -> float:
    op = ">" if strict_min else ">="
    what = f"a number of seconds {op} {minimum:g}"
    if maximum is not None:
        what += f" and <= {maximum:g}"
    if isinstance(value, bool):
        raise ValueError(f"must be {what}, got {show(value)}")
    try:
        number = float(str(value).strip()) if not isinstance(value, (int, float)) else float(value)
    except ValueError:
        raise ValueError(f"must be {what}, got {show(value)}") from None
    if (not math.isfinite(number) or number < minimum or (strict_min and number == minimum)
            or (maximum is not None and number > maximum)):
        raise ValueError(f"must be {what}, got {show(value)}")
    return number


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"must be a boolean (true/false, 1/0, yes/no), got {show(value)}")


def parse_hostname(value: Any) -> str:
    text = str(value).strip()
    if not text:
        raise ValueError("required, not set")
    if "://" in text or "/" in text:
        raise ValueError(f"must be a host name or IP address, not a URL or path, got {show(text)}")
    if any(ch.isspace() for ch in text):
        raise ValueError(f"must be a host name or IP address, got {show(text)}")
    if text.startswith("["):
        m = re.fullmatch(r"\[([^\]]*)\](?::(.*))?", text)
        if not m:
            raise ValueError(f"unbalanced brackets in {show(text)}")
        inner, port = m.group(1), m.group(2)
        if port is not None:
            raise ValueError(f"must not contain a port ({show(text)}): set VSENSOR_HOSTNAME={inner} "
                             f"and VSENSOR_PORT={port}")
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise ValueError(f"{show(text)}: brackets are only for an IPv6 address") from None
        return inner
    if ":" in text:
        if text.count(":") == 1:
            host, port = text.split(":")
            raise ValueError(f"must not contain a port ({show(text)}): set VSENSOR_HOSTNAME={host} "
                             f"and VSENSOR_PORT={port}")
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise ValueError(f"{show(text)} is neither a host name nor an IPv6 address "
                             f"(a port goes in VSENSOR_PORT; an IPv6 address with a port is "
                             f"written [addr]:port, which is not allowed here either)") from None
        return text
    # IPv4 address or DNS name
    if re.fullmatch(r"[0-9.]+", text):
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            raise ValueError(f"{show(text)} is not a valid IPv4 address") from None
        return text
    name = text[:-1] if text.endswith(".") else text
    if len(name) > 253 or not all(_DNS_LABEL_RE.fullmatch(label) for label in name.split(".")):
        raise ValueError(f"{show(text)} is not a valid host name")
    return text


def parse_ifname(value: Any) -> str:
    text = str(value).strip()
    if (len(text) > _IFNAME_MAX or "/" in text or ":" in text or text in (".", "..")
            or any(ch.isspace() or not ch.isprintable() for ch in text)):
        raise ValueError(f"must be a network interface name (at most {_IFNAME_MAX} characters, "
                         f"no '/', ':' or spaces), got {show(text)}")
    return text


def parse_regex_list(value: Any) -> list[ERE]:
    if isinstance(value, list):
        return [v if isinstance(v, ERE) else ERE(str(v)) for v in value]
    return compile_list(str(value))


def check_bpf(expr: str, snaplen: int) -> None:
    from ossensor.capture import pcapcompile

    try:
        pcapcompile.compile_dead(expr, pcapcompile.DLT_EN10MB, snaplen)
    except OSError:  # no libpcap: the capture will say so
        return
    except ValueError as err:  # libpcap's message
        reason = " ".join(str(err).split()) or type(err).__name__
        raise ValueError(f"does not compile: {reason} (filter: {show(expr, 120)})") from None


def readable_file(value: Any) -> Path:
    path = Path(str(value).strip())
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise ValueError(f"cannot read {path}: {err.strerror or err}") from None
    if not path.is_file():
        raise ValueError(f"{path} is not a regular file")
    return path
