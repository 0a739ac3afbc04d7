"""The jail side of egress: the proxy socket each jail gets, and the runner's connector.

Real jails from the real fork server, through the pool, run real steps. The test plays the
daemon's egress proxy itself: it accepts on the socket the jail handed over (listening inside the
jail's own network namespace) with a small asyncio CONNECT proxy, which tunnels to HTTPS and HTTP
servers the test runs on the host's loopback. Their certificate (for partner.test) comes from a
test CA (trustme) that reaches the runner in the exec frame (egress.caPem). Nothing is sent
anywhere but the host's loopback and the jails' own.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import socket
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import psutil
import pytest
import trustme

from sandboxd.jail.handle import JailLauncher
from sandboxd.jail.spec import EGRESS_PROXY_PORT, JailLimits, JailSpec
from sandboxd.pool import JailPool, PooledJail
from tests.conftest import ROOTFS

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="jails need root")

UID_BASE = 410_000
PARTNER = "partner.test"
HTTPS_PORT = 8443  # what steps ask for; the test proxy maps it to its own servers' ports
HTTP_PORT = 80
DENIED_PORT = 9999
DENIAL = "partner.test:9999 is not on the tenant's allowlist"
FAILING_PORT = 9998  # the proxy answers 502 with its reason
FAILURE = "connect to 203.0.113.7:9998 timed out after 10 s"
HANGUP_PORT = 9997  # the proxy closes the connection without an answer
STEP_TIMEOUT_S = 30.0


# --- the partner: HTTPS and HTTP servers on the host's loopback ----------------------------------


@dataclass
class Partner:
    """Answers every request with what it saw: method, path, body size and digest."""

    requests: list[dict[str, Any]] = field(default_factory=list)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.closing(writer):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            method, path, _ = head.split("\r\n", 1)[0].split(" ", 2)
            headers = {}
            for line in head.split("\r\n")[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            seen = {
                "method": method,
                "path": path,
                "host": headers.get("host"),
                "bytes": len(body),
                "sha256": hashlib.sha256(body).hexdigest(),
            }
            self.requests.append(seen)
            answer = json.dumps(seen).encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                + f"Content-Length: {len(answer)}\r\nConnection: close\r\n\r\n".encode()
                + answer
            )
            await writer.drain()


@dataclass
class Servers:
    partner: Partner
    https_port: int
    http_port: int
    ca_pem: str


@pytest.fixture
async def servers() -> AsyncIterator[Servers]:
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(PARTNER).configure_cert(context)
    partner = Partner()
    secure = await asyncio.start_server(partner.serve, "127.0.0.1", 0, ssl=context)
    plain = await asyncio.start_server(partner.serve, "127.0.0.1", 0)
    yield Servers(
        partner,
        secure.sockets[0].getsockname()[1],
        plain.sockets[0].getsockname()[1],
        ca.cert_pem.bytes().decode(),
    )
    for server in (secure, plain):
        server.close()
        await server.wait_closed()


# --- the test's egress proxy, on the socket a jail handed over -----------------------------------


@dataclass
class ConnectProxy:
    """CONNECT to partner.test:8443 and :80 is tunnelled to the servers; other ports are denied,
    fail or hang up (see the constants above)."""

    servers: Servers
    connects: list[str] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.closing(writer):
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            request_line = head.split("\r\n", 1)[0]
            self.connects.append(request_line)
            _, target, _ = request_line.split(" ")
            ports = {
                f"{PARTNER}:{HTTPS_PORT}": self.servers.https_port,
                f"{PARTNER}:{HTTP_PORT}": self.servers.http_port,
            }
            if target == f"{PARTNER}:{HANGUP_PORT}":
                return
            if target == f"{PARTNER}:{FAILING_PORT}":
                writer.write(
                    b"HTTP/1.1 502 Bad Gateway\r\n"
                    + f"X-Sandboxd-Egress-Error: {FAILURE}\r\nContent-Length: 0\r\n\r\n".encode()
                )
                await writer.drain()
                return
            if target not in ports:
                writer.write(
                    b"HTTP/1.1 403 Forbidden\r\n"
                    + f"X-Sandboxd-Egress-Denied: {DENIAL}\r\n".encode()
                    + b"Content-Length: 0\r\n\r\n"
                )
                await writer.drain()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", ports[target])
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            with contextlib.closing(up_writer):
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    while data := await source.read(65536):
        sink.write(data)
        await sink.drain()
    with contextlib.suppress(OSError):
        sink.write_eof()


@contextlib.asynccontextmanager
async def proxy_for(jail: PooledJail, servers: Servers) -> AsyncIterator[ConnectProxy]:
    proxy = ConnectProxy(servers)
    listening = socket.socket(fileno=jail.take_proxy_fd())
    server = await asyncio.start_server(proxy.handle, sock=listening)
    try:
        yield proxy
    finally:
        server.close()
        await server.wait_closed()


# --- jails ---------------------------------------------------------------------------------------


@pytest.fixture
async def pool(launcher: JailLauncher) -> AsyncIterator[JailPool]:
    jails = JailPool(
        launcher,
        rootfs=ROOTFS,
        limits=JailLimits(),
        size=1,
        maximum=4,
        uid_base=UID_BASE,
        cgroups=None,
    )
    await jails.start()
    yield jails
    await jails.close()


async def run_step(
    jail: PooledJail, code: str, *, ca_pem: str | None = None, input: Any = None
) -> Any:
    """Send exec + one step, return the step's result value; fail the test on an error frame."""
    header: dict[str, Any] = {"t": "exec", "id": "ex-egress", "tenant": "acme", "attempt": 0}
    if ca_pem is not None:
        header["egress"] = {"caPem": ca_pem}
    deadline = asyncio.get_running_loop().time() + STEP_TIMEOUT_S
    await jail.channel.send(header, json.dumps(input).encode(), deadline)
    step = {"t": "step", "seq": 0, "name": "egress", "logBytes": 1 << 20, "resultBytes": 1 << 24}
    await jail.channel.send(step, code.encode(), deadline)
    async with asyncio.timeout_at(deadline):
        while True:
            frame = await jail.channel.receive(max_body=1 << 24)
            assert frame is not None, "the runner ended without a result"
            if frame.type in ("result", "error"):
                break
    assert frame.type == "result", f"step failed: {frame.header}"
    return json.loads(frame.body)


