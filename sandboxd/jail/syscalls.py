"""The raw system calls the jail needs that Python's os module does not offer.

Each wrapper raises SetupError naming the step that failed and the errno, the way Firecracker's
jailer does, so a failed start says "pivot_root: [Errno 22] Invalid argument" and not "-1".
"""

from __future__ import annotations

import ctypes
import os
import signal
from errno import E2BIG, ENOSYS, EPERM
from typing import Any

from sandboxd.jail.errors import SetupError

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.setns.argtypes = [ctypes.c_int, ctypes.c_int]
_libc.syscall.restype = ctypes.c_long
# The same C library, called with the GIL held, as os.fork() calls fork(): see clone().
_libc_holding_gil = ctypes.PyDLL(None, use_errno=True)
_libc_holding_gil.syscall.restype = ctypes.c_long
_python = ctypes.pythonapi

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_INTO_CGROUP = 0x200000000  # clone3 only (Linux 5.7)

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}[os.uname().machine]
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}[os.uname().machine]
_SYS_CLONE3 = 435  # the same number on every architecture


class _CloneArgs(ctypes.Structure):
    """struct clone_args up to `cgroup` (CLONE_ARGS_SIZE_VER2, 88 bytes): every field a u64."""

    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "flags",
            "pidfd",
            "child_tid",
            "parent_tid",
            "exit_signal",
            "stack",
            "stack_size",
            "tls",
            "set_tid",
            "set_tid_size",
            "cgroup",
        )
    ]


class Clone3Refused(SetupError):
    """clone3 with CLONE_INTO_CGROUP is not offered here; clone() may still work."""


# ENOSYS: a kernel before 5.3, or a container runtime's seccomp profile that hides clone3 so that
# callers fall back to clone (Docker's since 20.10); EPERM: older runtimes' profiles; E2BIG: a
# kernel from 5.3 to 5.6, whose struct clone_args has no `cgroup` field yet.
_CLONE3_REFUSALS = frozenset({ENOSYS, EPERM, E2BIG})


def _check(result: int, step: str) -> None:
    if result == -1:
        errno = ctypes.get_errno()
        raise SetupError(f"{step}: [Errno {errno}] {os.strerror(errno)}")


def _arg(value: str | None) -> Any:
    return value.encode() if value is not None else None


def clone(namespaces: int) -> int:
    """fork(2) straight into new namespaces: the child's pid in the parent, 0 in the child.

    Python has no clone(); os.fork() followed by unshare() would need one more process, since a
    new pid namespace only takes the caller's next child as its pid 1. So this is os.fork()'s
    own sequence around the raw system call (a null stack: the child goes on from a copy of the
    parent's, as after fork): the interpreter's before-fork and after-fork steps and at-fork
    hooks, with the GIL held throughout. Only from a single-threaded process: like os.fork(),
    it copies no other thread, and unlike glibc's fork() it runs no pthread_atfork handlers.
    """
    null = ctypes.c_long(0)
    flags = ctypes.c_long(namespaces | signal.SIGCHLD)
    result, errno = _forked(ctypes.c_long(_SYS_CLONE), flags, null, null, null, null)
    if result == -1:
        raise SetupError(f"clone: [Errno {errno}] {os.strerror(errno)}")
    return result


def clone3_into_cgroup(namespaces: int, cgroup_dir_fd: int) -> int:
    """clone() whose child starts inside the cgroup v2 directory `cgroup_dir_fd`
    (CLONE_INTO_CGROUP): the child never migrates, so it never waits on the cgroup threadgroup
    lock's RCU grace period that a write into cgroup.procs waits for.

    Clone3Refused when clone3 or CLONE_INTO_CGROUP is not available (see _CLONE3_REFUSALS);
    SetupError for any other failure (EBUSY: the directory is not a leaf; EBADF: not cgroup v2).
    """
    args = _CloneArgs(
        flags=namespaces | CLONE_INTO_CGROUP, exit_signal=signal.SIGCHLD, cgroup=cgroup_dir_fd
    )
    size = ctypes.c_size_t(ctypes.sizeof(args))
    result, errno = _forked(ctypes.c_long(_SYS_CLONE3), ctypes.byref(args), size)
    if result == -1:
        error = Clone3Refused if errno in _CLONE3_REFUSALS else SetupError
        raise error(f"clone3 into cgroup: [Errno {errno}] {os.strerror(errno)}")
    return result


def _forked(*syscall_args: Any) -> tuple[int, int]:
    """A raw fork-like system call wrapped in os.fork()'s steps (see clone): (result, errno)."""
    _python.PyOS_BeforeFork()
    result = _libc_holding_gil.syscall(*syscall_args)
    if result == 0:
        _python.PyOS_AfterFork_Child()
        return 0, 0
    errno = ctypes.get_errno()
    _python.PyOS_AfterFork_Parent()
    return int(result), errno


def unshare(flags: int) -> None:
    _check(_libc.unshare(flags), "unshare")


def setns(fd: int, nstype: int, step: str) -> None:
    # os.setns exists only from Python 3.12.
    _check(_libc.setns(fd, nstype), step)


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    kind = "remount" if flags & MS_REMOUNT else "bind" if flags & MS_BIND else fstype or "mount"
    step = f"mount {kind} on {target}"
    _check(_libc.mount(_arg(source), _arg(target), _arg(fstype), flags, _arg(data or None)), step)


def umount2(target: str, flags: int) -> None:
    _check(_libc.umount2(_arg(target), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    result = _libc.syscall(_SYS_PIVOT_ROOT, _arg(new_root), _arg(put_old))
    _check(result, "pivot_root")


_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4


def clear_ambient_caps() -> None:
    # python-prctl has no ambient-set call; one prctl is all it takes.
    _check(_libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0), "clear ambient caps")
