"""POSIX extended regular expressions that behave like ``egrep`` / ``grep -E``.

The interface lists (``NETWORK_DEVICE_INCLUDELIST`` / ``NETWORK_DEVICE_EXCLUDELIST``) are documented as
egrep regexes, so they are not translated to Python's ``re`` (whose syntax differs: ``[[:digit:]]``,
``\\<``, back references, leftmost-longest alternation...). Instead we call the C library's own
``regcomp``/``regexec`` through ctypes with ``REG_EXTENDED | REG_NOSUB``: the same engine GNU grep
falls back to, so a pattern means here what it means on the command line.

Matching is an unanchored search, like ``egrep`` on one line: ``ERE("eth").search("veth0")`` is True;
use ``^`` and ``$`` to anchor. If the text contains newlines each line is tried separately, as grep would.

Known differences from GNU grep 3.8 (checked against ``grep -E`` on glibc 2.36). grep compiles with
``RE_SYNTAX_EGREP``, which is more lenient than POSIX ``regcomp``; every difference found is a pattern
that grep *accepts* (sometimes with a warning) and ``regcomp`` *rejects*, so the sensor refuses to start
with a clear message rather than silently matching something else:

* a repetition operator with nothing before it -- ``*a``, ``+a``, ``?a``, ``{1}``, ``a|*b``, ``(*a)``:
  grep warns "* at start of expression" and treats it as a literal; here "Invalid preceding regular
  expression". Escape it (``\\*a``) or use ``[*]a``.
* an unterminated interval ``a{1``: grep treats ``{`` as a literal; here "Unmatched \\{". Use ``a[{]1``.

For every pattern both accept, matching is the same (the test suite checks this against the installed
``grep -E``). Further notes:

* ``\\d`` is *not* a digit class in either (it matches a literal ``d``): use ``[[:digit:]]`` or ``[0-9]``.
* ``\\w``, ``\\W``, ``\\s``, ``\\S``, ``\\<``, ``\\>``, ``\\b`` are GNU extensions supported by both.
* Rejected by both, with the same reason text: ``[``, ``(``, ``[a``, ``a{2,1}``, ``a\\``, ``\\1``
  (no group), ``[[:foo:]]``, ``[b-a]``, ``a{99999}``. A lone ``)`` is a literal in both.
* Pattern and text are passed as UTF-8 in the process' ``LC_CTYPE`` locale; grep uses its own locale
  rules. Interface names are ASCII, for which the two agree.
* A pattern or text containing a NUL character is rejected (``ValueError``).

The differences that do exist are between grep versions as much as between grep and glibc; the test
suite (tests/test_egrep.py) compares against the ``grep -E`` installed on the build host.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

__all__ = ["ERE", "compile_list"]

# glibc <regex.h>
REG_EXTENDED = 1
REG_ICASE = 2
REG_NEWLINE = 4
REG_NOSUB = 8
REG_NOMATCH = 1

_REGEX_T_SIZE = 256  # sizeof(regex_t) is 64 on x86_64 glibc; be generous for other ABIs
_ERRBUF_SIZE = 512

_libc = None
_libc_lock = threading.Lock()


def _load_libc():
    global _libc
    with _libc_lock:
        if _libc is None:
            try:  # glibc by soname: find_library("c") would run ldconfig in a subprocess
                lib = ctypes.CDLL("libc.so.6")
            except OSError:
                lib = ctypes.CDLL(ctypes.util.find_library("c"))
            lib.regcomp.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
            lib.regcomp.restype = ctypes.c_int
            lib.regexec.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t,
                                    ctypes.c_void_p, ctypes.c_int]
            lib.regexec.restype = ctypes.c_int
            lib.regerror.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
            lib.regerror.restype = ctypes.c_size_t
            lib.regfree.argtypes = [ctypes.c_void_p]
            lib.regfree.restype = None
            _libc = lib
        return _libc


def _encode(value: str, what: str) -> bytes:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, not {type(value).__name__}")
    if "\0" in value:
        raise ValueError(f"{what} contains a NUL character")
    return value.encode("utf-8", "surrogateescape")


class ERE:
    """One compiled POSIX extended regex (``egrep`` syntax)."""

    __slots__ = ("pattern", "_buf", "_lib", "_compiled")

    def __init__(self, pattern: str):
        self.pattern = pattern
        self._compiled = False
        self._lib = _load_libc()
        raw = _encode(pattern, "regex")
        self._buf = ctypes.create_string_buffer(_REGEX_T_SIZE)
        rc = self._lib.regcomp(self._buf, raw, REG_EXTENDED | REG_NOSUB)
        if rc != 0:
            err = ctypes.create_string_buffer(_ERRBUF_SIZE)
            self._lib.regerror(rc, self._buf, err, _ERRBUF_SIZE)
            reason = err.value.decode("utf-8", "replace") or f"regcomp error {rc}"
            # glibc frees its partial state itself when regcomp fails; do not regfree.
            raise ValueError(reason)
        self._compiled = True

    def search(self, text: str) -> bool:
        """True when the regex matches anywhere in ``text`` (any line of it), like ``egrep -q``."""
        raw = _encode(text, "text")
        for line in raw.split(b"\n"):
            rc = self._lib.regexec(self._buf, line, 0, None, 0)
            if rc == 0:
                return True
            if rc != REG_NOMATCH:
                err = ctypes.create_string_buffer(_ERRBUF_SIZE)
                self._lib.regerror(rc, self._buf, err, _ERRBUF_SIZE)
                raise RuntimeError(f"regexec failed: {err.value.decode('utf-8', 'replace')}")
        return False

    def __del__(self):
        if getattr(self, "_compiled", False):
            self._compiled = False
            try:
                self._lib.regfree(self._buf)
            except Exception:  # interpreter shutdown
                pass

    def __repr__(self) -> str:
        return f"ERE({self.pattern!r})"

    def __str__(self) -> str:
        return self.pattern

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ERE) and other.pattern == self.pattern

    def __hash__(self) -> int:
        return hash(("ERE", self.pattern))

    def __reduce__(self):
        return (ERE, (self.pattern,))


def compile_list(value: str) -> list[ERE]:
    """Compile a whitespace-separated list of regexes (empty/blank -> ``[]``).

    Raises ``ValueError("invalid regex '<p>': <reason>")`` when one does not compile; when several
    do not, all are named in the one message, separated by ``; ``.
    """
    out: list[ERE] = []
    bad: list[str] = []
    for item in (value or "").split():
        try:
            out.append(ERE(item))
        except ValueError as err:
            bad.append(f"invalid regex {item!r}: {err}")
    if bad:
        raise ValueError("; ".join(bad))
    return out
