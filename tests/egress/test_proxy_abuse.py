"""Abuse: floods, slow and half-open clients, byte limits, malformed requests, failures.

Each ends with a precise answer (or a counted close) and the proxy serves on.
"""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from sandboxd.egress import EgressLimits, EgressPolicy, Outcome
from tests.egress.client import (
    Reply,
    ask,
    connect_request,
    https_request,
    open_tunnel,
    parse_reply,
    read_all,
)
from tests.egress.conftest import (
    ECHO_PORT,
    GATEWAY,
    HOLD_PORT,
    PARTNER,
    SILENT_PORT,
    MakeProxy,
    ProxyUnderTest,
)
from tests.egress.servers import Streams, payload

MiB = 1024 * 1024


def _error(reply: Reply, status_line: str, reason: str) -> None:
    assert reply.status_line == status_line
    assert reply.headers.get("x-sandboxd-egress-error") == reason
    assert "x-sandboxd-egress-denied" not in reply.headers
    assert reply.body == f"{reason}\n".encode()


async def _flood(port: int, count: int, authority: str) -> tuple[list[Streams], list[Reply]]:
    """`count` connections at once, each asking for a tunnel; tunnels stay open."""

    async def one() -> tuple[Streams | None, Reply | None]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(connect_request(authority))
        data = await read_all_or_head(reader)
        if data.startswith(b"HTTP/1.1 200 "):
            return (reader, writer), None
        writer.close()
        return None, parse_reply(data)

    results = await asyncio.gather(*(one() for _ in range(count)))
    return [s for s, _ in results if s], [r for _, r in results if r]


