"""Allowlists: parsing, matching, narrowing; and host spellings in one canonical form."""

from __future__ import annotations

import ipaddress

import pytest

from sandboxd.egress import EgressDestination, EgressPolicy, EgressPolicyError, narrow
from sandboxd.egress.hosts import HostError, parse_host


@pytest.mark.parametrize(
    ("entry", "pattern", "ports"),
    [
        ("api.example.com", "api.example.com", (443,)),
        ("API.Example.COM.", "api.example.com", (443,)),
        ("*.example.com:443,8443", "*.example.com", (443, 8443)),
        ("*.Example.com:8443,443,8443", "*.example.com", (443, 8443)),
        ("bücher.de:80", "xn--bcher-kva.de", (80,)),
        ("*.bücher.de", "*.xn--bcher-kva.de", (443,)),
        ("203.0.113.10:8443", "203.0.113.10", (8443,)),
        ("[2001:db8::1]:443", "[2001:db8::1]", (443,)),
        ("[2001:DB8:0::1]", "[2001:db8::1]", (443,)),
        ("2001:db8::1", "[2001:db8::1]", (443,)),
        ("_dmarc.example.com", "_dmarc.example.com", (443,)),
    ],
)
def test_destination_parsing(entry: str, pattern: str, ports: tuple[int, ...]) -> None:
    destination = EgressDestination.parse(entry)
    assert (destination.host_pattern, destination.ports) == (pattern, ports)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("api.example.com:0", "egress destination api.example.com:0: ports must be 1-65535"),
        (
            "api.example.com:65536",
            "egress destination api.example.com:65536: ports must be 1-65535",
        ),
        (
            "api.example.com:https",
            "egress destination 'api.example.com:https': bad port list 'https'",
        ),
        (
            "api..example.com",
            "egress destination 'api..example.com': host 'api..example.com' is not a valid name",
        ),
        ("*.10.0.0.5", "wildcard '*.10.0.0.5' must be a name, not an address"),
        ("*", "egress destination '*': host '*' is not a valid name"),
        (
            "a.*.example.com",
            "egress destination 'a.*.example.com': host 'a.*.example.com' is not a valid name",
        ),
        ("[2001:db8::1]x", "egress destination '[2001:db8::1]x': text after the address"),
        (
            "example.256",
            "egress destination 'example.256':"
            " host 'example.256' ends in a number but is not an IPv4 address",
        ),
    ],
)
def test_destination_errors(entry: str, message: str) -> None:
    with pytest.raises(EgressPolicyError) as error:
        EgressDestination.parse(entry)
    assert str(error.value) == message


POLICY = EgressPolicy.parse(
    ["api.example.com", "*.partner.test:443,8443", "203.0.113.10:8443", "[2001:db8::1]"]
)


@pytest.mark.parametrize(
    ("host", "port", "denial"),
    [
        ("api.example.com", 443, None),
        ("API.EXAMPLE.COM.", 443, None),
        ("api.example.com", 80, "port 80 is not allowed for 'api.example.com'"),
        ("example.com", 443, "host 'example.com' is not in the egress allowlist"),
        ("evilapi.example.com", 443, "host 'evilapi.example.com' is not in the egress allowlist"),
        ("files.partner.test", 8443, None),
        ("a.b.partner.test", 443, None),
        ("partner.test", 443, "host 'partner.test' is not in the egress allowlist"),
        ("evilpartner.test", 443, "host 'evilpartner.test' is not in the egress allowlist"),
        ("files.partner.test", 22, "port 22 is not allowed for 'files.partner.test'"),
        ("203.0.113.10", 8443, None),
        ("3405803786", 8443, None),  # the same address, written as a number
        ("203.0.113.10", 443, "port 443 is not allowed for '203.0.113.10'"),
        ("[2001:db8:0:0::1]", 443, None),
        (
            "metadata.google.internal",
            80,
            "host 'metadata.google.internal' is not in the egress allowlist",
        ),
        ("169.254.169.254", 80, "host '169.254.169.254' is not in the egress allowlist"),
    ],
)
def test_policy_matching(host: str, port: int, denial: str | None) -> None:
    assert POLICY.denial(parse_host(host), port) == denial
    assert POLICY.allows(host, port) is (denial is None)


