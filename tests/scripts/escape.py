#!/usr/bin/env python3
"""A hostile candidate: tries every way out of its fence it knows and writes one line per
attempt to RESULTS: `NAME refused ERRNO-NAME` when the system call failed, or
`NAME ESCAPED DETAIL` when it worked. The test decides which errors count as fenced.

Usage: escape.py RESULTS JSON-ARGS
  JSON-ARGS: {"target4": IP, "target6": IP, "port": N, "unix": PATH, "key": PATH,
              "store": PATH, "config": PATH, "cgroup_mount": PATH, "pids_try": N,
              "memory_mib": N}
"""
import ctypes
import errno
import json
import os
import signal
import socket
import sys
import time

results = open(sys.argv[1], "a")
args = json.loads(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)


def record(line):
    results.write(line + "\n")
    results.flush()


def errname(e):
    return errno.errorcode.get(e, str(e))


def attempt(name, fn):
    try:
        detail = fn()
        record(f"{name} ESCAPED {detail!r}")
    except OSError as e:
        record(f"{name} refused {errname(e.errno)}")


def check(rc):
    """Raises OSError for a failed libc call (rc < 0)."""
    if rc < 0:
        raise OSError(ctypes.get_errno(), "libc call failed")
    return rc


def daemon_pid():
    # The candidate command is `sh -c "python3 …; exec …"`, started by the daemon.
    with open(f"/proc/{os.getppid()}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


t4, t6, port = args["target4"], args["target6"], args["port"]
record(f"pid {os.getpid()}")
record(f"uid {os.getuid()}")
with open("/proc/self/status") as f:
    for line in f:
        if line.startswith(("Cap", "NoNewPrivs", "Seccomp:")):
            record("status " + line.strip().replace("\t", " "))


# --- the cgroup: leave it, or lift its limits
def own_cgroup():
    with open("/proc/self/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line.strip()[3:]
    return ""


def write(path, value):
    with open(path, "w") as f:
        f.write(value)
    return path


mount = args["cgroup_mount"]
attempt("cgroup-move-to-root", lambda: write(f"{mount}/cgroup.procs", str(os.getpid())))
attempt("cgroup-lift-pids", lambda: write(f"{mount}{own_cgroup()}/pids.max", "max"))
attempt("cgroup-lift-memory", lambda: write(f"{mount}{own_cgroup()}/memory.max", "max"))
attempt("cgroup-kill-file", lambda: write(f"{mount}{own_cgroup()}/cgroup.kill", "1"))
attempt("cgroup-mkdir", lambda: os.mkdir(f"{mount}{own_cgroup()}/child"))


# On a hybrid host the limits live in v1 hierarchies: try to lift those too.
def v1_limits():
    mounts = {}
    with open("/proc/self/mounts") as f:
        for line in f:
            dev, path, fstype, opts = line.split()[:4]
            if fstype == "cgroup":
                for o in opts.split(","):
                    mounts[o] = path
    files = {"memory": "memory.limit_in_bytes", "pids": "pids.max", "cpu": "cpu.cfs_quota_us"}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.strip().split(":", 2)
            for c in ctrls.split(","):
                if c in files and c in mounts and path != "/":
                    yield c, f"{mounts[c]}{path}/{files[c]}"


for controller, path in v1_limits():
    attempt(f"cgroup-v1-lift-{controller}", lambda p=path: write(p, "-1" if "quota" in p else "max"))


# --- the daemon's secrets
def read(path):
    with open(path, "rb") as f:
        return len(f.read(64))


attempt("read-mask-key", lambda: read(args["key"]))
attempt("read-store", lambda: read(args["store"]))
attempt("read-config", lambda: read(args["config"]))

# --- sockets the fence refuses at creation
ICMP_ECHO = b"\x08\x00\xf7\xff\x00\x00\x00\x00"
attempt(
    "icmp-ping-socket",
    lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP).sendto(
        ICMP_ECHO, (t4, 0)
    ),
)
attempt(
    "icmp6-ping-socket",
    lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_ICMPV6).sendto(
        b"\x80\x00\x00\x00\x00\x00\x00\x00", (t6, 0)
    ),
)
attempt(
    "raw-socket",
    lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).sendto(
        ICMP_ECHO, (t4, 0)
    ),
)
attempt("packet-socket", lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0))


