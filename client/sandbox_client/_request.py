"""What a caller sends: Limits, Step, and the ExecuteRequest built from them."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from sandbox_client.v1 import sandbox_pb2

# "all", "last", "none", or the names of the steps whose results come back.
ReturnResults = Literal["all", "last", "none"] | Sequence[str]


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits of an execution or of one step; None leaves a limit at the daemon's default.

    Mirrors the proto ``Limits``. A value above the operator's ceiling makes the daemon refuse the
    request with INVALID_REQUEST. A step's limits override the execution's for that step.
    """

    timeout_ms: int | None = None
    cpu_time_ms: int | None = None
    memory_bytes: int | None = None
    pids: int | None = None
    open_files: int | None = None
    file_size_bytes: int | None = None
    tmpfs_bytes: int | None = None
    log_bytes: int | None = None
    result_bytes: int | None = None
    log_lines: int | None = None
    egress_connections: int | None = None
    egress_connect_timeout_ms: int | None = None
    egress_idle_timeout_ms: int | None = None
    egress_bytes_sent: int | None = None
    egress_bytes_received: int | None = None

    def to_proto(self) -> sandbox_pb2.Limits:
        """The proto message, where 0 stands for an unset (None) limit."""
        values = {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}
        return sandbox_pb2.Limits(**{name: v for name, v in values.items() if v is not None})


@dataclass(frozen=True, slots=True)
class Step:
    """One step: a name unique in the execution and its JavaScript source.

    ``code`` is CommonJS (``module.exports = async (context) => result``) or ESM
    (``export default async (context) => result``). Later steps read this step's result as
    ``context.steps.<name>``.
    """

    name: str
    code: str
    limits: Limits | None = None

    def to_proto(self) -> sandbox_pb2.Step:
        """The proto message."""
        limits = self.limits.to_proto() if self.limits else None
        return sandbox_pb2.Step(name=self.name, code=self.code, limits=limits)


@dataclass(frozen=True, slots=True)
class Destination:
    """A destination steps may reach through the daemon's egress proxy.

    ``host`` is an exact name ("api.example.com"), "*.example.com" for every name below
    example.com, or an IP literal; ``ports`` default to 443. The daemon refuses a destination its
    tenant's allowlist (set by the operator) does not cover.
    """

    host: str
    ports: tuple[int, ...] = (443,)

    @classmethod
    def parse(cls, text: str) -> Destination:
        """From "host", "host:443,8443", "*.suffix:443" or "[2001:db8::1]:443"."""
        host, ports = text, ""
        if text.startswith("["):
            host, _, rest = text[1:].partition("]")
            ports = rest.removeprefix(":")
        elif text.count(":") == 1:
            host, _, ports = text.partition(":")
        if not ports:
            return cls(host)
        try:
            return cls(host, tuple(int(port) for port in ports.split(",")))
        except ValueError:
            raise ValueError(f"egress destination {text!r}: bad port list {ports!r}") from None

    def to_proto(self) -> sandbox_pb2.EgressDestination:
        return sandbox_pb2.EgressDestination(host=self.host, ports=list(self.ports))


# Destinations as Destination objects or strings ("api.example.com:443").
Egress = Sequence["Destination | str"]


def egress_policy(egress: Egress | None) -> sandbox_pb2.EgressPolicy | None:
    """The proto policy for ``egress``; None (no egress) when empty."""
    if not egress:
        return None
    destinations = [d if isinstance(d, Destination) else Destination.parse(d) for d in egress]
    return sandbox_pb2.EgressPolicy(allow=[d.to_proto() for d in destinations])


def execute_request(
    *,
    tenant_id: str,
    steps: Sequence[Step],
    input: object,
    input_json: bytes | None,
    execution_id: str | None,
    config_vars: Mapping[str, str] | None,
    credentials: Mapping[str, str] | None,
    limits: Limits | None,
    return_results: ReturnResults = "all",
    egress: Egress | None = None,
) -> sandbox_pb2.ExecuteRequest:
    """The ExecuteRequest for :meth:`SandboxClient.execute`'s arguments."""
    selection, named = _selection(return_results)
    return sandbox_pb2.ExecuteRequest(
        return_results=selection,
        return_steps=named,
        tenant_id=tenant_id,
        execution_id=execution_id or "",
        steps=[step.to_proto() for step in steps],
        input=input_bytes(input, input_json),
        config_vars=dict(config_vars or {}),
        credentials=dict(credentials or {}),
        limits=limits.to_proto() if limits else None,
        egress=egress_policy(egress),
    )


_SELECTIONS = {
    "all": sandbox_pb2.RESULT_SELECTION_ALL,
    "last": sandbox_pb2.RESULT_SELECTION_LAST,
    "none": sandbox_pb2.RESULT_SELECTION_NONE,
}


def _selection(value: ReturnResults) -> tuple[sandbox_pb2.ResultSelection, list[str]]:
    if isinstance(value, str):
        if value not in _SELECTIONS:
            raise ValueError(
                f"return_results must be 'all', 'last', 'none' or step names: {value!r}"
            )
        return _SELECTIONS[value], []
    return sandbox_pb2.RESULT_SELECTION_NAMED, list(value)


def input_bytes(value: object, raw: bytes | None) -> bytes:
    """The input as UTF-8 JSON: ``raw`` as given, else ``value`` encoded (None is JSON null)."""
    if raw is None:
        return json.dumps(value, ensure_ascii=False, allow_nan=False).encode()
    if value is not None:
        raise ValueError("pass either input or input_json, not both")
    return raw
