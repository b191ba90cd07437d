"""Least privilege: check the capabilities the sensor needs before it opens its sockets,
and drop every capability once they are open.

What needs a capability, and nothing else does:

* ``CAP_NET_RAW`` — creating the AF_PACKET capture socket (``native/ring.c``) and, when
  ``ANTIGENA_ENABLED``, the AF_PACKET socket Antigena sends from. Both are opened at start.
  Everything done later on those sockets (swapping the BPF program when interfaces come
  and go, binding, reading the ring, sending) needs no capability.
* ``CAP_NET_BIND_SERVICE`` — only if ``OSSENSOR_METRICS_PORT`` is below 1024 (the manifests use 9464).

Nothing else the sensor does needs one: netlink link notifications, the HTTPS client,
a metrics port above 1023, writing the generated configuration file into a volume that
root owns. So after the sockets are open the sensor empties its effective, permitted,
inheritable and ambient sets, sets ``no_new_privs`` (so an ``execve`` — even of a set-uid
or file-capability binary, even as uid 0 — cannot give any capability back) and, when
it holds ``CAP_SETPCAP`` (it does not in the shipped manifests), empties its bounding set
too. A compromise of the packet or protocol parsing then finds no privilege left.

Capabilities are per thread in Linux: :func:`drop_all` must run before the sensor starts
its threads, which then inherit the empty sets. It checks every thread afterwards and
says so if one still holds a capability.

A missing capability is a deployment error: :func:`require` names it in one line and
the sensor exits with status 2 before opening anything.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from dataclasses import dataclass

# linux/capability.h
CAP_SETPCAP = 8
CAP_NET_BIND_SERVICE = 10
CAP_NET_ADMIN = 12
CAP_NET_RAW = 13
CAP_IPC_LOCK = 14
CAP_SYS_ADMIN = 21

NAMES = {
    0: "CAP_CHOWN", 1: "CAP_DAC_OVERRIDE", 2: "CAP_DAC_READ_SEARCH", 3: "CAP_FOWNER", 4: "CAP_FSETID",
    5: "CAP_KILL", 6: "CAP_SETGID", 7: "CAP_SETUID", 8: "CAP_SETPCAP", 9: "CAP_LINUX_IMMUTABLE",
    10: "CAP_NET_BIND_SERVICE", 11: "CAP_NET_BROADCAST", 12: "CAP_NET_ADMIN", 13: "CAP_NET_RAW",
    14: "CAP_IPC_LOCK", 15: "CAP_IPC_OWNER", 16: "CAP_SYS_MODULE", 17: "CAP_SYS_RAWIO", 18: "CAP_SYS_CHROOT",
    19: "CAP_SYS_PTRACE", 20: "CAP_SYS_PACCT", 21: "CAP_SYS_ADMIN", 22: "CAP_SYS_BOOT", 23: "CAP_SYS_NICE",
    24: "CAP_SYS_RESOURCE", 25: "CAP_SYS_TIME", 26: "CAP_SYS_TTY_CONFIG", 27: "CAP_MKNOD", 28: "CAP_LEASE",
    29: "CAP_AUDIT_WRITE", 30: "CAP_AUDIT_CONTROL", 31: "CAP_SETFCAP", 32: "CAP_MAC_OVERRIDE",
    33: "CAP_MAC_ADMIN", 34: "CAP_SYSLOG", 35: "CAP_WAKE_ALARM", 36: "CAP_BLOCK_SUSPEND",
    37: "CAP_AUDIT_READ", 38: "CAP_PERFMON", 39: "CAP_BPF", 40: "CAP_CHECKPOINT_RESTORE",
}

# linux/prctl.h
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def name(cap: int) -> str:
    return NAMES.get(cap, f"capability {cap}")


def short(cap: int) -> str:
    """The name Kubernetes and container engines use: NET_RAW."""
    return name(cap).removeprefix("CAP_")


@dataclass(frozen=True)
class Need:
    cap: int
    why: str


class MissingCapability(Exception):
    """One line naming the capability, what needs it and how to grant it."""

    def __init__(self, need: Need):
        self.need = need
        super().__init__(
            f"missing capability {name(need.cap)}: needed to {need.why} "
            f"(grant it: securityContext.capabilities.add: [\"{short(need.cap)}\"], "
            f"or --cap-add {short(need.cap)})")


def needs(antigena: bool, metrics_port: int | None = None) -> list[Need]:
    """What the sensor's start needs, in the order it opens its sockets."""
    out = [Need(CAP_NET_RAW, "open the AF_PACKET capture socket")]
    if antigena:
        out.append(Need(CAP_NET_RAW, "open the AF_PACKET socket Antigena sends from (ANTIGENA_ENABLED)"))
    if metrics_port is not None and 0 < metrics_port < 1024:
        out.append(Need(CAP_NET_BIND_SERVICE, f"listen on OSSENSOR_METRICS_PORT {metrics_port} (below 1024)"))
    return out


