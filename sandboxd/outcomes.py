"""How a step failed: the error kind from what the runner said, or from how the jail died."""

from __future__ import annotations

import os
import signal

from sandbox_client.v1 import sandbox_pb2 as pb
from sandboxd.channel import Frame
from sandboxd.jail import seccomp
from sandboxd.jail.cgroups import CgroupError, JailCgroup

_HEAP_EXHAUSTED = b"JavaScript heap out of memory"
_CPU_LIMIT_MARGIN = 0.9
# A failed step that leaves the runner healthy: a session may go on after it.
RECOVERABLE = frozenset({pb.ERROR_KIND_USER_ERROR, pb.ERROR_KIND_RESULT_TOO_LARGE})


class StepFailure(Exception):
    """How a step failed; becomes a StepFailed event."""

    def __init__(self, kind: int, message: str, stack: str = ""):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.stack = stack


# What a runner may say of its step; anything else it claims is taken as the step's own error.
_RUNNER_KINDS = {
    "USER_ERROR": pb.ERROR_KIND_USER_ERROR,
    "RESULT_TOO_LARGE": pb.ERROR_KIND_RESULT_TOO_LARGE,
    "OUTPUT_LIMIT": pb.ERROR_KIND_OUTPUT_LIMIT,
}

# Errors that a jail limit, not the step's logic, made a call fail with.
_LIMIT_ERRNOS = frozenset({"EMFILE", "ENFILE", "EFBIG", "ENOSPC", "EDQUOT"})


def runner_error(frame: Frame, cgroup: JailCgroup | None = None) -> StepFailure:
    """The step's failure as the runner reported it; only the kinds a runner may claim.

    A step that failed on a jail limit (the pids cgroup refused a process or thread, or a call
    failed with a file, descriptor or disk limit's errno) is RESOURCE_LIMIT, with its message.
    """
    claimed = frame.header.get("kind")
    kind = _RUNNER_KINDS.get(str(claimed), pb.ERROR_KIND_USER_ERROR)
    name = str(frame.header.get("name") or "")
    message = str(frame.header.get("message", ""))
    stack = str(frame.header.get("stack", ""))
    text = f"{name}: {message}" if name else message
    if kind == pb.ERROR_KIND_USER_ERROR and cgroup is not None and cgroup.pids_limit_hit():
        text = f"the jail reached its process/thread limit: {text}"
        return StepFailure(pb.ERROR_KIND_RESOURCE_LIMIT, text, stack)
    if kind == pb.ERROR_KIND_USER_ERROR and frame.header.get("code") in _LIMIT_ERRNOS:
        return StepFailure(
            pb.ERROR_KIND_RESOURCE_LIMIT, f"the step reached a jail limit: {text}", stack
        )
    return StepFailure(kind, text, stack)


def classify_death(
    status: int | None,
    cgroup: JailCgroup | None,
    output_tail: bytes,
    why: str,
    cpu_limit_us: int | None = None,
) -> StepFailure:
    """The error kind of a runner that stopped without answering.

    The cgroup's own records come first: an OOM kill arrives as a plain SIGKILL, and a runner
    that could not make a thread under the pids limit dies of SIGABRT.
    """
    if (cgroup is not None and cgroup.oom_killed()) or _HEAP_EXHAUSTED in output_tail:
        return StepFailure(
            pb.ERROR_KIND_MEMORY_LIMIT, "the jail ran out of memory (its memory limit)"
        )
    if status is not None and seccomp.killed_by_policy(status):
        return StepFailure(
            pb.ERROR_KIND_POLICY_DENIED, "the step made a system call the policy forbids"
        )
    if status is not None and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        # The runner is pid 1 of its namespace, which ignores the kernel's SIGXCPU at the soft
        # limit: RLIMIT_CPU ends it with SIGKILL at the hard limit. The kernel decides on
        # tick-sampled time, the cgroup counts exactly (up to ~10 % less): hence the margin.
        if sig == signal.SIGXCPU or (
            sig == signal.SIGKILL
            and not why
            and cpu_limit_us is not None
            and _cpu_used_us(cgroup) >= cpu_limit_us * _CPU_LIMIT_MARGIN
        ):
            return StepFailure(pb.ERROR_KIND_TIMEOUT, "the jail used up its cpu time limit")
    if cgroup is not None and cgroup.pids_limit_hit():
        return StepFailure(
            pb.ERROR_KIND_RESOURCE_LIMIT, "the jail reached its process/thread limit"
        )
    return StepFailure(pb.ERROR_KIND_CRASHED, why or f"the runner died ({describe_status(status)})")


def _cpu_used_us(cgroup: JailCgroup | None) -> int:
    if cgroup is None:
        return 0
    try:
        return cgroup.usage().cpu_time_us
    except (OSError, CgroupError):
        return 0


def describe_status(status: int | None) -> str:
    if status is None:
        return "exit status unknown"
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
