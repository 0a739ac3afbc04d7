"""Start-up checks: every privilege a jail needs, tried for real before the daemon serves.

Runs first in `Daemon.start`. A daemon that lacks a privilege would otherwise start, report
healthy once gRPC is up, and fail every jail start; instead it refuses to start with one line
naming the missing privilege and what grants it.

In a container two things are out of the jails' reach that the container's root can fix with
CAP_SYS_ADMIN, and the preflight fixes them first:

* the cgroup mounts are read-only (Docker mounts them so): they are remounted read-write, in the
  container's own mount namespace only;
* /proc has masked paths (Docker covers /proc/kcore, /proc/keys ... with other mounts), and the
  kernel lets a user namespace mount a new /proc only where some /proc is fully visible: a fresh,
  unmasked one is mounted at `FULL_PROC`, where nothing looks at it and no jail can reach it.

Then one probe child goes through a jail's privileged steps in order (namespaces, id maps for
`uid_base`, its own /proc in a new pid namespace, pivot_root, seccomp) and reports the first that
the kernel refused.
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import NoReturn

import prctl
import psutil

from sandboxd.config import ConfigError, Settings
from sandboxd.jail import seccomp
from sandboxd.jail.errors import SetupError
from sandboxd.jail.ids import write_id_maps
from sandboxd.jail.launch import NAMESPACES
from sandboxd.jail.syscalls import (
    CLONE_NEWCGROUP,
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_REC,
    MS_REMOUNT,
    mount,
    pivot_root,
    umount2,
    unshare,
)

FULL_PROC = "/run/sandboxd/proc"
CGROUP_ROOT = "/sys/fs/cgroup"
_SAFE_FLAGS = MS_NOSUID | MS_NODEV | MS_NOEXEC  # as a jail mounts its /proc; Docker its cgroups
_SEC = "the container's seccomp profile (on ECS the instance's, deploy/ecs/docker-seccomp.json)"


class PreflightError(ConfigError):
    """A privilege the jails need is missing; the message names it and what grants it."""


@dataclass(frozen=True, slots=True)
class _Failure:
    step: str  # the probe's step, as SetupError names it ("pivot_root", "write uid_map", ...)
    errno: int


def run(settings: Settings) -> None:
    """Make cgroups and /proc usable if this is a container, then probe a jail's steps."""
    if os.getpid() == 1:
        # The fork server takes a parent of pid 1 for "the daemon died and I was reparented".
        raise PreflightError(
            "preflight: the daemon is pid 1 of its container: run it under an init "
            "(initProcessEnabled: true; docker run --init)"
        )
    if settings.cgroups != "none":
        _make_cgroups_writable()
    failure = _probe(settings)
    if failure is not None and failure.step.startswith("mount proc"):
        _mount_full_proc()
        failure = _probe(settings)
    if failure is not None:
        raise PreflightError(f"preflight: {_explain(failure)}")


# --- what the container's root fixes itself ------------------------------------------------------


def _make_cgroups_writable() -> None:
    for part in psutil.disk_partitions(all=True):
        read_only = "ro" in part.opts.split(",")
        if part.fstype in ("cgroup", "cgroup2") and read_only and _under(part.mountpoint):
            try:
                mount(None, part.mountpoint, None, MS_REMOUNT | MS_BIND | _SAFE_FLAGS)
            except SetupError as exc:
                raise PreflightError(
                    f"preflight: cgroup delegation: {part.mountpoint} is read-only and cannot be "
                    f"remounted read-write ({exc}): {_needs_sys_admin()}"
                ) from None


def _under(path: str) -> bool:
    return path == CGROUP_ROOT or path.startswith(CGROUP_ROOT + "/")


def _mount_full_proc() -> None:
    try:
        os.makedirs(FULL_PROC, exist_ok=True)
        mount("proc", FULL_PROC, "proc", _SAFE_FLAGS)
    except (OSError, SetupError) as exc:
        raise PreflightError(
            f"preflight: /proc: this /proc has masked paths, so jails cannot mount their own, and "
            f"mounting an unmasked one at {FULL_PROC} failed ({exc}): {_needs_sys_admin()}"
        ) from None