def _status_mask(field: str, status_path: str = "/proc/self/status") -> int:
    with open(status_path) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1], 16)
    return 0


def caps(mask: int) -> list[int]:
    return [c for c in range(64) if mask >> c & 1]


def effective() -> set[int]:
    return set(caps(_status_mask("CapEff")))


def require(antigena: bool, metrics_port: int | None = None) -> None:
    """Raise MissingCapability for the first capability the sensor needs and lacks."""
    have = effective()
    for need in needs(antigena, metrics_port):
        if need.cap not in have:
            raise MissingCapability(need)


def _libc():
    try:  # glibc by name: find_library would run ldconfig in a subprocess
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
    except OSError:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    libc.prctl.restype = ctypes.c_int
    return libc


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


def _last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 40


@dataclass
class DropReport:
    had: list[int]            # effective before
    bounding_cleared: bool    # the bounding set was emptied too (needs CAP_SETPCAP)
    threads_with_caps: list[str]  # threads that still hold a capability (should be none)

    def line(self) -> str:
        had = ",".join(short(c) for c in self.had) or "none"
        out = (f"capabilities dropped after opening the sockets: had [{had}], now none; no_new_privs set"
               f"{'; bounding set emptied' if self.bounding_cleared else ''}")
        return out


def drop_all() -> DropReport:
    """Give up every capability for good (this thread and the threads it starts later).

    Raises OSError when the kernel refuses (it never should: dropping needs no privilege).
    """
    libc = _libc()
    had = sorted(effective())

    def prctl(op: int, arg: int = 0, arg3: int = 0) -> int:
        return libc.prctl(op, arg, arg3, 0, 0)

    # ambient first (kept across execve otherwise); EINVAL on kernels before 4.3: nothing to clear
    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
    bounding = False
    if CAP_SETPCAP in had:
        bounding = all(prctl(PR_CAPBSET_DROP, c) == 0 for c in range(_last_cap() + 1))
    if prctl(PR_SET_NO_NEW_PRIVS, 1) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_NO_NEW_PRIVS): {os.strerror(err)}")
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()  # all zero: effective, permitted, inheritable
    if libc.capset(ctypes.byref(hdr), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")
    left = _status_mask("CapEff") | _status_mask("CapPrm")
    if left:
        raise OSError(0, f"capabilities still held after capset: {[short(c) for c in caps(left)]}")
    return DropReport(had=had, bounding_cleared=bounding, threads_with_caps=threads_with_caps())


def threads_with_caps() -> list[str]:
    """Threads of this process that still hold a capability (capabilities are per thread)."""
    out = []
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            path = f"/proc/self/task/{tid}/status"
            if _status_mask("CapEff", path) | _status_mask("CapPrm", path):
                with open(f"/proc/self/task/{tid}/comm") as f:
                    out.append(f"{tid}({f.read().strip()})")
        except OSError:
            continue
    return out
