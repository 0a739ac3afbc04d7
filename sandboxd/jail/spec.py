"""What a jail is made of: a value object the launcher follows step by step.

A JailSpec is fixed when the jail starts, before any tenant is known (jails are warmed in a pool),
so it holds only what must exist at start: the root filesystem, the host ids, the kernel limits
that cannot be changed from outside later (tmpfs size, rlimits), and the cgroup to join. The seccomp
program is not part of it: the fork server compiles it once and loads the same bytes into every
jail. Limits that can change after start (cgroup memory, pids, rlimits through
prlimit) are applied when an execution leases the jail.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MiB = 1024 * 1024

# The ids the runner has inside the jail; each jail maps them to its own unprivileged host ids.
JAIL_UID = 1000
JAIL_GID = 1000

RUNNER_ARGV = ("/usr/local/bin/node", "/sandboxd/runner.js")

# Where the egress proxy listens inside every jail: a socket on the jail's own loopback, created
# by the fork server and handed to the daemon (sandboxd/jail/net.py). images/node/runner.js
# connects to the same address.
EGRESS_PROXY_HOST = "127.0.0.1"
EGRESS_PROXY_PORT = 3128

# Only these variables reach the jail. Everything of the daemon's environment (AWS_*, ECS_*,
# NODE_EXTRA_CA_CERTS, which alone adds ~75 ms to every Node start) stays outside.
RUNNER_ENV = (
    ("PATH", "/usr/local/bin"),
    ("HOME", "/tmp"),
    ("TMPDIR", "/tmp"),
    ("LANG", "C.UTF-8"),
    ("NODE_ENV", "production"),
)


@dataclass(frozen=True, slots=True)
class JailLimits:
    """Kernel limits of one jail."""

    memory_bytes: int = 1024 * MiB
    pids: int = 64
    cpu_quota: float = 1.0  # cores
    cpu_time_s: int = 60  # RLIMIT_CPU, of the whole jail's life
    open_files: int = 256  # RLIMIT_NOFILE
    file_size_bytes: int = 64 * MiB  # RLIMIT_FSIZE
    tmpfs_bytes: int = 64 * MiB


@dataclass(frozen=True, slots=True)
class JailSpec:
    """Everything the launcher needs to start one jail."""

    jail_id: str
    rootfs: str
    host_uid: int
    host_gid: int
    limits: JailLimits = field(default_factory=JailLimits)
    # cgroup.procs files the jail's first process writes itself into before it unshares.
    cgroup_procs: tuple[str, ...] = ()
    hostname: str = "sandbox"
    argv: tuple[str, ...] = RUNNER_ARGV
    env: tuple[tuple[str, str], ...] = RUNNER_ENV