async def run_proxied(
    pool: JailPool, servers: Servers, code: str, input: Any = None
) -> tuple[Any, list[str]]:
    """Run a step in a fresh jail served by the test's proxy: its result and the CONNECT lines."""
    async with pool.lease("tenant") as jail, proxy_for(jail, servers) as proxy:
        seen = await run_step(jail, code, ca_pem=servers.ca_pem, input=input)
    return seen, proxy.connects


def connect_lines(*ports: int) -> list[str]:
    """The CONNECT request lines for partner.test at these ports, in order."""
    return [f"CONNECT {PARTNER}:{port} HTTP/1.1" for port in ports]


def expected_seen(method: str, path: str, host: str, body: bytes = b"") -> dict[str, Any]:
    return {
        "method": method,
        "path": path,
        "host": host,
        "bytes": len(body),
        "sha256": hashlib.sha256(body).hexdigest(),
    }


# --- reaching the partner through CONNECT --------------------------------------------------------

FETCH_GET_AND_POST = r"""
module.exports = async (ctx) => {
  const got = await fetch('https://partner.test:8443/items?page=2');
  const posted = await fetch('https://partner.test:8443/upload', {
    method: 'POST', body: 'x'.repeat(ctx.input.size), headers: { 'content-type': 'text/plain' },
  });
  return { get: [got.status, await got.json()], post: [posted.status, await posted.json()] };
};
"""


async def test_fetch_get_and_post_reach_the_partner_through_connect(
    pool: JailPool, servers: Servers
) -> None:
    size = 256 * 1024
    seen, connects = await run_proxied(pool, servers, FETCH_GET_AND_POST, input={"size": size})
    host = f"{PARTNER}:{HTTPS_PORT}"
    assert seen == {
        "get": [200, expected_seen("GET", "/items?page=2", host)],
        "post": [200, expected_seen("POST", "/upload", host, b"x" * size)],
    }
    # Node's fetch keeps connections alive, but the partner closes each: one tunnel per request.
    assert connects == connect_lines(HTTPS_PORT, HTTPS_PORT)


