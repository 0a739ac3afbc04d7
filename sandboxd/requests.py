"""Validation of incoming requests into execution plans: every refusal says what is wrong."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from sandbox_client.v1 import sandbox_pb2 as pb
from sandboxd import strictjson
from sandboxd.egress.policy import (
    DEFAULT_PORTS,
    EgressDestination,
    EgressPolicy,
    EgressPolicyError,
    narrow,
)
from sandboxd.limits import CONTEXT_BYTES, LimitError, Limits, step_override

if TYPE_CHECKING:  # config imports this module's neighbours; only the type is needed here
    from sandboxd.config import Settings

STEP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
EXECUTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class InvalidRequest(ValueError):
    """The request cannot run as it is; the message says why, `field` where (a path such as
    "steps[2].name", empty when the request as a whole is at fault)."""

    def __init__(self, message: str, field: str = ""):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class StepPlan:
    index: int
    name: str
    code: str
    limits: Limits
    input: bytes | None = None  # a session step's own input (JSON); None: the execution's
    return_result: bool = True  # False: the result stays in the jail, reported by size


@dataclass(frozen=True, slots=True)
class ExecutionPlan:
    execution_id: str
    tenant_id: str
    steps: tuple[StepPlan, ...]
    input: bytes  # UTF-8 JSON, validated
    limits: Limits
    config_vars: dict[str, str] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict)
    egress: EgressPolicy = EgressPolicy.NONE  # what the steps may reach; NONE: no network
    attempt: int = 1
    session: bool = False  # steps come from the caller one by one; a throw does not end it
    idle_timeout_s: float | None = None
    max_steps: int = 0


def plan_execution(request: pb.ExecuteRequest, settings: Settings) -> ExecutionPlan:
    """The plan for `request`, or InvalidRequest naming the first problem found."""
    plan = _unchecked_plan(request, settings, request.input)
    _checked_json(plan.input, settings, "input")
    return plan


async def plan_execution_async(
    request: pb.ExecuteRequest, settings: Settings, raw_input: bytes | None = None
) -> ExecutionPlan:
    """`plan_execution` for the event loop: a large input's JSON is checked in a child process.
    `raw_input` is the input when it came in chunks (the request's own input is then empty)."""
    plan = _unchecked_plan(request, settings, request.input if raw_input is None else raw_input)
    await _checked_json_async(plan.input, settings, "input")
    return plan


def _unchecked_plan(
    request: pb.ExecuteRequest, settings: Settings, raw_input: bytes
) -> ExecutionPlan:
    """The plan with everything checked but its input's JSON."""
    tenant_id, execution_id, limits = _identity_and_limits(request, settings)
    steps = _plan_steps(request.steps, limits, settings)
    returned = _returned_steps(request, steps)
    config_vars, credentials = _checked_context(request, settings, "")
    return ExecutionPlan(
        execution_id=execution_id or _new_execution_id(),
        tenant_id=tenant_id,
        steps=tuple(replace(step, return_result=step.name in returned) for step in steps),
        input=_sized_input(raw_input, settings.max_input_bytes, "input"),
        limits=limits,
        config_vars=config_vars,
        credentials=credentials,
        egress=_egress_policy(request.egress, tenant_id, settings, "egress"),
    )


def _checked_context(
    request: pb.ExecuteRequest | pb.SessionOpen, settings: Settings, prefix: str
) -> tuple[dict[str, str], dict[str, str]]:
    """Config vars and credentials within their limits and the runner's frame header."""
    config_vars = dict(request.config_vars)
    credentials = dict(request.credentials)
    _check_mapping(config_vars, prefix + "config_vars", settings, "max_config_var")
    _check_mapping(credentials, prefix + "credentials", settings, "max_credential")
    # As the daemon encodes them in the `exec` frame (JSON escapes can grow a value 6 times).
    encoded = json.dumps(
        {"configVars": config_vars, "credentials": credentials},
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode()
    if len(encoded) > CONTEXT_BYTES:
        raise InvalidRequest(
            f"config_vars and credentials take {len(encoded)} bytes encoded for the runner;"
            f" at most {CONTEXT_BYTES} fit its frame header",
            prefix + "config_vars",
        )
    return config_vars, credentials


def _check_mapping(values: dict[str, str], field: str, settings: Settings, limit: str) -> None:
    """`values` within the settings `<limit>s` (how many) and `<limit>_bytes` (names and values
    together, UTF-8)."""
    max_count, max_bytes = getattr(settings, f"{limit}s"), getattr(settings, f"{limit}_bytes")
    if len(values) > max_count:
        raise InvalidRequest(
            f"{len(values)} {field}; at most {max_count} are allowed ({limit}s)", field
        )
    size = sum(len(key.encode()) + len(value.encode()) for key, value in values.items())
    if size > max_bytes:
        raise InvalidRequest(
            f"{field} take {size} bytes; at most {max_bytes} are allowed ({limit}_bytes)", field
        )


def _identity_and_limits(
    request: pb.ExecuteRequest | pb.SessionOpen, settings: Settings
) -> tuple[str, str, Limits]:
    """Tenant id, execution id (possibly empty) and the execution's limits, all checked."""
    tenant_id = _checked_id("tenant_id", request.tenant_id, TENANT_ID, required=True)
    execution_id = _checked_id("execution_id", request.execution_id, EXECUTION_ID, required=False)
    try:
        limits = settings.defaults.override(request.limits, settings.ceilings)
    except LimitError as exc:
        raise InvalidRequest(str(exc), "limits") from None
    return tenant_id, execution_id, limits


def _new_execution_id() -> str:
    """An id nobody can guess (128 random bits), so no caller can name another's execution."""
    return uuid.uuid4().hex


def _egress_policy(
    requested: pb.EgressPolicy, tenant_id: str, settings: Settings, field: str
) -> EgressPolicy:
    """The destinations the request asks for, within its tenant's allowlist (never wider)."""
    destinations = []
    for index, destination in enumerate(requested.allow):
        where = f"{field}.allow[{index}]"
        try:
            ports = tuple(destination.ports) or DEFAULT_PORTS
            destinations.append(EgressDestination(destination.host, ports))
        except EgressPolicyError as exc:
            raise InvalidRequest(str(exc), where) from None
        try:
            narrow(EgressPolicy((destinations[-1],)), settings.egress_policy(tenant_id), tenant_id)
        except EgressPolicyError as exc:
            raise InvalidRequest(str(exc), where) from None
    return EgressPolicy(tuple(destinations))


def _returned_steps(request: pb.ExecuteRequest, steps: tuple[StepPlan, ...]) -> set[str]:
    """The names of the steps whose results go back to the caller."""
    names = [step.name for step in steps]
    selection = request.return_results
    if request.return_steps and selection != pb.RESULT_SELECTION_NAMED:
        raise InvalidRequest(
            "return_steps needs return_results RESULT_SELECTION_NAMED", "return_results"
        )
    if selection in (pb.RESULT_SELECTION_UNSPECIFIED, pb.RESULT_SELECTION_ALL):
        return set(names)
    if selection == pb.RESULT_SELECTION_LAST:
        return {names[-1]}
    if selection == pb.RESULT_SELECTION_NONE:
        return set()
    if selection == pb.RESULT_SELECTION_NAMED:
        unknown = sorted(set(request.return_steps) - set(names))
        if unknown:
            raise InvalidRequest(
                f"return_steps names no step of this execution: {unknown}", "return_steps"
            )
        return set(request.return_steps)
    raise InvalidRequest(f"unknown return_results value {selection}", "return_results")


def plan_session(request: pb.SessionOpen, settings: Settings) -> ExecutionPlan:
    """The plan of a session: its context and limits; steps come later, one at a time."""
    tenant_id, execution_id, limits = _identity_and_limits(request, settings)
    max_steps = request.max_steps or settings.max_session_steps
    if max_steps > settings.max_session_steps:
        raise InvalidRequest(
            f"max_steps {max_steps} is above {settings.max_session_steps}", "open.max_steps"
        )
    idle_ms = request.idle_timeout_ms
    config_vars, credentials = _checked_context(request, settings, "open.")
    return ExecutionPlan(
        execution_id=execution_id or _new_execution_id(),
        tenant_id=tenant_id,
        steps=(),
        input=b"null",
        limits=limits,
        config_vars=config_vars,
        credentials=credentials,
        egress=_egress_policy(request.egress, tenant_id, settings, "open.egress"),
        session=True,
        idle_timeout_s=idle_ms / 1000 if idle_ms else settings.session_idle_timeout_s,
        max_steps=max_steps,
    )


async def plan_session_step(
    request: pb.SessionStep, index: int, plan: ExecutionPlan, settings: Settings, raw_input: bytes
) -> StepPlan:
    """One step of a session, checked like an Execute step; its input is already assembled."""
    if index >= plan.max_steps:
        raise InvalidRequest(f"the session reached its limit of {plan.max_steps} steps", "step")
    step = _checked_step(index, request, plan.limits, settings, field="step")
    step_input = _sized_input(raw_input, settings.max_input_bytes, "step.input")
    await _checked_json_async(step_input, settings, "step.input")
    return replace(step, input=step_input, return_result=not request.keep_result)


def _checked_id(what: str, value: str, pattern: re.Pattern[str], *, required: bool) -> str:
    if not value:
        if required:
            raise InvalidRequest(f"{what} is required", what)
        return ""
    if not pattern.fullmatch(value):
        raise InvalidRequest(f"{what} {value[:80]!r} must match {pattern.pattern}", what)
    return value


def _plan_steps(
    steps: Sequence[pb.Step], limits: Limits, settings: Settings
) -> tuple[StepPlan, ...]:
    if not steps:
        raise InvalidRequest("an execution needs at least one step", "steps")
    if len(steps) > settings.max_steps:
        raise InvalidRequest(
            f"{len(steps)} steps; at most {settings.max_steps} are allowed (max_steps)", "steps"
        )
    seen: set[str] = set()
    plans = []
    for index, step in enumerate(steps):
        plan = _checked_step(index, step, limits, settings, field=f"steps[{index}]")
        if step.name in seen:
            raise InvalidRequest(
                f"step {index}: duplicate step name {step.name!r}", f"steps[{index}].name"
            )
        seen.add(step.name)
        plans.append(plan)
    return tuple(plans)


def _checked_step(
    index: int, step: pb.Step | pb.SessionStep, limits: Limits, settings: Settings, field: str
) -> StepPlan:
    """One step's name, code and limits checked; `field` is where the step is in the request."""
    if not STEP_NAME.fullmatch(step.name):
        raise InvalidRequest(
            f"step {index}: name {step.name[:80]!r} must match {STEP_NAME.pattern}",
            f"{field}.name",
        )
    if not step.code.strip():
        raise InvalidRequest(f"step {step.name!r}: code is empty", f"{field}.code")
    if len(step.code.encode()) > settings.max_code_bytes:
        raise InvalidRequest(
            f"step {step.name!r}: code over {settings.max_code_bytes} bytes (max_code_bytes)",
            f"{field}.code",
        )
    try:
        step_limits = step_override(limits, step.limits, settings.ceilings)
    except LimitError as exc:
        raise InvalidRequest(f"step {step.name!r}: {exc}", f"{field}.limits") from None
    return StepPlan(index, step.name, step.code, step_limits)


class ChunkedInput:
    """An input sent in pieces, checked as it comes: every piece at the offset where the last one
    ended, the first declaring the whole length (refused at once when over the limit), nothing
    after the piece marked last, and, when the first piece carries one, the SHA-256 of the whole.
    """

    def __init__(self, max_bytes: int, field: str):
        self._max_bytes = max_bytes
        self._field = field
        self._parts: list[bytes] = []
        # Hashed piece by piece as they come (~2 ms per MiB), not in one go at the end.
        self._hash = hashlib.sha256()
        self._size = 0
        self._total = -1
        self._digest = b""
        self._complete = False

    @property
    def received(self) -> int:
        """The bytes taken so far."""
        return self._size

    def add(self, chunk: pb.InputChunk) -> bool:
        """Take the next piece; whether the input is now complete."""
        if self._complete:
            raise self._invalid("an input chunk came after the chunk marked last")
        if chunk.offset != self._size:
            raise self._invalid(
                f"an input chunk starts at offset {chunk.offset}, expected {self._size}"
            )
        if self._total < 0:
            self._declare(chunk)
        self._size += len(chunk.data)
        if self._size > self._total:
            raise self._invalid(f"the input is longer than its declared {self._total} bytes")
        self._parts.append(chunk.data)
        if self._digest:
            self._hash.update(chunk.data)
        if chunk.last:
            self._finish()
        return self._complete

    def value(self) -> bytes:
        """The whole input, once; InvalidRequest when the piece marked last never came. Call it
        in a thread for a large input: joining megabytes releases the GIL, and the pieces are
        freed here (64 one-MiB pieces take ~10 ms to unmap)."""
        if not self._complete:
            raise self._invalid("the input ended without a chunk marked last")
        whole = b"".join(self._parts)
        self._parts.clear()
        return whole

    def discard(self) -> None:
        """Drop the pieces taken (a refused upload's); in a thread when they are megabytes."""
        self._parts.clear()

    def _declare(self, first: pb.InputChunk) -> None:
        if not first.total_bytes and not (first.last and not first.data):
            raise self._invalid("the first input chunk must declare total_bytes")
        if first.total_bytes > self._max_bytes:
            raise self._invalid(
                f"input of {first.total_bytes} bytes is over the limit of {self._max_bytes} bytes"
            )
        if first.sha256 and len(first.sha256) != hashlib.sha256().digest_size:
            raise self._invalid("sha256 must be 32 bytes")
        self._total = first.total_bytes
        self._digest = first.sha256

    def _finish(self) -> None:
        if self._size != self._total:
            raise self._invalid(
                f"the input ended after {self._size} of its declared {self._total} bytes"
            )
        if self._digest and self._hash.digest() != self._digest:
            raise self._invalid("the input does not match its sha256")
        self._complete = True

    def _invalid(self, message: str) -> InvalidRequest:
        return InvalidRequest(message, self._field)


def _sized_input(raw: bytes, max_bytes: int, field: str) -> bytes:
    """`raw` within the input limit; "null" when empty."""
    if len(raw) > max_bytes:
        raise InvalidRequest(
            f"input of {len(raw)} bytes is over the limit of {max_bytes} bytes (max_input_bytes)",
            field,
        )
    return raw or b"null"


def _checked_json(raw: bytes, settings: Settings, field: str) -> None:
    """InvalidRequest unless `raw` is JSON exactly as the runner parses it (strictjson)."""
    try:
        strictjson.check(raw, settings.max_input_depth)
    except strictjson.InvalidJson as exc:
        raise InvalidRequest(f"input is not valid JSON: {exc}", field) from None


async def _checked_json_async(raw: bytes, settings: Settings, field: str) -> None:
    try:
        await strictjson.check_async(raw, settings.max_input_depth)
    except strictjson.InvalidJson as exc:
        raise InvalidRequest(f"input is not valid JSON: {exc}", field) from None
