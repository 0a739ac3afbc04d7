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
import ctypes
import dataclasses
import gc
import json
import os
import socket
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence

from sandbox_client.v1 import sandbox_pb2 as pb
from sandboxd.channel import Frame, ProtocolError
from sandboxd.egress import EgressGrant, EgressProxy, EgressSession, EgressUsage
from sandboxd.events import EventStamper
from sandboxd.jail.errors import JailError
from sandboxd.kinds import outcome_name
from sandboxd.outcomes import RECOVERABLE, StepFailure, classify_death, runner_error
from sandboxd.pool import JailPool, PoolClosed, PooledJail
from sandboxd.redaction import Redactor
from sandboxd.requests import ExecutionPlan, InvalidRequest, StepPlan
from sandboxd.telemetry import Telemetry
from sandboxd.tenants import Admission, AdmissionClosed, QuotaExceeded

# Beyond the runner's own truncation, output is flooding the channel on purpose: stop the step.
_FLOOD_FACTOR = 2
_FLOOD_SLACK = 64 * 1024
_EXIT_WAIT_S = 2.0
_OWN_EXIT_GRACE_S = 0.5
# The runner's JSON.stringify makes every real result; only a forged frame carries anything else.
# Parsing a result in the daemon costs ~10 ms per MiB, so larger ones are left to the client,
# which reports an undecodable result as an error of the step's own making.
_VALIDATED_JSON_BYTES = 1024 * 1024
_INLINE_JSON_BYTES = 64 * 1024
_QUEUE_DEPTH = 256
_TRIM_AFTER_BYTES = 4 * 1024 * 1024
_libc = ctypes.CDLL(None)
_OUTPUT_TAIL = 4096


