"""Drives one execution on a leased jail and yields its events, in order.

The execution owns the jail from lease to destruction: it sends the execution's context, then
each step, turns what the runner says into events, enforces the step's wall-clock, log and result
limits, and decides the error kind when the runner dies. Whatever ends the execution (the last
step, a failure, the caller going away) the jail is killed as a whole when the lease ends.

Steps come from the plan (Execute) or, one at a time, from the caller (Session). In a session a
step that threw does not end the execution: the runner is still healthy and the caller decides.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import logging
import os
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence

from sandbox_client.v1 import sandbox_pb2 as pb
from sandboxd import memory
from sandboxd.channel import Frame
from sandboxd.egress import EgressGrant, EgressProxy, EgressSession, EgressUsage
from sandboxd.events import EventStamper
from sandboxd.frames import Error as ErrorHeader
from sandboxd.frames import Log, ProtocolError, Result, Truncated
from sandboxd.jail.cgroups import CgroupUsage
from sandboxd.jail.errors import JailError
from sandboxd.kinds import CancelledBeforeStart, ending_outcome, outcome_name
from sandboxd.outcomes import StepFailure, classify_death, protocol_violation, runner_error
from sandboxd.output import EndOfEvents, JailOutput, OutputLimit
from sandboxd.pool import JailPool, PoolClosed, PooledJail
from sandboxd.redaction import Redactor
from sandboxd.requests import ExecutionPlan, InvalidRequest, StepPlan
from sandboxd.telemetry import Telemetry
from sandboxd.tenants import Admission

log = logging.getLogger(__name__)

_OWN_EXIT_GRACE_S = 0.5
# The runner's JSON.stringify makes every real result; only a forged frame carries anything else.
# Parsing a result in the daemon costs ~10 ms per MiB, so larger ones are left to the client,
# which reports an undecodable result as an error of the step's own making.
_VALIDATED_JSON_BYTES = 1024 * 1024
_INLINE_JSON_BYTES = 64 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class _StepRun:
    """A step the runner has been given: when it began, by when it must end, and the jail's
    CPU time and egress counters at its start."""

    began: float
    deadline: float
    late: str
    cpu_mark: int
    egress_mark: EgressUsage


class _LogStream:
    """What one step may still stream to the caller: log bytes and entries, then one marker."""

    def __init__(self, step: StepPlan):
        self.max_bytes = step.limits.log_bytes
        self.max_lines = step.limits.log_lines
        self.bytes = 0
        self.lines = 0
        self.truncated = False  # the truncation marker went out: nothing more is streamed

    def admit(self, size: int) -> bool:
        """Count an entry; whether it may be streamed."""
        self.bytes += size
        self.lines += 1
        return not self.truncated and self.bytes <= self.max_bytes and self.lines <= self.max_lines

    def limit_reached(self) -> str:
        """Which limit stopped the step's logs, the runner's or the daemon's own count: the
        lines once they are all used within the bytes, else the bytes."""
        if self.lines >= self.max_lines and self.bytes <= self.max_bytes:
            return f"{self.max_lines} lines"
        return f"{self.max_bytes} bytes"


class Execution:
    """One run of a plan on a pool's jail."""

    def __init__(
        self,
        plan: ExecutionPlan,
        pool: JailPool,
        steps: AsyncIterator[StepPlan] | None = None,
        egress: EgressGateway | None = None,
    ):
        self.plan = plan
        self._pool = pool
        self._steps = steps
        self._gateway = egress
        self._egress: EgressSession | None = None
        self._events = EventStamper(plan.execution_id, Redactor(plan.credentials.values()))
        self._jail: PooledJail | None = None
        self._cancelled = False
        # The jail's usage read when the last step ended; see _usage_now.
        self._step_end: CgroupUsage | None = None
        # The task waiting for admission or a lease, until the execution has its jail.
        self.waiting_task: asyncio.Task[object] | None = None

    def cancel(self) -> None:
        """Kill the execution's jail now; the running step then fails CANCELLED.

        Before it has a jail (queued for admission or for a lease) the waiting task is
        cancelled instead: Executor.run raises CancelledBeforeStart, and the RPC ends CANCELLED.
        """
        self._cancelled = True
        if self._jail is not None:
            self._jail.kill()
        elif self.waiting_task is not None:
            self.waiting_task.cancel()

    def cancelled_before_start(self) -> bool:
        """Whether a CancelledError now is this execution's own cancel of its wait, and only
        that: a cancellation of the task from elsewhere (the caller went away) still counts."""
        task = asyncio.current_task()
        return self._cancelled and self._jail is None and task is not None and not task.uncancel()

    async def run(self) -> AsyncIterator[pb.ExecutionEvent]:
        plan = self.plan
        began = time.monotonic()
        jail_limits = plan.limits.jail_limits(self._pool.limits.cpu_quota)
        lease = self._pool.lease(plan.tenant_id, jail_limits)
        async with lease as jail, self._egress_for(jail) as egress:
            self._jail = jail
            self._egress = egress
            self.waiting_task = None
            if self._cancelled:
                jail.kill()
            started = self._events.make(
                execution_started=pb.ExecutionStarted(
                    tenant_id=plan.tenant_id,
                    step_count=len(plan.steps),
                    attempt=plan.attempt,
                    lease_wait_us=int((time.monotonic() - began) * 1e6),
                )
            )
            output = JailOutput(jail.channel, plan.limits)
            try:
                async for event in self._run_steps(jail, output, started):
                    yield event
            finally:
                await output.close()

    @contextlib.asynccontextmanager
    async def _egress_for(self, jail: PooledJail) -> AsyncIterator[EgressSession | None]:
        """The jail's egress: its proxy socket served under the plan's policy for the lease, or
        closed at once when the plan allows no destination (connects are then refused)."""
        listener = jail.take_proxy_fd()
        if self._gateway is None or not self.plan.egress.destinations:
            os.close(listener)
            yield None
            return
        grant = EgressGrant(
            self.plan.tenant_id,
            self.plan.execution_id,
            self.plan.egress,
            self.plan.limits.egress_limits(),
        )
        session = self._gateway.proxy.attach(socket.socket(fileno=listener), grant)
        try:
            yield session
        finally:
            await session.close()

    async def internal_error(self) -> pb.ExecutionEvent:
        """The ExecutionFinished of an execution the daemon itself failed (its log says how)."""
        failure = StepFailure(pb.ERROR_KIND_INTERNAL, "the daemon failed while running it")
        return await self._events.finished(0, ("", failure), pb.Usage())

    async def _run_steps(
        self, jail: PooledJail, output: JailOutput, started: pb.ExecutionEvent
    ) -> AsyncIterator[pb.ExecutionEvent]:
        """The execution's events from `started` on. The runner gets each piece of work before
        the caller hears of it (the context before ExecutionStarted, a step before its
        StepStarted): it works while the event is written to the caller (a gRPC write)."""
        began = time.monotonic()
        cpu_mark = _cpu_time_us(_read_usage(jail))
        egress_mark = _egress_mark(self._egress)
        completed = 0
        failure: tuple[str, StepFailure] | None = None
        try:
            await self._send_context(jail)
        except StepFailure as exc:
            usage = _usage(0, _read_usage(jail), cpu_mark, self._egress, egress_mark)
            yield started
            yield await self._events.finished(0, ("", exc), usage)
            return
        yield started
        async for step in self._step_source():
            if isinstance(step, StepFailure):
                failure = ("", step)
                break
            announced = False
            try:
                run = await self._start_step(jail, output, step)
                yield self._events.step_started(step)
                announced = True
                async for event in self._step_events(jail, output, step, run):
                    yield event
                completed += 1
            except StepFailure as exc:
                failure = (step.name, exc)
                if not announced:
                    yield self._events.step_started(step)
                yield await self._events.step_failed(step, exc)
                if not (self.plan.session and exc.recoverable):
                    break
        duration = time.monotonic() - began
        usage = _usage(duration, self._usage_now(jail), cpu_mark, self._egress, egress_mark)
        yield await self._events.finished(completed, failure, usage)

    def _usage_now(self, jail: PooledJail) -> CgroupUsage | None:
        """The jail's usage now. A plan's steps follow one another without waiting for anyone,
        so the reading its last step ended with stands for now (each read opens cgroup files);
        a session waits for its caller between steps, and reads afresh."""
        reading, self._step_end = self._step_end, None
        if reading is not None and not self.plan.session:
            return reading
        return _read_usage(jail)

    async def _step_source(self) -> AsyncIterator[StepPlan | StepFailure]:
        """The plan's steps, or the caller's as they come (a StepFailure ends the session)."""
        if self._steps is None:
            for step in self.plan.steps:
                yield step
            return
        while True:
            try:
                async with asyncio.timeout(self.plan.idle_timeout_s):
                    step = await anext(self._steps)
            except StopAsyncIteration:
                return
            except TimeoutError:
                ms = round((self.plan.idle_timeout_s or 0) * 1000)
                yield StepFailure(pb.ERROR_KIND_TIMEOUT, f"the session was idle for {ms} ms")
                return
            except InvalidRequest as exc:
                yield StepFailure(pb.ERROR_KIND_INVALID_REQUEST, str(exc))
                return
            yield step

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
        if self._gateway is not None and self._gateway.ca_pem and plan.egress.destinations:
            header["egress"] = {"caPem": self._gateway.ca_pem}
        limit_ms = plan.limits.timeout_ms
        deadline = time.monotonic() + limit_ms / 1000
        late = f"the runner did not take the execution's context within {limit_ms} ms"
        await self._send(jail, header, plan.input, deadline, late)

    async def _start_step(self, jail: PooledJail, output: JailOutput, step: StepPlan) -> _StepRun:
        """Hand the runner the step (its own input, if any, then its code): its time starts."""
        limits = step.limits
        began = time.monotonic()
        run = _StepRun(
            began=began,
            # Sending the step's work counts against its time: a runner that stops reading is
            # late.
            deadline=began + limits.timeout_ms / 1000,
            late=f"step {step.name!r} ran past its time limit of {limits.timeout_ms} ms",
            cpu_mark=_cpu_time_us(self._usage_now(jail)),
            egress_mark=_egress_mark(self._egress),
        )
        output.begin_step(step.index, limits)
        if step.input is not None:
            header = {"t": "input", "seq": step.index}
            await self._send(jail, header, step.input, run.deadline, run.late)
        header = {
            "t": "step",
            "seq": step.index,
            "name": step.name,
            "returnResult": step.return_result,
            "logBytes": limits.log_bytes,
            "logLines": limits.log_lines,
            "resultBytes": limits.result_bytes,
        }
        await self._send(jail, header, step.code.encode(), run.deadline, run.late)
        return run

    async def _step_events(
        self, jail: PooledJail, output: JailOutput, step: StepPlan, run: _StepRun
    ) -> AsyncIterator[pb.ExecutionEvent]:
        """The started step's logs, then its result."""
        stream = _LogStream(step)
        while True:
            item = await self._next(output, jail, run.deadline, run.late)
            if isinstance(item, Frame) and isinstance(item.header, Result):
                await _check_result(jail, item.header, item.body)
                duration = time.monotonic() - run.began
                self._step_end = _read_usage(jail)
                usage = _usage(
                    duration, self._step_end, run.cpu_mark, self._egress, run.egress_mark
                )
                for event in self._events.step_result(step, item.header, item.body, usage):
                    yield event
                return
            if isinstance(item, Frame) and isinstance(item.header, ErrorHeader):
                raise runner_error(item.header, jail)
            for event in await self._logs(step, item, stream):
                yield event

    async def _logs(
        self, step: StepPlan, item: Frame | bytes, stream: _LogStream
    ) -> list[pb.ExecutionEvent]:
        """The log events of one frame or raw output chunk, within what the step may stream."""
        if isinstance(item, bytes):
            level, text, ms = "info", item, None
        elif isinstance(item.header, Log):
            level, text, ms = item.header.level, item.body, item.header.ts
        elif isinstance(item.header, Truncated):
            # The runner's own marker: nothing more of the step is streamed, and one marker
            # reaches the caller however many the step forges.
            stream.truncated, already = True, stream.truncated
            return [] if already else [await self._events.truncation(step, stream.limit_reached())]
        else:  # read_frame lets only a step's frames through; this is a daemon bug
            raise AssertionError(f"unexpected {item.type!r} frame")
        if stream.admit(len(text)):
            return [await self._events.log(step, level, text.decode(errors="replace"), ms)]
        if stream.truncated:
            return []
        stream.truncated = True
        return [await self._events.truncation(step, stream.limit_reached())]

    async def _next(
        self, output: JailOutput, jail: PooledJail, deadline: float, late: str
    ) -> Frame | bytes:
        """The step's next frame or raw output chunk; StepFailure when the step is over."""
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                item = await output.queue.get()
        except TimeoutError:
            jail.kill()
            raise StepFailure(pb.ERROR_KIND_TIMEOUT, late) from None
        if isinstance(item, EndOfEvents):
            raise await self._ended(jail, "the step closed or replaced the runner's event pipe")
        if isinstance(item, ProtocolError | OutputLimit):
            jail.kill()
            if self._cancelled:
                raise StepFailure(pb.ERROR_KIND_CANCELLED, "the execution was cancelled")
            if isinstance(item, OutputLimit):
                raise StepFailure(pb.ERROR_KIND_OUTPUT_LIMIT, str(item))
            raise protocol_violation(str(item))
        return item

    async def _send(
        self, jail: PooledJail, header: dict[str, object], body: bytes, deadline: float, late: str
    ) -> None:
        """Send a frame to the runner by `deadline`; a runner that is gone fails the step as it
        ended, one that does not take its work in time fails it TIMEOUT (`late`)."""
        try:
            await jail.channel.send(header, body, deadline - time.monotonic())
        except TimeoutError:
            jail.kill()
            raise StepFailure(pb.ERROR_KIND_TIMEOUT, late) from None
        except (BrokenPipeError, ConnectionResetError):
            raise await self._ended(jail, "the step closed the runner's work pipe") from None

    async def _ended(self, jail: PooledJail, cut_by_step: str) -> StepFailure:
        """Why the runner stopped answering, from what the jail cannot fake: the exit status the
        kernel gives, the cgroup's counters. A runner that lives on after its channel ended
        had it cut by the step (`cut_by_step`); it is killed either way."""
        status: int | None = None
        if not self._cancelled:
            # Most likely the runner is exiting by itself, and its own status says how;
            # killing it first would replace that status with SIGKILL.
            status = await _exit_status(jail, _OWN_EXIT_GRACE_S)
        jail.kill()
        if self._cancelled:
            return StepFailure(pb.ERROR_KIND_CANCELLED, "the execution was cancelled")
        cpu_limit_us = jail.jail.spec.limits.cpu_time_s * 1_000_000
        return classify_death(status, jail.cgroup, cut_by_step, cpu_limit_us)


