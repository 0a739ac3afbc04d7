"""Validation of incoming requests into execution plans: every refusal says what is wrong."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from sandboxd.config import Settings
from sandboxd.limits import LimitError, Limits, step_override
from sandboxd.v1 import sandbox_pb2 as pb

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


def plan_execution(request: pb.ExecuteRequest, settings: Settings) -> ExecutionPlan:
    """The plan for `request`, or InvalidRequest naming the first problem found."""
    tenant_id = _checked_id("tenant_id", request.tenant_id, TENANT_ID, required=True)
    execution_id = _checked_id("execution_id", request.execution_id, EXECUTION_ID, required=False)
    try:
        limits = settings.defaults.override(request.limits, settings.ceilings)
    except LimitError as exc:
        raise InvalidRequest(str(exc)) from None
    return ExecutionPlan(
        execution_id=execution_id or uuid.uuid4().hex,
        tenant_id=tenant_id,
        steps=_plan_steps(request.steps, limits, settings),
        input=_checked_input(request.input, settings.max_input_bytes),
        limits=limits,
        config_vars=dict(request.config_vars),
        credentials=dict(request.credentials),
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


def _checked_input(raw: bytes, max_bytes: int) -> bytes:
    if len(raw) > max_bytes:
        raise InvalidRequest(f"input of {len(raw)} bytes is over the limit of {max_bytes}")
    if not raw:
        return b"null"
    try:
        json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest(f"input is not valid UTF-8 JSON: {exc}") from None
    return raw
