"""Limits and accounting for jails through cgroups, v2 (unified) or v1 (one tree per controller).

At daemon start, `detect()` finds which hierarchy the host has and `open_driver()` prepares a
parent for jails under the daemon's own cgroup, or raises CgroupError so the daemon refuses to
start without limits:

* v2: `<own>/<parent_name>/<jail_id>`. A v2 cgroup that holds processes cannot hand controllers
  to its children (the no-internal-process rule), so the processes of `<own>` move to the leaf
  `<own>/daemon` first, then memory, pids and cpu are enabled for `<own>` and `<parent_name>`.
  On ECS or Docker this needs a writable /sys/fs/cgroup (cgroupns private, read-write); under
  systemd, `Delegate=yes`.
* v1: `<mount of each controller>/<own path>/<parent_name>/<jail_id>` for memory, pids, cpu,
  cpuacct and freezer (co-mounted controllers share one directory).

The parent weighs JAILS_CPU_WEIGHT against the daemon: under contention the daemon's event loop
comes before customer code.

`driver.create()` makes one jail's cgroup with its limits set before any process is in it; the
jail's first process writes "0" (itself) into every file of `procs_files` before it unshares, so
every later process of the jail is born inside and cannot leave (the jail has no /sys and its own
cgroup namespace). Only the daemon writes these directories; cgroupfs holds no symlinks, and names
come from validated jail ids, so the daemon never follows a path that jail code could have made.

The daemon owns its parent: one daemon per cgroup, since `cleanup_stale()` removes every jail
cgroup it finds there (the leftovers of a daemon that crashed).
"""

from __future__ import annotations

import errno
import os
import re
import signal
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Final, Literal

CgroupMode = Literal["v2", "v1", "none"]

V2_CONTROLLERS: Final = ("memory", "pids", "cpu")
V1_CONTROLLERS: Final = ("memory", "pids", "cpu", "cpuacct", "freezer")
CPU_PERIOD_US: Final = 100_000
MIN_CPU_QUOTA_US: Final = 1_000  # the kernel refuses a smaller cfs quota
NORMAL_CPU_WEIGHT: Final = 100  # v2's default cpu.weight; v1's cpu.shares 1024
# All jails together, against the daemon's normal weight: when jails keep every core busy (a
# step parsing a 64 MiB input), the daemon's event loop still runs the moment it wakes, instead
# of queueing behind them for up to 9 ms (`perf sched`, benchmarks/event_loop.py). Weights count
# only under contention, and the daemon uses a core at most: jails keep the rest.
JAILS_CPU_WEIGHT: Final = 12
DRAIN_TIMEOUT_S: Final = 5.0  # kill -> every process gone: milliseconds, unless the host is stuck
_POLL_S: Final = 0.002
_READ_CHUNK: Final = 64 * 1024
_FREEZE_TIMEOUT_S: Final = 0.5
_DAEMON_LEAF: Final = "daemon"
DAEMON_PARENT_PREFIX: Final = "sandboxd-"
_JAIL_ID: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


class CgroupError(Exception):
    """A cgroup step failed; the message names the step, the path and the errno."""


@dataclass(frozen=True, slots=True)
class CgroupLimits:
    """Kernel limits of one jail's cgroup."""

    memory_bytes: int
    pids: int
    cpu_quota: float  # cores: 1.0 is one full CPU, 0.5 half of one
    # Share of contended cpu against other jails (1..10000): a refill's jail starts lower.
    cpu_weight: int = NORMAL_CPU_WEIGHT

    def __post_init__(self) -> None:
        if self.memory_bytes <= 0 or self.pids <= 0:
            raise ValueError(f"cgroup limits must be positive: {self}")
        if not 1 <= self.cpu_weight <= 10_000:
            raise ValueError(f"cpu weight outside 1..10000: {self}")
        if self.cpu_quota_us < MIN_CPU_QUOTA_US:
            raise ValueError(f"cpu quota below {MIN_CPU_QUOTA_US / CPU_PERIOD_US} cores: {self}")

    @property
    def cpu_quota_us(self) -> int:
        """The quota per CPU_PERIOD_US period."""
        return round(self.cpu_quota * CPU_PERIOD_US)