async def _exit_status(jail: PooledJail, timeout_s: float) -> int | None:
    with contextlib.suppress(TimeoutError, JailError):
        async with asyncio.timeout(timeout_s):
            return await asyncio.shield(jail.jail.exit_status)
    return None


async def _check_result(jail: PooledJail, header: Result, body: bytes) -> None:
    """A JSON result must be JSON (read_frame has checked that the header describes the body).

    A thread hop costs more than parsing a small result; a large one would stall every other
    execution's events while it is parsed. Python's parser bounds the nesting depth.
    """
    if header.encoding != "json" or header.kept or len(body) > _VALIDATED_JSON_BYTES:
        return
    try:
        if len(body) <= _INLINE_JSON_BYTES:
            json.loads(body)
        else:
            await asyncio.to_thread(json.loads, body)
    except RecursionError:
        raise StepFailure(
            pb.ERROR_KIND_USER_ERROR,
            "the step's result is nested too deeply to be checked",
            recoverable=True,
        ) from None
    except ValueError as exc:  # UnicodeDecodeError included
        jail.kill()
        raise protocol_violation(f"'result' frame: body is not JSON: {exc}") from None


def _read_usage(jail: PooledJail) -> CgroupUsage | None:
    """The jail's usage so far; None without a cgroup, or when it cannot be read."""
    if jail.cgroup is None:
        return None
    with contextlib.suppress(OSError):
        return jail.cgroup.usage()
    return None