class _JailOutput:
    """Merges the runner's frames and its raw stdout/stderr into one bounded queue."""

    def __init__(self, jail: PooledJail, max_body: int):
        self.max_body = max_body
        self.queue: asyncio.Queue[Frame | bytes | Exception | None] = asyncio.Queue(_QUEUE_DEPTH)
        self.tail = b""  # the last raw output, for telling how the runner died
        self._tasks = [
            asyncio.create_task(self._frames(jail)),
            asyncio.create_task(self._raw(jail)),
        ]

    async def _frames(self, jail: PooledJail) -> None:
        try:
            while (frame := await jail.channel.receive(self.max_body)) is not None:
                await self.queue.put(frame)
            await self.queue.put(None)
        except ProtocolError as exc:
            await self.queue.put(exc)

    async def _raw(self, jail: PooledJail) -> None:
        while chunk := await jail.channel.output.read(64 * 1024):
            self.tail = (self.tail + chunk)[-_OUTPUT_TAIL:]
            await self.queue.put(chunk)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class _LogBudget:
    """What one step may still log: bytes and entries, then a single truncation marker."""

    def __init__(self, step: StepPlan):
        self.max_bytes = step.limits.log_bytes
        self.max_lines = step.limits.log_lines
        self.bytes = 0
        self.lines = 0
        self.truncated = False

    def admit(self, size: int) -> bool:
        """Count an entry; whether it may be streamed."""
        self.bytes += size
        self.lines += 1
        return not self.truncated and self.bytes <= self.max_bytes and self.lines <= self.max_lines

    @property
    def flooding(self) -> bool:
        return self.bytes > self.max_bytes * _FLOOD_FACTOR + _FLOOD_SLACK


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
        # The task waiting for admission or a lease, until the execution has its jail.
        self.waiting_task: asyncio.Task[object] | None = None

    def cancel(self) -> None:
        """Kill the execution's jail now; the running step then fails CANCELLED.

        Before it has a jail (queued for admission or for a lease) the waiting task is
        cancelled instead, and the caller sees the RPC end CANCELLED.
        """
        self._cancelled = True
        if self._jail is not None:
            self._jail.kill()
        elif self.waiting_task is not None:
            self.waiting_task.cancel()

    async def run(self) -> AsyncIterator[pb.ExecutionEvent]:
        plan = self.plan
        began = time.monotonic()
        jail_limits = plan.limits.jail_limits(self._pool.limits.cpu_quota)
        async with self._pool.lease(jail_limits) as jail, self._egress_for(jail) as egress:
            self._jail = jail
            self._egress = egress
            self.waiting_task = None
            if self._cancelled:
                jail.kill()
            yield self._events.make(
                execution_started=pb.ExecutionStarted(
                    tenant_id=plan.tenant_id,
                    step_count=len(plan.steps),
                    attempt=plan.attempt,
                    lease_wait_us=int((time.monotonic() - began) * 1e6),
                )
            )
            output = _JailOutput(jail, max_body=plan.limits.result_bytes)
            try:
                async for event in self._run_steps(jail, output):
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

    async def _run_steps(
        self, jail: PooledJail, output: _JailOutput
    ) -> AsyncIterator[pb.ExecutionEvent]:
        began = time.monotonic()
        cpu_mark = _cpu_time_us(jail)
        egress_mark = _egress_mark(self._egress)
        completed = 0
        failure: tuple[str, StepFailure] | None = None
        try:
            await self._send_context(jail, output)
        except StepFailure as exc:
            usage = _usage(0, jail, cpu_mark, self._egress, egress_mark)
            yield self._events.finished(0, ("", exc), usage)
            return
        async for step in self._step_source():
            if isinstance(step, StepFailure):
                failure = ("", step)
                break
            yield self._events.step_started(step)
            try:
                async for event in self._run_step(jail, output, step):
                    yield event
                completed += 1
            except StepFailure as exc:
                failure = (step.name, exc)
                yield self._events.step_failed(step, exc)
                if not (self.plan.session and exc.kind in RECOVERABLE):
                    break
        usage = _usage(time.monotonic() - began, jail, cpu_mark, self._egress, egress_mark)
        yield self._events.finished(completed, failure, usage)

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

    async def _send_context(self, jail: PooledJail, output: _JailOutput) -> None:
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
        await self._send(jail, output, header, plan.input)

    async def _run_step(
        self, jail: PooledJail, output: _JailOutput, step: StepPlan
    ) -> AsyncIterator[pb.ExecutionEvent]:
        limits = step.limits
        output.max_body = limits.result_bytes
        began = time.monotonic()
        cpu_mark = _cpu_time_us(jail)
        egress_mark = _egress_mark(self._egress)
        if step.input is not None:
            await self._send(jail, output, {"t": "input", "seq": step.index}, step.input)
        header = {
            "t": "step",
            "seq": step.index,
            "name": step.name,
            "returnResult": step.return_result,
            "logBytes": limits.log_bytes,
            "resultBytes": limits.result_bytes,
        }
        await self._send(jail, output, header, step.code.encode())
        budget = _LogBudget(step)
        deadline = began + limits.timeout_ms / 1000
        while True:
            item = await self._next(output, jail, step, deadline)
            if isinstance(item, Frame) and item.type == "result":
                problem = await _result_problem(item)
                if problem:
                    raise await self._died(jail, output, f"the runner sent a bad result: {problem}")
                duration = time.monotonic() - began
                usage = _usage(duration, jail, cpu_mark, self._egress, egress_mark)
                for event in self._events.step_result(step, item, usage):
                    yield event
                return
            if isinstance(item, Frame) and item.type == "error":
                raise runner_error(item, jail.cgroup)
            for event in self._logs(step, item, budget):
                yield event
            if budget.flooding:
                jail.kill()
                raise StepFailure(
                    pb.ERROR_KIND_OUTPUT_LIMIT,
                    f"step wrote more than {limits.log_bytes} bytes of logs",
                )

    def _logs(
        self, step: StepPlan, item: Frame | bytes, budget: _LogBudget
    ) -> list[pb.ExecutionEvent]:
        """The log events of one frame or raw output chunk, within the step's budget."""
        if isinstance(item, bytes):
            level, text, ms = "info", item, None
        elif item.type == "log":
            level, text, ms = str(item.header.get("level")), item.body, item.header.get("ts")
        elif item.type == "truncated":
            budget.truncated = True
            return [self._events.truncation(step, f"{step.limits.log_bytes} bytes")]
        else:
            raise StepFailure(
                pb.ERROR_KIND_CRASHED, f"the runner sent an unexpected {item.type!r} frame"
            )
        if budget.admit(len(text)):
            return [self._events.log(step, level, text.decode(errors="replace"), ms)]
        if budget.truncated:
            return []
        budget.truncated = True
        what = (
            f"{budget.max_lines} lines"
            if budget.lines > budget.max_lines
            else f"{budget.max_bytes} bytes"
        )
        return [self._events.truncation(step, what)]

    async def _next(
        self, output: _JailOutput, jail: PooledJail, step: StepPlan, deadline: float
    ) -> Frame | bytes:
        """The next frame or raw output chunk of the step; StepFailure when the step is over."""
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                item = await output.queue.get()
        except TimeoutError:
            jail.kill()
            limit = step.limits.timeout_ms
            raise StepFailure(
                pb.ERROR_KIND_TIMEOUT, f"step {step.name!r} ran past its time limit of {limit} ms"
            ) from None
        if item is None:
            raise await self._died(jail, output, "")
        if isinstance(item, Exception):
            raise await self._died(jail, output, f"the runner broke the channel protocol: {item}")
        if isinstance(item, Frame) and item.header.get("seq") != step.index:
            raise await self._died(jail, output, f"runner sent a {item.type!r} frame out of order")
        return item

    async def _send(
        self, jail: PooledJail, output: _JailOutput, header: dict[str, object], body: bytes
    ) -> None:
        """Send a frame to the runner; a runner that is gone fails the step as it died."""
        try:
            await jail.channel.send(header, body)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise await self._died(jail, output, f"the runner stopped reading ({exc})") from None

    async def _died(self, jail: PooledJail, output: _JailOutput, why: str) -> StepFailure:
        """Tell, from its exit status and cgroup, why the step ended; kill what is left."""
        status: int | None = None
        if not why and not self._cancelled:
            # The event pipe ended: the runner is most likely exiting by itself, and its own
            # status says how. Killing it first would replace that status with SIGKILL.
            status = await _exit_status(jail, _OWN_EXIT_GRACE_S)
        jail.kill()
        if self._cancelled:
            return StepFailure(pb.ERROR_KIND_CANCELLED, "the execution was cancelled")
        if status is None:
            status = await _exit_status(jail, _EXIT_WAIT_S)
        cpu_limit_us = jail.jail.spec.limits.cpu_time_s * 1_000_000
        return classify_death(status, jail.cgroup, output.tail, why, cpu_limit_us)


