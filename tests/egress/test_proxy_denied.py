"""SSRF: every denied range by literal address in every spelling, by name, by rebinding, by port.

Each case asserts the exact status line and reason; the package fixture asserts after each test
that no decoy (metadata services, VPC host, loopback services) saw a single connection.
"""

from __future__ import annotations

import pytest

from sandboxd.egress import EgressPolicy, Outcome
from tests.egress.client import ask, connect_request, https_request
from tests.egress.conftest import PARTNER, ProxyUnderTest

LINK_LOCAL = "is link-local (169.254.0.0/16)"
METADATA = f"address 169.254.169.254 {LINK_LOCAL}"
LOOPBACK = "address 127.0.0.1 is loopback (127.0.0.0/8)"
VPC = "address 10.0.0.5 is private (10.0.0.0/8)"

LITERALS = [
    ("169.254.169.254", METADATA),
    ("2852039166", METADATA),
    ("0251.0376.0251.0376", METADATA),
    ("0xa9.0xfe.0xa9.0xfe", METADATA),
    ("0xA9FEA9FE", METADATA),
    ("169.254.43518", METADATA),
    ("0251.254.0xa9fe", METADATA),
    ("169.254.170.2", f"address 169.254.170.2 {LINK_LOCAL}"),
    ("10.0.0.5", VPC),
    ("012.0.0.5", VPC),
    ("10.5", VPC),
    ("167772165", VPC),
    ("127.0.0.1", LOOPBACK),
    ("127.1", LOOPBACK),
    ("0x7f.1", LOOPBACK),
    ("2130706433", LOOPBACK),
    ("0177.0.0.01", LOOPBACK),
    ("127.0.0.1.", LOOPBACK),
    ("0.0.0.0", "address 0.0.0.0 is this network (0.0.0.0/8)"),
    ("0", "address 0.0.0.0 is this network (0.0.0.0/8)"),
    ("100.64.0.1", "address 100.64.0.1 is carrier-grade NAT (100.64.0.0/10)"),
    ("172.16.0.1", "address 172.16.0.1 is private (172.16.0.0/12)"),
    ("192.168.0.1", "address 192.168.0.1 is private (192.168.0.0/16)"),
    ("192.0.0.170", "address 192.0.0.170 is IETF protocol assignments (192.0.0.0/24)"),
    ("198.18.0.1", "address 198.18.0.1 is benchmarking (198.18.0.0/15)"),
    ("224.0.0.1", "address 224.0.0.1 is multicast (224.0.0.0/4)"),
    ("240.0.0.1", "address 240.0.0.1 is reserved (240.0.0.0/4)"),
    ("255.255.255.255", "address 255.255.255.255 is limited broadcast (255.255.255.255/32)"),
    ("[::1]", "address ::1 is loopback (::1/128)"),
    ("[::]", "address :: is unspecified (::/128)"),
    ("[fd00:ec2::254]", "address fd00:ec2::254 is unique local (fc00::/7)"),
    ("[fe80::1]", "address fe80::1 is link-local (fe80::/10)"),
    ("[fec0::1]", "address fec0::1 is site-local (fec0::/10)"),
    ("[ff02::1]", "address ff02::1 is multicast (ff00::/8)"),
    ("[2001::1]", "address 2001::1 is IETF protocol assignments, incl. Teredo (2001::/23)"),
    ("[::a9fe:a9fe]", "address ::a9fe:a9fe is IPv4-compatible (::/96)"),
    ("[64:ff9b:1::a9fe:a9fe]", "address 64:ff9b:1::a9fe:a9fe is local-use NAT64 (64:ff9b:1::/48)"),
    (
        "[::ffff:169.254.169.254]",
        "address ::ffff:a9fe:a9fe is IPv4-mapped (::ffff:0:0/96) of 169.254.169.254,"
        f" which {LINK_LOCAL}",
    ),
    (
        "[::ffff:7f00:1]",
        "address ::ffff:7f00:1 is IPv4-mapped (::ffff:0:0/96) of 127.0.0.1,"
        " which is loopback (127.0.0.0/8)",
    ),
    (
        "[64:ff9b::169.254.169.254]",
        "address 64:ff9b::a9fe:a9fe is NAT64 (64:ff9b::/96) of 169.254.169.254,"
        f" which {LINK_LOCAL}",
    ),
    (
        "[64:ff9b::a00:5]",
        "address 64:ff9b::a00:5 is NAT64 (64:ff9b::/96) of 10.0.0.5, which is private (10.0.0.0/8)",
    ),
    (
        "[2002:a9fe:a9fe::1]",
        f"address 2002:a9fe:a9fe::1 is 6to4 (2002::/16) of 169.254.169.254, which {LINK_LOCAL}",
    ),
]


