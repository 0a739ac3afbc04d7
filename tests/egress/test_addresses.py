"""The deny list: every range of the tables, every embedded form, the operator's additions."""

from __future__ import annotations

import ipaddress

import pytest

from sandboxd.egress import AddressPolicy, deny_reason
from sandboxd.egress.addresses import IPV4_DENIED, IPV6_DENIED


def reason(text: str, policy: AddressPolicy | None = None) -> str | None:
    address = ipaddress.ip_address(text)
    return deny_reason(address) if policy is None else deny_reason(address, policy)


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("0.0.0.0", "this network (0.0.0.0/8)"),
        ("0.1.2.3", "this network (0.0.0.0/8)"),
        ("10.0.0.5", "private (10.0.0.0/8)"),
        ("100.64.0.1", "carrier-grade NAT (100.64.0.0/10)"),
        ("100.127.255.254", "carrier-grade NAT (100.64.0.0/10)"),
        ("127.0.0.1", "loopback (127.0.0.0/8)"),
        ("127.255.0.9", "loopback (127.0.0.0/8)"),
        ("169.254.169.254", "link-local (169.254.0.0/16)"),
        ("169.254.170.2", "link-local (169.254.0.0/16)"),
        ("172.16.0.1", "private (172.16.0.0/12)"),
        ("172.31.255.255", "private (172.16.0.0/12)"),
        ("192.0.0.170", "IETF protocol assignments (192.0.0.0/24)"),
        ("192.0.2.1", "documentation (192.0.2.0/24)"),
        ("192.88.99.1", "6to4 relay anycast (192.88.99.0/24)"),
        ("192.168.1.1", "private (192.168.0.0/16)"),
        ("198.18.0.1", "benchmarking (198.18.0.0/15)"),
        ("198.19.255.1", "benchmarking (198.18.0.0/15)"),
        ("198.51.100.7", "documentation (198.51.100.0/24)"),
        ("203.0.113.7", "documentation (203.0.113.0/24)"),
        ("224.0.0.1", "multicast (224.0.0.0/4)"),
        ("239.255.255.250", "multicast (224.0.0.0/4)"),
        ("240.0.0.1", "reserved (240.0.0.0/4)"),
        ("255.255.255.255", "limited broadcast (255.255.255.255/32)"),
        ("::", "unspecified (::/128)"),
        ("::1", "loopback (::1/128)"),
        ("::7f00:1", "IPv4-compatible (::/96)"),
        ("::a9fe:a9fe", "IPv4-compatible (::/96)"),
        ("64:ff9b:1::a9fe:a9fe", "local-use NAT64 (64:ff9b:1::/48)"),
        ("1::1", "reserved (::/8)"),
        ("100::1", "discard-only (100::/64)"),
        ("2001::1", "IETF protocol assignments, incl. Teredo (2001::/23)"),
        (
            "2001:0:4136:e378:8000:63bf:3fff:fdd2",
            "IETF protocol assignments, incl. Teredo (2001::/23)",
        ),
        ("2001:db8::1", "documentation (2001:db8::/32)"),
        ("3fff::1", "documentation (3fff::/20)"),
        ("5f00::1", "segment routing (5f00::/16)"),
        ("fd00:ec2::254", "unique local (fc00::/7)"),
        ("fc00::1", "unique local (fc00::/7)"),
        ("fe80::1", "link-local (fe80::/10)"),
        ("fec0::1", "site-local (fec0::/10)"),
        ("ff02::1", "multicast (ff00::/8)"),
        ("4000::1", "not global unicast (outside 2000::/3)"),
        ("e000::1", "not global unicast (outside 2000::/3)"),
    ],
)
def test_denied_ranges(address: str, expected: str) -> None:
    assert reason(address) == expected


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        (
            "::ffff:169.254.169.254",
            "IPv4-mapped (::ffff:0:0/96) of 169.254.169.254, which is link-local (169.254.0.0/16)",
        ),
        (
            "::ffff:127.0.0.1",
            "IPv4-mapped (::ffff:0:0/96) of 127.0.0.1, which is loopback (127.0.0.0/8)",
        ),
        (
            "::ffff:10.0.0.5",
            "IPv4-mapped (::ffff:0:0/96) of 10.0.0.5, which is private (10.0.0.0/8)",
        ),
        (
            "64:ff9b::a9fe:a9fe",
            "NAT64 (64:ff9b::/96) of 169.254.169.254, which is link-local (169.254.0.0/16)",
        ),
        ("64:ff9b::10.0.0.5", "NAT64 (64:ff9b::/96) of 10.0.0.5, which is private (10.0.0.0/8)"),
        (
            "2002:a9fe:a9fe::1",
            "6to4 (2002::/16) of 169.254.169.254, which is link-local (169.254.0.0/16)",
        ),
        ("2002:7f00:1::", "6to4 (2002::/16) of 127.0.0.1, which is loopback (127.0.0.0/8)"),
        (
            "2002:c0a8:101:5::9",
            "6to4 (2002::/16) of 192.168.1.1, which is private (192.168.0.0/16)",
        ),
    ],
)
def test_embedded_ipv4_is_checked(address: str, expected: str) -> None:
    assert reason(address) == expected


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "1.1.1.1",
        "93.184.215.14",
        "2606:4700::1111",
        "2a00:1450:4001::1",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ],
)
def test_public_addresses_pass(address: str) -> None:
    assert reason(address) is None