def _needs_sys_admin() -> str:
    if not prctl.cap_effective.sys_admin:
        return "missing CAP_SYS_ADMIN (linuxParameters.capabilities.add)"
    return "CAP_SYS_ADMIN is held, so a security module (AppArmor, SELinux) refused it"


# --- the probe: a jail's privileged steps in a throwaway child -----------------------------------


def _probe(settings: Settings) -> _Failure | None:
    """The first of a jail's privileged steps refused, or None: tried by a fresh interpreter,
    which forks the probe child. The daemon itself must not fork it: by now it may run other
    threads (gRPC's), and a fork of a threaded process may start them again in the child, where
    unshare(CLONE_NEWUSER) then fails (EINVAL) for a reason that is no missing privilege."""
    argv = [sys.executable, "-m", "sandboxd.preflight", json.dumps(_probe_args(settings))]
    keep = ("PATH", "PYTHONPATH", "VIRTUAL_ENV", "LANG")
    env = {key: os.environ[key] for key in keep if key in os.environ}
    done = subprocess.run(argv, capture_output=True, env=env, check=False, timeout=60)
    if done.returncode != 0:
        detail = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
        return _Failure(f"probe: exit status {done.returncode}: {' '.join(detail)}", errno.EIO)
    return _read_failure(done.stdout, -1)


def _probe_args(settings: Settings) -> dict[str, object]:
    return {
        "rootfs": settings.rootfs,
        "uid_base": settings.uid_base,
        "cgroups": settings.cgroups != "none",
        "seccomp": settings.seccomp,
    }


def _probe_here(rootfs: str, uid_base: int, cgroups: bool, with_seccomp: bool) -> bytes:
    """Fork a child that takes a jail's privileged steps; its failure record, or b""."""
    # Compiled here: after pivot_root the child cannot load libseccomp any more.
    program = seccomp.compile_policy() if with_seccomp else b""
    to_parent, from_child = _pipe()
    to_child, from_parent = _pipe()
    pid = os.fork()
    if pid == 0:
        os.close(from_child)
        os.close(to_child)
        _child(rootfs, cgroups, program, report=to_parent, wait=from_parent)
    os.close(to_parent)
    os.close(from_parent)
    try:
        head = os.read(from_child, 1)
        if head == b"u":  # the child has its namespaces: write its id maps
            failure = _attempt("write id maps", lambda: _write_maps(pid, uid_base))
            os.write(to_child, b"g" if failure is None else b"x")
            if failure is not None:
                return _record(failure)
            head = b""
        return _read_all(head, from_child)
    finally:
        os.close(from_child)
        os.close(to_child)
        os.waitpid(pid, 0)


def _write_maps(pid: int, uid_base: int) -> None:
    write_id_maps(pid, uid_base, uid_base)


def _child(rootfs: str, cgroups: bool, program: bytes, report: int, wait: int) -> NoReturn:
    """Namespaces, then (after the parent wrote the maps) pid 1 of them builds a jail's root."""
    failure: _Failure | None = None
    try:
        flags = NAMESPACES | (CLONE_NEWCGROUP if cgroups else 0)
        failure = _attempt("unshare", lambda: unshare(flags))
        if failure is None:
            os.write(report, b"u")
            if os.read(wait, 1) != b"g":
                os._exit(0)  # the parent reports its own failure
            init = os.fork()
            if init == 0:
                failure = _attempt("jail root", lambda: _build_root(rootfs))
                if failure is None and program:
                    failure = _attempt("load seccomp filter", lambda: _load_seccomp(program))
                _exit_with(report, failure)
            failure = _died(os.waitpid(init, 0)[1])
    except BaseException as exc:  # a bug: the child must never go on as a copy of the daemon
        failure = _Failure(f"probe: {type(exc).__name__}: {exc}", errno.EINVAL)
    _exit_with(report, failure)


