"""Drives one execution on a leased jail and yields its events, in order.

The execution owns the jail from lease to destruction: it sends the execution's context, then
each step, turns what the runner says into events, enforces the step's wall-clock, log and result
limits, and decides the error kind when the runner dies. Whatever ends the execution (the last
step, a failure, the caller going away) the jail is killed as a whole when the lease ends.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator

from google.protobuf.timestamp_pb2 import Timestamp

from sandboxd.channel import Frame, ProtocolError
from sandboxd.jail.errors import JailError
from sandboxd.pool import JailPool, PooledJail
from sandboxd.requests import ExecutionPlan, StepPlan
from sandboxd.v1 import sandbox_pb2 as pb

_LEVELS = {
    "debug": pb.LOG_LEVEL_DEBUG,
    "info": pb.LOG_LEVEL_INFO,
    "warn": pb.LOG_LEVEL_WARN,
    "error": pb.LOG_LEVEL_ERROR,
}
# Beyond the runner's own truncation, output is flooding the channel on purpose: stop the step.
_FLOOD_FACTOR = 2
_FLOOD_SLACK = 64 * 1024
_EXIT_WAIT_S = 2.0
_QUEUE_DEPTH = 256
_HEAP_EXHAUSTED = b"JavaScript heap out of memory"


class StepFailure(Exception):
    """How a step failed; becomes a StepFailed event."""

    def __init__(self, kind: int, message: str, stack: str = ""):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.stack = stack


class EventStamper:
    """Numbers and timestamps the events of one execution."""

    def __init__(self, execution_id: str):
        self.execution_id = execution_id
        self._seq = 0

    def make(self, **event: object) -> pb.ExecutionEvent:
        stamp = Timestamp()
        stamp.GetCurrentTime()
        message = pb.ExecutionEvent(
            execution_id=self.execution_id,
            seq=self._seq,
            time=stamp,
            **event,  # type: ignore[arg-type]
        )
        self._seq += 1
        return message


class _JailOutput:
    """Merges the runner's frames and its raw stdout/stderr into one bounded queue."""

    def __init__(self, jail: PooledJail, max_body: int):
        self.queue: asyncio.Queue[Frame | bytes | Exception | None] = asyncio.Queue(_QUEUE_DEPTH)
        self._tasks = [
            asyncio.create_task(self._frames(jail, max_body)),
            asyncio.create_task(self._raw(jail)),
        ]

    async def _frames(self, jail: PooledJail, max_body: int) -> None:
        try:
            while (frame := await jail.channel.receive(max_body)) is not None:
                await self.queue.put(frame)
            await self.queue.put(None)
        except ProtocolError as exc:
            await self.queue.put(exc)

    async def _raw(self, jail: PooledJail) -> None:
        while chunk := await jail.channel.output.read(64 * 1024):
            await self.queue.put(chunk)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class Execution:
    """One run of a plan on a pool's jail."""

    def __init__(self, plan: ExecutionPlan, pool: JailPool):
        self.plan = plan
        self._pool = pool
        self._events = EventStamper(plan.execution_id)
        self._stderr_tail = b""
        self._jail: PooledJail | None = None
        self._cancelled = False

    def cancel(self) -> None:
        """Kill the execution's jail now; the running step then fails CANCELLED."""
        self._cancelled = True
        if self._jail is not None:
            self._jail.kill()

    async def run(self) -> AsyncIterator[pb.ExecutionEvent]:
        plan = self.plan
        began = time.monotonic()
        jail_limits = plan.limits.jail_limits(self._pool.limits.cpu_quota)
        async with self._pool.lease(jail_limits) as jail:
            self._jail = jail
            if self._cancelled:
                jail.kill()
            lease_wait = time.monotonic() - began
            yield self._events.make(
                execution_started=pb.ExecutionStarted(
                    tenant_id=plan.tenant_id,
                    step_count=len(plan.steps),
                    attempt=plan.attempt,
                    lease_wait_us=int(lease_wait * 1e6),
                )
            )
            output = _JailOutput(jail, max_body=max(s.limits.result_bytes for s in plan.steps))
            try:
                async for event in self._run_steps(jail, output):
                    yield event
            finally:
                await output.close()

    async def _run_steps(
        self, jail: PooledJail, output: _JailOutput
    ) -> AsyncIterator[pb.ExecutionEvent]:
        plan = self.plan
        began = time.monotonic()
        cpu_mark = _cpu_time_us(jail)
        completed = 0
        failure: tuple[StepPlan, StepFailure] | None = None
        await self._send_context(jail)
        for step in plan.steps:
            yield self._events.make(step_started=pb.StepStarted(step=step.name, index=step.index))
            try:
                async for event in self._run_step(jail, output, step):
                    yield event
                completed += 1
            except StepFailure as exc:
                failure = (step, exc)
                yield self._events.make(
                    step_failed=pb.StepFailed(
                        step=step.name,
                        index=step.index,
                        kind=exc.kind,  # type: ignore[arg-type]
                        message=exc.message,
                        stack=exc.stack,
                    )
                )
                break
        usage = _usage(time.monotonic() - began, jail, cpu_mark)
        yield self._finished(completed, failure, usage)

    async def _send_context(self, jail: PooledJail) -> None:
        plan = self.plan
        header = {
            "t": "exec",
            "id": plan.execution_id,
            "tenant": plan.tenant_id,
            "attempt": plan.attempt,
            "configVars": plan.config_vars,
            "credentials": plan.credentials,
        }
        await jail.channel.send(header, plan.input)

    async def _run_step(
        self, jail: PooledJail, output: _JailOutput, step: StepPlan
    ) -> AsyncIterator[pb.ExecutionEvent]:
        limits = step.limits
        header = {
            "t": "step",
            "seq": step.index,
            "name": step.name,
            "returnResult": True,
            "logBytes": limits.log_bytes,
            "resultBytes": limits.result_bytes,
        }
        began = time.monotonic()
        cpu_mark = _cpu_time_us(jail)
        await jail.channel.send(header, step.code.encode())
        log_bytes = 0
        truncated = False
        deadline = began + limits.timeout_ms / 1000
        while True:
            item = await self._next(output, jail, step, deadline)
            if isinstance(item, Frame) and item.header.get("seq") != step.index:
                raise await self._died(jail, f"runner sent a {item.type!r} frame for another step")
            if isinstance(item, bytes):
                log_bytes += len(item)
                if log_bytes > limits.log_bytes:
                    if not truncated:
                        truncated = True
                        yield self._truncation(step)
                else:
                    yield self._log(step, "info", item.decode(errors="replace"))
            elif item.type == "log":
                log_bytes += len(item.body)
                yield self._log(
                    step, str(item.header.get("level")), item.body.decode(errors="replace")
                )
            elif item.type == "truncated":
                truncated = True
                yield self._truncation(step)
            elif item.type == "result":
                usage = _usage(time.monotonic() - began, jail, cpu_mark)
                yield self._step_finished(step, item, usage)
                return
            elif item.type == "error":
                raise _runner_error(item)
            else:
                raise await self._died(jail, f"runner sent an unexpected {item.type!r} frame")
            if log_bytes > limits.log_bytes * _FLOOD_FACTOR + _FLOOD_SLACK:
                jail.kill()
                raise StepFailure(
                    pb.OUTPUT_LIMIT, f"step wrote more than {limits.log_bytes} bytes of logs"
                )

    async def _next(
        self, output: _JailOutput, jail: PooledJail, step: StepPlan, deadline: float
    ) -> Frame | bytes:
        """The next frame or raw output chunk of the step; StepFailure when the step is over."""
        remaining = deadline - time.monotonic()
        try:
            async with asyncio.timeout(max(0.0, remaining)):
                item = await output.queue.get()
        except TimeoutError:
            jail.kill()
            raise StepFailure(
                pb.TIMEOUT,
                f"step {step.name!r} ran past its time limit of {step.limits.timeout_ms} ms",
            ) from None
        if item is None:
            raise await self._died(jail, "")
        if isinstance(item, Exception):
            jail.kill()
            raise StepFailure(pb.INTERNAL, f"the runner broke the channel protocol: {item}")
        if isinstance(item, bytes):
            self._stderr_tail = (self._stderr_tail + item)[-4096:]
        return item

    async def _died(self, jail: PooledJail, why: str) -> StepFailure:
        """Kill the jail and tell, from its exit status and cgroup, why the step ended."""
        jail.kill()
        if self._cancelled:
            return StepFailure(pb.CANCELLED, "the execution was cancelled")
        status: int | None = None
        with contextlib.suppress(TimeoutError, JailError):
            async with asyncio.timeout(_EXIT_WAIT_S):
                status = await asyncio.shield(jail.jail.exit_status)
        return classify_death(status, jail, self._stderr_tail, why)

    def _log(self, step: StepPlan, level: str, text: str) -> pb.ExecutionEvent:
        stamp = Timestamp()
        stamp.GetCurrentTime()
        return self._events.make(
            log=pb.Log(
                step=step.name,
                level=_LEVELS.get(level, pb.LOG_LEVEL_INFO),
                text=text,
                time=stamp,
            )
        )

    def _truncation(self, step: StepPlan) -> pb.ExecutionEvent:
        text = f"[log truncated: the step's limit of {step.limits.log_bytes} bytes was reached]"
        event = self._log(step, "warn", text)
        event.log.truncated = True
        return event

    def _step_finished(self, step: StepPlan, frame: Frame, usage: pb.Usage) -> pb.ExecutionEvent:
        finished = pb.StepFinished(
            step=step.name,
            index=step.index,
            result_bytes=int(frame.header.get("size", len(frame.body))),
            usage=usage,
        )
        if frame.header.get("encoding") == "binary":
            finished.binary = frame.body
        else:
            finished.json = frame.body
        return self._events.make(step_finished=finished)

    def _finished(
        self,
        completed: int,
        failure: tuple[StepPlan, StepFailure] | None,
        usage: pb.Usage,
    ) -> pb.ExecutionEvent:
        finished = pb.ExecutionFinished(
            status=pb.EXECUTION_STATUS_FAILED if failure else pb.EXECUTION_STATUS_SUCCEEDED,
            steps_completed=completed,
            usage=usage,
        )
        if failure:
            step, error = failure
            finished.error_kind = error.kind  # type: ignore[assignment]
            finished.error_message = error.message
            finished.failed_step = step.name
        return self._events.make(execution_finished=finished)