def unix_connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(args["unix"])
    return "connected"


attempt("unix-connect", unix_connect)


# --- outbound network (each must be refused and reported)
def tcp(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect(addr)
    return "connected"


def udp_unconnected(family, addr):
    return socket.socket(family, socket.SOCK_DGRAM).sendto(b"escape", addr)


def udp_connected(family, addr):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.connect(addr)
    return s.send(b"escape")


def fast_open():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(3)
    return s.sendto(b"GET / HTTP/1.0\r\n\r\n", socket.MSG_FASTOPEN, (t4, port))


attempt("tcp4", lambda: tcp(socket.AF_INET, (t4, port)))
attempt("tcp6", lambda: tcp(socket.AF_INET6, (t6, port)))
attempt("tcp-v4-mapped-v6", lambda: tcp(socket.AF_INET6, ("::ffff:" + t4, port)))
attempt("tcp-fast-open", fast_open)
attempt("udp4-unconnected", lambda: udp_unconnected(socket.AF_INET, (t4, port)))
attempt("udp4-connected", lambda: udp_connected(socket.AF_INET, (t4, port)))
attempt("udp6-unconnected", lambda: udp_unconnected(socket.AF_INET6, (t6, port)))
attempt("udp6-connected", lambda: udp_connected(socket.AF_INET6, (t6, port)))
attempt("udp-v4-mapped-v6", lambda: udp_unconnected(socket.AF_INET6, ("::ffff:" + t4, port)))


def io_uring():
    params = ctypes.create_string_buffer(120)
    # io_uring_setup(entries, params): the ring would carry connects past seccomp.
    return check(libc.syscall(425, 8, params))


attempt("io-uring-setup", io_uring)

# --- namespaces and other processes
CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWNS = 0x10000000, 0x40000000, 0x00020000
attempt("unshare-user", lambda: check(libc.unshare(CLONE_NEWUSER)))
attempt("unshare-net", lambda: check(libc.unshare(CLONE_NEWNET)))
attempt("unshare-mount", lambda: check(libc.unshare(CLONE_NEWNS)))


def setns_host():
    fd = os.open("/proc/1/ns/net", os.O_RDONLY)
    return check(libc.setns(fd, CLONE_NEWNET))


attempt("setns-host-net", setns_host)


def setns_daemon():
    fd = os.open(f"/proc/{daemon_pid()}/ns/net", os.O_RDONLY)
    return check(libc.setns(fd, CLONE_NEWNET))


attempt("setns-daemon-net", setns_daemon)
PTRACE_ATTACH = 16
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
attempt("ptrace-daemon", lambda: check(libc.ptrace(PTRACE_ATTACH, daemon_pid(), None, None)))
attempt("read-daemon-memory", lambda: read(f"/proc/{daemon_pid()}/mem"))
attempt("read-daemon-environ", lambda: read(f"/proc/{daemon_pid()}/environ"))
attempt("signal-daemon", lambda: os.kill(daemon_pid(), signal.SIGTERM))


# --- starving the host: tasks and memory
def fork_many(n):
    children = []
    try:
        for _ in range(n):
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            children.append(pid)
    except OSError as e:
        record(f"fork-stopped-at {len(children)} {errname(e.errno)}")
    else:
        record(f"fork-stopped-at none {len(children)}")
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


fork_many(args["pids_try"])


def memory_hog(mib):
    pid = os.fork()
    if pid == 0:
        chunks = []
        for _ in range(mib):
            chunks.append(bytearray(1 << 20))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        record(f"memory-hog killed-by-signal {os.WTERMSIG(status)}")
    else:
        record(f"memory-hog exited {os.WEXITSTATUS(status)}")


memory_hog(args["memory_mib"])
record("done")
