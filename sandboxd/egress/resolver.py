"""Name resolution for the egress proxy: every address a name has, in bounded time.

The proxy resolves names itself (never the system's `getaddrinfo`, which would consult files and
caches it cannot see), asks for A and AAAA records, and hands every address back so each one can
be checked: an answer that mixes a public and a private address is how DNS rebinding hides.
IP literals are never looked up; the operator's static hosts map answers before DNS does.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping, Sequence

import dns.asyncresolver
import dns.exception
import dns.name
import dns.resolver

from sandboxd.egress.addresses import IPAddress
from sandboxd.egress.hosts import Host, parse_host

RECORD_TYPES = ("A", "AAAA")


class ResolutionError(Exception):
    """A name that could not be resolved; `timed_out` tells a slow resolver from a bad name."""

    def __init__(self, reason: str, *, timed_out: bool = False):
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


def _static_map(
    static_hosts: Mapping[str, str | Sequence[str]],
) -> dict[Host, tuple[IPAddress, ...]]:
    table: dict[Host, tuple[IPAddress, ...]] = {}
    for name, addresses in static_hosts.items():
        listed = (addresses,) if isinstance(addresses, str) else tuple(addresses)
        try:
            table[parse_host(name)] = tuple(ipaddress.ip_address(a) for a in listed)
        except ValueError as error:
            raise ValueError(f"static host {name!r}: {error}") from None
    return table


class Resolver:
    def __init__(
        self,
        nameservers: Sequence[str] = (),
        static_hosts: Mapping[str, str | Sequence[str]] | None = None,
        timeout_s: float = 5.0,
        max_concurrent: int = 64,
    ):
        self._nameservers = tuple(str(ipaddress.ip_address(ns)) for ns in nameservers)
        self._static = _static_map(static_hosts or {})
        self._timeout_s = timeout_s
        self._slots = asyncio.Semaphore(max_concurrent)
        self._dns: dns.asyncresolver.Resolver | None = None

    def _resolver(self) -> dns.asyncresolver.Resolver:
        # Built on first use, so a daemon whose steps never use egress needs no resolv.conf.
        if self._dns is None:
            try:
                resolver = dns.asyncresolver.Resolver(configure=not self._nameservers)
            except dns.resolver.NoResolverConfiguration as error:
                raise ResolutionError(
                    f"no nameservers: reading /etc/resolv.conf: {error}"
                ) from None
            if self._nameservers:
                resolver.nameservers = list(self._nameservers)
            resolver.lifetime = self._timeout_s
            resolver.cache = None  # an address is checked as answered now, not as remembered
            self._dns = resolver
        return self._dns

    async def resolve(self, host: Host) -> tuple[IPAddress, ...]:
        """Every address of `host`; an address is its own answer."""
        if not isinstance(host, str):
            return (host,)
        if host in self._static:
            return self._static[host]
        async with self._slots:
            answers = await asyncio.gather(*(self._query(host, kind) for kind in RECORD_TYPES))
        addresses = tuple(address for answer in answers for address in answer)
        if not addresses:
            raise ResolutionError(f"host {host!r} has no A or AAAA records")
        return addresses

    async def _query(self, name: str, kind: str) -> tuple[IPAddress, ...]:
        try:
            answer = await self._resolver().resolve(
                dns.name.from_text(name), kind, search=False, raise_on_no_answer=False
            )
        except dns.resolver.NXDOMAIN:
            raise ResolutionError(f"host {name!r} does not exist (NXDOMAIN)") from None
        except dns.exception.Timeout:
            raise ResolutionError(
                f"resolving {name!r} timed out after {self._timeout_s:g} s", timed_out=True
            ) from None
        except dns.exception.DNSException as error:
            raise ResolutionError(f"resolving {name!r} failed: {error}") from None
        if answer.rrset is None:
            return ()
        return tuple(ipaddress.ip_address(record.address) for record in answer.rrset)
