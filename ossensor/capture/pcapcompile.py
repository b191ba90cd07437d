"""Filters compiled by the system's libpcap (through ctypes), the way tcpdump compiles them.

Dead handles (`compile_dead`): a link type and a snaplen, for replayed files, for link types other than
Ethernet and for checking the BPF setting. pcapy-ng's compile() does the same but, when a filter does
not compile, builds its error message from memory it has just freed (pcapy-ng 2.1.0: a heap
use-after-free AddressSanitizer reports; the message is right only as long as nobody reused the memory).

Live Ethernet (`compile_ethernet_live`): on Linux the kernel takes the 802.1Q tag out of received frames
before packet sockets see them (the tag travels beside the frame). libpcap knows this only for a live
handle: its `vlan` keyword then tests the out-of-band tag (ancillary loads SKF_AD_VLAN_TAG_PRESENT /
SKF_AD_VLAN_TAG) instead of bytes 12-13 of the frame; a dead handle would make `vlan ...` match nothing.
So for Ethernet we compile on a briefly activated handle on loopback (every namespace has one); it
needs CAP_NET_RAW, which the sensor has at start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

PCAP_ERRBUF_SIZE = 256
DLT_EN10MB = 1
NETMASK_UNKNOWN = 0xFFFFFFFF  # PCAP_NETMASK_UNKNOWN: `ip broadcast` is refused rather than guessed
Insn = tuple[int, int, int, int]


class _BpfInsn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


_lib = None
_lock = threading.Lock()  # pcap_compile is not thread-safe in older libpcaps


def _bundled() -> list[str]:
    """The libpcap a manylinux wheel carries (auditwheel puts it in site-packages/ossensor.libs/ and
    points _filereader at it): the one to use, so that live capture and replay compile alike."""
    from pathlib import Path

    libs = Path(__file__).resolve().parents[2] / "ossensor.libs"
    return sorted(str(p) for p in libs.glob("libpcap*.so*")) if libs.is_dir() else []


def _libpcap():
    global _lib
    if _lib is None:
        lib = None
        for name in (*_bundled(), "libpcap.so.0.8", "libpcap.so.1"):  # by soname: find_library runs ldconfig
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        if lib is None:
            found = ctypes.util.find_library("pcap")
            if not found:
                raise OSError("libpcap not found")
            lib = ctypes.CDLL(found)
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_create.restype = ctypes.c_void_p
        lib.pcap_create.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        lib.pcap_set_buffer_size.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.pcap_set_snaplen.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.pcap_activate.argtypes = [ctypes.c_void_p]
        lib.pcap_datalink.argtypes = [ctypes.c_void_p]
        lib.pcap_compile.argtypes = [ctypes.c_void_p, ctypes.POINTER(_BpfProgram), ctypes.c_char_p, ctypes.c_int,
                                     ctypes.c_uint32]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_freecode.argtypes = [ctypes.POINTER(_BpfProgram)]
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        _lib = lib
    return _lib


def _program(lib, h, expr: str) -> list[Insn]:
    """Compile on handle h (the caller holds _lock); ValueError with libpcap's message if it fails."""
    prog = _BpfProgram()
    if lib.pcap_compile(h, ctypes.byref(prog), expr.encode(), 1, NETMASK_UNKNOWN) < 0:
        raise ValueError(lib.pcap_geterr(h).decode(errors="replace").strip() or "does not compile")  # a copy
    try:
        return [(i.code, i.jt, i.jf, i.k) for i in prog.bf_insns[:prog.bf_len]]
    finally:
        lib.pcap_freecode(ctypes.byref(prog))


def compile_dead(expr: str, dlt: int, snaplen: int) -> list[Insn]:
    """The program for `expr` on link type `dlt` (a DLT_ value) as `tcpdump -r` compiles it.
    Raises ValueError with libpcap's message when the expression is wrong, OSError without libpcap."""
    lib = _libpcap()
    with _lock:
        h = lib.pcap_open_dead(dlt, snaplen)
        if not h:
            raise OSError("pcap_open_dead failed")
        try:
            return _program(lib, h, expr)
        finally:
            lib.pcap_close(h)


def compile_ethernet_live(expr: str, snaplen: int) -> list[Insn] | None:
    """The program for `expr` on Ethernet as a live Linux handle compiles it, or None when no
    live handle can be had (no CAP_NET_RAW, no libpcap): the caller falls back to a dead
    handle. Raises ValueError with libpcap's message when the expression is wrong."""
    try:
        lib = _libpcap()
    except OSError:
        return None
    err = ctypes.create_string_buffer(PCAP_ERRBUF_SIZE)
    with _lock:
        h = lib.pcap_create(b"lo", err)
        if not h:
            return None
        try:
            lib.pcap_set_buffer_size(h, 1 << 16)  # the smallest ring: this handle never reads
            lib.pcap_set_snaplen(h, snaplen)
            if lib.pcap_activate(h) < 0 or lib.pcap_datalink(h) != DLT_EN10MB:
                return None
            return _program(lib, h, expr)
        finally:
            lib.pcap_close(h)
