"""The HMAC key: read from VSENSOR_HMAC_KEY or the file VSENSOR_HMAC_KEY_FILE names, and kept out of
every line we print (redact)."""

from __future__ import annotations

from collections.abc import Mapping

import os
import stat

from ossensor.config.values import clip, env_value

REDACTED = "<redacted>"
KEY_FILE_MAX_BYTES = 64 * 1024
_TRAILING = b" \t\r\n"


def redact(text: str, key: bytes | None) -> str:
    """Belt and braces: a user value that happens to contain the key is shown redacted."""
    if not key or len(key) < 4:
        return text
    try:
        key_text = key.decode("utf-8", "surrogateescape")
    except Exception:  # pragma: no cover
        return text
    return text.replace(key_text, REDACTED) if key_text.strip() else text


def read_hmac_key(environ: Mapping[str, str]) -> tuple[bytes | None, list[str]]:
    """The HMAC key from ``VSENSOR_HMAC_KEY`` or the file named by ``VSENSOR_HMAC_KEY_FILE``.

    Returns ``(key, problems)``; ``(None, [])`` when neither is set (callers decide whether the key is
    required). Trailing whitespace and newlines are stripped from either (`echo key > file`, a Secret made
    with --from-file, `export VSENSOR_HMAC_KEY="$(cat file)"` and a YAML block scalar all leave one), so the
    same key works both ways, here and in the vSensor. Problems never contain the key. The file is looked
    at before it is opened, and opened without blocking: a FIFO with no writer must not hang the start.
    """
    direct = env_value(environ, "VSENSOR_HMAC_KEY")
    path = env_value(environ, "VSENSOR_HMAC_KEY_FILE")
    if direct is not None and path is not None:
        return None, ["VSENSOR_HMAC_KEY: both VSENSOR_HMAC_KEY and VSENSOR_HMAC_KEY_FILE are set; "
                      "set only one of them"]
    if direct is not None:
        return _long_enough(direct.encode("utf-8", "surrogateescape").rstrip(_TRAILING), "VSENSOR_HMAC_KEY")
    if path is None:
        return None, []
    path = path.strip()
    shown = clip(path)
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            return None, [f"VSENSOR_HMAC_KEY_FILE: {shown} is not a regular file"]
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as fh:
            raw = fh.read(KEY_FILE_MAX_BYTES + 1)
    except (OSError, ValueError) as err:  # ValueError: a NUL in the path
        return None, [f"VSENSOR_HMAC_KEY_FILE: cannot read {shown}: {getattr(err, 'strerror', None) or err}"]
    if len(raw) > KEY_FILE_MAX_BYTES:
        return None, [f"VSENSOR_HMAC_KEY_FILE: {shown} is larger than {KEY_FILE_MAX_BYTES} bytes; "
                      "is it the right file?"]
    key = raw.rstrip(_TRAILING)
    if not key:
        return None, [f"VSENSOR_HMAC_KEY_FILE: {shown} is empty"]
    return _long_enough(key, "VSENSOR_HMAC_KEY_FILE")


KEY_MIN_BYTES = 8  # a shorter key is guessable, and too short to be scrubbed reliably from logs


def _long_enough(key: bytes, var: str) -> tuple[bytes | None, list[str]]:
    if len(key) < KEY_MIN_BYTES:
        return None, [f"{var}: the key is {len(key)} bytes; use at least {KEY_MIN_BYTES} "
                      "(16 or more random bytes recommended, e.g. `head -c 24 /dev/urandom | base64`)"]
    return key, []
