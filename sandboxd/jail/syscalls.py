"""The raw system calls the jail needs that Python's os module does not offer.

Each wrapper raises SetupError naming the step that failed and the errno, the way Firecracker's
jailer does, so a failed start says "pivot_root: [Errno 22] Invalid argument" and not "-1".
"""

from __future__ import annotations

import ctypes
import os
import signal
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
    _python.PyOS_BeforeFork()
    null = ctypes.c_long(0)
    flags = ctypes.c_long(namespaces | signal.SIGCHLD)
    result = _libc_holding_gil.syscall(ctypes.c_long(_SYS_CLONE), flags, null, null, null, null)
    if result == 0:
        _python.PyOS_AfterFork_Child()
        return 0
    errno = ctypes.get_errno()
    _python.PyOS_AfterFork_Parent()
    if result == -1:
        raise SetupError(f"clone: [Errno {errno}] {os.strerror(errno)}")
    return int(result)


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