HTTPS_MODULE = r"""
const https = require('https');
const http = require('http');
function call(mod, options, body) {
  return new Promise((resolve, reject) => {
    const req = mod.request(options, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk) => { text += chunk; });
      res.on('end', () => resolve([res.statusCode, JSON.parse(text)]));
    });
    req.on('error', reject);
    req.end(body);
  });
}
module.exports = async () => {
  const body = 'y'.repeat(70000);
  return {
    post: await call(https, { host: 'partner.test', port: 8443, path: '/r', method: 'POST',
                              headers: { 'content-length': body.length } }, body),
    get: await new Promise((resolve, reject) => {
      https.get('https://partner.test:8443/g', { agent: new https.Agent({ keepAlive: true }) },
        (res) => { res.resume(); res.on('end', () => resolve(res.statusCode)); })
        .on('error', reject);
    }),
    plain: await call(http, { host: 'partner.test', path: '/plain' }),
  };
};
"""


async def test_https_and_http_modules_reach_the_partner_through_connect(
    pool: JailPool, servers: Servers
) -> None:
    seen, connects = await run_proxied(pool, servers, HTTPS_MODULE)
    https_host = f"{PARTNER}:{HTTPS_PORT}"
    assert seen == {
        "post": [200, expected_seen("POST", "/r", https_host, b"y" * 70000)],
        "get": 200,
        # The default port is left out of the Host header, as Node always does.
        "plain": [200, expected_seen("GET", "/plain", PARTNER)],
    }
    assert connects == connect_lines(HTTPS_PORT, HTTPS_PORT, HTTP_PORT)


# --- denials and failures the step can catch -----------------------------------------------------

DENIED = r"""
const https = require('https');
module.exports = async () => {
  const out = {};
  try {
    await fetch('https://partner.test:9999/secret');
    out.fetch = 'reached';
  } catch (err) {
    out.fetch = { name: err.name, message: err.message,
                  cause: { code: err.cause.code, message: err.cause.message } };
  }
  out.https = await new Promise((resolve) => {
    https.get('https://partner.test:9999/secret', () => resolve('reached'))
      .on('error', (err) => resolve({ code: err.code, message: err.message }));
  });
  return out;
};
"""


async def test_a_denied_connect_fails_the_request_with_egress_denied(
    pool: JailPool, servers: Servers
) -> None:
    seen, connects = await run_proxied(pool, servers, DENIED)
    message = f"egress to {PARTNER}:{DENIED_PORT} denied by the egress policy: {DENIAL}"
    assert seen == {
        "fetch": {
            "name": "TypeError",
            "message": "fetch failed",
            "cause": {"code": "EGRESS_DENIED", "message": message},
        },
        "https": {"code": "EGRESS_DENIED", "message": message},
    }
    assert connects == connect_lines(DENIED_PORT, DENIED_PORT)
    assert servers.partner.requests == []


ADDRESSES = r"""
const https = require('https');
module.exports = async () => ({
  fetch6: await fetch('https://[2001:db8::7]:9999/').then(
    () => 'reached', (err) => err.cause.message),
  https4: await new Promise((resolve) => {
    https.get('https://198.51.100.7:9999/', () => resolve('reached'))
      .on('error', (err) => resolve(err.message));
  }),
});
"""


async def test_address_literals_are_named_in_connect_as_asked(
    pool: JailPool, servers: Servers
) -> None:
    seen, connects = await run_proxied(pool, servers, ADDRESSES)
    assert connects == [
        "CONNECT [2001:db8::7]:9999 HTTP/1.1",
        "CONNECT 198.51.100.7:9999 HTTP/1.1",
    ]
    assert seen == {
        "fetch6": f"egress to [2001:db8::7]:9999 denied by the egress policy: {DENIAL}",
        "https4": f"egress to 198.51.100.7:9999 denied by the egress policy: {DENIAL}",
    }


JAIL_LOCAL = r"""
const http = require('http');
module.exports = async () => {
  const server = http.createServer((req, res) => res.end('local ' + req.url));
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address();
  const fetched = await (await fetch(`http://localhost:${port}/f`)).text();
  const got = await new Promise((resolve, reject) => {
    http.get(`http://127.0.0.1:${port}/g`, (res) => {
      let text = '';
      res.on('data', (chunk) => { text += chunk; });
      res.on('end', () => resolve(text));
    }).on('error', reject);
  });
  server.close();
  return [fetched, got];
};
"""


async def test_the_jails_own_loopback_is_reached_directly(pool: JailPool, servers: Servers) -> None:
    seen, connects = await run_proxied(pool, servers, JAIL_LOCAL)
    assert seen == ["local /f", "local /g"]
    assert connects == []