def _assert_denied(reply_status: str, header: str | None, body: bytes, reason: str) -> None:
    assert reply_status == "HTTP/1.1 403 Forbidden"
    assert header == reason
    assert body == f"{reason}\n".encode()


@pytest.mark.parametrize(("host", "reason"), LITERALS)
def test_literal_addresses_by_connect(proxy: ProxyUnderTest, host: str, reason: str) -> None:
    # Even a policy naming every literal cannot open them: the address rules come first.
    _, port = proxy.attach(EgressPolicy.parse([f"{host}:80,443"]))
    for target_port in (80, 443):
        reply = proxy.run(ask(port, connect_request(f"{host}:{target_port}")))
        _assert_denied(
            reply.status_line, reply.headers.get("x-sandboxd-egress-denied"), reply.body, reason
        )


@pytest.mark.parametrize(("host", "reason"), LITERALS)
def test_literal_addresses_by_absolute_uri(proxy: ProxyUnderTest, host: str, reason: str) -> None:
    session, port = proxy.attach()
    raw = f"GET http://{host}/latest/meta-data/iam HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    reply = proxy.run(ask(port, raw))
    _assert_denied(
        reply.status_line, reply.headers.get("x-sandboxd-egress-denied"), reply.body, reason
    )
    (record,) = proxy.settled(1)
    assert (record.outcome, record.status, record.reason, record.address) == (
        Outcome.DENIED,
        403,
        reason,
        "",
    )
    assert "/latest" not in repr(record)
    assert session.usage.denied == 1


NAMES = [
    ("metadata.evil.test", f"address 169.254.169.254 of 'metadata.evil.test' {LINK_LOCAL}"),
    ("ecs.evil.test", f"address 169.254.170.2 of 'ecs.evil.test' {LINK_LOCAL}"),
    ("vpc.evil.test", "address 10.0.0.5 of 'vpc.evil.test' is private (10.0.0.0/8)"),
    ("loopback.evil.test", "address 127.0.0.1 of 'loopback.evil.test' is loopback (127.0.0.0/8)"),
    ("zero.evil.test", "address 0.0.0.0 of 'zero.evil.test' is this network (0.0.0.0/8)"),
    (
        "cgnat.evil.test",
        "address 100.64.0.1 of 'cgnat.evil.test' is carrier-grade NAT (100.64.0.0/10)",
    ),
    ("meta6.evil.test", "address fd00:ec2::254 of 'meta6.evil.test' is unique local (fc00::/7)"),
    ("loopback6.evil.test", "address ::1 of 'loopback6.evil.test' is loopback (::1/128)"),
    (
        "mapped.evil.test",
        "address ::ffff:a9fe:a9fe of 'mapped.evil.test' is IPv4-mapped (::ffff:0:0/96)"
        f" of 169.254.169.254, which {LINK_LOCAL}",
    ),
    (
        "nat64.evil.test",
        "address 64:ff9b::a9fe:a9fe of 'nat64.evil.test' is NAT64 (64:ff9b::/96)"
        f" of 169.254.169.254, which {LINK_LOCAL}",
    ),
    (
        "sixtofour.evil.test",
        "address 2002:a9fe:a9fe::1 of 'sixtofour.evil.test' is 6to4 (2002::/16)"
        f" of 169.254.169.254, which {LINK_LOCAL}",
    ),
    # One public and one private address: the whole name is refused.
    ("mixed.evil.test", "address 10.0.0.5 of 'mixed.evil.test' is private (10.0.0.0/8)"),
    ("mixed6.evil.test", "address fd00:ec2::254 of 'mixed6.evil.test' is unique local (fc00::/7)"),
]


