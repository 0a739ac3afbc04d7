"""Which IP addresses egress may never reach, whatever a tenant's allowlist says, and why.

The tables follow the IANA IPv4 and IPv6 special-purpose address registries, listing every range
that is not globally reachable plus the ranges that embed an IPv4 address in an IPv6 one. They are
explicit on purpose: `ipaddress.is_global` changes between Python versions and says nothing of why
an address was refused, and the reason is what a step and an operator read.

Embedding ranges (IPv4-mapped, NAT64 well-known prefix, 6to4) are not refused outright: the IPv4
address they carry is checked like any other, so `::ffff:169.254.169.254` is refused as the
link-local address it reaches, and a public IPv4 behind the NAT64 prefix stays reachable.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class DeniedRange:
    network: IPNetwork
    reason: str  # what the range is; docs/egress.md says why each is refused

    def describe(self) -> str:
        return f"{self.reason} ({self.network})"


@dataclass(frozen=True, slots=True)
class EmbeddingRange:
    """An IPv6 range whose addresses carry an IPv4 address, checked in its place."""

    network: ipaddress.IPv6Network
    name: str
    embedded: Callable[[ipaddress.IPv6Address], ipaddress.IPv4Address]


def _range(cidr: str, reason: str) -> DeniedRange:
    return DeniedRange(ipaddress.ip_network(cidr), reason)


def _low_32_bits(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(address) & 0xFFFF_FFFF)


def _sixtofour(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address:
    # 2002:AABB:CCDD::/48 carries AA.BB.CC.DD in bits 16..48.
    return ipaddress.IPv4Address((int(address) >> 80) & 0xFFFF_FFFF)


# Most specific first: the first range that contains an address gives its reason.
IPV4_DENIED: tuple[DeniedRange, ...] = (
    _range("255.255.255.255/32", "limited broadcast"),
    _range("0.0.0.0/8", "this network"),
    _range("10.0.0.0/8", "private"),
    _range("100.64.0.0/10", "carrier-grade NAT"),
    _range("127.0.0.0/8", "loopback"),
    _range("169.254.0.0/16", "link-local"),
    _range("172.16.0.0/12", "private"),
    _range("192.0.0.0/24", "IETF protocol assignments"),
    _range("192.0.2.0/24", "documentation"),
    _range("192.88.99.0/24", "6to4 relay anycast"),
    _range("192.168.0.0/16", "private"),
    _range("198.18.0.0/15", "benchmarking"),
    _range("198.51.100.0/24", "documentation"),
    _range("203.0.113.0/24", "documentation"),
    _range("224.0.0.0/4", "multicast"),
    _range("240.0.0.0/4", "reserved"),
)

IPV6_EMBEDDING: tuple[EmbeddingRange, ...] = (
    EmbeddingRange(ipaddress.IPv6Network("::ffff:0:0/96"), "IPv4-mapped", _low_32_bits),
    EmbeddingRange(ipaddress.IPv6Network("64:ff9b::/96"), "NAT64", _low_32_bits),
    EmbeddingRange(ipaddress.IPv6Network("2002::/16"), "6to4", _sixtofour),
)

IPV6_DENIED: tuple[DeniedRange, ...] = (
    _range("::/128", "unspecified"),
    _range("::1/128", "loopback"),
    _range("::/96", "IPv4-compatible"),
    _range("64:ff9b:1::/48", "local-use NAT64"),
    _range("::/8", "reserved"),
    _range("100::/64", "discard-only"),
    _range("2001::/23", "IETF protocol assignments, incl. Teredo"),
    _range("2001:db8::/32", "documentation"),
    _range("3fff::/20", "documentation"),
    _range("5f00::/16", "segment routing"),
    _range("fc00::/7", "unique local"),
    _range("fe80::/10", "link-local"),
    _range("fec0::/10", "site-local"),
    _range("ff00::/8", "multicast"),
)
# Only 2000::/3 is allocated for global unicast; the rest of the IPv6 space is reserved.
IPV6_GLOBAL_UNICAST = ipaddress.IPv6Network("2000::/3")


def _networks(cidrs: Iterable[str], setting: str) -> tuple[IPNetwork, ...]:
    networks = []
    for cidr in cidrs:
        try:
            networks.append(ipaddress.ip_network(cidr, strict=True))
        except ValueError as error:
            raise ValueError(f"{setting}: {cidr!r} is not a CIDR: {error}") from None
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """The operator's additions: CIDRs to deny too, and CIDRs to treat as public (tests only)."""

    deny_cidrs: tuple[IPNetwork, ...] = ()
    public_cidrs: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(
        cls, deny_cidrs: Iterable[str] = (), public_cidrs: Iterable[str] = ()
    ) -> AddressPolicy:
        return cls(_networks(deny_cidrs, "deny_cidrs"), _networks(public_cidrs, "public_cidrs"))

    def deny_reason(self, address: IPAddress) -> str | None:
        """Why egress to `address` is refused, or None when it may be reached."""
        if any(address in network for network in self.public_cidrs):
            return None
        for network in self.deny_cidrs:
            if address in network:
                return f"in the operator's deny list ({network})"
        if isinstance(address, ipaddress.IPv4Address):
            return _first_reason(address, IPV4_DENIED)
        for embedding in IPV6_EMBEDDING:
            if address in embedding.network:
                return self._embedded_reason(address, embedding)
        reason = _first_reason(address, IPV6_DENIED)
        if reason is None and address not in IPV6_GLOBAL_UNICAST:
            return f"not global unicast (outside {IPV6_GLOBAL_UNICAST})"
        return reason

    def _embedded_reason(
        self, address: ipaddress.IPv6Address, embedding: EmbeddingRange
    ) -> str | None:
        inner = embedding.embedded(address)
        reason = self.deny_reason(inner)
        if reason is None:
            return None
        return f"{embedding.name} ({embedding.network}) of {inner}, which is {reason}"


def _first_reason(address: IPAddress, table: tuple[DeniedRange, ...]) -> str | None:
    for denied in table:
        if address in denied.network:
            return denied.describe()
    return None


DEFAULT_ADDRESS_POLICY = AddressPolicy()


def deny_reason(address: IPAddress, policy: AddressPolicy = DEFAULT_ADDRESS_POLICY) -> str | None:
    """Why egress to `address` is refused under `policy` (built-in tables alone by default)."""
    return policy.deny_reason(address)