FAILING = r"""
const https = require('https');
const attempt = (url) =>
  fetch(url).then(() => 'reached', (err) => [err.cause.code, err.cause.message]);
module.exports = async () => ({
  failing: await attempt('https://partner.test:9998/'),
  hangup: await attempt('https://partner.test:9997/'),
  httpsHangup: await new Promise((resolve) => {
    https.get('https://partner.test:9997/', () => resolve('reached'))
      .on('error', (err) => resolve([err.code, err.message]));
  }),
});
"""


async def test_other_refusals_fail_the_request_with_egress_failed(
    pool: JailPool, servers: Servers
) -> None:
    seen, connects = await run_proxied(pool, servers, FAILING)
    hangup = "failed: the egress proxy closed the connection before answering"
    assert seen == {
        "failing": [
            "EGRESS_FAILED",
            f"egress to {PARTNER}:{FAILING_PORT} failed: "
            f"the egress proxy answered 502 Bad Gateway: {FAILURE}",
        ],
        "hangup": ["EGRESS_FAILED", f"egress to {PARTNER}:{HANGUP_PORT} {hangup}"],
        "httpsHangup": ["EGRESS_FAILED", f"egress to {PARTNER}:{HANGUP_PORT} {hangup}"],
    }
    assert connects == connect_lines(FAILING_PORT, HANGUP_PORT, HANGUP_PORT)


NO_PROXY = r"""
const http = require('http');
module.exports = async () => {
  const began = Date.now();
  const fetched = await fetch('https://partner.test:8443/').then(
    () => 'reached', (err) => [err.message, err.cause.code, err.cause.message]);
  const requested = await new Promise((resolve) => {
    http.get('http://partner.test/', () => resolve('reached'))
      .on('error', (err) => resolve([err.code, err.message]));
  });
  return { fetched, requested, ms: Date.now() - began };
};
"""


async def test_without_the_proxy_socket_requests_fail_at_once_with_egress_denied(
    pool: JailPool,
) -> None:
    async with pool.lease("tenant") as jail:
        os.close(jail.take_proxy_fd())  # what an execution without egress does
        seen = await run_step(jail, NO_PROXY)
    none = "denied by the egress policy: no egress is allowed for this execution"
    assert seen["fetched"] == [
        "fetch failed",
        "EGRESS_DENIED",
        f"egress to {PARTNER}:{HTTPS_PORT} {none}",
    ]
    assert seen["requested"] == ["EGRESS_DENIED", f"egress to {PARTNER}:{HTTP_PORT} {none}"]
    # Both refused by the jail's own loopback: Node 20 loads fetch's module (~50 ms) on first use.
    assert seen["ms"] < 2000


# --- the socket and the jail's network -----------------------------------------------------------

INSIDE = r"""
const fs = require('fs');
const os = require('os');
const net = require('net');
module.exports = async () => {
  const fds = fs.readdirSync('/proc/self/fd').map(Number).sort((a, b) => a - b);
  const links = {};
  for (const fd of fds) {
    try { links[fd] = fs.readlinkSync('/proc/self/fd/' + fd); } catch { /* the readdir's own */ }
  }
  const bind = await new Promise((resolve) => {
    const server = net.createServer();
    server.on('error', (err) => resolve(err.code));
    server.listen(3128, '127.0.0.1', () => { server.close(); resolve('bound'); });
  });
  return {
    links,
    // fetch's module loads at the first fetch (20-50 ms), not when the runner starts.
    fetchLoaded: globalThis[Symbol.for('undici.globalDispatcher.1')] !== undefined,
    interfaces: Object.keys(os.networkInterfaces()),
    devices: fs.readFileSync('/proc/net/dev', 'utf8').trim().split('\n').slice(2)
      .map((line) => line.trim().split(':')[0]),
    routes: fs.readFileSync('/proc/net/route', 'utf8').trim().split('\n').length - 1,
    bind,
  };
};
"""


async def test_the_runner_holds_no_socket_and_the_jail_has_only_lo(pool: JailPool) -> None:
    async with pool.lease("tenant") as jail:
        proxy_inode = os.fstat(jail.jail.proxy_fd).st_ino
        seen = await run_step(jail, INSIDE)
    links: dict[str, str] = seen["links"]
    assert {fd: links[fd] for fd in ("0", "1", "2")} == {
        "0": "/dev/null",
        "1": links["1"],
        "2": links["1"],  # stdout and stderr: the same pipe
    }
    assert [links[fd].split(":")[0] for fd in ("1", "3", "4")] == ["pipe"] * 3
    # Node's own descriptors are its epoll, eventfd and pipes: not one socket, not the proxy's.
    assert [link for link in links.values() if link.startswith("socket:")] == []
    assert f"socket:[{proxy_inode}]" not in links.values()
    assert seen["fetchLoaded"] is False
    assert seen["interfaces"] == ["lo"]
    assert seen["devices"] == ["lo"]
    assert seen["routes"] == 0
    assert seen["bind"] == "EADDRINUSE"  # the proxy's address is taken, by the jail's own socket


