"""Execution limits: the daemon's defaults, the operator's ceilings, and what a request asks for.

A request may set any limit per execution and some per step (timeout, log bytes, result bytes);
zero means "the default". Anything above the operator's ceiling is refused, never silently
lowered: a caller who asked for 2 GiB and got 256 MiB would see a surprising MEMORY_LIMIT later.
Anything below the limit's minimum (`MINIMUMS`: what it takes to start Node and run a trivial
step) is refused too, before a jail is touched.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from sandboxd.egress.records import EgressLimits
from sandboxd.jail.spec import JailLimits, MiB


class LimitError(ValueError):
    """A requested limit is above the operator's ceiling or below its minimum."""


# Below these a jail cannot start Node, or a step can barely run. Measured here (Node 20, cgroup
# v1): the runner starts with 8 tasks and 20 descriptors (7 tasks or 16 descriptors: no `ready`);
# the minimums leave room for libuv's thread pool, a step's own files and Node's heap.
# Limits not listed: 1.
MINIMUMS = {
    "memory_bytes": 64 * MiB,
    "pids": 16,
    "open_files": 64,
    "cpu_time_ms": 1000,  # RLIMIT_CPU counts whole seconds
}


@dataclass(frozen=True, slots=True)
class Limits:
    timeout_ms: int = 10_000
    cpu_time_ms: int = 60_000
    memory_bytes: int = 1024 * MiB  # a 64 MiB payload in and out peaks near 550 MB in Node
    pids: int = 64
    open_files: int = 256
    file_size_bytes: int = 64 * MiB
    tmpfs_bytes: int = 64 * MiB
    log_bytes: int = 1 * MiB
    result_bytes: int = 64 * MiB
    log_lines: int = 10_000
    # Egress, per execution (all its connections together).
    egress_connections: int = 16
    egress_connect_timeout_ms: int = 10_000
    egress_idle_timeout_ms: int = 60_000
    egress_bytes_sent: int = 64 * MiB
    egress_bytes_received: int = 256 * MiB

    def jail_limits(self, cpu_quota: float) -> JailLimits:
        """The kernel side of these limits."""
        return JailLimits(
            memory_bytes=self.memory_bytes,
            pids=self.pids,
            cpu_quota=cpu_quota,
            cpu_time_s=max(1, -(-self.cpu_time_ms // 1000)),
            open_files=self.open_files,
            file_size_bytes=self.file_size_bytes,
            tmpfs_bytes=self.tmpfs_bytes,
        )

    def egress_limits(self) -> EgressLimits:
        """The egress proxy's side of these limits."""
        return EgressLimits(
            max_connections=self.egress_connections,
            connect_timeout_s=self.egress_connect_timeout_ms / 1000,
            idle_timeout_s=self.egress_idle_timeout_ms / 1000,
            max_bytes_sent=self.egress_bytes_sent,
            max_bytes_received=self.egress_bytes_received,
        )

    def override(self, requested: Any, ceiling: Limits) -> Limits:
        """These limits with every non-zero field of `requested` (a proto Limits) applied."""
        changes: dict[str, int] = {}
        for item in fields(self):
            value = int(getattr(requested, item.name, 0) or 0)
            if not value:
                continue
            maximum = getattr(ceiling, item.name)
            if value > maximum:
                raise LimitError(f"limit {item.name}={value} is above the ceiling {maximum}")
            minimum = minimum_of(item.name)
            if value < minimum:
                raise LimitError(
                    f"limit {item.name}={value} is below the minimum {minimum} that can start Node"
                )
            changes[item.name] = value
        return replace(self, **changes) if changes else self

    @classmethod
    def from_mapping(cls, data: dict[str, Any], base: Limits | None = None) -> Limits:
        known = {item.name for item in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown limits: {', '.join(sorted(unknown))}")
        return replace(base or cls(), **{key: int(value) for key, value in data.items()})


# Hard ceilings of the request limits in Settings (max_request_bytes, ...): what the daemon's own
# parsers and the runner's frames can take.
REQUEST_LIMIT_CEILINGS = {
    "max_steps": 1024,
    "max_code_bytes": 16 * MiB,
    "max_input_bytes": 1024 * MiB,
    "max_request_bytes": 64 * MiB,  # gRPC's own message limit (daemon.py) is above it
    "max_input_depth": 512,  # Python's recursive parser (~1000 frames) must take it
    "max_credentials": 1024,
    "max_credential_bytes": 192 * 1024,
    "max_config_vars": 4096,
    "max_config_var_bytes": 192 * 1024,
}
# Credentials and config vars travel in the runner's `exec` frame header, which both sides cap at
# 256 KiB (docs/channel.md); the rest of that header is a few hundred bytes.
CONTEXT_BYTES = 255 * 1024


def minimum_of(name: str) -> int:
    """The smallest value limit `name` may have."""
    return MINIMUMS.get(name, 1)


# Per step, only these can differ from the execution: the jail's kernel limits are shared by
# every step of the execution, since the steps run in one process.
STEP_LIMITS = ("timeout_ms", "log_bytes", "result_bytes", "log_lines")


def step_override(base: Limits, requested: Any, ceiling: Limits) -> Limits:
    """The limits of one step: the execution's, with the step's timeout/log/result applied."""
    for item in fields(Limits):
        if item.name not in STEP_LIMITS and int(getattr(requested, item.name, 0) or 0):
            raise LimitError(f"limit {item.name} can be set per execution, not per step")
    return base.override(requested, ceiling)