@dataclass(frozen=True, slots=True)
class CgroupUsage:
    """What a jail consumed so far: CPU of all its processes, and its highest memory use.

    Both count from the cgroup's creation; a step's CPU time is the difference between the
    readings at its two boundaries, while the peak stays the jail's (kernels keep no per-step
    peak that v1 could reset).
    """

    cpu_time_us: int
    peak_memory_bytes: int


# --- one jail -------------------------------------------------------------------------------------


class JailCgroup(ABC):
    """One jail's cgroup: in one directory (v2) or one per hierarchy (v1)."""

    def __init__(self, dirs: tuple[str, ...]):
        self.dirs = dirs
        # Written "0\n" by the jail's first process to join, before it unshares.
        self.procs_files = tuple(os.path.join(d, "cgroup.procs") for d in dirs)

    @abstractmethod
    def usage(self) -> CgroupUsage:
        """Two small reads: cheap enough at every step boundary."""

    @abstractmethod
    def oom_killed(self) -> bool:
        """Whether the kernel killed a process of the jail for exceeding the memory limit."""

    @abstractmethod
    def pids_limit_hit(self) -> bool:
        """Whether a fork or clone in the jail failed on the pids limit."""

    @abstractmethod
    def kill(self) -> None:
        """SIGKILL every process in the cgroup, including ones that double-forked or setsid()."""

    @abstractmethod
    def set_cpu_weight(self, weight: int) -> None:
        """The jail's share of contended cpu against other jails (1..10000, normal 100)."""

    def remove_if_empty(self) -> bool:
        """Remove the directories if nothing is inside, without waiting; False at the first
        busy one (then `remove()` finishes). A freed jail is dead, its cgroup most likely empty:
        rmdir alone, nothing read. The directories go in order, v1's freezer last, so a busy
        cgroup keeps its freezer for `remove()`."""
        return all(_rmdir_if_empty(directory) for directory in self.dirs)

    def remove(self) -> None:
        """Kill everything inside, wait until empty, remove the directories. Idempotent."""
        if self.remove_if_empty():
            return
        left = tuple(d for d in self.dirs if os.path.isdir(d))
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        # Killed processes leave the cgroup once they finish exiting; kill again on every pass
        # in case one was mid-fork when the first kill came.
        while any(_read_pids(os.path.join(d, "cgroup.procs")) for d in left):
            if time.monotonic() > deadline:
                raise CgroupError(f"remove {left[0]}: processes left after {DRAIN_TIMEOUT_S} s")
            self.kill()
            time.sleep(_POLL_S)
        for directory in left:
            _rmdir(directory)


class V2Cgroup(JailCgroup):
    """A jail's cgroup on the unified hierarchy."""

    def set_cpu_weight(self, weight: int) -> None:
        _write(self._file("cpu.weight"), str(weight), "set cpu weight")

    def __init__(self, directory: str):
        super().__init__((directory,))
        self.dir = directory
        # memory.peak exists from Linux 5.19; before that, the highest memory.current seen.
        self._has_peak = os.path.exists(os.path.join(directory, "memory.peak"))
        self._peak_seen = 0

    def usage(self) -> CgroupUsage:
        cpu_us = _read_field(self._file("cpu.stat"), "usage_usec")
        if self._has_peak:
            peak = _read_int(self._file("memory.peak"))
        else:
            self._peak_seen = max(self._peak_seen, _read_int(self._file("memory.current")))
            peak = self._peak_seen
        return CgroupUsage(cpu_time_us=cpu_us, peak_memory_bytes=peak)

    def oom_killed(self) -> bool:
        return _read_field(self._file("memory.events"), "oom_kill") > 0

    def pids_limit_hit(self) -> bool:
        return _read_field(self._file("pids.events"), "max") > 0

    def kill(self) -> None:
        # cgroup.kill (Linux 5.14): the kernel kills every process, forks in flight included.
        _write(self._file("cgroup.kill"), "1", "kill", missing_ok=True)

    def _file(self, name: str) -> str:
        return os.path.join(self.dir, name)


