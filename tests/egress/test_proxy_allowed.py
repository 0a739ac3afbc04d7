"""Allowed egress through the proxy, end to end inside the test's namespace."""

from __future__ import annotations

import asyncio
import errno
import hashlib

from sandboxd.egress import EgressLimits, EgressPolicy, Outcome
from tests.egress.client import ask, https_request, open_tunnel, read_all
from tests.egress.conftest import ECHO_PORT, PARTNER, PARTNER2, PARTNER6, ProxyUnderTest
from tests.egress.servers import payload

MiB = 1024 * 1024


def test_https_get_and_post_with_large_bodies_through_connect(proxy: ProxyUnderTest) -> None:
    session, port = proxy.attach()
    tls = proxy.internet.client_tls
    download = proxy.run(
        https_request(port, "partner.test:443", "partner.test", tls, target=f"/bytes/{8 * MiB}")
    )
    assert download.status == 200
    assert hashlib.sha256(download.body).digest() == hashlib.sha256(payload(8 * MiB)).digest()
    upload = payload(6 * MiB)
    echo = proxy.run(
        https_request(
            port,
            "partner.test:443",
            "partner.test",
            tls,
            method="POST",
            target="/echo",
            body=upload,
        )
    )
    assert echo.status == 200
    assert echo.body == upload
    records = proxy.settled(2)
    usage = session.usage
    assert usage.connections == 2
    assert usage.bytes_received > 14 * MiB  # 8 + 6 MiB of payload, plus TLS
    assert usage.bytes_sent > 6 * MiB
    assert (usage.denied, usage.failed, usage.limited) == (0, 0, 0)
    assert [(r.host, r.port, r.outcome, r.status, r.address) for r in records] == [
        ("partner.test", 443, Outcome.ALLOWED, 200, PARTNER)
    ] * 2
    assert sum(r.bytes_received for r in records) == usage.bytes_received
    assert sum(r.bytes_sent for r in records) == usage.bytes_sent


def test_absolute_uri_get_and_post_are_rewritten_and_forwarded(proxy: ProxyUnderTest) -> None:
    session, port = proxy.attach()
    reply = proxy.run(
        ask(
            port,
            b"GET http://partner.test/bytes/3000000?token=secret HTTP/1.1\r\n"
            b"Host: 169.254.169.254\r\n"
            b"Proxy-Authorization: Basic c2VjcmV0\r\n"
            b"Proxy-Connection: keep-alive\r\n"
            b"Connection: keep-alive, X-Hop\r\n"
            b"X-Hop: dropped\r\n"
            b"X-Kept: kept\r\n\r\n",
        )
    )
    assert reply.status_line == "HTTP/1.1 200 "
    assert reply.body == payload(3_000_000)
    seen = proxy.internet.http.requests[-1]
    assert (seen.method, seen.target) == ("GET", "/bytes/3000000?token=secret")
    assert seen.headers == {"host": "partner.test", "x-kept": "kept", "connection": "close"}

    body = payload(5 * MiB)
    raw = (
        f"POST http://{PARTNER}:80/echo HTTP/1.1\r\nHost: {PARTNER}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    echo = proxy.run(ask(port, raw))
    assert echo.status_line == "HTTP/1.1 200 "
    assert echo.body == body
    seen = proxy.internet.http.requests[-1]
    assert (seen.method, seen.target, seen.body_bytes) == ("POST", "/echo", len(body))
    assert seen.headers["host"] == PARTNER

    records = proxy.settled(2)
    assert [(r.host, r.port, r.outcome, r.address) for r in records] == [
        ("partner.test", 80, Outcome.ALLOWED, PARTNER),
        (PARTNER, 80, Outcome.ALLOWED, PARTNER),
    ]
    # Plain HTTP: the proxy counted exactly what the client received.
    assert records[1].bytes_received == len(echo.body) + len(b"\r\n\r\n") + len(
        b"HTTP/1.1 200 \r\ncontent-length: 5242880\r\nconnection: close"
    )
    assert session.usage.bytes_received == sum(r.bytes_received for r in records)


def test_chunked_post_is_reframed(proxy: ProxyUnderTest) -> None:
    _, port = proxy.attach()
    chunks = (
        b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in (b"hello ", b"world" * 1000)) + b"0\r\n\r\n"
    )
    raw = (
        b"POST http://partner.test/echo HTTP/1.1\r\nHost: partner.test\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + chunks
    )
    reply = proxy.run(ask(port, raw))
    assert reply.status_line == "HTTP/1.1 200 "
    assert reply.body == b"hello " + b"world" * 1000
    assert proxy.internet.http.requests[-1].headers["transfer-encoding"] == "chunked"