def test_every_table_range_is_reachable_in_order() -> None:
    """No range hides behind an earlier, wider one: its first or last address gets its reason."""
    for table in (IPV4_DENIED, IPV6_DENIED):
        for denied in table:
            ends = (denied.network.network_address, denied.network.broadcast_address)
            assert denied.describe() in {reason(str(end)) for end in ends}, denied


def test_operator_deny_cidrs() -> None:
    policy = AddressPolicy.parse(deny_cidrs=["8.8.8.0/24", "2606:4700::/32"])
    assert reason("8.8.8.8", policy) == "in the operator's deny list (8.8.8.0/24)"
    assert reason("2606:4700::1111", policy) == "in the operator's deny list (2606:4700::/32)"
    assert reason("::ffff:8.8.8.8", policy) == (
        "IPv4-mapped (::ffff:0:0/96) of 8.8.8.8, which is in the operator's deny list (8.8.8.0/24)"
    )
    assert reason("8.8.4.4", policy) is None


def test_public_cidrs_are_checked_first() -> None:
    policy = AddressPolicy.parse(
        deny_cidrs=["203.0.113.128/25"], public_cidrs=["203.0.113.0/24", "2001:db8:5::/48"]
    )
    assert reason("203.0.113.10", policy) is None
    assert reason("203.0.113.200", policy) is None
    assert reason("::ffff:203.0.113.10", policy) is None
    assert reason("2001:db8:5::10", policy) is None
    assert reason("2001:db8:6::10", policy) == "documentation (2001:db8::/32)"
    assert reason("198.51.100.1", policy) == "documentation (198.51.100.0/24)"


@pytest.mark.parametrize(
    ("setting", "cidr", "message"),
    [
        (
            "deny_cidrs",
            "10.0.0.1/8",
            "deny_cidrs: '10.0.0.1/8' is not a CIDR: 10.0.0.1/8 has host bits set",
        ),
        (
            "public_cidrs",
            "nonsense",
            "public_cidrs: 'nonsense' is not a CIDR:"
            " 'nonsense' does not appear to be an IPv4 or IPv6 network",
        ),
    ],
)
def test_bad_cidrs_are_refused(setting: str, cidr: str, message: str) -> None:
    with pytest.raises(ValueError) as error:
        AddressPolicy.parse(**{setting: [cidr]})
    assert str(error.value) == message