def _runner_error(frame: Frame) -> StepFailure:
    """The step's failure as the runner reported it; only the kinds a runner may claim."""
    claimed = frame.header.get("kind")
    kind = pb.RESULT_TOO_LARGE if claimed == "RESULT_TOO_LARGE" else pb.USER_ERROR
    name = str(frame.header.get("name") or "")
    message = str(frame.header.get("message", ""))
    stack = str(frame.header.get("stack", ""))
    return StepFailure(kind, f"{name}: {message}" if name else message, stack)


def _cpu_time_us(jail: PooledJail) -> int:
    if jail.cgroup is None:
        return 0
    with contextlib.suppress(OSError):
        return jail.cgroup.usage().cpu_time_us
    return 0


def _usage(duration: float, jail: PooledJail, cpu_since_us: int) -> pb.Usage:
    """Wall time, cpu time since a mark, and the jail's peak memory so far."""
    usage = pb.Usage(duration_us=int(duration * 1e6))
    if jail.cgroup is not None:
        with contextlib.suppress(OSError):
            measured = jail.cgroup.usage()
            usage.cpu_time_us = max(0, measured.cpu_time_us - cpu_since_us)
            usage.peak_memory_bytes = measured.peak_memory_bytes
    return usage


def classify_death(status: int | None, jail: PooledJail, tail: bytes, why: str) -> StepFailure:
    """The error kind of a runner that stopped without answering."""
    cgroup = jail.cgroup
    if (cgroup is not None and cgroup.oom_killed()) or _HEAP_EXHAUSTED in tail:
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