async def test_the_proxy_socket_listens_on_the_jails_loopback_only(pool: JailPool) -> None:
    async with pool.lease("tenant") as jail:
        fd = jail.jail.proxy_fd
        with socket.socket(fileno=os.dup(fd)) as listening:
            assert listening.getsockname() == ("127.0.0.1", EGRESS_PROXY_PORT)
            assert listening.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        socket_netns = fcntl.ioctl(fd, _SIOCGSKNS)  # a descriptor of the socket's namespace
        try:
            jail_netns = os.stat(f"/proc/{jail.jail.init_pid}/ns/net").st_ino
            assert os.fstat(socket_netns).st_ino == jail_netns
            assert jail_netns != os.stat("/proc/self/ns/net").st_ino
        finally:
            os.close(socket_netns)


_SIOCGSKNS = 0x894C


async def test_descriptors_from_the_fork_server_are_close_on_exec(
    launcher: JailLauncher,
) -> None:
    uid = UID_BASE + 102
    spec = JailSpec(jail_id=uuid.uuid4().hex[:12], rootfs=ROOTFS, host_uid=uid, host_gid=uid)
    jail = await launcher.spawn(spec)
    try:
        fds = (jail.work_fd, jail.events_fd, jail.output_fd, jail.pidfd, jail.proxy_fd)
        assert len(set(fds)) == 5
        assert [fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC for fd in fds] == [1] * 5
    finally:
        jail.kill()
        await jail.exit_status
        jail.close_fds()


# --- a spawn that is cancelled -------------------------------------------------------------------


def _processes_of(uid: int) -> list[psutil.Process]:
    """Live processes of a host uid (a zombie is dead: it only waits for its reaper)."""
    return [
        p
        for p in psutil.process_iter(["uids", "status"])
        if p.info["uids"].real == uid and p.info["status"] != psutil.STATUS_ZOMBIE
    ]


# 0: the request is on its way to the fork server; later, the jail is starting.
@pytest.mark.parametrize("delay_s", [0.0, 0.001, 0.003])
async def test_a_cancelled_spawn_returns_once_its_jail_is_dead(
    launcher: JailLauncher, delay_s: float
) -> None:
    uid = UID_BASE + 100
    spec = JailSpec(jail_id=uuid.uuid4().hex[:12], rootfs=ROOTFS, host_uid=uid, host_gid=uid)
    spawning = asyncio.create_task(launcher.spawn(spec))
    await asyncio.sleep(delay_s)
    assert not spawning.done(), "the jail started before the test could cancel its spawn"
    spawning.cancel()
    with pytest.raises(asyncio.CancelledError):
        await spawning
    # Not one process of the jail's uid is left by the time the spawn returned.
    assert _processes_of(uid) == []
    # And the launcher still serves.
    await _spawn_and_end(launcher, uid)


async def _spawn_and_end(launcher: JailLauncher, uid: int) -> None:
    spec = JailSpec(
        jail_id=uuid.uuid4().hex[:12],
        rootfs=ROOTFS,
        host_uid=uid,
        host_gid=uid,
        argv=("/usr/local/bin/node", "-e", "0"),
    )
    jail = await launcher.spawn(spec)
    try:
        assert await asyncio.wait_for(jail.exit_status, 30) == 0
    finally:
        jail.close_fds()


async def test_a_failed_spawn_leaves_no_process(launcher: JailLauncher) -> None:
    uid = UID_BASE + 101
    spec = JailSpec(
        jail_id=uuid.uuid4().hex[:12],
        rootfs=ROOTFS,
        host_uid=uid,
        host_gid=uid,
        argv=("/usr/local/bin/no-such-node",),
    )
    began = time.monotonic()
    with pytest.raises(Exception, match="exec /usr/local/bin/no-such-node"):
        await launcher.spawn(spec)
    assert time.monotonic() - began < 10
    assert _processes_of(uid) == []
