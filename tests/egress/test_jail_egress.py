"""Egress end to end: steps in real jails of a real daemon reach the test's "internet" through
the daemon's proxy, and nothing else.

The daemon runs inside the test's network namespace (started from its thread, so it inherits
it): its proxy connects out there, where only the partners, the decoys and the DNS server live.
The client talks to it over a unix socket, which needs no network. Every test ends with the
package's check that no decoy was reached.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox_client import ErrorKind, Limits, SandboxClient, SandboxError, Step
from tests.conftest import DaemonProcess, start_daemon
from tests.egress.conftest import PARTNER, POLICY, TENANT, Internet, egress_config
from tests.egress.servers import payload

REDIRECT_PORT = 8080  # on PARTNER: answers every request with a redirect to metadata
REDIRECT_TARGET = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"

# A step that runs `attempt` (an async function of fetch-like calls) and reports how it went,
# the way a customer's step catches an error.
OUTCOME = """
module.exports = async (context) => {
  try {
    return { ok: true, value: await (%s)(context) };
  } catch (error) {
    const cause = error.cause || error;
    return { ok: false, code: cause.code || null, message: String(cause.message) };
  }
};
"""


def outcome_step(attempt: str) -> Step:
    return Step("attempt", OUTCOME % attempt)


@pytest.fixture(scope="module")
def egress_daemon(internet: Internet) -> Iterator[str]:
    """A daemon in the namespace, tenant acme allowed the package's POLICY; its unix target."""
    folder = Path(tempfile.mkdtemp(prefix="sandboxd-egress-"))
    socket_path = folder / "sandboxd.sock"
    config = egress_config(folder, internet, [f"{PARTNER}:{REDIRECT_PORT}"])
    internet.ns.run(_serve_redirects())

    async def spawn() -> DaemonProcess:
        # Started from the namespace's thread: the daemon and its fork server live in it.
        return start_daemon("--config", str(config), "--listen", f"unix:{socket_path}", pool_size=2)

    daemon = internet.ns.run(spawn(), timeout=120)
    yield f"unix:{socket_path}"
    assert daemon.stop() == 0


async def _serve_redirects() -> None:
    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            f"HTTP/1.1 302 Found\r\nLocation: {REDIRECT_TARGET}\r\n"
            "Content-Length: 0\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        writer.close()

    await asyncio.start_server(redirect, PARTNER, REDIRECT_PORT)


@pytest.fixture
async def client(egress_daemon: str) -> AsyncIterator[SandboxClient]:
    async with SandboxClient(egress_daemon) as connected:
        yield connected


async def attempt(client: SandboxClient, code: str, egress: list[str], **options: Any) -> Any:
    return await client.run(
        tenant_id=TENANT, steps=[outcome_step(code)], egress=egress, timeout=60, **options
    )


async def test_fetch_get_and_post_megabytes_both_ways(
    client: SandboxClient, internet: Internet
) -> None:
    size = 3 * 1024 * 1024
    code = f"""async () => {{
      const got = Buffer.from(await (await fetch('https://partner.test/bytes/{size}')).arrayBuffer());
      const sent = Buffer.alloc({size}, 7);
      const echo = await fetch('https://partner.test/echo', {{ method: 'POST', body: sent }});
      const back = Buffer.from(await echo.arrayBuffer());
      const crypto = require('crypto');
      return {{
        got: got.length, gotSha: crypto.createHash('sha256').update(got).digest('hex'),
        echoed: back.length, same: back.equals(sent),
      }};
    }}"""
    events = [
        event
        async for event in client.execute(
            tenant_id=TENANT, steps=[outcome_step(code)], egress=["partner.test"], timeout=60
        )
    ]
    finished = events[-1].execution_finished
    result = json.loads(next(e.step_finished.json for e in events if e.HasField("step_finished")))

    assert result == {
        "ok": True,
        "value": {
            "got": size,
            "gotSha": hashlib.sha256(payload(size)).hexdigest(),
            "echoed": size,
            "same": True,
        },
    }
    assert finished.usage.egress_connections == 2
    assert finished.usage.egress_bytes_sent > size
    assert finished.usage.egress_bytes_received > 2 * size
    assert finished.usage.egress_denied == 0


async def test_https_request_module_works_unchanged(client: SandboxClient) -> None:
    code = """async () => new Promise((resolve, reject) => {
      require('https').get('https://files.partner.test:8443/hello', (response) => {
        let text = '';
        response.on('data', (chunk) => { text += chunk; });
        response.on('end', () => resolve({ status: response.statusCode, text }));
      }).on('error', reject);
    })"""
    result = await attempt(client, code, ["*.partner.test:8443"])
    assert result == {"ok": True, "value": {"status": 200, "text": "partner says hello\n"}}


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("https://files.partner.test:9443/", "port 9443 is not allowed for 'files.partner.test'"),
        ("https://partner.test/", "host 'partner.test' is not in the egress allowlist"),
    ],
)
async def test_the_request_narrows_what_the_step_may_reach(
    client: SandboxClient, url: str, reason: str
) -> None:
    result = await attempt(client, f"async () => (await fetch('{url}')).status", ["*.partner.test"])
    assert result == {
        "ok": False,
        "code": "EGRESS_DENIED",
        "message": f"egress to {url.split('/')[2]}{':443' if url.count(':') == 1 else ''}"
        f" denied by the egress policy: {reason}",
    }


async def test_a_request_cannot_widen_its_tenants_allowlist(client: SandboxClient) -> None:
    with pytest.raises(SandboxError) as caught:
        await attempt(client, "async () => 1", ["partner.test", "*.example.com:443"])
    assert caught.value.kind is ErrorKind.INVALID_REQUEST
    assert caught.value.field == "egress.allow[1]"
    assert caught.value.message == (
        "egress destination '*.example.com:443' is not in tenant acme's allowlist"
    )