async def read_all_or_head(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    if head.startswith(b"HTTP/1.1 200 "):
        return head
    return head + await read_all(reader)


def _close_all(tunnels: list[Streams]) -> None:
    for _, writer in tunnels:
        writer.close()


def test_a_thousand_connections_at_once(make_proxy: MakeProxy) -> None:
    proxy = make_proxy()
    session, port = proxy.attach(limits=EgressLimits(max_connections=50), execution="flood")
    _, other_port = proxy.attach(tenant="globex", execution="calm")

    async def scenario() -> tuple[int, list[Reply], int]:
        started = time.monotonic()
        tunnels, refused = await _flood(port, 1000, f"{PARTNER}:{ECHO_PORT}")
        # During the flood another tenant's execution gets through at once.
        reply = await https_request(
            other_port, "partner.test:443", "partner.test", proxy.internet.client_tls
        )
        assert reply.status == 200
        assert time.monotonic() - started < 60
        _close_all(tunnels)
        return len(tunnels), refused, len({id(r) for r in refused})

    opened, refused, _ = proxy.run(scenario(), timeout=120)
    assert opened == 50
    assert len(refused) == 950
    reason = "execution flood has 50 egress connections open (its limit)"
    for reply in refused:
        _error(reply, "HTTP/1.1 429 Too Many Requests", reason)
    proxy.settled(1001)
    assert session.usage.connections == 1000
    assert session.usage.limited == 950
    # The proxy serves on: the same execution gets a tunnel again.
    status, (_, writer) = proxy.run(open_tunnel(port, f"{PARTNER}:{ECHO_PORT}"))
    writer.close()
    assert status == "HTTP/1.1 200 Connection established"


def test_tenant_and_global_caps(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(max_connections=20, max_connections_per_tenant=10)
    _, acme1 = proxy.attach(tenant="acme", execution="a1")
    _, acme2 = proxy.attach(tenant="acme", execution="a2")
    _, globex = proxy.attach(tenant="globex", execution="g1")
    _, initech = proxy.attach(tenant="initech", execution="i1")
    target = f"{PARTNER}:{ECHO_PORT}"

    async def scenario() -> tuple[list[int], list[list[Reply]]]:
        a1 = await _flood(acme1, 8, target)
        a2 = await _flood(acme2, 8, target)  # 2 fit under acme's cap of 10
        g1 = await _flood(globex, 12, target)  # 10 fit: the proxy is now full (20)
        i1 = await _flood(initech, 1, target)
        floods = (a1, a2, g1, i1)
        for tunnels, _ in floods:
            _close_all(tunnels)
        return [len(t) for t, _ in floods], [r for _, r in floods]

    opened, refused = proxy.run(scenario(), timeout=120)
    assert opened == [8, 2, 10, 0]
    assert [len(r) for r in refused] == [0, 6, 2, 1]
    for reply in refused[1]:
        _error(
            reply,
            "HTTP/1.1 429 Too Many Requests",
            "tenant acme has 10 egress connections open (its limit)",
        )
    for reply in refused[2]:
        _error(
            reply,
            "HTTP/1.1 429 Too Many Requests",
            "tenant globex has 10 egress connections open (its limit)",
        )
    _error(
        refused[3][0],
        "HTTP/1.1 503 Service Unavailable",
        "the egress proxy is at capacity (20 connections)",
    )


@pytest.mark.parametrize(
    "chunks",
    [
        [b""],  # connects and says nothing
        [b"CONNECT partner.test:443 HTTP/1.1\r\n"],  # half a head
        [b"C", b"O", b"N", b"N", b"E", b"C", b"T", b" ", b"p", b"a", b"r"],  # a byte at a time
    ],
)
def test_slow_clients_get_408(proxy: ProxyUnderTest, chunks: list[bytes]) -> None:
    _, port = proxy.attach()

    async def scenario() -> tuple[Reply, float]:
        started = time.monotonic()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for chunk in chunks:
            writer.write(chunk)
            await asyncio.sleep(0.25)
        reply = parse_reply(await read_all(reader))
        writer.close()
        return reply, time.monotonic() - started

    reply, elapsed = proxy.run(scenario())
    _error(reply, "HTTP/1.1 408 Request Timeout", "no complete request within 2 s")
    assert 1.9 < elapsed < 20
    (record,) = proxy.settled(1)
    assert (record.outcome, record.status) == (Outcome.REJECTED, 408)


def test_idle_and_half_open_tunnels_are_closed(proxy: ProxyUnderTest) -> None:
    _, port = proxy.attach(limits=EgressLimits(idle_timeout_s=1))

    async def silent_tunnel(half_close: bool) -> float:
        started = time.monotonic()
        if half_close:  # the client is done sending; the server holds its side open, silent
            status, (reader, writer) = await open_tunnel(port, f"{PARTNER}:{HOLD_PORT}")
            writer.write_eof()
        else:  # the partner's TLS server waits for a ClientHello that never comes
            status, (reader, writer) = await open_tunnel(port, "partner.test:443")
        assert status == "HTTP/1.1 200 Connection established"
        assert await read_all(reader) == b""
        writer.close()
        return time.monotonic() - started

    for half_close in (False, True):
        assert 0.9 < proxy.run(silent_tunnel(half_close)) < 20
    records = proxy.settled(2)
    assert [(r.outcome, r.reason) for r in records] == [
        (Outcome.ALLOWED, "closed: idle for 1 s")
    ] * 2


def test_download_past_the_byte_limit_is_cut(proxy: ProxyUnderTest) -> None:
    session, port = proxy.attach(limits=EgressLimits(max_bytes_received=MiB))

    async def scenario() -> int:
        status, (reader, writer) = await open_tunnel(port, "partner.test:443")
        assert status == "HTTP/1.1 200 Connection established"
        await writer.start_tls(proxy.internet.client_tls, server_hostname="partner.test")
        writer.write(b"GET /bytes/4194304 HTTP/1.1\r\nHost: partner.test\r\n\r\n")
        received = len(await read_all(reader))
        writer.close()
        return received

    assert proxy.run(scenario()) < MiB
    (record,) = proxy.settled(1)
    assert (record.outcome, record.reason) == (
        Outcome.LIMITED,
        f"closed: the execution received more than {MiB} bytes",
    )
    assert session.usage.bytes_received <= MiB
    assert session.usage.limited == 1


def test_upload_past_the_byte_limit(proxy: ProxyUnderTest) -> None:
    session, port = proxy.attach(limits=EgressLimits(max_bytes_sent=MiB))
    declared = (
        b"POST http://partner.test/echo HTTP/1.1\r\nHost: partner.test\r\n"
        b"Content-Length: 2097152\r\n\r\n" + payload(2 * MiB)
    )
    reply = proxy.run(ask(port, declared))
    _error(
        reply,
        "HTTP/1.1 413 Request Entity Too Large",
        f"request body of {2 * MiB} bytes exceeds the {MiB} bytes left to send",
    )
    chunk = payload(256 * 1024)
    chunked = (
        b"POST http://partner.test/echo HTTP/1.1\r\nHost: partner.test\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(8))
        + b"0\r\n\r\n"
    )
    reply = proxy.run(ask(port, chunked))
    assert reply.status_line == ""  # closed without an answer: the origin may have started
    records = proxy.settled(2)
    assert [(r.outcome, r.reason) for r in records] == [
        (Outcome.LIMITED, f"request body of {2 * MiB} bytes exceeds the {MiB} bytes left to send"),
        (Outcome.LIMITED, f"closed: the execution sent more than {MiB} bytes"),
    ]
    assert session.usage.bytes_sent <= MiB
    assert session.usage.limited == 2


MALFORMED = [
    (
        b"GARBAGE\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
        "malformed request: illegal request line: bytearray(b'GARBAGE')",
    ),
    (
        b"GET /relative HTTP/1.1\r\nHost: partner.test\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
        "the egress proxy takes CONNECT host:port or an absolute http:// URI"
        " (https goes through CONNECT)",
    ),
    (
        b"GET https://partner.test/ HTTP/1.1\r\nHost: partner.test\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
        "the egress proxy takes CONNECT host:port or an absolute http:// URI"
        " (https goes through CONNECT)",
    ),
    (
        b"CONNECT partner.test HTTP/1.1\r\nHost: partner.test\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
        "CONNECT target 'partner.test' has no port",
    ),
    (
        b"CONNECT partner.test:99999 HTTP/1.1\r\nHost: x\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
        "bad port in 'partner.test:99999'",
    ),
    (
        b"CONNECT partner.test:+443 HTTP/1.1\r\nHost: x\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
        "bad port in 'partner.test:+443'",
    ),
    (
        b"CONNECT 1.2.3.256:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
        "host '1.2.3.256' is an IPv4 address out of range",
    ),
    (
        b"CONNECT [fe80::1%25lo]:443 HTTP/1.1\r\nHost: x\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
        "IPv6 address 'fe80::1%25lo' has a zone index",
    ),
    (
        b"GET http://user:pw@partner.test/ HTTP/1.1\r\nHost: partner.test\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
        "request target carries credentials",
    ),
    (
        b"GET http://partner.test/#x HTTP/1.1\r\nHost: partner.test\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
        "request target has a fragment or backslash",
    ),
    (
        b"POST http://partner.test/echo HTTP/1.1\r\nHost: partner.test\r\n"
        b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
        "request has both Content-Length and Transfer-Encoding",
    ),
    (
        b"CONNECT partner.test:443 HTTP/1.1\r\n\r\n",
        "HTTP/1.1 400 Bad Request",
        "malformed request: Missing mandatory Host: header",
    ),
    (
        b"CONNECT partner.test:443 HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n",
        "HTTP/1.1 431 Request Header Fields Too Large",
        "request head larger than 16384 bytes",
    ),
    (
        b"CONNECT partner.test:443 HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-%d: 1\r\n" % i for i in range(100))
        + b"\r\n",
        "HTTP/1.1 431 Request Header Fields Too Large",
        "more than 100 header fields",
    ),
    (
        b"CONNECT partner.test:443 HTTP/1.1\r\nHost: x\r\n",
        "HTTP/1.1 400 Bad Request",
        "connection closed before a full request",
    ),
]


@pytest.mark.parametrize(("raw", "status_line", "reason"), MALFORMED)
def test_malformed_requests(
    proxy: ProxyUnderTest, raw: bytes, status_line: str, reason: str
) -> None:
    _, port = proxy.attach()

    async def scenario() -> Reply:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(raw)
        if not raw.endswith(b"\r\n\r\n"):
            writer.write_eof()  # the client is done, mid-request
        reply = parse_reply(await read_all(reader))
        writer.close()
        return reply

    _error(proxy.run(scenario()), status_line, reason)
    (record,) = proxy.settled(1)
    assert (record.outcome, record.status, record.reason) == (
        Outcome.REJECTED,
        int(status_line.split()[1]),
        reason,
    )


FAILURES = [
    (
        "missing.partner.test:443",
        "HTTP/1.1 502 Bad Gateway",
        "host 'missing.partner.test' does not exist (NXDOMAIN)",
    ),
    (
        "slow.partner.test:443",
        "HTTP/1.1 504 Gateway Timeout",
        "resolving 'slow.partner.test' timed out after 1 s",
    ),
    (
        f"{PARTNER}:9",
        "HTTP/1.1 502 Bad Gateway",
        f"connecting to {PARTNER}:9 failed: Connection refused",
    ),
    (
        f"{PARTNER}:{SILENT_PORT}",
        "HTTP/1.1 504 Gateway Timeout",
        f"connecting to {PARTNER}:{SILENT_PORT} timed out after 1 s",
    ),
]


@pytest.mark.parametrize(("target", "status_line", "reason"), FAILURES)
def test_failures(proxy: ProxyUnderTest, target: str, status_line: str, reason: str) -> None:
    session, port = proxy.attach(limits=EgressLimits(connect_timeout_s=1))
    _error(proxy.run(ask(port, connect_request(target))), status_line, reason)
    (record,) = proxy.settled(1)
    assert (record.outcome, record.reason) == (Outcome.FAILED, reason)
    assert session.usage.failed == 1


def test_unreachable_address(proxy: ProxyUnderTest) -> None:
    """A public address not bound in the namespace: no route, the proxy says so."""
    _, port = proxy.attach(EgressPolicy.parse(["198.51.100.99"]))
    _error(
        proxy.run(ask(port, connect_request("198.51.100.99:443"))),
        "HTTP/1.1 502 Bad Gateway",
        "connecting to 198.51.100.99:443 failed: Network is unreachable",
    )


def test_upstream_gateway_gets_the_checked_address(make_proxy: MakeProxy) -> None:
    proxy = make_proxy(upstream=f"http://{GATEWAY}:3128")
    gateway = proxy.internet.gateway
    gateway.targets.clear()
    _, port = proxy.attach()
    tls = proxy.internet.client_tls
    reply = proxy.run(
        https_request(port, "partner.test:443", "partner.test", tls, target="/bytes/5")
    )
    assert (reply.status, reply.body) == (200, payload(5))
    forwarded = proxy.run(
        ask(port, b"GET http://partner.test/x HTTP/1.1\r\nHost: partner.test\r\n\r\n")
    )
    assert forwarded.body == b"partner says hello\n"
    denied = proxy.run(ask(port, connect_request("metadata.evil.test:443")))
    assert denied.status_line == "HTTP/1.1 403 Forbidden"
    assert gateway.targets == [f"CONNECT {PARTNER}:443", f"CONNECT {PARTNER}:80"]
    gateway.refuse = True
    try:
        _error(
            proxy.run(ask(port, connect_request("partner.test:443"))),
            "HTTP/1.1 502 Bad Gateway",
            f"upstream proxy {GATEWAY}:3128 refused CONNECT {PARTNER}:443: 403 Forbidden",
        )
    finally:
        gateway.refuse = False


def test_connections_are_logged_without_paths(
    proxy: ProxyUnderTest, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sandboxd.egress")
    _, port = proxy.attach(execution="logged")
    proxy.run(
        ask(
            port,
            b"GET http://partner.test/secret-path?q=token HTTP/1.1\r\nHost: partner.test\r\n\r\n",
        )
    )
    proxy.run(ask(port, connect_request("metadata.evil.test:443")))
    proxy.settled(2)
    lines = [r.getMessage() for r in caplog.records if "execution=logged" in r.getMessage()]
    assert len(lines) == 2
    assert lines[0].startswith(
        "egress tenant=acme execution=logged host=partner.test port=80 outcome=allowed status=0"
        f" address={PARTNER} sent="
    )
    assert lines[1].startswith(
        "egress tenant=acme execution=logged host=metadata.evil.test port=443 outcome=denied"
        " status=403 address=- sent=0 received=0 duration_ms="
    )
    assert lines[1].endswith(
        "reason=address 169.254.169.254 of 'metadata.evil.test' is link-local (169.254.0.0/16)"
    )
    assert not any("secret" in line or "token" in line for line in lines)