def _build_root(rootfs: str) -> None:
    """What jail/mounts.py does that needs privileges: its own /proc, then pivot_root."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    mount(rootfs, rootfs, None, MS_BIND | MS_REC)
    mount("proc", f"{rootfs}/proc", "proc", _SAFE_FLAGS)
    os.chdir(rootfs)
    pivot_root(".", ".")
    umount2(".", MNT_DETACH)


def _load_seccomp(program: bytes) -> None:
    try:
        seccomp.install(program)
    except seccomp.SeccompError as exc:
        raise SetupError(str(exc)) from None


def _attempt(step: str, action: Callable[[], None]) -> _Failure | None:
    try:
        action()
    except SetupError as exc:
        # SetupError texts are "<step>: [Errno N] ..."; keep the step and the number.
        named, _, rest = str(exc).partition(": [Errno ")
        number = int(rest.split("]", 1)[0]) if rest else errno.EPERM
        return _Failure(named or step, number)
    except OSError as exc:
        return _Failure(step, exc.errno or errno.EPERM)
    return None


def _died(status: int) -> _Failure | None:
    # The init reports its own failures and exits 0; a signal (SIGSYS of a seccomp kill) does not.
    if os.WIFEXITED(status):
        return None
    return _Failure(f"jail init killed by signal {os.WTERMSIG(status)}", errno.EPERM)


def _exit_with(report: int, failure: _Failure | None) -> NoReturn:
    if failure is not None:
        os.write(report, _record(failure))
    os._exit(0)


def _record(failure: _Failure) -> bytes:
    """A failure record: "f", errno, length, step."""
    step = failure.step.encode()[:200]
    return b"f" + struct.pack("=iH", failure.errno, len(step)) + step


def _read_all(data: bytes, fd: int) -> bytes:
    while chunk := os.read(fd, 4096):
        data += chunk
    return data


def _read_failure(data: bytes, fd: int) -> _Failure | None:
    """The first failure record in `data` (and what `fd` holds, if >= 0); None if none."""
    if fd >= 0:
        data = _read_all(data, fd)
    if not data.startswith(b"f"):
        return None
    number, size = struct.unpack_from("=iH", data, 1)
    return _Failure(data[7 : 7 + size].decode(errors="replace"), number)


def _pipe() -> tuple[int, int]:
    read_end, write_end = os.pipe()
    return write_end, read_end


# --- what each refusal means ----------------------------------------------------------------------


def _explain(failure: _Failure) -> str:
    """One line: the privilege that is missing, and what grants it."""
    what = f"{failure.step} failed ({errno.errorcode.get(failure.errno, failure.errno)})"
    step = failure.step
    if step == "write uid_map":
        return f"{what}: missing CAP_SETUID, needed to map each jail to its own host uid"
    if step == "write gid_map":
        return f"{what}: missing CAP_SETGID, needed to map each jail to its own host gid"
    if step == "unshare":
        if failure.errno == errno.ENOSPC:
            return f"{what}: user namespaces are disabled or exhausted (user.max_user_namespaces)"
        return f"{what}: user namespaces refused: {_cap_or_policy('unshare')}"
    if step.startswith("mount proc"):
        return f"{what}: /proc: a pid namespace cannot mount its own /proc here"
    if step == "pivot_root":
        return f"{what}: pivot_root is refused by {_SEC}"
    if step.startswith("load seccomp"):
        return f"{what}: seccomp: the kernel or {_SEC} refuses seccomp filters"
    return f"{what}: {_cap_or_policy(step)}"


def _cap_or_policy(call: str) -> str:
    if not prctl.cap_effective.sys_admin:
        return f"missing CAP_SYS_ADMIN (Docker's seccomp profile allows {call} only with it)"
    return f"{call} is refused by {_SEC} or a security module"


def main(argv: list[str] | None = None) -> None:
    """`python -m sandboxd.preflight ARGS`: run the probe in this fresh, single-threaded
    interpreter and write its failure record (empty: every step worked) to stdout."""
    args = json.loads((argv or sys.argv[1:])[0])
    record = _probe_here(args["rootfs"], args["uid_base"], args["cgroups"], args["seccomp"])
    sys.stdout.buffer.write(record)


if __name__ == "__main__":
    main()
