"""How a step failed: the error kind from what the runner said, or from how the jail died."""

from __future__ import annotations

import os
import signal

from sandboxd.channel import Frame
from sandboxd.jail.cgroups import JailCgroup
from sandboxd.v1 import sandbox_pb2 as pb

_HEAP_EXHAUSTED = b"JavaScript heap out of memory"
# A failed step that leaves the runner healthy: a session may go on after it.
RECOVERABLE = frozenset({pb.USER_ERROR, pb.RESULT_TOO_LARGE})


class StepFailure(Exception):
    """How a step failed; becomes a StepFailed event."""

    def __init__(self, kind: int, message: str, stack: str = ""):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.stack = stack


def runner_error(frame: Frame) -> StepFailure:
    """The step's failure as the runner reported it; only the kinds a runner may claim."""
    claimed = frame.header.get("kind")
    kind = pb.RESULT_TOO_LARGE if claimed == "RESULT_TOO_LARGE" else pb.USER_ERROR
    name = str(frame.header.get("name") or "")
    message = str(frame.header.get("message", ""))
    stack = str(frame.header.get("stack", ""))
    return StepFailure(kind, f"{name}: {message}" if name else message, stack)


def classify_death(
    status: int | None, cgroup: JailCgroup | None, output_tail: bytes, why: str
) -> StepFailure:
    """The error kind of a runner that stopped without answering.

    The cgroup's own records come first: an OOM kill arrives as a plain SIGKILL, and a runner
    that could not make a thread under the pids limit dies of SIGABRT.
    """
    if (cgroup is not None and cgroup.oom_killed()) or _HEAP_EXHAUSTED in output_tail:
        return StepFailure(pb.MEMORY_LIMIT, "the jail ran out of memory (its memory limit)")
    if status is not None and os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGSYS:
            return StepFailure(pb.POLICY_DENIED, "the step made a system call the policy forbids")
        if sig == signal.SIGXCPU:
            return StepFailure(pb.TIMEOUT, "the jail used up its cpu time limit")
    if cgroup is not None and cgroup.pids_limit_hit():
        return StepFailure(pb.RESOURCE_LIMIT, "the jail reached its process/thread limit")
    return StepFailure(pb.CRASHED, why or f"the runner died ({describe_status(status)})")


def describe_status(status: int | None) -> str:
    if status is None:
        return "exit status unknown"
    if os.WIFSIGNALED(status):
        return f"killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"