@pytest.mark.parametrize(("name", "reason"), NAMES)
def test_names_resolving_to_denied_addresses(proxy: ProxyUnderTest, name: str, reason: str) -> None:
    _, port = proxy.attach()
    reply = proxy.run(ask(port, connect_request(f"{name}:443")))
    _assert_denied(
        reply.status_line, reply.headers.get("x-sandboxd-egress-denied"), reply.body, reason
    )
    raw = f"GET http://{name}/ HTTP/1.1\r\nHost: {name}\r\n\r\n".encode()
    reply = proxy.run(ask(port, raw))
    _assert_denied(
        reply.status_line, reply.headers.get("x-sandboxd-egress-denied"), reply.body, reason
    )


def test_rebinding_gets_one_lookup_and_is_denied_on_the_next(proxy: ProxyUnderTest) -> None:
    """First answer public, then private: the proxy connects to the address it checked (no
    second lookup), and the next request's lookup is checked again."""
    _, port = proxy.attach()
    dns = proxy.internet.dns
    partner_connections = proxy.internet.https.connections

    tls = proxy.internet.client_tls
    reply = proxy.run(https_request(port, "rebind-proxy.evil.test:443", "partner.test", tls))
    assert (reply.status, reply.body) == (200, b"partner says hello\n")
    assert dns.count("rebind-proxy.evil.test", "A") == 1
    (record,) = proxy.settled(1)
    assert (record.outcome, record.address) == (Outcome.ALLOWED, PARTNER)
    reply = proxy.run(ask(port, connect_request("rebind-proxy.evil.test:443")))
    _assert_denied(
        reply.status_line,
        reply.headers.get("x-sandboxd-egress-denied"),
        reply.body,
        f"address 169.254.169.254 of 'rebind-proxy.evil.test' {LINK_LOCAL}",
    )
    assert dns.count("rebind-proxy.evil.test", "A") == 2
    assert proxy.internet.https.connections == partner_connections + 1


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("partner.test:22", "port 22 is not allowed for 'partner.test'"),
        ("partner.test:8443", "port 8443 is not allowed for 'partner.test'"),
        (f"{PARTNER}:8443", f"port 8443 is not allowed for '{PARTNER}'"),
        (
            "metadata.google.internal:80",
            "host 'metadata.google.internal' is not in the egress allowlist",
        ),
        ("partner.test.evil.test:22", "port 22 is not allowed for 'partner.test.evil.test'"),
        ("evilpartner.test:443", "host 'evilpartner.test' is not in the egress allowlist"),
        ("198.51.100.10:8443", "host '198.51.100.10' is not in the egress allowlist"),
    ],
)
def test_policy_denials(proxy: ProxyUnderTest, target: str, reason: str) -> None:
    _, port = proxy.attach()
    reply = proxy.run(ask(port, connect_request(target)))
    _assert_denied(
        reply.status_line, reply.headers.get("x-sandboxd-egress-denied"), reply.body, reason
    )
    # A name outside the allowlist is not even looked up (DNS would leak it).
    host = target.rsplit(":", 1)[0]
    assert not reason.startswith("host") or host not in {n for n, _ in proxy.internet.dns.queries}


def test_no_policy_no_egress(proxy: ProxyUnderTest) -> None:
    _, port = proxy.attach(EgressPolicy.NONE)
    reply = proxy.run(ask(port, connect_request("partner.test:443")))
    _assert_denied(
        reply.status_line,
        reply.headers.get("x-sandboxd-egress-denied"),
        reply.body,
        "host 'partner.test' is not in the egress allowlist",
    )


def test_host_header_of_a_tunnel_reaches_only_the_checked_address(proxy: ProxyUnderTest) -> None:
    """Inside a tunnel to partner.test, a request naming the metadata host still goes to the
    partner: the destination is the checked address, never what the bytes inside say."""
    _, port = proxy.attach()
    raw = (
        connect_request("partner.test:80")
        + b"GET /latest/meta-data/ HTTP/1.1\r\nHost: 169.254.169.254\r\nConnection: close\r\n\r\n"
    )
    reply = proxy.run(ask(port, raw))
    assert reply.status_line == "HTTP/1.1 200 Connection established"
    assert reply.body.startswith(b"HTTP/1.1 200 \r\n")
    assert reply.body.endswith(b"partner says hello\n")
    assert proxy.internet.http.requests[-1].headers["host"] == "169.254.169.254"