def test_wildcards_ports_ipv6_and_static_hosts(proxy: ProxyUnderTest) -> None:
    policy = EgressPolicy.parse(
        [
            "*.partner.test:8443",
            "api.partner2.test:8443",
            "v6.partner.test",
            f"[{PARTNER6}]",
            "static.partner.test:8443",
        ]
    )
    _, port = proxy.attach(policy)
    tls = proxy.internet.client_tls
    cases = [
        ("files.partner.test:8443", "files.partner.test", PARTNER),
        ("api.partner2.test:8443", "api.partner2.test", PARTNER2),
        ("v6.partner.test:443", "partner.test", PARTNER6),
        (f"[{PARTNER6}]:443", PARTNER6, PARTNER6),
        ("static.partner.test:8443", "api.partner2.test", PARTNER2),  # from the hosts map
    ]
    for authority, server_name, _ in cases:
        reply = proxy.run(https_request(port, authority, server_name, tls, target="/bytes/10"))
        assert (reply.status, reply.body) == (200, payload(10)), authority
    records = proxy.settled(len(cases))
    assert [r.address for r in records] == [address for _, _, address in cases]
    assert "static.partner.test" not in {name for name, _ in proxy.internet.dns.queries}


def test_half_close_is_passed_on(proxy: ProxyUnderTest) -> None:
    _, port = proxy.attach()

    async def scenario() -> bytes:
        status, (reader, writer) = await open_tunnel(port, f"{PARTNER}:{ECHO_PORT}")
        assert status == "HTTP/1.1 200 Connection established"
        writer.write(b"x" * 100_000)
        writer.write_eof()
        try:
            return await read_all(reader)
        finally:
            writer.close()

    assert proxy.run(scenario()) == b"got 100000 bytes after EOF\n"


def test_curl_through_the_proxy(proxy: ProxyUnderTest, tmp_path: object) -> None:
    """A real client: curl sends CONNECT and verifies the partner's certificate end to end."""
    _, port = proxy.attach()

    async def curl(*args: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            "curl",
            "-sS",
            "--noproxy",
            "",
            "-x",
            f"http://127.0.0.1:{port}",
            "--cacert",
            proxy.internet.ca_file,
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        return process.returncode or 0, out.decode(), err.decode()

    code, out, _ = proxy.run(
        curl(
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            f"https://partner.test/bytes/{MiB}",
        )
    )
    assert (code, out) == (0, f"200 {MiB}")
    code, out, err = proxy.run(curl("-w", "%{http_connect}", "https://metadata.evil.test/"))
    assert code == 56
    assert out == "403"
    assert "CONNECT tunnel failed, response 403" in err


def test_session_close_ends_tunnels_and_the_socket(proxy: ProxyUnderTest) -> None:
    session, port = proxy.attach(limits=EgressLimits(idle_timeout_s=60))

    async def scenario() -> tuple[bytes, int | None]:
        status, (reader, writer) = await open_tunnel(port, f"{PARTNER}:{ECHO_PORT}")
        assert status == "HTTP/1.1 200 Connection established"
        await session.close()
        left = await asyncio.wait_for(read_all(reader), 10)
        writer.close()
        try:
            await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError as error:
            return left, error.errno
        return left, None

    assert proxy.run(scenario()) == (b"", errno.ECONNREFUSED)
    assert [r.outcome for r in proxy.settled(1)] == [Outcome.ALLOWED]