def _cpu_time_us(reading: CgroupUsage | None) -> int:
    return 0 if reading is None else reading.cpu_time_us


def _egress_mark(session: EgressSession | None) -> EgressUsage:
    """A copy of the egress counters now, to count what a step or execution adds to them."""
    return dataclasses.replace(session.usage) if session is not None else EgressUsage()


def _usage(
    duration: float,
    measured: CgroupUsage | None,
    cpu_since_us: int,
    egress: EgressSession | None,
    egress_since: EgressUsage,
) -> pb.Usage:
    """Wall time, cpu time (`measured` now) and egress since their marks, and the jail's peak
    memory so far."""
    usage = pb.Usage(duration_us=int(duration * 1e6))
    if egress is not None:
        now = egress.usage
        usage.egress_bytes_sent = now.bytes_sent - egress_since.bytes_sent
        usage.egress_bytes_received = now.bytes_received - egress_since.bytes_received
        usage.egress_connections = now.connections - egress_since.connections
        usage.egress_denied = now.denied - egress_since.denied
    if measured is not None:
        usage.cpu_time_us = max(0, measured.cpu_time_us - cpu_since_us)
        usage.peak_memory_bytes = measured.peak_memory_bytes
    return usage


@dataclasses.dataclass(frozen=True, slots=True)
class EgressGateway:
    """The daemon's egress proxy, and the CAs (PEM) steps trust besides Node's own."""

    proxy: EgressProxy
    ca_pem: str = ""


