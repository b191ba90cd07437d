"""One parser per kind of value a variable holds, each with the wording of its problems.

Every parser takes the raw text and returns the typed value, or raises ValueError(reason): the reason
completes the line ``VARIABLE: reason`` that load() (settings.py) reports. A user value is always quoted
through show(), shortened, and never the key.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import stat
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
    """Quote a user value for a one-line message (never used for the key): quoted and escaped (a newline
    or an undecodable byte cannot break the line), at most `limit` characters of it, and its length when
    it was longer (a 100 000-character value must not flood the terminal)."""
    text = str(value)
    if len(text) > limit:
        return f"{text[:limit]!r}... ({len(text)} characters)"
    return repr(text)


def show_path(value: Any, limit: int = 80) -> str:
    """show() for a path: a long one keeps its end, as clip() does, quoted."""
    text = str(value)
    if len(text) > limit:
        return f"...{text[-limit:]!r} ({len(text)} characters)"
    return repr(text)


def clip(value: Any, limit: int = 80) -> str:
    """show() without the quotes: a path or name inside a sentence. A long path keeps its end (the file's
    name says more than the directories above it)."""
    text = str(value)
    if len(text) > limit:
        if "/" in text:
            return f"...{repr(text[-limit:])[1:-1]} ({len(text)} characters)"
        return f"{repr(text[:limit])[1:-1]}... ({len(text)} characters)"
    return repr(text)[1:-1]


def text_problem(value: str) -> str | None:
    """Why a raw environment value cannot be used at all, or None. The environment holds bytes: Python
    keeps those that are not UTF-8 as lone surrogates, which no parser, path or log line can carry."""
    if "\0" in value:
        return "contains a NUL character"
    for i, ch in enumerate(value):
        if "\udc80" <= ch <= "\udcff":
            return f"is not UTF-8 text (byte 0x{ord(ch) - 0xdc00:02x} at character {i + 1})"
        if "\ud800" <= ch <= "\udfff":
            return f"is not valid text (a lone surrogate at character {i + 1})"
    return None


def parse_int(value: Any, lo: int, hi: int | None) -> int:
    what = f"an integer {lo}-{hi}" if hi is not None else f"an integer >= {lo}"
    if isinstance(value, bool):
        raise ValueError(f"must be {what}, got {show(value)}")
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip()
        if not re.fullmatch(r"[+-]?[0-9]{1,30}", text):  # more digits than any bound: not a number of ours
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
            raise ValueError(f"must not contain a port ({show(text)}): set VSENSOR_HOSTNAME={clip(inner)} "
                             f"and VSENSOR_PORT={clip(port)}")
        try:
            ipaddress.IPv6Address(inner)
        except ValueError:
            raise ValueError(f"{show(text)}: brackets are only for an IPv6 address") from None
        return inner
    if ":" in text:
        if text.count(":") == 1:
            host, port = text.split(":")
            raise ValueError(f"must not contain a port ({show(text)}): set VSENSOR_HOSTNAME={clip(host)} "
                             f"and VSENSOR_PORT={clip(port)}")
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
    """A regular file this process can read. Looked at before it is opened, and opened without blocking:
    a FIFO or a device named here must not hang the start."""
    path = Path(str(value).strip())
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{clip(path)} is not a regular file")
        os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC))
    except OSError as err:
        raise ValueError(f"cannot read {clip(path)}: {err.strerror or err}") from None
    return path


def _nearest_existing(path: Path) -> Path:
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return probe


def writable_file_path(value: Any, *, regular: bool = False) -> Path:
    """A file this process can create or replace (OSSENSOR_CONFIG_PATH, OSSENSOR_LOGFILE_PATH): checked at
    start, with the other variables, rather than failing when it is first written. regular: it must be a
    regular file if it exists (the configuration file is replaced by a rename: never over /dev/null)."""
    path = Path(str(value).strip())
    try:
        if path.is_dir():
            raise ValueError(f"{clip(path)} is a directory; name a file")
        if regular and path.exists() and not path.is_file():
            raise ValueError(f"{clip(path)} is not a regular file")
        if path.exists():
            if not os.access(path, os.W_OK):
                raise ValueError(f"{clip(path)} is not writable")
            return path
        probe = _nearest_existing(path.parent)
        if not probe.is_dir():
            raise ValueError(f"{clip(path)}: {clip(probe)} is not a directory")
        if not os.access(probe, os.W_OK | os.X_OK):
            raise ValueError(f"{clip(path)} cannot be created: {clip(probe)} is not writable")
        os.stat(path.parent / "x")  # a name too long fails here (ENAMETOOLONG), a missing one is fine
    except FileNotFoundError:
        pass
    except OSError as err:
        raise ValueError(f"{clip(path)}: {err.strerror or err}") from None
    return path


def writable_dir(value: Any) -> Path:
    """A directory this process can create or write into (OSSENSOR_SPOOL_DIR)."""
    path = Path(str(value).strip())
    try:
        if path.exists() and not path.is_dir():
            raise ValueError(f"{show_path(path)} exists and is not a directory")
        probe = _nearest_existing(path)
        if not os.access(probe, os.W_OK | os.X_OK):
            raise ValueError(f"{show_path(path)} is not writable (checked {clip(probe)})")
        os.stat(path / "x")
    except FileNotFoundError:
        pass
    except OSError as err:
        raise ValueError(f"{show_path(path)}: {err.strerror or err}") from None
    return path


def tls_problems(ca: str | None, cert: str | None, key: str | None) -> list[tuple[str, str]]:
    """The TLS files loaded as the link will load them, so that a file that is not PEM, or a key that is
    not the certificate's, is reported at start with the other problems, not at the first connection.
    Files that cannot be read are skipped here: readable_file() reports those."""
    import ssl

    def usable(value: str | None) -> Path | None:
        try:
            return None if value is None else readable_file(value)
        except ValueError:
            return None

    ca, cert, key = usable(ca), usable(cert), usable(key)
    out = []
    if ca is not None:
        try:
            ssl.create_default_context(cafile=str(ca))
        except (ssl.SSLError, OSError, ValueError) as err:
            out.append(("OSSENSOR_TLS_CA_FILE", f"OSSENSOR_TLS_CA_FILE: {clip(ca)} holds no usable PEM CA "
                                                f"certificate ({_ssl_reason(err)})"))
    if cert is not None and key is not None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        try:
            # a passphrase is asked for only when the key is encrypted: without this callback OpenSSL asks
            # on the terminal (the start hangs under one) and there is no setting to give it
            ctx.load_cert_chain(str(cert), str(key), password=_no_passphrase)
        except _Encrypted:
            out.append(("OSSENSOR_TLS_KEY_FILE", f"OSSENSOR_TLS_KEY_FILE: {clip(key)} is encrypted (it needs a "
                                                 "passphrase); give an unencrypted PEM key, e.g. "
                                                 "`openssl pkey -in KEY -out PLAIN`, readable by this user only"))
        except (ssl.SSLError, OSError, ValueError) as err:
            out.append(("OSSENSOR_TLS_CERT_FILE", f"OSSENSOR_TLS_CERT_FILE: {clip(cert)} with OSSENSOR_TLS_KEY_FILE "
                                                  f"{clip(key)}: not a PEM certificate and its private key "
                                                  f"({_ssl_reason(err)})"))
    return out


class _Encrypted(Exception):
    pass


def _no_passphrase():
    raise _Encrypted


def _ssl_reason(err: Exception) -> str:
    reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or str(err)
    return " ".join(str(reason).split())[:160]


# ---- the variables both `run` (settings.py) and a local replay (local.py) read: one parser each

def debug_level(value: Any) -> int:
    return parse_int(value, 0, 5)


def snaplen(value: Any) -> int:
    return parse_int(value, 64, 262144)


def batch_bytes(value: Any) -> int:
    """OSSENSOR_BATCH_MAX_KB, in bytes."""
    return parse_int(value, 64, 65536) * 1024


def batch_age_ms(value: Any) -> int:
    return parse_int(value, 10, 60000)


def log_format(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ("plain", "json"):
        raise ValueError(f"must be plain or json, got {show(value)}")
    return text