class ExecutionAlreadyRunning(Exception):
    """An execution with this id is running on this daemon."""


class Executor:
    """The one way executions run, for gRPC and the queue alike: registry, cancel, outcomes."""

    def __init__(self, pool: JailPool):
        self.pool = pool
        self.running: dict[str, Execution] = {}
        self.outcomes: collections.Counter[str] = collections.Counter()

    async def run(self, plan: ExecutionPlan) -> AsyncIterator[pb.ExecutionEvent]:
        """The events of `plan` run in a fresh jail; ExecutionAlreadyRunning for a duplicate id."""
        if plan.execution_id in self.running:
            raise ExecutionAlreadyRunning(f"execution {plan.execution_id} is already running")
        execution = Execution(plan, self.pool)
        self.running[plan.execution_id] = execution
        try:
            async for event in execution.run():
                if event.HasField("execution_finished"):
                    self.outcomes[outcome_name(event.execution_finished)] += 1
                yield event
        finally:
            del self.running[plan.execution_id]

    def cancel(self, execution_id: str) -> bool:
        execution = self.running.get(execution_id)
        if execution is not None:
            execution.cancel()
        return execution is not None

    async def cancel_all(self) -> None:
        for execution in list(self.running.values()):
            execution.cancel()


def outcome_name(finished: pb.ExecutionFinished) -> str:
    """ "SUCCEEDED" or the ErrorKind name: the label of an execution's outcome."""
    if finished.status == pb.EXECUTION_STATUS_SUCCEEDED:
        return "SUCCEEDED"
    return pb.ErrorKind.Name(finished.error_kind)