class ExecutionAlreadyRunning(Exception):
    """An execution with this id is running on this daemon."""


class Executor:
    """The one way executions run, for gRPC and the queue alike.

    Admission (per-tenant quotas, fairness when saturated) comes first, then the execution on a
    fresh jail; the registry lets Cancel find it, and every execution is observed (spans,
    metrics) and counted by outcome.
    """

    def __init__(
        self,
        pool: JailPool,
        admission: Admission,
        telemetry: Telemetry,
        egress: EgressGateway | None = None,
    ):
        self.pool = pool
        self.egress = egress
        self.admission = admission
        self.telemetry = telemetry
        # Running executions by tenant and id: ids are unique per tenant, and nothing about an
        # execution can be reached without naming its tenant.
        self.running: dict[tuple[str, str], Execution] = {}
        self.outcomes: collections.Counter[str] = collections.Counter()

    async def run(
        self,
        plan: ExecutionPlan,
        steps: AsyncIterator[StepPlan] | None = None,
        metadata: Sequence[tuple[str, str | bytes]] = (),
        deadline_passed: Callable[[], bool] = lambda: False,
    ) -> AsyncGenerator[pb.ExecutionEvent, None]:
        """The events of `plan` run in a fresh jail.

        `deadline_passed` tells whether the caller's own deadline has passed: an execution it
        cuts short is counted DEADLINE_EXCEEDED, one the caller abandons before it CANCELLED.

        Raises ExecutionAlreadyRunning for a duplicate id, QuotaExceeded / AdmissionClosed when
        admission refuses, CancelledError when cancelled before the execution started.
        """
        key = (plan.tenant_id, plan.execution_id)
        if key in self.running:
            raise ExecutionAlreadyRunning(f"execution {plan.execution_id} is already running")
        execution = Execution(plan, self.pool, steps, self.egress)
        execution.waiting_task = asyncio.current_task()
        self.running[key] = execution
        finished: pb.ExecutionFinished | None = None
        ending: BaseException | None = None
        moved = len(plan.input)
        observer = self.telemetry.observe(plan, metadata)
        try:
            async with self.admission.admit(plan.tenant_id):
                async for event in _finishing(execution):
                    observer.event(event)
                    kind = event.WhichOneof("event")
                    if kind == "execution_finished":
                        finished = event.execution_finished
                    elif kind in {"result_chunk", "step_finished"}:
                        moved += event.ByteSize()
                    yield event
        except asyncio.CancelledError as exc:
            ending = exc
            if not execution.cancelled_before_start():
                raise
            ending = CancelledBeforeStart("the execution was cancelled before it started")
            raise ending from None
        except BaseException as exc:  # refused, or the caller went away: recorded, re-raised
            ending = exc
            raise
        finally:
            past_deadline = deadline_passed()
            observer.close(ending, past_deadline)
            if finished is not None:
                self.outcomes[outcome_name(finished)] += 1
            else:
                self.outcomes[ending_outcome(ending, past_deadline)] += 1
            del self.running[key]
            if moved >= memory.GIVE_BACK_AFTER_BYTES:
                memory.give_back(collect=True)

    def cancel(self, tenant_id: str, execution_id: str) -> bool:
        """Cancel the tenant's execution; False when the tenant has none running by that id."""
        execution = self.running.get((tenant_id, execution_id))
        if execution is not None:
            execution.cancel()
        return execution is not None

    def cancel_all(self) -> None:
        for execution in list(self.running.values()):
            execution.cancel()


# Refusals: the execution never started, and the RPC ends with their status instead.
_REFUSALS = (PoolClosed, JailError)


async def _finishing(execution: Execution) -> AsyncIterator[pb.ExecutionEvent]:
    """The execution's events, ending with exactly one ExecutionFinished: an error of the
    daemon's own is logged with its traceback and becomes INTERNAL."""
    finished = started = False
    try:
        async for event in execution.run():
            started = True
            finished = event.HasField("execution_finished")
            yield event
    except _REFUSALS:
        if not started:
            raise
        log.exception("execution %s: the daemon failed", execution.plan.execution_id)
    except Exception:
        log.exception("execution %s: the daemon failed", execution.plan.execution_id)
    if not finished:
        yield await execution.internal_error()