async def test_without_a_policy_there_is_no_egress(client: SandboxClient) -> None:
    result = await attempt(client, "async () => (await fetch('https://partner.test/')).status", [])
    assert result == {
        "ok": False,
        "code": "EGRESS_DENIED",
        "message": "egress to partner.test:443 denied by the egress policy:"
        " no egress is allowed for this execution",
    }


# Each names a denied address in one of the forms a URL can take; the tenant's allowlist
# names most of them, so only the address rules stand in the way.
SSRF_URLS = [
    ("http://169.254.169.254/latest/meta-data/", "link-local"),
    ("http://2852039166/", "link-local"),  # decimal
    ("http://0251.0376.0251.0376/", "link-local"),  # octal
    ("http://0xa9.0xfe.0xa9.0xfe/", "link-local"),  # hex
    ("http://[::ffff:169.254.169.254]/", "link-local"),  # IPv4-mapped IPv6
    ("http://[fd00:ec2::254]/", "unique local"),
    ("http://10.0.0.5/", "private"),
    ("http://metadata.evil.test/", "link-local"),  # a name that resolves to it
    ("http://ecs.evil.test/v2/credentials", "link-local"),
    ("http://vpc.evil.test/", "private"),
    ("http://loopback.evil.test/", "loopback"),
    ("http://nat64.evil.test/", "link-local"),
    ("http://sixtofour.evil.test/", "link-local"),
    ("http://mixed.evil.test/", "private"),
    ("http://loopback6.evil.test/", "loopback"),
    ("http://meta6.evil.test/", "unique local"),
]


@pytest.mark.parametrize(("url", "why"), SSRF_URLS, ids=[url for url, _ in SSRF_URLS])
async def test_ssrf_is_denied_with_its_reason(client: SandboxClient, url: str, why: str) -> None:
    result = await attempt(
        client, f"async () => (await fetch('{url}')).status", [str(d) for d in POLICY.destinations]
    )
    assert result["ok"] is False
    assert result["code"] == "EGRESS_DENIED"
    assert "denied by the egress policy" in result["message"]
    assert why in result["message"]


async def test_loopback_urls_stay_inside_the_jail(client: SandboxClient) -> None:
    # The jail's loopback is its own: nothing listens on port 80 there, and the host's (the
    # namespace's 127.0.0.1 decoys) cannot be reached through it.
    result = await attempt(client, "async () => (await fetch('http://127.1/')).status", [])
    assert (result["ok"], result["code"]) == (False, "ECONNREFUSED")
    # Its own proxy answers a request it cannot forward (origin-form) with 400, nothing more.
    code = "async () => (await fetch('http://127.0.0.1:3128/')).status"
    assert await attempt(client, code, ["partner.test"]) == {"ok": True, "value": 400}


async def test_rebinding_gets_the_second_answer_checked_too(
    client: SandboxClient, internet: Internet
) -> None:
    code = """async () => {
      const first = await fetch('http://rebind.evil.test/');
      await first.text();
      try { await fetch('http://rebind.evil.test/again'); return 'reached'; }
      catch (error) { return [first.status, error.cause.code, error.cause.message]; }
    }"""
    result = await attempt(client, code, ["*.evil.test:80"])
    assert result["value"][:2] == [200, "EGRESS_DENIED"]
    assert "169.254.169.254" in result["value"][2]


async def test_a_redirect_is_a_new_request_checked_again(client: SandboxClient) -> None:
    code = f"async () => (await fetch('http://{PARTNER}:{REDIRECT_PORT}/')).status"
    result = await attempt(client, code, [f"{PARTNER}:{REDIRECT_PORT}", "169.254.169.254:80"])
    assert result["code"] == "EGRESS_DENIED"
    assert "169.254.169.254" in result["message"]


async def test_sni_and_host_header_cannot_redirect_a_tunnel(
    client: SandboxClient, internet: Internet
) -> None:
    before = len(internet.https.requests)
    code = """async () => new Promise((resolve) => {
      const request = require('https').request({
        host: 'partner.test', path: '/hello', servername: 'partner.test',
        headers: { Host: 'metadata.evil.test' },
      }, (response) => {
        response.resume();
        response.on('end', () => resolve(response.statusCode));
      });
      request.on('error', (error) => resolve(String(error.code)));
      request.end();
    })"""
    result = await attempt(client, code, ["partner.test"])
    assert result == {"ok": True, "value": 200}
    # It reached the partner it named in CONNECT, whatever its Host header claimed.
    assert internet.https.requests[before].headers["host"] == "metadata.evil.test"


async def test_a_flood_of_connections_meets_the_limit_and_the_daemon_serves_on(
    client: SandboxClient,
) -> None:
    code = """async () => {
      const settled = await Promise.allSettled(
        Array.from({ length: 64 }, () => fetch('https://partner.test/bytes/65536')
          .then((response) => response.arrayBuffer())));
      const codes = {};
      for (const item of settled) {
        const code = item.status === 'fulfilled' ? 'ok' : item.reason.cause.code;
        codes[code] = (codes[code] || 0) + 1;
      }
      return codes;
    }"""
    result = await attempt(client, code, ["partner.test"], limits=Limits(egress_connections=4))
    codes = result["value"]
    assert sum(codes.values()) == 64
    assert codes.get("ok", 0) >= 4
    # 64 at once against a limit of 4: some are refused (429), and nothing else goes wrong.
    assert codes.get("EGRESS_FAILED", 0) >= 1
    assert set(codes) == {"ok", "EGRESS_FAILED"}
    again = await attempt(
        client, "async () => (await fetch('https://partner.test/')).status", ["partner.test"]
    )
    assert again == {"ok": True, "value": 200}