async def _exit_status(jail: PooledJail, timeout_s: float) -> int | None:
    with contextlib.suppress(TimeoutError, JailError):
        async with asyncio.timeout(timeout_s):
            return await asyncio.shield(jail.jail.exit_status)
    return None


async def _result_problem(frame: Frame) -> str:
    """What is wrong with a result frame, "" when nothing: its header must describe its body."""
    header, body = frame.header, frame.body
    encoding, size, kept = header.get("encoding"), header.get("size"), header.get("kept", False)
    if encoding not in ("json", "binary"):
        return f"unknown encoding {encoding!r}"
    if not isinstance(kept, bool) or (kept and body):
        return "a kept result carries a body"
    if type(size) is not int or size < 0 or (not kept and size != len(body)):
        return f"size {size!r} does not describe a body of {len(body)} bytes"
    if encoding == "json" and not kept and len(body) <= _VALIDATED_JSON_BYTES:
        try:
            # A thread hop costs more than parsing a small result; a large one would stall
            # every other execution's events while it is parsed.
            if len(body) <= _INLINE_JSON_BYTES:
                json.loads(body)
            else:
                await asyncio.to_thread(json.loads, body)
        except ValueError as exc:  # UnicodeDecodeError included
            return f"the body is not JSON: {exc}"
    return ""


