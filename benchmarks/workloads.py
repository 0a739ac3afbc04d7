"""What every system runs: the same step code and the same input bytes, with the expected result.

A workload's input is encoded to JSON once, before any timing, and handed as bytes to every
system (``input_json`` for sandboxd, stdin for the baselines), so no system pays for Python's
``json.dumps`` inside its measured time.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from sandbox_client import Limits, Step
from sandboxd.demo import ORDER_COUNT, demo_request

KiB = 1024
MiB = 1024 * KiB

TRIVIAL_CODE = "module.exports = async (context) => ({ ok: true, n: context.input.n + 1 })"
_TRIVIAL_INPUT = 41

# Payload steps move `size` bytes of ASCII ("x" repeated) so that JSON adds only the quotes.
_READ_INPUT = "module.exports = async (context) => context.input.data.length"
_MAKE_RESULT = "module.exports = async (context) => 'x'.repeat(context.input.size)"
_READ_STEP = "module.exports = async (context) => context.steps.make.length"

DIRECTIONS = ("in", "out", "between")


def size_label(size: int) -> str:
    """1024 -> "1 KiB", 16 MiB -> "16 MiB"."""
    return f"{size / MiB:g} MiB" if size >= MiB else f"{size / KiB:g} KiB"


@dataclass(frozen=True)
class Workload:
    """Steps, input and the check of the result: one execution's worth of work."""

    name: str
    steps: tuple[Step, ...]
    input_json: bytes
    check: Callable[[Any], bool]
    config_vars: dict[str, str] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict)
    limits: Limits | None = None

    @cached_property
    def harness_stdin(self) -> bytes:
        """The request document benchmarks/harness.js reads (the input embedded as is)."""
        head = json.dumps(
            {
                "steps": [{"name": step.name, "code": step.code} for step in self.steps],
                "configVars": self.config_vars,
                "credentials": self.credentials,
            }
        )
        return head[:-1].encode() + b', "input": ' + self.input_json + b"}"


def trivial() -> Workload:
    """One step that adds 1 to a number: the cost of an execution itself."""
    return Workload(
        name="trivial",
        steps=(Step("add", TRIVIAL_CODE),),
        input_json=json.dumps({"n": _TRIVIAL_INPUT}).encode(),
        check=lambda result: result == {"ok": True, "n": _TRIVIAL_INPUT + 1},
    )


def payload(direction: str, size: int, limits: Limits | None = None) -> Workload:
    """``size`` bytes into the step (in), out of it (out), or from step 1 to step 2 (between)."""
    name = f"payload_{direction}_{size}"
    small_input = json.dumps({"size": size}).encode()
    if direction == "in":
        data = b"x" * size
        return Workload(
            name,
            (Step("read", _READ_INPUT),),
            b'{"data": "' + data + b'"}',
            lambda result: result == size,
            limits=limits,
        )
    if direction == "out":
        return Workload(
            name,
            (Step("make", _MAKE_RESULT),),
            small_input,
            lambda result: isinstance(result, str) and len(result) == size,
            limits=limits,
        )
    if direction == "between":
        return Workload(
            name,
            (Step("make", _MAKE_RESULT), Step("read", _READ_STEP)),
            small_input,
            lambda result: result == size,
            limits=limits,
        )
    raise ValueError(f"unknown payload direction {direction!r}")


def demo() -> Workload:
    """sandboxd's demo integration: six steps, an XML export in, a summary out."""
    request = demo_request()
    return Workload(
        name="demo",
        steps=tuple(request.steps),
        input_json=json.dumps(request.input).encode(),
        check=lambda result: _orders_received(result) == ORDER_COUNT,
        config_vars=request.config_vars,
        credentials=request.credentials,
    )


def _orders_received(summary: Any) -> Any:
    """The demo summary's count of received orders (None when the summary is malformed)."""
    orders = summary.get("orders") if isinstance(summary, dict) else None
    return orders.get("received") if isinstance(orders, dict) else None
