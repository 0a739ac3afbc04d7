"""Egress allowlists: which host names (or addresses) and ports an execution may reach.

A destination is an exact host ("api.example.com", an IP address) or a wildcard "*.example.com"
that matches every name below example.com but not example.com itself, with its ports (443 unless
said otherwise). The tenant's allowlist is set by the operator; a request may only narrow it.
The allowlist decides which names may be resolved and reached; which addresses may be reached at
all is decided separately and always (`addresses.py`).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import ClassVar

from sandboxd.egress.hosts import Host, HostError, format_host, parse_host

DEFAULT_PORTS = (443,)
WILDCARD = "*."


class EgressPolicyError(ValueError):
    """An allowlist entry that does not parse, or a request that widens its tenant's allowlist."""


def _normalise_pattern(pattern: str) -> str:
    """A host pattern in canonical form: an exact host or "*." and a canonical name."""
    try:
        if pattern.startswith(WILDCARD):
            suffix = parse_host(pattern[len(WILDCARD) :])
            if not isinstance(suffix, str):
                raise EgressPolicyError(f"wildcard {pattern!r} must be a name, not an address")
            return WILDCARD + suffix
        return format_host(parse_host(pattern))
    except HostError as error:
        raise EgressPolicyError(f"egress destination {pattern!r}: {error}") from None


def _parse_ports(text: str, entry: str) -> tuple[int, ...]:
    try:
        ports = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise EgressPolicyError(f"egress destination {entry!r}: bad port list {text!r}") from None
    return ports


@dataclass(frozen=True, slots=True)
class EgressDestination:
    host_pattern: str
    ports: tuple[int, ...] = DEFAULT_PORTS

    def __post_init__(self) -> None:
        object.__setattr__(self, "host_pattern", _normalise_pattern(self.host_pattern))
        if not self.ports or any(not 0 < port < 65536 for port in self.ports):
            raise EgressPolicyError(f"egress destination {self}: ports must be 1-65535")
        object.__setattr__(self, "ports", tuple(sorted(set(self.ports))))

    @classmethod
    def parse(cls, entry: str) -> EgressDestination:
        """From "host", "host:443,8443", "*.suffix:443", "[2001:db8::1]:443" or "2001:db8::1"."""
        text = entry.strip()
        if text.startswith("["):
            host, bracket, rest = text.partition("]")
            host += bracket
            if rest and not rest.startswith(":"):
                raise EgressPolicyError(f"egress destination {entry!r}: text after the address")
            return cls._with_ports(host, rest[1:], entry)
        if text.count(":") > 1:
            return cls(text)  # a bare IPv6 address, default ports
        host, _, ports = text.partition(":")
        return cls._with_ports(host, ports, entry)

    @classmethod
    def _with_ports(cls, host: str, ports: str, entry: str) -> EgressDestination:
        return cls(host, _parse_ports(ports, entry) if ports else DEFAULT_PORTS)

    @property
    def is_wildcard(self) -> bool:
        return self.host_pattern.startswith(WILDCARD)

    def matches_host(self, host: Host) -> bool:
        """True when `host` (canonical, from `parse_host`) is named by this pattern."""
        if isinstance(host, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return not self.is_wildcard and self.host_pattern == format_host(host)
        if self.is_wildcard:
            return host.endswith(self.host_pattern[1:])
        return host == self.host_pattern

    def covers_pattern(self, other: EgressDestination) -> bool:
        """True when every host `other` names is named by this pattern too."""
        if not other.is_wildcard:
            return self.matches_host(parse_host(other.host_pattern))
        # "*.a.example.com" lies within "*.example.com" and within "*.a.example.com".
        return self.is_wildcard and (
            other.host_pattern == self.host_pattern
            or other.host_pattern.endswith(self.host_pattern[1:])
        )

    def __str__(self) -> str:
        return f"{self.host_pattern}:{','.join(map(str, self.ports))}"


@dataclass(frozen=True, slots=True)
class EgressPolicy:
    destinations: tuple[EgressDestination, ...] = field(default=())

    NONE: ClassVar[EgressPolicy]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> EgressPolicy:
        return cls(tuple(EgressDestination.parse(entry) for entry in entries))

    def denial(self, host: Host, port: int) -> str | None:
        """Why this policy refuses `host`:`port`, or None when it allows it."""
        matching = [d for d in self.destinations if d.matches_host(host)]
        if not matching:
            return f"host {format_host(host)!r} is not in the egress allowlist"
        if not any(port in d.ports for d in matching):
            return f"port {port} is not allowed for {format_host(host)!r}"
        return None

    def allows(self, host: str, port: int) -> bool:
        try:
            return self.denial(parse_host(host), port) is None
        except HostError:
            return False

    def __str__(self) -> str:
        return " ".join(map(str, self.destinations)) or "none"


EgressPolicy.NONE = EgressPolicy()


def narrow(requested: EgressPolicy, tenant_allowed: EgressPolicy, tenant: str) -> EgressPolicy:
    """`requested`, after checking it names nothing its tenant's allowlist does not."""
    for destination in requested.destinations:
        for port in destination.ports:
            if not any(
                port in allowed.ports and allowed.covers_pattern(destination)
                for allowed in tenant_allowed.destinations
            ):
                raise EgressPolicyError(
                    f"egress destination '{destination.host_pattern}:{port}'"
                    f" is not in tenant {tenant}'s allowlist"
                )
    return requested