class V1Cgroup(JailCgroup):
    """A jail's cgroups on v1: one directory per hierarchy."""

    def __init__(self, controller_dirs: dict[str, str]):
        super().__init__(tuple(dict.fromkeys(controller_dirs.values())))
        self.controller_dirs = controller_dirs

    def usage(self) -> CgroupUsage:
        cpu_ns = _read_int(self._file("cpuacct", "cpuacct.usage"))
        peak = _read_int(self._file("memory", "memory.max_usage_in_bytes"))
        return CgroupUsage(cpu_time_us=cpu_ns // 1000, peak_memory_bytes=peak)

    def oom_killed(self) -> bool:
        # The oom_kill counter of memory.oom_control (Linux 4.13); failcnt would also count
        # the times reclaim kept usage under the limit, which are not kills.
        return _read_field(self._file("memory", "memory.oom_control"), "oom_kill") > 0

    def pids_limit_hit(self) -> bool:
        return _read_field(self._file("pids", "pids.events"), "max") > 0

    def set_cpu_weight(self, weight: int) -> None:
        _write(self._file("cpu", "cpu.shares"), _v1_shares(weight), "set cpu shares")

    def kill(self) -> None:
        """Freeze, SIGKILL each process, thaw: frozen processes cannot fork away meanwhile."""
        state = self._file("freezer", "freezer.state")
        if not _write(state, "FROZEN", "freeze", missing_ok=True):
            return  # removed already: nothing left to kill
        try:
            _wait_frozen(state)
            procs = self._file("freezer", "cgroup.procs")
            for pid in _read_pids(procs):
                _kill_member(pid, procs)
        finally:
            _write(state, "THAWED", "thaw")

    def _file(self, controller: str, name: str) -> str:
        return os.path.join(self.controller_dirs[controller], name)


def _v1_shares(weight: int) -> str:
    # v1 shares are relative like v2 weights, with 1024 as the normal value.
    return str(max(2, weight * 1024 // NORMAL_CPU_WEIGHT))


def _wait_frozen(state: str) -> None:
    # FREEZING until every task stopped; a task stuck in the kernel may keep it there, and
    # killing then is still right (remove() kills again until the cgroup is empty).
    deadline = time.monotonic() + _FREEZE_TIMEOUT_S
    while _read_text(state).strip() != "FROZEN" and time.monotonic() < deadline:
        time.sleep(_POLL_S)


def _kill_member(pid: int, procs: str) -> None:
    """SIGKILL `pid` only if it is still this cgroup's: a pid read from a file can be reused."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    except OSError as exc:
        raise CgroupError(f"kill {pid} of {procs}: {_describe(exc)}") from None
    try:
        # The pidfd pins the process; if the pid is still listed, the listed one is this one.
        if pid in _read_pids(procs):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass  # it exited meanwhile
    finally:
        os.close(pidfd)


# --- drivers --------------------------------------------------------------------------------------


class CgroupDriver(ABC):
    """Makes jail cgroups under the daemon's parent(s)."""

    def __init__(self, parent_dirs: tuple[str, ...]):
        self.parent_dirs = parent_dirs

    @abstractmethod
    def create(self, jail_id: str, limits: CgroupLimits) -> JailCgroup:
        """A new, empty cgroup for one jail, limits already set."""

    @abstractmethod
    def _existing(self, jail_id: str) -> JailCgroup:
        """The cgroup of a jail that is already there (for clean-up)."""

    def cleanup_stale(self) -> list[str]:
        """Kill and remove every jail cgroup left under the parent; the ids removed."""
        names = sorted({name for parent in self.parent_dirs for name in _subdirs(parent)})
        for name in names:
            self._existing(name).remove()
        return names

    def close(self) -> None:
        """Remove every jail cgroup and the parent itself (the daemon is stopping)."""
        self.cleanup_stale()
        for parent in self.parent_dirs:
            _rmdir(parent)

    def sibling_parents(self) -> list[str]:
        """Names of the other daemons' parents next to this one (same own cgroup)."""
        own_dirs = {os.path.dirname(parent) for parent in self.parent_dirs}
        mine = {os.path.basename(parent) for parent in self.parent_dirs}
        return sorted({name for own in own_dirs for name in _subdirs(own)} - mine)


class V2Driver(CgroupDriver):
    def __init__(self, own_dir: str, parent_name: str):
        if parent_name == _DAEMON_LEAF:
            raise CgroupError(f"open cgroups: {_DAEMON_LEAF!r} is where the daemon itself runs")
        self.parent = os.path.join(own_dir, _checked_name(parent_name))
        super().__init__((self.parent,))
        _prepare_v2(own_dir, self.parent)
        # Absent when the kernel runs without swap accounting, and then no cgroup swaps. The
        # parent has the files its jails will have: one look at daemon start, none per jail.
        self._swap_limited = os.path.exists(os.path.join(self.parent, "memory.swap.max"))

    def create(self, jail_id: str, limits: CgroupLimits) -> JailCgroup:
        directory = os.path.join(self.parent, _checked_name(jail_id))
        _mkdir(directory)
        try:
            self._limit(directory, limits)
        except CgroupError:
            _rmdir(directory)
            raise
        return V2Cgroup(directory)

    def _existing(self, jail_id: str) -> JailCgroup:
        return V2Cgroup(os.path.join(self.parent, jail_id))

    def _limit(self, directory: str, limits: CgroupLimits) -> None:
        settings = [
            ("memory.max", str(limits.memory_bytes)),
            # Kill the whole jail on OOM, not one process of it: a half-dead jail is useless.
            ("memory.oom.group", "1"),
            ("pids.max", str(limits.pids)),
            ("cpu.max", f"{limits.cpu_quota_us} {CPU_PERIOD_US}"),
        ]
        if limits.cpu_weight != NORMAL_CPU_WEIGHT:
            settings.append(("cpu.weight", str(limits.cpu_weight)))
        if self._swap_limited:
            settings.append(("memory.swap.max", "0"))
        for name, value in settings:
            _write(os.path.join(directory, name), value, f"set {name}={value} in")


def _prepare_v2(own: str, parent: str) -> None:
    missing = set(V2_CONTROLLERS) - set(_read_text(os.path.join(own, "cgroup.controllers")).split())
    if missing:
        raise CgroupError(
            f"prepare {own}: controllers not available: {', '.join(sorted(missing))} "
            "(the cgroup must be delegated with them enabled)"
        )
    enable = " ".join(f"+{name}" for name in V2_CONTROLLERS)
    # The hierarchy's root is exempt from the no-internal-process rule (and its kernel threads
    # cannot move); it is the only cgroup without cgroup.type.
    if os.path.exists(os.path.join(own, "cgroup.type")):
        _evacuate(own, os.path.join(own, _DAEMON_LEAF))
    _write(os.path.join(own, "cgroup.subtree_control"), enable, "enable controllers in")
    _mkdir(parent, exist_ok=True)
    _write(os.path.join(parent, "cgroup.subtree_control"), enable, "enable controllers in")
    _write(os.path.join(parent, "cpu.weight"), str(JAILS_CPU_WEIGHT), "set cpu weight of")
    if not os.path.exists(os.path.join(parent, "cgroup.kill")):
        raise CgroupError(f"prepare {parent}: no cgroup.kill (Linux 5.14 or later is needed)")


def _evacuate(own: str, leaf: str) -> None:
    """Move every process of `own` (the daemon and anything it started) into `leaf`."""
    _mkdir(leaf, exist_ok=True)
    target = os.path.join(leaf, "cgroup.procs")
    for _ in range(100):  # processes may fork while being moved; each pass moves the newcomers
        pids = _read_pids(os.path.join(own, "cgroup.procs"))
        if not pids:
            return
        for pid in pids:
            try:
                _write_raw(target, str(pid))
            except OSError as exc:
                if exc.errno != errno.ESRCH:  # ESRCH: exited meanwhile
                    raise CgroupError(f"move {pid} into {leaf}: {_describe(exc)}") from None
    raise CgroupError(f"move processes of {own} into {leaf}: they keep forking")


class V1Driver(CgroupDriver):
    def __init__(self, own_dirs: dict[str, str], parent_name: str):
        name = _checked_name(parent_name)
        self._parents = {ctrl: os.path.join(own, name) for ctrl, own in own_dirs.items()}
        super().__init__(tuple(dict.fromkeys(self._parents.values())))
        for parent in self.parent_dirs:
            _mkdir(parent, exist_ok=True)
        shares = os.path.join(self._parents["cpu"], "cpu.shares")
        _write(shares, _v1_shares(JAILS_CPU_WEIGHT), "set cpu shares of")
        # The parent has the files its jails will have: one look at daemon start, none per jail.
        self._swap_accounted = os.path.exists(
            os.path.join(self._parents["memory"], "memory.memsw.limit_in_bytes")
        )

    def create(self, jail_id: str, limits: CgroupLimits) -> JailCgroup:
        jail = self._existing(_checked_name(jail_id))
        created: list[str] = []
        try:
            for directory in jail.dirs:
                _mkdir(directory)
                created.append(directory)
            self._limit(jail, limits)
        except CgroupError:
            for directory in created:  # never one that was there before: another jail's
                _rmdir(directory)
            raise
        return jail

    def _existing(self, jail_id: str) -> V1Cgroup:
        return V1Cgroup({ctrl: os.path.join(p, jail_id) for ctrl, p in self._parents.items()})

    def _limit(self, jail: V1Cgroup, limits: CgroupLimits) -> None:
        settings = [
            ("memory", "memory.limit_in_bytes", str(limits.memory_bytes)),
            ("pids", "pids.max", str(limits.pids)),
            # No cpu.cfs_period_us: a new cgroup's period is the kernel's fixed default, 100 ms,
            # which is CPU_PERIOD_US (test_v1_limits_are_written reads it).
            ("cpu", "cpu.cfs_quota_us", str(limits.cpu_quota_us)),
        ]
        if limits.cpu_weight != NORMAL_CPU_WEIGHT:
            settings.append(("cpu", "cpu.shares", _v1_shares(limits.cpu_weight)))
        if self._swap_accounted:
            # memory + swap capped at the memory limit: no room left to swap into. Written
            # after memory.limit_in_bytes, which the kernel requires to stay <= memsw.
            settings.append(("memory", "memory.memsw.limit_in_bytes", str(limits.memory_bytes)))
        else:
            # No swap accounting (swapaccount=0): swappiness 0 keeps the cgroup's anonymous
            # memory out of swap, short of a hard guarantee.
            settings.append(("memory", "memory.swappiness", "0"))
        for controller, name, value in settings:
            path = os.path.join(jail.controller_dirs[controller], name)
            _write(path, value, f"set {name}={value} in")


# --- detection and start-up -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Mount:
    root: str  # the path inside the hierarchy that is mounted here
    point: str
    fstype: str
    options: frozenset[str]


def detect(root: str = "/sys/fs/cgroup") -> CgroupMode:
    """The hierarchy at `root`: "v2" if it is a cgroup2 mount, "v1" if the v1 memory controller
    is mounted under it, else "none".

    A hybrid host (v1 controllers, an empty cgroup2 at `root`/unified) is "v1".
    """
    mounts = _cgroup_mounts()
    if any(m.fstype == "cgroup2" and m.point == root for m in mounts):
        return "v2"
    if any(_is_v1_under(m, root) and "memory" in m.options for m in mounts):
        return "v1"
    return "none"


def favors_dynamic_moves() -> bool:
    """Whether a cgroup hierarchy is mounted with `favordynmods` (Linux 6.0+; one is enough,
    the lock it changes is global).

    Without it, the first move of a process into a cgroup after a pause (a jail joining its
    own) waits for an RCU grace period: 11-22 ms of a jail's start on a HZ 250 host
    (benchmarks/README.md, "A jail's start to ready"). Kernels built with
    CONFIG_CGROUP_FAVOR_DYNMODS behave the same without the option showing.
    """
    return any("favordynmods" in mount.options for mount in _cgroup_mounts())


def _is_v1_under(mount: _Mount, root: str) -> bool:
    return mount.fstype == "cgroup" and mount.point.startswith(root + "/")


def open_driver(
    mode: CgroupMode, parent_name: str = "sandboxd", root: str = "/sys/fs/cgroup"
) -> CgroupDriver:
    """Prepare the parent for jails under the daemon's own cgroup; CgroupError if impossible."""
    if mode == "v2":
        return V2Driver(_own_v2_dir(root), parent_name)
    if mode == "v1":
        return V1Driver(_own_v1_dirs(root), parent_name)
    raise CgroupError(f"open cgroups: no cgroup hierarchy at {root}: jails need limits")


def daemon_parent_name(pid: int | None = None) -> str:
    """The parent cgroup of one daemon's jails: one per daemon, so daemons never share one."""
    return f"{DAEMON_PARENT_PREFIX}{os.getpid() if pid is None else pid}"


def remove_dead_daemons(
    driver: CgroupDriver, mode: CgroupMode, root: str = "/sys/fs/cgroup"
) -> list[str]:
    """Clean the parents of daemons that died without cleaning up; the names removed.

    A daemon killed with SIGKILL takes its jails along (parent-death signals), but leaves its
    empty cgroups; the next daemon on the host removes them.
    """
    removed = []
    for name in driver.sibling_parents():
        match = re.fullmatch(re.escape(DAEMON_PARENT_PREFIX) + r"(\d+)", name)
        if match and not _pid_alive(int(match[1])):
            open_driver(mode, name, root).close()
            removed.append(name)
    return removed


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _own_v2_dir(root: str) -> str:
    mount = next((m for m in _cgroup_mounts() if m.fstype == "cgroup2" and m.point == root), None)
    if mount is None:
        raise CgroupError(f"open cgroups: no cgroup2 mount at {root}")
    own = _own_paths().get("")
    if own is None:
        raise CgroupError("open cgroups: /proc/self/cgroup has no cgroup2 entry")
    return _inside(mount, own)


def _own_v1_dirs(root: str) -> dict[str, str]:
    mounts = [m for m in _cgroup_mounts() if _is_v1_under(m, root)]
    own = _own_paths()
    dirs = {}
    for controller in V1_CONTROLLERS:
        mount = next((m for m in mounts if controller in m.options), None)
        path = next((p for names, p in own.items() if controller in names.split(",")), None)
        if mount is None or path is None:
            raise CgroupError(f"open cgroups: v1 controller {controller} is not mounted")
        dirs[controller] = _inside(mount, path)
    return dirs


def _inside(mount: _Mount, path: str) -> str:
    """Where the cgroup `path` (as /proc/self/cgroup names it) is under `mount`."""
    if mount.root == "/":
        return os.path.normpath(mount.point + path)
    if path == mount.root or path.startswith(mount.root + "/"):
        return os.path.normpath(mount.point + path[len(mount.root) :])
    raise CgroupError(f"open cgroups: own cgroup {path} is outside the mount of {mount.root}")


def _own_paths() -> dict[str, str]:
    """/proc/self/cgroup as {controllers: path}; the v2 entry has controllers ""."""
    paths = {}
    for line in _read_text("/proc/self/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        paths[controllers] = path
    return paths


def _cgroup_mounts() -> list[_Mount]:
    mounts = []
    for line in _read_text("/proc/self/mountinfo").splitlines():
        fields, _, tail = line.partition(" - ")
        fstype, _, super_options = tail.split(" ", 2)
        if fstype in ("cgroup", "cgroup2"):
            parts = fields.split(" ")
            mounts.append(
                _Mount(
                    root=_unescape(parts[3]),
                    point=_unescape(parts[4]),
                    fstype=fstype,
                    options=frozenset(super_options.split(",")),
                )
            )
    return mounts


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as octal escapes (\040 ...).
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


# --- file helpers ---------------------------------------------------------------------------------


def _checked_name(name: str) -> str:
    """A single path component: no "/", no "..", nothing that could leave the parent."""
    if not _JAIL_ID.fullmatch(name):
        raise CgroupError(f"invalid cgroup name {name!r}")
    return name


def _describe(exc: OSError) -> str:
    return f"[Errno {exc.errno}] {exc.strerror}"


def _write_raw(path: str, value: str) -> None:
    # One write(2) of the whole value: cgroupfs parses each write on its own.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _write(path: str, value: str, step: str, missing_ok: bool = False) -> bool:
    """Write `value`; False if the file is gone and `missing_ok` (the cgroup was removed)."""
    try:
        _write_raw(path, value)
    except OSError as exc:
        if missing_ok and exc.errno == errno.ENOENT:
            return False
        raise CgroupError(f"{step} {path}: {_describe(exc)}") from None
    return True


def _read_bytes(path: str) -> bytes:
    """The whole file, through a raw descriptor: open, read to the end, close, nothing else."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as exc:
        raise CgroupError(f"open {path}: {_describe(exc)}") from None
    try:
        # Until an empty read: cgroup.procs may come in pieces shorter than the buffer.
        chunks = []
        while chunk := os.read(fd, _READ_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as exc:
        raise CgroupError(f"read {path}: {_describe(exc)}") from None
    finally:
        os.close(fd)


def _read_text(path: str) -> str:
    return _read_bytes(path).decode()


def _read_int(path: str) -> int:
    return int(_read_bytes(path))


def _read_field(path: str, key: str) -> int:
    """One value of a flat-keyed file ("key value" lines: cpu.stat, memory.events, ...)."""
    wanted = key.encode()
    for line in _read_bytes(path).splitlines():
        name, _, value = line.partition(b" ")
        if name == wanted:
            return int(value)
    raise CgroupError(f"read {path}: no {key} field (kernel too old?)")


def _read_pids(procs: str) -> list[int]:
    try:
        return [int(pid) for pid in _read_bytes(procs).split()]
    except CgroupError:
        if not os.path.exists(procs):
            return []  # the cgroup is gone, so is everything in it
        raise


def _subdirs(parent: str) -> list[str]:
    try:
        return [entry.name for entry in os.scandir(parent) if entry.is_dir(follow_symlinks=False)]
    except OSError as exc:
        raise CgroupError(f"list {parent}: {_describe(exc)}") from None


def _mkdir(path: str, exist_ok: bool = False) -> None:
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        if not exist_ok:
            raise CgroupError(f"create {path}: already exists") from None
    except OSError as exc:
        raise CgroupError(f"create {path}: {_describe(exc)}") from None


def _rmdir(path: str) -> None:
    # EBUSY right after the last process left: the kernel may still be tearing it down.
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while not _rmdir_if_empty(path):
        if time.monotonic() > deadline:
            raise CgroupError(f"remove {path}: still busy after {DRAIN_TIMEOUT_S} s")
        time.sleep(_POLL_S)


def _rmdir_if_empty(path: str) -> bool:
    """Remove a cgroup, or see it gone already; False if it is busy: processes are still in
    it, or the kernel is still tearing the last one out."""
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.EBUSY:
            raise CgroupError(f"remove {path}: {_describe(exc)}") from None
        return False
    return True
