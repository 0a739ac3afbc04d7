"""The child side of starting a jail, read top to bottom as a checklist.

One process runs this code: the jail's *init*, cloned by the fork server straight into the jail's
new user and pid namespaces (never a new Python interpreter), so it is pid 1 of its pid namespace
and the fork server is its parent: the fork server reaps it and reports its exit status, and it
dies with the fork server (parent-death signal). It joins the jail's cgroup (on cgroup v2 it was
born there: see forkserver.InitCloner), makes its other
namespaces (mount, network, ipc, uts, cgroup), waits for the fork server to write its id maps
(the fork server also brings up the loopback of the new network namespace and opens the egress
socket there, see net.py), takes the jail's ids, builds the filesystem, the hostname, the limits,
the descriptors and the privileges, then executes the runner.

Every step either succeeds or raises SetupError naming itself; the error text travels to the fork
server over the error pipe, which closes on its own at exec (O_CLOEXEC), so "EOF without a word"
means the runner is running.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import socket
from dataclasses import dataclass
from typing import NoReturn

import prctl

from sandboxd.jail import ids, mounts
from sandboxd.jail.errors import SetupError
from sandboxd.jail.spec import JailSpec
from sandboxd.jail.syscalls import (
    CLONE_NEWCGROUP,
    CLONE_NEWIPC,
    CLONE_NEWNET,
    CLONE_NEWNS,
    CLONE_NEWPID,
    CLONE_NEWUSER,
    CLONE_NEWUTS,
    clear_ambient_caps,
    unshare,
)

NAMESPACES = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS
# Made by the fork server's clone: a pid namespace takes its pid 1 at birth, and it must belong
# to the jail's user namespace. The init makes the rest itself (so that the fork server, which
# starts one jail at a time, does not wait on them; a network namespace alone costs ~0.6 ms), and
# the cgroup namespace once it is in the jail's cgroup, where that namespace is then rooted.
CLONED_NAMESPACES = CLONE_NEWUSER | CLONE_NEWPID
SETUP_FAILED_EXIT = 126
_MAX_FD = 1 << 20  # above any RLIMIT_NOFILE the fork server runs with

# The descriptors the runner finds open; see docs/channel.md.
STDIN, STDOUT, STDERR, WORK_FD, EVENTS_FD = 0, 1, 2, 3, 4


@dataclass(frozen=True, slots=True)
class ChildFds:
    """Descriptors the init inherits from the fork server."""

    fork_server: int  # a pidfd of the fork server, its parent
    to_server: int  # init -> server: "namespaces made"
    from_server: int  # server -> init: "id maps written"
    errors: int  # setup error text; O_CLOEXEC, so exec closes it
    work: int  # becomes WORK_FD
    events: int  # becomes EVENTS_FD
    output: int  # becomes STDOUT and STDERR


def run_init(
    spec: JailSpec, fds: ChildFds, seccomp_program: bytes, *, born_in_cgroup: bool
) -> NoReturn:
    """Pid 1 of the jail, just cloned: build the jail around itself, then become the runner.

    `born_in_cgroup`: cloned into the jail's cgroup already (cgroup v2), so it does not join.
    """
    try:
        prctl.set_name("sandboxd-init")  # for ps and perf until exec; otherwise "python"
        _die_with_fork_server(fds.fork_server)
        _forget_fork_server(fds)
        if not born_in_cgroup:
            _join_cgroup(spec.cgroup_procs)
        unshare(NAMESPACES & ~CLONED_NAMESPACES | (CLONE_NEWCGROUP if spec.cgroup_procs else 0))
        _tell_server(fds, b"u")
        _wait_server(fds, "id maps")
        ids.become_jail_user()
        _die_with_fork_server(fds.fork_server)  # changing credentials cleared the signal
        os.close(fds.fork_server)
        os.setsid()  # a session of its own: no controlling terminal, no job-control signals
        mounts.enter_root(spec.rootfs, spec.limits.tmpfs_bytes)
        _set_hostname(spec.hostname)
        _set_rlimits(spec)
        _install_descriptors(fds)
        _drop_privileges()
        _load_seccomp(seccomp_program)
        os.execve(spec.argv[0], list(spec.argv), dict(spec.env))
    except SetupError as exc:
        _fail(fds, str(exc))
    except OSError as exc:
        _fail(fds, f"exec {spec.argv[0]}: {exc}")
    except BaseException as exc:  # anything else is a bug, reported the same way
        _fail(fds, f"init: {type(exc).__name__}: {exc}")


def _die_with_fork_server(fork_server: int) -> None:
    """Be killed when the fork server dies, also if it died just before the signal was set.

    The init's parent is outside its pid namespace, where getppid() says 0 whether the parent
    lives or not; the fork server's pidfd turns readable once it has exited.
    """
    prctl.set_pdeathsig(signal.SIGKILL)
    if select.select([fork_server], [], [], 0)[0]:
        os._exit(SETUP_FAILED_EXIT)


def _forget_fork_server(fds: ChildFds) -> None:
    """Drop what the init inherited from the fork server: its socket, pipes and handlers."""
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # A write past RLIMIT_FSIZE then fails with EFBIG inside the jail instead of killing the
    # runner; the disposition survives exec because it is "ignore", not a handler.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _close_all_but({STDIN, STDOUT, STDERR, *_fds_of(fds)})


def _join_cgroup(procs_files: tuple[str, ...]) -> None:
    # "0" is the writer itself; joining (or being born in it) before unshare(CLONE_NEWCGROUP)
    # makes this cgroup the root of the jail's cgroup namespace, and every later process of the
    # jail is born inside.
    for path in procs_files:
        try:
            with open(path, "w") as handle:
                handle.write("0\n")
        except OSError as exc:
            raise SetupError(f"join cgroup {path}: {exc}") from None


def _set_hostname(hostname: str) -> None:
    try:
        socket.sethostname(hostname)
    except OSError as exc:
        raise SetupError(f"sethostname: {exc}") from None


def _set_rlimits(spec: JailSpec) -> None:
    limits = spec.limits
    wanted = (
        ("RLIMIT_NOFILE", resource.RLIMIT_NOFILE, limits.open_files),
        ("RLIMIT_FSIZE", resource.RLIMIT_FSIZE, limits.file_size_bytes),
        ("RLIMIT_CPU", resource.RLIMIT_CPU, limits.cpu_time_s),
        ("RLIMIT_CORE", resource.RLIMIT_CORE, 0),
        # Per host uid, and every jail has its own: a second fence behind the pids cgroup, one
        # above it, so that the cgroup refuses first and counts the refusal in pids.events.
        ("RLIMIT_NPROC", resource.RLIMIT_NPROC, limits.pids + (1 if spec.cgroup_procs else 0)),
    )
    for name, which, value in wanted:
        try:
            resource.setrlimit(which, (value, value))
        except (OSError, ValueError) as exc:
            raise SetupError(f"setrlimit {name}={value}: {exc}") from None


def _install_descriptors(fds: ChildFds) -> None:
    """Put the channel on fds 0-4 and close everything else the fork server had open."""
    try:
        null = os.open("/dev/null", os.O_RDONLY)
        # dup2 clears O_CLOEXEC on the copies, so exactly these five survive exec.
        for source, target in (
            (null, STDIN),
            (fds.output, STDOUT),
            (fds.output, STDERR),
            (fds.work, WORK_FD),
            (fds.events, EVENTS_FD),
        ):
            os.dup2(source, target)
        # The error pipe stays (it is O_CLOEXEC and closes at exec), everything else goes.
        _close_all_but({STDIN, STDOUT, STDERR, WORK_FD, EVENTS_FD, fds.errors})
    except OSError as exc:
        raise SetupError(f"install descriptors: {exc}") from None


def _fds_of(fds: ChildFds) -> set[int]:
    return {
        fds.fork_server,
        fds.to_server,
        fds.from_server,
        fds.errors,
        fds.work,
        fds.events,
        fds.output,
    }


def _close_all_but(keep: set[int]) -> None:
    """Close every descriptor not in `keep`: close_range(2) over the gaps, no /proc walk."""
    low = 0
    for fd in sorted(keep):
        # Never an empty range: os.closerange(n, n) asks close_range(2) for n..UINT_MAX.
        if low < fd:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _MAX_FD)


def _drop_privileges() -> None:
    """Empty the bounding and ambient sets and forbid gaining privileges through exec."""
    clear_ambient_caps()
    try:
        for cap in prctl.ALL_CAPS:
            prctl.capbset.drop(cap)
        prctl.set_no_new_privs(1)
    except OSError as exc:
        raise SetupError(f"drop privileges: {exc}") from None


def _load_seccomp(program: bytes) -> None:
    if not program:
        return
    # Imported here: the policy module needs libseccomp only to compile, not to load.
    from sandboxd.jail import seccomp

    try:
        seccomp.install(program)
    except Exception as exc:
        raise SetupError(f"load seccomp filter: {exc}") from None


def _tell_server(fds: ChildFds, message: bytes) -> None:
    os.write(fds.to_server, message)


def _wait_server(fds: ChildFds, what: str) -> None:
    if os.read(fds.from_server, 1) != b"g":
        raise SetupError(f"wait for {what}: the fork server went away")


def _fail(fds: ChildFds, message: str) -> NoReturn:
    try:
        os.write(fds.errors, message.encode(errors="replace")[:4096])
    finally:
        os._exit(SETUP_FAILED_EXIT)
