"""Compile a filter the way libpcap does for a live Linux capture.

On Linux the kernel takes the 802.1Q tag out of received frames before packet
sockets see them (the tag travels beside the frame). libpcap knows this only for
a live handle: its `vlan` keyword then tests the out-of-band tag (ancillary loads
SKF_AD_VLAN_TAG_PRESENT / SKF_AD_VLAN_TAG) instead of bytes 12-13 of the frame.
pcapy-ng's compile() uses a dead handle, which would make `vlan ...` match
nothing. So for Ethernet we compile on a briefly activated handle on loopback
(every namespace has one); it needs CAP_NET_RAW, which the sensor has at start.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

PCAP_ERRBUF_SIZE = 256
DLT_EN10MB = 1


class _BpfInsn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _BpfProgram(ctypes.Structure):
    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn))]


_lib = None
_lock = threading.Lock()  # pcap_compile is not thread-safe in older libpcaps


def _libpcap():
    global _lib
    if _lib is None:
        lib = None
        for name in ("libpcap.so.0.8", "libpcap.so.1"):  # by soname: find_library runs ldconfig
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


def compile_ethernet_live(expr: str, snaplen: int) -> list[tuple[int, int, int, int]] | None:
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
            prog = _BpfProgram()
            if lib.pcap_compile(h, ctypes.byref(prog), expr.encode(), 1, 0xFFFFFFFF) < 0:
                raise ValueError(lib.pcap_geterr(h).decode(errors="replace"))
            try:
                return [(i.code, i.jt, i.jf, i.k) for i in prog.bf_insns[:prog.bf_len]]
            finally:
                lib.pcap_freecode(ctypes.byref(prog))
        finally:
            lib.pcap_close(h)
