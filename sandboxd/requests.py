"""Validation of incoming requests into execution plans: every refusal says what is wrong."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from sandboxd.limits import LimitError, Limits, step_override
from sandboxd.v1 import sandbox_pb2 as pb

if TYPE_CHECKING:  # config imports this module's neighbours; only the type is needed here
    from sandboxd.config import Settings

STEP_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
EXECUTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")


class InvalidRequest(ValueError):
    """The request cannot run as it is; the message says why."""


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
    attempt: int = 1
    session: bool = False  # steps come from the caller one by one; a throw does not end it
    idle_timeout_s: float | None = None
    max_steps: int = 0


def plan_execution(request: pb.ExecuteRequest, settings: Settings) -> ExecutionPlan:
    """The plan for `request`, or InvalidRequest naming the first problem found."""
    tenant_id, execution_id, limits = _identity_and_limits(request, settings)
    steps = _plan_steps(request.steps, limits, settings)
    returned = _returned_steps(request, steps)
    return ExecutionPlan(
        execution_id=execution_id or uuid.uuid4().hex,
        tenant_id=tenant_id,
        steps=tuple(replace(step, return_result=step.name in returned) for step in steps),
        input=_checked_input(request.input, settings.max_input_bytes),
        limits=limits,
        config_vars=dict(request.config_vars),
        credentials=dict(request.credentials),
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
        raise InvalidRequest(str(exc)) from None
    return tenant_id, execution_id, limits


def _returned_steps(request: pb.ExecuteRequest, steps: tuple[StepPlan, ...]) -> set[str]:
    """The names of the steps whose results go back to the caller."""
    names = [step.name for step in steps]
    selection = request.return_results
    if request.return_steps and selection != pb.RESULTS_NAMED:
        raise InvalidRequest("return_steps needs return_results RESULTS_NAMED")
    if selection == pb.RESULTS_ALL:
        return set(names)
    if selection == pb.RESULTS_LAST:
        return {names[-1]}
    if selection == pb.RESULTS_NONE:
        return set()
    if selection == pb.RESULTS_NAMED:
        unknown = sorted(set(request.return_steps) - set(names))
        if unknown:
            raise InvalidRequest(f"return_steps names no step of this execution: {unknown}")
        return set(request.return_steps)
    raise InvalidRequest(f"unknown return_results value {selection}")


def plan_session(request: pb.SessionOpen, settings: Settings) -> ExecutionPlan:
    """The plan of a session: its context and limits; steps come later, one at a time."""
    tenant_id, execution_id, limits = _identity_and_limits(request, settings)
    max_steps = request.max_steps or settings.max_session_steps
    if max_steps > settings.max_session_steps:
        raise InvalidRequest(f"max_steps {max_steps} is above {settings.max_session_steps}")
    idle_ms = request.idle_timeout_ms
    return ExecutionPlan(
        execution_id=execution_id or uuid.uuid4().hex,
        tenant_id=tenant_id,
        steps=(),
        input=b"null",
        limits=limits,
        config_vars=dict(request.config_vars),
        credentials=dict(request.credentials),
        session=True,
        idle_timeout_s=idle_ms / 1000 if idle_ms else settings.session_idle_timeout_s,
        max_steps=max_steps,
    )


def plan_session_step(
    request: pb.SessionStep, index: int, plan: ExecutionPlan, settings: Settings, raw_input: bytes
) -> StepPlan:
    """One step of a session, checked like an Execute step; its input is already assembled."""
    if index >= plan.max_steps:
        raise InvalidRequest(f"the session reached its limit of {plan.max_steps} steps")
    _check_step(index, request.name, request.code, settings)
    try:
        limits = step_override(plan.limits, request.limits, settings.ceilings)
    except LimitError as exc:
        raise InvalidRequest(f"step {request.name!r}: {exc}") from None
    return StepPlan(
        index=index,
        name=request.name,
        code=request.code,
        limits=limits,
        input=_checked_input(raw_input, settings.max_input_bytes),
        return_result=not request.keep_result,
    )


def _checked_id(what: str, value: str, pattern: re.Pattern[str], *, required: bool) -> str:
    if not value:
        if required:
            raise InvalidRequest(f"{what} is required")
        return ""
    if not pattern.fullmatch(value):
        raise InvalidRequest(f"{what} {value[:80]!r} must match {pattern.pattern}")
    return value


def _plan_steps(
    steps: Sequence[pb.Step], limits: Limits, settings: Settings
) -> tuple[StepPlan, ...]:
    if not steps:
        raise InvalidRequest("an execution needs at least one step")
    if len(steps) > settings.max_steps:
        raise InvalidRequest(f"{len(steps)} steps; at most {settings.max_steps} are allowed")
    seen: set[str] = set()
    plans = []
    for index, step in enumerate(steps):
        if not STEP_NAME.fullmatch(step.name):
            raise InvalidRequest(
                f"step {index}: name {step.name[:80]!r} must match {STEP_NAME.pattern}"
            )
        if step.name in seen:
            raise InvalidRequest(f"step {index}: duplicate step name {step.name!r}")
        seen.add(step.name)
        if not step.code.strip():
            raise InvalidRequest(f"step {step.name!r}: code is empty")
        if len(step.code.encode()) > settings.max_code_bytes:
            raise InvalidRequest(f"step {step.name!r}: code over {settings.max_code_bytes} bytes")
        try:
            step_limits = step_override(limits, step.limits, settings.ceilings)
        except LimitError as exc:
            raise InvalidRequest(f"step {step.name!r}: {exc}") from None
        plans.append(StepPlan(index, step.name, step.code, step_limits))
    return tuple(plans)


def _check_step(index: int, name: str, code: str, settings: Settings) -> None:
    if not STEP_NAME.fullmatch(name):
        raise InvalidRequest(f"step {index}: name {name[:80]!r} must match {STEP_NAME.pattern}")
    if not code.strip():
        raise InvalidRequest(f"step {name!r}: code is empty")
    if len(code.encode()) > settings.max_code_bytes:
        raise InvalidRequest(f"step {name!r}: code over {settings.max_code_bytes} bytes")


class ChunkedInput:
    """An input sent in pieces, refused as soon as it passes the limit."""

    def __init__(self, max_bytes: int):
        self._max_bytes = max_bytes
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._max_bytes:
            raise InvalidRequest(f"input is over the limit of {self._max_bytes} bytes")
        self._parts.append(data)

    def value(self) -> bytes:
        return b"".join(self._parts)


def _checked_input(raw: bytes, max_bytes: int) -> bytes:
    if len(raw) > max_bytes:
        raise InvalidRequest(f"input of {len(raw)} bytes is over the limit of {max_bytes} bytes")
    if not raw:
        return b"null"
    try:
        json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"input is not valid UTF-8 JSON: {exc}") from None
    return raw
