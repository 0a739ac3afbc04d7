"""How a step failed: the error kind from evidence the jail cannot fake.

Customer code shares the runner's process, so whatever the runner says (an error frame, text on
stderr such as V8's "JavaScript heap out of memory", an exit code) is the step's own word, and
may only ever give USER_ERROR, RESULT_TOO_LARGE or OUTPUT_LIMIT. The kinds that blame a limit or
the platform come from what the kernel and the daemon saw: the cgroup's counters (an OOM kill,
the pids limit refusing a fork), the exit status the kernel reports (a seccomp kill, a CPU limit
kill, a crash), the jail's own descriptor table and tmpfs (an errno limit really reached).
"""

from __future__ import annotations

import os
import signal

from sandbox_client.v1 import sandbox_pb2 as pb
from sandboxd.frames import Error as ErrorHeader
from sandboxd.jail import seccomp
from sandboxd.jail.cgroups import CgroupError, JailCgroup
from sandboxd.jail.spec import JailLimits
from sandboxd.pool import PooledJail

_CPU_LIMIT_MARGIN = 0.9
# How full the descriptor table must be for EMFILE to count as the limit: the step may have
# closed a few descriptors between the error and the daemon's look.
_OPEN_FILES_MARGIN = 0.9
# A failed step that leaves the runner healthy: a session may go on after it.
RECOVERABLE = frozenset({pb.ERROR_KIND_USER_ERROR, pb.ERROR_KIND_RESULT_TOO_LARGE})

_RUNNER_KINDS = {
    "USER_ERROR": pb.ERROR_KIND_USER_ERROR,
    "RESULT_TOO_LARGE": pb.ERROR_KIND_RESULT_TOO_LARGE,
    "OUTPUT_LIMIT": pb.ERROR_KIND_OUTPUT_LIMIT,
}


class StepFailure(Exception):
    """How a step failed; becomes a StepFailed event.

    `recoverable`: the runner is still healthy, so a session may go on (by default, for the
    kinds in RECOVERABLE).
    """

    def __init__(self, kind: int, message: str, stack: str = "", *, recoverable: bool = False):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.stack = stack
        self.recoverable = recoverable


def protocol_violation(what: str) -> StepFailure:
    """The runner broke the channel protocol: the step's doing (it holds the runner's pipes),
    and the end of the execution, since nothing the runner says can be trusted anymore."""
    return StepFailure(pb.ERROR_KIND_USER_ERROR, f"protocol violation: {what}")


def runner_error(header: ErrorHeader, jail: PooledJail) -> StepFailure:
    """The step's failure as the runner reported it: one of the kinds a step may cause.

    It becomes RESOURCE_LIMIT only with the jail's own evidence: the pids cgroup refused a
    process or thread, or the descriptor table, the file size limit or the tmpfs is really full
    for the errno the step failed with.
    """
    kind = _RUNNER_KINDS[header.kind]
    text = f"{header.name}: {header.message}" if header.name else header.message
    if kind == pb.ERROR_KIND_USER_ERROR:
        if jail.cgroup is not None and jail.cgroup.pids_limit_hit():
            text = f"the jail reached its process/thread limit: {text}"
            return StepFailure(pb.ERROR_KIND_RESOURCE_LIMIT, text, header.stack)
        if header.code and _limit_reached(header.code, jail.jail.init_pid, jail.jail.spec.limits):
            text = f"the step reached a jail limit: {text}"
            return StepFailure(pb.ERROR_KIND_RESOURCE_LIMIT, text, header.stack)
    recoverable = kind in RECOVERABLE
    return StepFailure(kind, text, header.stack, recoverable=recoverable)


def _limit_reached(code: str, pid: int, limits: JailLimits) -> bool:
    """Whether the jail (its runner `pid`) is at the limit that errno `code` names."""
    try:
        if code == "EMFILE":
            return len(os.listdir(f"/proc/{pid}/fd")) >= limits.open_files * _OPEN_FILES_MARGIN
        if code == "EFBIG":
            return any(
                os.stat(f"/proc/{pid}/fd/{fd}").st_size >= limits.file_size_bytes
                for fd in os.listdir(f"/proc/{pid}/fd")
            )
        if code in ("ENOSPC", "EDQUOT"):
            tmp = os.statvfs(f"/proc/{pid}/root/tmp")
            return tmp.f_bavail == 0 or tmp.f_favail == 0
    except OSError:  # the runner is gone, or a descriptor closed while we looked
        return False
    return False


def classify_death(
    status: int | None,
    cgroup: JailCgroup | None,
    cut_by_step: str,
    cpu_limit_us: int | None = None,
) -> StepFailure:
    """The error kind of a runner that stopped answering; `status` is its exit status, None
    when it still ran after its channel ended (the step cut the channel: `cut_by_step`).

    The cgroup's own records come first: an OOM kill arrives as a plain SIGKILL, and a runner
    that could not make a thread under the pids limit dies of SIGABRT.
    """
    if cgroup is not None and cgroup.oom_killed():
        return StepFailure(
            pb.ERROR_KIND_MEMORY_LIMIT, "the jail ran out of memory (its memory limit)"
        )
    if status is None:
        return StepFailure(pb.ERROR_KIND_USER_ERROR, cut_by_step)
    if seccomp.killed_by_policy(status):
        return StepFailure(
            pb.ERROR_KIND_POLICY_DENIED, "the step made a system call the policy forbids"
        )
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        # The runner is pid 1 of its namespace, which ignores the kernel's SIGXCPU at the soft
        # limit: RLIMIT_CPU ends it with SIGKILL at the hard limit. The kernel decides on
        # tick-sampled time, the cgroup counts exactly (up to ~10 % less): hence the margin.
        if sig == signal.SIGXCPU or (
            sig == signal.SIGKILL
            and cpu_limit_us is not None
            and _cpu_used_us(cgroup) >= cpu_limit_us * _CPU_LIMIT_MARGIN
        ):
            return StepFailure(pb.ERROR_KIND_TIMEOUT, "the jail used up its cpu time limit")
    if cgroup is not None and cgroup.pids_limit_hit():
        return StepFailure(
            pb.ERROR_KIND_RESOURCE_LIMIT, "the jail reached its process/thread limit"
        )
    if os.WIFEXITED(status):
        # process.exit(), or the runner giving up on a channel the step broke: no crash.
        return StepFailure(
            pb.ERROR_KIND_USER_ERROR, f"the step ended the runner ({describe_status(status)})"
        )
    return StepFailure(pb.ERROR_KIND_CRASHED, f"the runner died ({describe_status(status)})")


def _cpu_used_us(cgroup: JailCgroup | None) -> int:
    if cgroup is None:
        return 0
    try:
        return cgroup.usage().cpu_time_us
    except (OSError, CgroupError):
        return 0


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
