#!/usr/bin/env bash
# Record the system calls `ossensor run` really makes and write the seccomp allow-list
# shipped in daemonset/ossensor-seccomp.json (as root: the tests make namespaces and capture).
#
#   sudo scripts/seccomp-record.sh                       # record over the default tests
#   sudo scripts/seccomp-record.sh tests/test_x.py ...   # or over the tests you name
#
# It runs pytest under `strace -f`, follows every process that exec'd `... ossensor run` and the
# threads and children it made, and collects the names of their system calls (everything from
# the execve on: the container runtime applies the profile before it execs the entrypoint).
# Calls that a run may not hit but the sensor can make (error paths, signals, exit) are added from
# EXTRA below. Regenerate when the sensor learns something new (a new socket, Antigena, metrics),
# then review the diff: the profile is an allow-list, so a call missing from it fails with EPERM.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-daemonset/ossensor-seccomp.json}
TESTS=("$@")
[ ${#TESTS[@]} -gt 0 ] || TESTS=(tests/test_skeleton.py tests/test_privileges.py tests/test_metrics.py tests/test_hotplug.py tests/test_antigena.py tests/test_link_faults.py)
command -v strace >/dev/null || { apt-get update -qq && apt-get install -y -qq strace >/dev/null; }
TRACE=$(mktemp -d)
trap 'rm -rf "$TRACE"' EXIT
echo "seccomp-record: tracing ${TESTS[*]}" >&2
strace -f -qq -s 200 -o "$TRACE/trace" ${PYTHON:-python3} -m pytest -q -p no:cacheprovider "${TESTS[@]}" >&2 \
  || echo "seccomp-record: some tests failed under strace (it slows them); their calls are recorded all the same" >&2
${PYTHON:-python3} - "$TRACE/trace" "$OUT" <<'PY'
import json, re, sys
trace, out = sys.argv[1], sys.argv[2]
line_rx = re.compile(r"^(\d+)\s+(?:<\.\.\. (\w+) resumed>|(\w+)\()")
ret_rx = re.compile(r"\)\s+=\s+(\d+)(?:\s|$)")
followed, calls = set(), set()
for line in open(trace, errors="replace"):
    m = line_rx.match(line)
    if not m:
        continue
    pid, name = int(m.group(1)), m.group(2) or m.group(3)
    if name == "execve" and '"ossensor", "run"' in line and "<unfinished" not in line and "= 0" in line:
        followed.add(pid)
    if pid not in followed:
        continue
    calls.add(name)
    if name in ("clone", "clone3", "fork", "vfork") and "<unfinished" not in line:
        r = ret_rx.search(line)
        if r:
            followed.add(int(r.group(1)))
if "execve" not in calls:
    sys.exit("seccomp-record: no `ossensor run` was seen in the traced tests")
# May not be hit in a test run, but the sensor makes them: signal delivery and return, exits,
# interrupted waits, time, yielding, memory release, and the sends Antigena makes.
EXTRA = {"rt_sigreturn", "restart_syscall", "exit", "exit_group", "clock_gettime", "clock_nanosleep",
         "nanosleep", "gettimeofday", "sched_yield", "madvise", "munmap", "tgkill", "getpid", "gettid",
         "sendto", "sendmsg", "recvfrom", "recvmsg", "execve", "futex", "set_robust_list", "rseq",
         "sigaltstack", "rt_sigaction", "rt_sigprocmask", "close", "brk", "mmap", "mprotect"}
# What the container runtime does between loading the profile and exec'ing the entrypoint (runc with
# no_new_privs, as allowPrivilegeEscalation: false asks, loads it last): close the inherited
# descriptors (fstatfs on /proc/self/fd, getdents64, fcntl or close_range), then execve; Go's runtime
# may poll, sleep or yield meanwhile.
RUNTIME = {"fstatfs", "fstat", "newfstatat", "openat", "getdents64", "fcntl", "close_range", "close",
           "execve", "futex", "nanosleep", "sched_yield", "epoll_pwait", "getppid", "capget", "write"}
allow = sorted((calls | EXTRA | RUNTIME) - {"socket"})
# socket() is allowed only for the families the sensor uses: AF_UNIX 1, AF_INET 2, AF_INET6 10,
# AF_NETLINK 16 (interfaces), AF_PACKET 17 (capture, Antigena).
families = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10, "AF_NETLINK": 16, "AF_PACKET": 17}
profile = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "defaultErrnoRet": 1,
    "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
    "syscalls": [{"names": allow, "action": "SCMP_ACT_ALLOW",
                  "comment": "recorded by scripts/seccomp-record.sh from `ossensor run` in the tests"}]
                + [{"names": ["socket"], "action": "SCMP_ACT_ALLOW",
                    "args": [{"index": 0, "value": v, "op": "SCMP_CMP_EQ"}], "comment": f"socket({k}, ...)"}
                   for k, v in families.items()],
}
with open(out, "w") as f:
    json.dump(profile, f, indent=2)
    f.write("\n")
print(f"seccomp-record: {len(allow) + 1} system calls allowed -> {out}", file=sys.stderr)
PY
