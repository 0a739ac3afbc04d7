"""The jail's syscall policy: a default-deny allowlist, one rule a line, each with its reason.

Modeled on Docker's default profile and tightened for what Node.js 20 (V8 + libuv + glibc) uses.
Anything not allowed below fails with EPERM and the process keeps running, so a hostile call is an
error the JavaScript sees, never a crash. Three kinds of answer:

* ALLOW: the call runs; some only with arguments that match (compared on the low 32 bits, which
  is all the kernel reads of those int arguments, so setting high bits cannot slip past a rule);
* EPERM: the default, for everything else; `DENIED` names the calls this policy refuses on
  purpose (libseccomp refuses rules whose action equals the default, so they are data that the
  compiler checks against the allowlist and the tests call one by one);
* ENOSYS: for calls that glibc and libuv probe and then fall back from (clone3, io_uring).

The filter is pinned to one architecture (x86_64 or aarch64). A syscall made through another ABI
(i386 `int 0x80`, x32 numbers with bit 0x40000000 on x86_64) kills the whole process with SIGSYS
(SECCOMP_RET_KILL_PROCESS): no Node code does that, only an exploit does, so it is the one case
where dying is safer than an errno. The daemon reports POLICY_DENIED when the runner dies of SIGSYS
(see `killed_by_policy`).

`compile_policy()` runs once in the fork server (libseccomp is imported there only);
`install(program)` runs in every jail and only hands the compiled bytes to the kernel.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import importlib
import os
import platform
import signal
import socket
import tempfile
import termios
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Final


class SeccompError(Exception):
    """Compiling or installing the policy failed; the message names the step and the cause."""


# Actions, as the kernel encodes them (SECCOMP_RET_*); libseccomp takes the same values.
_ALLOW: Final = 0x7FFF0000
_KILL_PROCESS: Final = 0x80000000


def _errno(code: int) -> int:
    return 0x00050000 | code


_EPERM: Final = _errno(errno.EPERM)
_ENOSYS: Final = _errno(errno.ENOSYS)

_LOW32: Final = 0xFFFFFFFF

# clone(2) flags that create namespaces. CLONE_NEWTIME (0x80) shares its bit with the exit signal
# in clone(2), so the kernel only honours it through clone3 and unshare, which are both refused.
CLONE_NAMESPACE_FLAGS: Final = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)

_SOCK_TYPE_MASK: Final = 0xF  # the type without SOCK_NONBLOCK / SOCK_CLOEXEC
_NETLINK_ROUTE: Final = 0

_PER_LINUX: Final = 0x0000
_PER_LINUX32: Final = 0x0008
_UNAME26: Final = 0x0020000
_PER_QUERY: Final = 0xFFFFFFFF

_PR_SET_NAME: Final = 15
_PR_GET_NAME: Final = 16
_PR_SET_VMA: Final = 0x53564D41

_FICLONE: Final = 0x40049409

_ARCHES: Final = {
    # AUDIT_ARCH_* values: EM_* | __AUDIT_ARCH_64BIT | __AUDIT_ARCH_LE
    "x86_64": 62 | 0x80000000 | 0x40000000,
    "aarch64": 183 | 0x80000000 | 0x40000000,
}

_MAX_INSNS: Final = 4096  # BPF_MAXINSNS
_INSN_SIZE: Final = 8  # sizeof(struct sock_filter)


@dataclass(frozen=True, slots=True)
class ArgIs:
    """A condition: (low 32 bits of argument `index`) & mask == value."""

    index: int
    value: int
    mask: int = _LOW32


@dataclass(frozen=True, slots=True)
class Rule:
    """What one syscall gets, under which conditions (all must hold), and why."""

    syscall: str
    action: int
    why: str
    when: tuple[ArgIs, ...] = ()


def allow(syscall: str, why: str, *when: ArgIs) -> Rule:
    return Rule(syscall, _ALLOW, why, when)


def enosys(syscall: str, why: str) -> Rule:
    return Rule(syscall, _ENOSYS, why)


# fmt: off
POLICY: Final[tuple[Rule, ...]] = (
    # --- process and thread life -------------------------------------------------------------
    allow("execve", "start node itself, and child_process.spawn of node"),
    allow("exit", "end a thread (worker_threads, libuv pool)"),
    allow("exit_group", "end the process"),
    allow("clone", "threads and fork, without new namespaces",
          ArgIs(0, 0, CLONE_NAMESPACE_FLAGS)),
    enosys("clone3", "glibc tries it first for threads and posix_spawn, falls back to clone"),
    allow("fork", "child_process without vfork"),
    allow("vfork", "child_process (posix_spawn-style)"),
    allow("wait4", "reap children"),
    allow("waitid", "reap children"),
    allow("set_tid_address", "glibc thread start-up"),
    allow("set_robust_list", "glibc thread start-up (robust futexes)"),
    allow("rseq", "glibc registers restartable sequences per thread"),
    allow("futex", "every lock and condition variable"),
    allow("sched_yield", "V8 and libuv spin locks"),
    allow("sched_getaffinity", "os.availableParallelism(), libuv thread-pool size"),
    allow("getpriority", "os.getPriority()"),
    allow("setpriority", "os.setPriority(); without capabilities it can only lower priority"),
    allow("arch_prctl", "x86_64 glibc sets the TLS base (ARCH_SET_FS)"),
    allow("prctl", "pthread_setname_np on the calling thread", ArgIs(0, _PR_SET_NAME)),
    allow("prctl", "pthread_getname_np on the calling thread", ArgIs(0, _PR_GET_NAME)),
    allow("prctl", "glibc and V8 label anonymous mappings", ArgIs(0, _PR_SET_VMA)),
    allow("personality", "PER_LINUX: the only persona Node runs with", ArgIs(0, _PER_LINUX)),
    allow("personality", "PER_LINUX32: uname reports 32-bit, harmless (Docker allows)",
          ArgIs(0, _PER_LINUX32)),
    allow("personality", "UNAME26: uname reports 2.6, harmless (Docker allows)",
          ArgIs(0, _UNAME26)),
    allow("personality", "PER_LINUX32|UNAME26 (Docker allows)", ArgIs(0, _PER_LINUX32 | _UNAME26)),
    allow("personality", "query the current persona", ArgIs(0, _PER_QUERY)),
    allow("capget", "Node checks its capabilities at start (safe getenv)"),
    allow("getpid", "process.pid"),
    allow("getppid", "process.ppid"),
    allow("gettid", "thread ids"),
    allow("getuid", "process.getuid(), os.userInfo()"),
    allow("geteuid", "process.geteuid()"),
    allow("getgid", "process.getgid()"),
    allow("getegid", "process.getegid()"),
    allow("getresuid", "glibc secure-mode checks"),
    allow("getresgid", "glibc secure-mode checks"),
    allow("getgroups", "process.getgroups()"),
    allow("getpgid", "process groups of children"),
    allow("getpgrp", "process groups of children"),
    allow("setpgid", "child_process with detached: true"),
    allow("getsid", "sessions of children"),
    allow("setsid", "child_process with detached: true"),
    # --- signals ------------------------------------------------------------------------------
    allow("rt_sigaction", "signal handlers (libuv, V8)"),
    allow("rt_sigprocmask", "signal masks around fork and in threads"),
    allow("rt_sigreturn", "return from a signal handler"),
    allow("sigaltstack", "V8 stack-overflow handling"),
    allow("kill", "process.kill() of its own children (pid namespace bounds it)"),
    allow("tgkill", "signal one thread (V8 profiler, glibc abort)"),
    allow("tkill", "signal one thread"),
    allow("restart_syscall", "the kernel restarts interrupted sleeps"),
    # --- memory -------------------------------------------------------------------------------
    allow("brk", "malloc"),
    allow("mmap", "malloc, V8 heap, code space, loading shared libraries"),
    allow("munmap", "free mappings"),
    allow("mprotect", "V8 JIT code pages, guard pages"),
    allow("mremap", "realloc of large blocks"),
    allow("madvise", "V8 and malloc return memory"),
    allow("membarrier", "V8 flushes code on other cores (arm64)"),
    allow("pkey_alloc", "V8 protects JIT memory with protection keys where available"),
    allow("pkey_free", "V8 protection keys"),
    allow("pkey_mprotect", "V8 protection keys"),
    # --- time -----------------------------------------------------------------------------------
    allow("clock_gettime", "clocks when the vDSO cannot answer"),
    allow("clock_getres", "process.hrtime resolution"),
    allow("clock_nanosleep", "sleeps in threads"),
    allow("nanosleep", "sleeps in threads"),
    allow("gettimeofday", "Date.now() when the vDSO cannot answer"),
    allow("time", "time() when the vDSO cannot answer"),
    # --- descriptors and event loop -------------------------------------------------------------
    allow("read", "files, pipes and sockets (the channel to the daemon is a pipe)"),
    allow("write", "files, pipes and sockets"),
    allow("readv", "libuv vectored reads"),
    allow("writev", "libuv vectored writes (streams)"),
    allow("pread64", "fs.read at a position"),
    allow("pwrite64", "fs.write at a position"),
    allow("preadv", "libuv fs reads"),
    allow("pwritev", "libuv fs writes"),
    allow("preadv2", "libuv fs reads"),
    allow("pwritev2", "libuv fs writes"),
    allow("lseek", "file positions"),
    allow("close", "close descriptors"),
    allow("close_range", "close descriptors before exec in children"),
    allow("dup", "duplicate descriptors"),
    allow("dup2", "stdio of children"),
    allow("dup3", "stdio of children"),
    allow("pipe", "pipes to children"),
    allow("pipe2", "pipes to children, libuv wake-ups"),
    allow("eventfd", "libuv loop wake-ups"),
    allow("eventfd2", "libuv loop wake-ups"),
    allow("epoll_create", "libuv event loop"),
    allow("epoll_create1", "libuv event loop"),
    allow("epoll_ctl", "libuv event loop"),
    allow("epoll_wait", "libuv event loop"),
    allow("epoll_pwait", "libuv event loop"),
    allow("epoll_pwait2", "libuv event loop"),
    allow("poll", "libuv waits on single descriptors"),
    allow("ppoll", "libuv waits on single descriptors"),
    allow("select", "waits in libraries"),
    allow("pselect6", "waits in libraries"),
    # fcntl and ioctl by command. No lock commands (F_SETLK, F_OFD_SETLK...): like flock, locks
    # on files of the shared read-only root would be a channel between jails. ioctl is an
    # allowlist too: under an EPERM default libseccomp cannot add an EPERM rule for TIOCSTI and
    # TIOCLINUX, and "allow unless cmd == TIOCSTI" would be a 64-bit compare that high bits in
    # the argument slip past, while the kernel reads only the low 32.
    allow("fcntl", "F_DUPFD", ArgIs(1, fcntl.F_DUPFD)),
    allow("fcntl", "F_DUPFD_CLOEXEC", ArgIs(1, fcntl.F_DUPFD_CLOEXEC)),
    allow("fcntl", "F_GETFD: close-on-exec flag", ArgIs(1, fcntl.F_GETFD)),
    allow("fcntl", "F_SETFD: close-on-exec flag", ArgIs(1, fcntl.F_SETFD)),
    allow("fcntl", "F_GETFL: status flags", ArgIs(1, fcntl.F_GETFL)),
    allow("fcntl", "F_SETFL: O_NONBLOCK for libuv", ArgIs(1, fcntl.F_SETFL)),
    allow("fcntl", "F_GETPIPE_SZ", ArgIs(1, fcntl.F_GETPIPE_SZ)),
    allow("fcntl", "F_SETPIPE_SZ (bounded by the kernel's pipe-max-size)",
          ArgIs(1, fcntl.F_SETPIPE_SZ)),
    allow("ioctl", "TCGETS: isatty() on stdio", ArgIs(1, termios.TCGETS)),
    allow("ioctl", "TIOCGWINSZ: terminal size of stdio", ArgIs(1, termios.TIOCGWINSZ)),
    allow("ioctl", "FIONBIO: libuv sets non-blocking mode", ArgIs(1, termios.FIONBIO)),
    allow("ioctl", "FIOCLEX: libuv sets close-on-exec", ArgIs(1, termios.FIOCLEX)),
    allow("ioctl", "FIONCLEX: libuv clears close-on-exec", ArgIs(1, termios.FIONCLEX)),
    allow("ioctl", "FIONREAD: bytes waiting on a socket or pipe", ArgIs(1, termios.FIONREAD)),
    allow("ioctl", "FICLONE: fs.copyFile with COPYFILE_FICLONE", ArgIs(1, _FICLONE)),
    # --- files --------------------------------------------------------------------------------
    allow("open", "open files"),
    allow("openat", "open files"),
    allow("stat", "fs.stat"),
    allow("lstat", "fs.lstat"),
    allow("fstat", "fs.fstat"),
    allow("newfstatat", "fs.stat (glibc)"),
    allow("statx", "fs.stat (libuv)"),
    allow("statfs", "fs.statfs"),
    allow("fstatfs", "fs.statfs on a descriptor"),
    allow("access", "fs.access"),
    allow("faccessat", "fs.access"),
    allow("faccessat2", "fs.access (glibc)"),
    allow("readlink", "fs.readlink, realpath"),
    allow("readlinkat", "fs.readlink"),
    allow("getdents64", "fs.readdir"),
    allow("getcwd", "process.cwd()"),
    allow("chdir", "process.chdir()"),
    allow("fchdir", "process.chdir() by descriptor"),
    allow("umask", "process.umask()"),
    allow("mkdir", "fs.mkdir"),
    allow("mkdirat", "fs.mkdir"),
    allow("rmdir", "fs.rmdir"),
    allow("unlink", "fs.unlink"),
    allow("unlinkat", "fs.rm"),
    allow("rename", "fs.rename"),
    allow("renameat", "fs.rename"),
    allow("renameat2", "fs.rename"),
    allow("link", "fs.link"),
    allow("linkat", "fs.link"),
    allow("symlink", "fs.symlink"),
    allow("symlinkat", "fs.symlink"),
    allow("chmod", "fs.chmod"),
    allow("fchmod", "fs.fchmod"),
    allow("fchmodat", "fs.chmod"),
    allow("fchmodat2", "fs.lchmod (glibc >= 2.39)"),
    allow("chown", "fs.chown (only to ids mapped in the jail)"),
    allow("fchown", "fs.fchown"),
    allow("fchownat", "fs.chown"),
    allow("lchown", "fs.lchown"),
    allow("utimensat", "fs.utimes, fs.futimes, fs.lutimes"),
    allow("truncate", "fs.truncate"),
    allow("ftruncate", "fs.ftruncate"),
    allow("fsync", "fs.fsync"),
    allow("fdatasync", "fs.fdatasync"),
    allow("copy_file_range", "fs.copyFile"),
    allow("sendfile", "fs.copyFile fallback"),
    allow("inotify_init1", "fs.watch"),
    allow("inotify_add_watch", "fs.watch"),
    allow("inotify_rm_watch", "fs.watch"),
    # --- sockets: only AF_UNIX, TCP and UDP over IPv4/IPv6, and reading the routing table -------
    allow("socket", "AF_UNIX: local IPC", ArgIs(0, socket.AF_UNIX)),
    allow("socket", "AF_INET stream: TCP", ArgIs(0, socket.AF_INET),
          ArgIs(1, socket.SOCK_STREAM, _SOCK_TYPE_MASK)),
    allow("socket", "AF_INET datagram: UDP", ArgIs(0, socket.AF_INET),
          ArgIs(1, socket.SOCK_DGRAM, _SOCK_TYPE_MASK)),
    allow("socket", "AF_INET6 stream: TCP", ArgIs(0, socket.AF_INET6),
          ArgIs(1, socket.SOCK_STREAM, _SOCK_TYPE_MASK)),
    allow("socket", "AF_INET6 datagram: UDP", ArgIs(0, socket.AF_INET6),
          ArgIs(1, socket.SOCK_DGRAM, _SOCK_TYPE_MASK)),
    # getifaddrs() (os.networkInterfaces(), getaddrinfo with AI_ADDRCONFIG) asks NETLINK_ROUTE;
    # it reads only the jail's own network namespace, and changes need CAP_NET_ADMIN, which the
    # jail does not have. Every other netlink family (audit, uevents, sock_diag...) is refused.
    allow("socket", "AF_NETLINK/NETLINK_ROUTE: interface list", ArgIs(0, socket.AF_NETLINK),
          ArgIs(2, _NETLINK_ROUTE)),
    allow("socketpair", "AF_UNIX pairs: stdio of children", ArgIs(0, socket.AF_UNIX)),
    allow("bind", "servers, UDP"),
    allow("listen", "servers"),
    allow("accept", "servers"),
    allow("accept4", "servers (libuv)"),
    allow("connect", "clients"),
    allow("shutdown", "half-close streams"),
    allow("getsockname", "server.address()"),
    allow("getpeername", "socket.remoteAddress"),
    allow("getsockopt", "socket options, connect errors"),
    allow("setsockopt", "TCP_NODELAY, keep-alive, buffer sizes"),
    allow("sendto", "UDP, netlink requests"),
    allow("recvfrom", "UDP, netlink answers"),
    allow("sendmsg", "streams and descriptor passing to children"),
    allow("recvmsg", "streams and descriptor passing from children"),
    allow("sendmmsg", "libuv UDP batches"),
    allow("recvmmsg", "libuv UDP batches"),
    # --- the system, read-only ------------------------------------------------------------------
    allow("uname", "os.release(), os.arch()"),
    allow("sysinfo", "os.uptime(), os.totalmem()"),
    allow("getrandom", "crypto.randomBytes, V8 hash seeds"),
    allow("getrlimit", "resource limits"),
    allow("prlimit64", "Node raises RLIMIT_NOFILE up to the hard limit at start"),
    allow("getrusage", "process.cpuUsage(), process.resourceUsage()"),
    allow("times", "CPU times"),
    # --- probed, answered "not implemented" so the caller falls back ----------------------------
    enosys("io_uring_setup", "libuv >= 1.45 probes io_uring; shared kernel rings, many CVEs"),
    enosys("io_uring_enter", "no io_uring in the jail"),
    enosys("io_uring_register", "no io_uring in the jail"),
)

# Refused with EPERM (the default) on purpose. Listed so that the refusal is deliberate, checked
# against POLICY at compile time, and tested call by call.
DENIED: Final[tuple[tuple[str, str], ...]] = (
    ("unshare", "no new namespaces inside the jail"),
    ("setns", "no entering other namespaces"),
    ("mount", "the jail's filesystem is fixed before the runner starts"),
    ("umount2", "the jail's filesystem is fixed"),
    ("pivot_root", "the jail's filesystem is fixed"),
    ("chroot", "the jail's filesystem is fixed"),
    ("open_tree", "new mount API"),
    ("move_mount", "new mount API"),
    ("fsopen", "new mount API"),
    ("fsconfig", "new mount API"),
    ("fsmount", "new mount API"),
    ("fspick", "new mount API"),
    ("mount_setattr", "new mount API"),
    ("ptrace", "no debugging of other processes"),
    ("process_vm_readv", "reads another process's memory"),
    ("process_vm_writev", "writes another process's memory"),
    ("process_madvise", "acts on another process's memory"),
    ("kcmp", "compares other processes' kernel objects"),
    ("pidfd_getfd", "steals another process's descriptors"),
    ("bpf", "kernel attack surface"),
    ("perf_event_open", "kernel attack surface, side channels"),
    ("userfaultfd", "a classic aid to kernel exploits"),
    ("keyctl", "kernel keyrings are not namespaced: a channel between jails"),
    ("add_key", "kernel keyrings are not namespaced"),
    ("request_key", "kernel keyrings are not namespaced"),
    ("kexec_load", "replaces the kernel"),
    ("kexec_file_load", "replaces the kernel"),
    ("init_module", "loads kernel code"),
    ("finit_module", "loads kernel code"),
    ("delete_module", "unloads kernel code"),
    ("reboot", "host power state"),
    ("swapon", "host swap"),
    ("swapoff", "host swap"),
    ("acct", "host process accounting"),
    ("syslog", "the kernel log leaks host addresses"),
    ("quotactl", "host disk quotas"),
    ("quotactl_fd", "host disk quotas"),
    ("settimeofday", "the clock is the host's"),
    ("clock_settime", "the clock is the host's"),
    ("clock_adjtime", "the clock is the host's"),
    ("adjtimex", "the clock is the host's"),
    ("open_by_handle_at", "opens files outside the jail's root by handle (shocker)"),
    ("name_to_handle_at", "file handles: only useful with open_by_handle_at"),
    ("lookup_dcookie", "kernel profiling"),
    ("iopl", "raw I/O ports"),
    ("ioperm", "raw I/O ports"),
    ("modify_ldt", "x86 segment tricks, a past source of kernel bugs"),
    ("vhangup", "terminal control"),
    ("sethostname", "the jail's name is fixed"),
    ("setdomainname", "the jail's name is fixed"),
    ("seccomp", "the policy is fixed; Node never adds filters"),
    ("memfd_create", "an executable anonymous file would bypass the noexec /tmp"),
    ("memfd_secret", "unneeded memory API"),
    ("execveat", "exec by descriptor: unneeded, node starts through execve"),
    ("mknod", "device nodes and FIFOs: /dev is fixed"),
    ("mknodat", "device nodes and FIFOs: /dev is fixed"),
    ("flock", "file locks on the shared read-only root are a channel between jails"),
    ("splice", "unneeded; the pipe-page tricks of Dirty Pipe"),
    ("tee", "unneeded pipe-page tricks"),
    ("vmsplice", "unneeded pipe-page tricks, past kernel exploits"),
    ("sync", "flushes every host filesystem: a cheap way to stall the host"),
    ("syncfs", "flushes a whole filesystem"),
    ("setuid", "ids are fixed by the launcher"),
    ("setgid", "ids are fixed by the launcher"),
    ("setreuid", "ids are fixed by the launcher"),
    ("setregid", "ids are fixed by the launcher"),
    ("setresuid", "ids are fixed by the launcher"),
    ("setresgid", "ids are fixed by the launcher"),
    ("setfsuid", "ids are fixed by the launcher"),
    ("setfsgid", "ids are fixed by the launcher"),
    ("setgroups", "ids are fixed by the launcher"),
    ("capset", "capabilities are fixed (all dropped) by the launcher"),
    ("setrlimit", "limits are fixed by the launcher; prlimit64 may only raise soft to hard"),
    ("sched_setaffinity", "CPU placement is the cgroup's"),
    ("sched_setscheduler", "scheduling classes are the host's"),
    ("sched_setattr", "scheduling classes are the host's"),
    ("ioprio_set", "I/O priority is the host's"),
    ("mlock", "pins memory the host cannot reclaim"),
    ("mlockall", "pins memory the host cannot reclaim"),
    ("mbind", "NUMA placement is the host's"),
    ("set_mempolicy", "NUMA placement is the host's"),
    ("migrate_pages", "moves other processes' memory"),
    ("move_pages", "moves other processes' memory"),
    ("fanotify_init", "filesystem-wide watches"),
    ("landlock_create_ruleset", "unneeded"),
    ("shmget", "System V IPC: unneeded"),
    ("msgget", "System V IPC: unneeded"),
    ("semget", "System V IPC: unneeded"),
    ("mq_open", "POSIX message queues: unneeded"),
    ("pidfd_open", "unneeded by Node 20"),
    ("timer_create", "POSIX timers: unneeded (libuv uses epoll timeouts)"),
)
# fmt: on


def compile_policy(machine: str | None = None) -> bytes:
    """The policy as a raw BPF program (struct sock_filter[], 8 bytes each), built with libseccomp.

    `machine` is a `uname -m` value (default: this machine's) so an image for another
    architecture can be checked from here.
    """
    machine = machine or platform.machine()
    arch = _ARCHES.get(machine)
    if arch is None:
        raise SeccompError(f"compile policy: unsupported architecture {machine!r}")
    _check_tables()
    # Imported here: only the fork server compiles, and libseccomp should not be loaded (or
    # even looked for) by the processes that merely install the bytes.
    try:
        return _build(importlib.import_module("pyseccomp"), arch)
    except OSError as exc:
        raise SeccompError(f"compile policy: {exc}") from None


def install(program: bytes) -> None:
    """Set no_new_privs and load `program` as this process's seccomp filter.

    Runs in the freshly forked jail child: no libseccomp, no allocation beyond one ctypes copy.
    """
    if not program or len(program) % _INSN_SIZE or len(program) // _INSN_SIZE > _MAX_INSNS:
        raise SeccompError(f"load filter: not a BPF program ({len(program)} bytes)")
    # Required to load a filter without CAP_SYS_ADMIN, and it keeps exec from gaining privileges.
    _prctl_or_raise("set no_new_privs", _PR_SET_NO_NEW_PRIVS, 1, 0)
    code = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // _INSN_SIZE, ctypes.addressof(code))
    _prctl_or_raise("load filter", _PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.addressof(fprog))


def killed_by_policy(wait_status: int) -> bool:
    """Whether a process died of the filter's kill action (SIGSYS): report POLICY_DENIED."""
    return os.WIFSIGNALED(wait_status) and os.WTERMSIG(wait_status) == signal.SIGSYS


def _check_tables() -> None:
    """Refuse a policy that contradicts itself: libseccomp would silently pick one rule."""
    allowed = {rule.syscall for rule in POLICY}
    contradicted = sorted(allowed & {name for name, _ in DENIED})
    if contradicted:
        raise SeccompError(f"compile policy: both allowed and denied: {', '.join(contradicted)}")
    # An unconditional rule swallows conditional ones for the same call: allow-all would win.
    plain = {rule.syscall for rule in POLICY if not rule.when}
    conditional = {rule.syscall for rule in POLICY if rule.when}
    mixed = sorted(plain & conditional)
    if mixed:
        raise SeccompError(f"compile policy: both plain and conditional rules: {', '.join(mixed)}")


def _build(sc: ModuleType, arch: int) -> bytes:
    syscall_filter = sc.SyscallFilter(_EPERM)
    syscall_filter.set_attr(sc.Attr.ACT_BADARCH, _KILL_PROCESS)
    # A binary search over syscall numbers instead of a linear list: every syscall pays for it.
    syscall_filter.set_attr(sc.Attr.CTL_OPTIMIZE, 2)
    native = sc.system_arch()
    if arch != native:
        syscall_filter.add_arch(arch)
        syscall_filter.remove_arch(native)
    for rule in POLICY:
        _add_rule(sc, syscall_filter, arch, rule)
    with tempfile.TemporaryFile() as out:
        syscall_filter.export_bpf(out)
        out.seek(0)
        return out.read()


def _add_rule(sc: ModuleType, syscall_filter: Any, arch: int, rule: Rule) -> None:
    number = sc.resolve_syscall(arch, rule.syscall)
    if number == -1:  # __NR_SCMP_ERROR: libseccomp has never heard of it
        raise SeccompError(f"compile policy: unknown syscall {rule.syscall!r}")
    if number < 0:
        return  # a pseudo-number: the call does not exist on this architecture (open on arm64)
    # Named, not numbered: libseccomp numbers the call for the filter's architecture.
    args = [sc.Arg(cond.index, sc.MASKED_EQ, cond.mask, cond.value) for cond in rule.when]
    syscall_filter.add_rule(rule.action, rule.syscall, *args)


_PR_SET_SECCOMP: Final = 22
_PR_SET_NO_NEW_PRIVS: Final = 38
_SECCOMP_MODE_FILTER: Final = 2


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = (ctypes.c_int, *[ctypes.c_ulong] * 4)
_libc.prctl.restype = ctypes.c_int


def _prctl_or_raise(step: str, option: int, arg2: int, arg3: int) -> None:
    if _libc.prctl(option, arg2, arg3, 0, 0) != 0:
        code = ctypes.get_errno()
        raise SeccompError(f"{step}: [Errno {code}] {os.strerror(code)}")