def test_none_allows_nothing() -> None:
    assert EgressPolicy.NONE.destinations == ()
    assert not EgressPolicy.NONE.allows("api.example.com", 443)
    assert str(EgressPolicy.NONE) == "none"
    assert not POLICY.allows("not a host", 443)


TENANT = EgressPolicy.parse(["api.example.com:443", "*.example.com:443,8443", "203.0.113.10:8443"])


@pytest.mark.parametrize(
    "requested",
    [
        [],
        ["api.example.com"],
        ["files.example.com:8443"],
        ["*.example.com:443"],
        ["*.eu.example.com:443,8443"],
        ["203.0.113.10:8443"],
        ["api.example.com:443,8443"],  # 8443 comes from the wildcard entry
    ],
)
def test_narrowing_keeps_what_the_tenant_allows(requested: list[str]) -> None:
    policy = EgressPolicy.parse(requested)
    assert narrow(policy, TENANT, "acme") == policy


@pytest.mark.parametrize(
    ("requested", "message"),
    [
        (["*.evil.com"], "egress destination '*.evil.com:443' is not in tenant acme's allowlist"),
        (["example.com"], "egress destination 'example.com:443' is not in tenant acme's allowlist"),
        (
            ["api.example.com:22"],
            "egress destination 'api.example.com:22' is not in tenant acme's allowlist",
        ),
        (
            ["*.example.com:80"],
            "egress destination '*.example.com:80' is not in tenant acme's allowlist",
        ),
        (["*.com"], "egress destination '*.com:443' is not in tenant acme's allowlist"),
        (
            ["203.0.113.10:443"],
            "egress destination '203.0.113.10:443' is not in tenant acme's allowlist",
        ),
        (
            ["api.example.com", "203.0.113.11:8443"],
            "egress destination '203.0.113.11:8443' is not in tenant acme's allowlist",
        ),
    ],
)
def test_narrowing_refuses_to_widen(requested: list[str], message: str) -> None:
    with pytest.raises(EgressPolicyError) as error:
        narrow(EgressPolicy.parse(requested), TENANT, "acme")
    assert str(error.value) == message


def test_nothing_narrows_none() -> None:
    with pytest.raises(EgressPolicyError) as error:
        narrow(EgressPolicy.parse(["api.example.com"]), EgressPolicy.NONE, "acme")
    assert (
        str(error.value)
        == "egress destination 'api.example.com:443' is not in tenant acme's allowlist"
    )


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("0177.0.0.1", "127.0.0.1"),
        ("0x7f.1", "127.0.0.1"),
        ("0x7F000001", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("0251.0376.0251.0376", "169.254.169.254"),
        ("0xa9fea9fe", "169.254.169.254"),
        ("2852039166", "169.254.169.254"),
        ("169.254.43518", "169.254.169.254"),
        ("10.5", "10.0.0.5"),
        ("0", "0.0.0.0"),
        ("0x", "0.0.0.0"),
        ("127.0.0.1.", "127.0.0.1"),
        ("[::1]", "::1"),
        ("[::ffff:169.254.169.254]", "::ffff:a9fe:a9fe"),
        ("[::ffff:a9fe:a9fe]", "::ffff:a9fe:a9fe"),
        ("[64:ff9b::169.254.169.254]", "64:ff9b::a9fe:a9fe"),
    ],
)
def test_every_ipv4_spelling_is_an_address(text: str, address: str) -> None:
    assert parse_host(text) == ipaddress.ip_address(address)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1.2.3.256", "host '1.2.3.256' is an IPv4 address out of range"),
        ("4294967296", "host '4294967296' is an IPv4 address out of range"),
        ("1.2.3.4.5", "host '1.2.3.4.5' ends in a number but is not an IPv4 address"),
        ("089.1.1.1", "host '089.1.1.1' ends in a number but is not an IPv4 address"),
        ("example.09", "host 'example.09' ends in a number but is not an IPv4 address"),
        ("[fe80::1%25eth0]", "IPv6 address 'fe80::1%25eth0' has a zone index"),
        ("[::1", "'[::1' is not an IPv6 address"),
        ("exa mple.com", "host 'exa mple.com' is not a valid name"),
        ("", "host '' is not a valid name"),
        ("a" * 64 + ".com", f"host '{'a' * 64}.com' is not a valid name"),
    ],
)
def test_bad_hosts(text: str, message: str) -> None:
    with pytest.raises(HostError) as error:
        parse_host(text)
    assert str(error.value) == message