def _cpu_time_us(jail: PooledJail) -> int:
    if jail.cgroup is None:
        return 0
    with contextlib.suppress(OSError):
        return jail.cgroup.usage().cpu_time_us
    return 0


def _egress_mark(session: EgressSession | None) -> EgressUsage:
    """A copy of the egress counters now, to count what a step or execution adds to them."""
    return dataclasses.replace(session.usage) if session is not None else EgressUsage()


def _usage(
    duration: float,
    jail: PooledJail,
    cpu_since_us: int,
    egress: EgressSession | None,
    egress_since: EgressUsage,
) -> pb.Usage:
    """Wall time, cpu time and egress since their marks, and the jail's peak memory so far."""
    usage = pb.Usage(duration_us=int(duration * 1e6))
    if egress is not None:
        now = egress.usage
        usage.egress_bytes_sent = now.bytes_sent - egress_since.bytes_sent
        usage.egress_bytes_received = now.bytes_received - egress_since.bytes_received
        usage.egress_connections = now.connections - egress_since.connections
        usage.egress_denied = now.denied - egress_since.denied
    if jail.cgroup is not None:
        with contextlib.suppress(OSError):
            measured = jail.cgroup.usage()
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
        deadline: float | None = None,
    ) -> AsyncGenerator[pb.ExecutionEvent, None]:
        """The events of `plan` run in a fresh jail.

        `deadline` is the caller's own (time.monotonic()); an execution it cuts short is counted
        DEADLINE_EXCEEDED, one the caller abandons before it CANCELLED.

        Raises ExecutionAlreadyRunning for a duplicate id, QuotaExceeded / AdmissionClosed when
        admission refuses, CancelledError when cancelled before the execution started.
        """
        key = (plan.tenant_id, plan.execution_id)
        if key in self.running:
            raise ExecutionAlreadyRunning(f"execution {plan.execution_id} is already running")
        execution = Execution(plan, self.pool, steps, self.egress)
        execution.waiting_task = asyncio.current_task()
        self.running[key] = execution
        outcome = "CANCELLED"  # unless it finishes: the caller went away or cancelled it
        moved = len(plan.input)
        try:
            with self.telemetry.observe(plan, metadata) as observer:
                async with self.admission.admit(plan.tenant_id):
                    async for event in execution.run():
                        observer.event(event)
                        if event.HasField("execution_finished"):
                            outcome = outcome_name(event.execution_finished)
                        elif event.HasField("result_chunk") or event.HasField("step_finished"):
                            moved += event.ByteSize()
                        yield event
        except QuotaExceeded:
            outcome = "QUOTA_EXCEEDED"
            raise
        except (AdmissionClosed, PoolClosed, JailError):
            outcome = "UNAVAILABLE"
            raise
        finally:
            if outcome == "CANCELLED" and deadline is not None and time.monotonic() >= deadline:
                outcome = "DEADLINE_EXCEEDED"
            self.outcomes[outcome] += 1
            del self.running[key]
            if moved >= _TRIM_AFTER_BYTES:
                release_memory()

    def cancel(self, tenant_id: str, execution_id: str) -> bool:
        """Cancel the tenant's execution; False when the tenant has none running by that id."""
        execution = self.running.get((tenant_id, execution_id))
        if execution is not None:
            execution.cancel()
        return execution is not None

    def cancel_all(self) -> None:
        for execution in list(self.running.values()):
            execution.cancel()


def release_memory() -> None:
    """Give a large payload's memory back to the system once its execution is over.

    Some of an execution's objects end in reference cycles (async generators, cancelled tasks,
    tracebacks) that only the cyclic collector frees; with a 16 MiB payload the daemon's memory
    climbed in a saw-tooth to twice its size before a collection came. A full collection after an
    execution that moved megabytes keeps it flat, then glibc gets the freed pages back.
    """
    gc.collect()
    _libc.malloc_trim(0)
