"""What the egress proxy grants, counts and reports: limits, grants, usage, connection records."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from sandboxd.egress.policy import EgressPolicy

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class EgressLimits:
    """Per execution: concurrent connections, timeouts, and bytes each way over all connections."""

    max_connections: int = 16
    connect_timeout_s: float = 10.0
    idle_timeout_s: float = 60.0
    max_bytes_sent: int = 64 * MiB
    max_bytes_received: int = 256 * MiB

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_bytes_sent", "max_bytes_received"):
            if getattr(self, name) < 1:
                raise ValueError(f"egress limit {name} must be at least 1")
        for name in ("connect_timeout_s", "idle_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"egress limit {name} must be positive")


@dataclass(frozen=True, slots=True)
class EgressGrant:
    """What one execution may reach, on whose account."""

    tenant_id: str
    execution_id: str
    policy: EgressPolicy
    limits: EgressLimits = EgressLimits()


@dataclass(slots=True)
class EgressUsage:
    bytes_sent: int = 0  # from the jail to its destinations
    bytes_received: int = 0  # from the destinations to the jail
    connections: int = 0  # accepted from the jail, whatever their outcome
    denied: int = 0  # refused by the policy or the address rules
    failed: int = 0  # allowed, but the destination could not be reached
    limited: int = 0  # refused or closed by a limit (connections, bytes)


class Outcome(enum.StrEnum):
    ALLOWED = "allowed"  # relayed; may still have ended at the idle timeout
    DENIED = "denied"  # the policy or the address rules refused the destination (403)
    FAILED = "failed"  # the destination could not be resolved or reached (502, 504)
    REJECTED = "rejected"  # a malformed or slow request (400, 408, 431)
    LIMITED = "limited"  # a connection or byte limit refused or closed it (413, 429, 503)


@dataclass(frozen=True, slots=True)
class ConnectionRecord:
    """One connection from a jail, as logged and reported: no path, query, header or body."""

    tenant_id: str
    execution_id: str
    host: str  # canonical host name or address, "" when the request did not parse
    port: int  # 0 when the request did not parse
    outcome: Outcome
    status: int  # the HTTP status the proxy answered (200 for an established tunnel)
    reason: str
    address: str  # the checked address connected to, "" when none was
    bytes_sent: int
    bytes_received: int
    duration_s: float
