"""Catalogue: Network. The jail has a loopback of its own and nothing else.

Every target is on this machine: listeners this test opens on the host's loopback (TCP on
127.0.0.1 and ::1, UDP on 127.0.0.1, an abstract unix socket) and the daemon's own gRPC port.
No packet is ever addressed anywhere else.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from sandbox_client import ErrorKind, SandboxClient, Step
from tests.security.conftest import MARKER, SecurityDaemon, execute, js, probe


@dataclass
class HostListeners:
    tcp4: socket.socket
    tcp6: socket.socket | None
    udp: socket.socket
    abstract: socket.socket
    abstract_name: str

    def port(self, sock: socket.socket) -> int:
        return int(sock.getsockname()[1])

    def received(self) -> list[str]:
        """What reached any of the listeners (nothing may)."""
        got = []
        for sock in (self.tcp4, self.tcp6, self.abstract):
            if sock is None:
                continue
            with contextlib.suppress(BlockingIOError):
                connection, _ = sock.accept()
                got.append(f"connection on {sock.getsockname()!r}")
                connection.close()
        with contextlib.suppress(BlockingIOError):
            data, peer = self.udp.recvfrom(65536)
            got.append(f"datagram {data!r} from {peer}")
        return got


def _listening(family: int, address: Any) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind(address)
    sock.listen()
    sock.setblocking(False)
    return sock


@pytest.fixture(scope="module")
def listeners() -> Iterator[HostListeners]:
    tcp4 = _listening(socket.AF_INET, ("127.0.0.1", 0))
    try:
        tcp6: socket.socket | None = _listening(socket.AF_INET6, ("::1", 0))
    except OSError:  # a host without IPv6 loopback
        tcp6 = None
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    name = f"{MARKER}-host-abstract"
    abstract = _listening(socket.AF_UNIX, "\0" + name)
    yield HostListeners(tcp4, tcp6, udp, abstract, name)
    for sock in (tcp4, tcp6, udp, abstract):
        if sock is not None:
            sock.close()


NETWORK = js(r"""
const dgram = require('dgram');
const dns = require('dns');
const lookup = (name, options) => new Promise((resolve) =>
  dns.lookup(name, options || {}, (e, address) => resolve(e ? e.code : address)));
module.exports = async (ctx) => {
  const out = {};
  const interfaces = os.networkInterfaces();
  out.interfaces = Object.keys(interfaces);
  out.addresses = interfaces.lo.map((entry) => entry.address).sort();
  out.route = fs.readFileSync('/proc/net/route', 'utf8').trim().split('\n').length - 1;
  out.ipv6RouteDevices = [...new Set(fs.readFileSync('/proc/net/ipv6_route', 'utf8').trim()
    .split('\n').map((line) => line.trim().split(/\s+/).pop()))];
  out.netDevices = fs.readFileSync('/proc/net/dev', 'utf8').trim().split('\n').slice(2)
    .map((line) => line.trim().split(':')[0]);
  out.tcp4 = await connectOutcome({ host: '127.0.0.1', port: ctx.input.tcp4 });
  out.tcp6 = ctx.input.tcp6
    ? await connectOutcome({ host: '::1', port: ctx.input.tcp6 })
    : 'ECONNREFUSED';  // no IPv6 loopback on this host: nothing to reach
  out.localhostName = await connectOutcome({ host: 'localhost', port: ctx.input.tcp4 });
  out.daemonGrpc = await connectOutcome({ host: '127.0.0.1', port: ctx.input.daemon });
  out.abstract = await connectOutcome({ path: '\0' + ctx.input.abstract });
  out.udpSent = await new Promise((resolve) => {
    const sock = dgram.createSocket('udp4');
    sock.send(Buffer.from(MARKER), ctx.input.udp, '127.0.0.1', (e) => {
      sock.close();
      resolve(e ? codeOf(e) : 'sent');
    });
  });
  out.resolvConf = fs.existsSync('/etc/resolv.conf');
  out.lookup = await lookup('sandboxd-test.invalid');
  out.lookupLocalhost = await lookup('localhost', { family: 4 });
  out.resolve = await new Promise((resolve) =>
    dns.resolve4('sandboxd-test.invalid', (e, a) => resolve(e ? e.code : a)));
  // A resolver pointed at the host's UDP listener asks the jail's own loopback instead.
  const resolver = new dns.Resolver({ timeout: 500, tries: 1 });
  resolver.setServers(['127.0.0.1:' + ctx.input.udp]);
  out.resolveViaHostPort = await new Promise((resolve) =>
    resolver.resolve4('sandboxd-test.invalid', (e, a) => resolve(e ? e.code : a)));
  return out;
};
""")


@pytest.fixture
def targets(listeners: HostListeners, daemon: SecurityDaemon) -> dict[str, Any]:
    return {
        "tcp4": listeners.port(listeners.tcp4),
        "tcp6": listeners.port(listeners.tcp6) if listeners.tcp6 is not None else 0,
        "udp": listeners.port(listeners.udp),
        "abstract": listeners.abstract_name,
        "daemon": int(daemon.target.rsplit(":", 1)[1]),
    }


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("interfaces", ["lo"]),
        ("addresses", ["127.0.0.1", "::1"]),
        ("route", 0),  # the IPv4 routing table has its header line only
        ("ipv6RouteDevices", ["lo"]),
        ("netDevices", ["lo"]),
        ("resolvConf", False),
    ],
)
async def test_loopback_is_the_only_interface_and_there_is_no_route(
    client: SandboxClient, targets: dict[str, Any], key: str, expected: Any
) -> None:
    seen = await probe(client, "network", NETWORK, input=targets)
    assert seen[key] == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("tcp4", "ECONNREFUSED"),
        ("tcp6", "ECONNREFUSED"),
        ("localhostName", "ECONNREFUSED"),
        ("daemonGrpc", "ECONNREFUSED"),
        ("abstract", "ECONNREFUSED"),  # abstract unix sockets belong to the network namespace
        ("udpSent", "sent"),  # to the jail's own loopback: the host's listener gets nothing
    ],
)
async def test_host_loopback_listeners_are_unreachable(
    client: SandboxClient, targets: dict[str, Any], key: str, expected: Any
) -> None:
    seen = await probe(client, "network", NETWORK, input=targets)
    assert seen[key] == expected


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("lookup", "EAI_AGAIN"),
        ("resolve", "ECONNREFUSED"),
        ("resolveViaHostPort", "ECONNREFUSED"),
        ("lookupLocalhost", "127.0.0.1"),  # /etc/hosts of the image, no resolver involved
    ],
)
async def test_dns_fails_inside_the_jail_without_a_resolver(
    client: SandboxClient, targets: dict[str, Any], key: str, expected: Any
) -> None:
    seen = await probe(client, "network", NETWORK, input=targets)
    assert seen[key] == expected


async def test_nothing_reached_the_hosts_listeners(
    client: SandboxClient, targets: dict[str, Any], listeners: HostListeners
) -> None:
    await probe(client, "network", NETWORK, input=targets)
    assert listeners.received() == []


async def test_a_listener_inside_the_jail_is_unreachable_from_the_host(
    client: SandboxClient,
) -> None:
    with socket.socket() as probe_port:
        probe_port.bind(("127.0.0.1", 0))
        port = probe_port.getsockname()[1]  # free on the host now; the jail binds its own
    code = js(r"""
    module.exports = async (ctx) => {
      const server = net.createServer((s) => s.end('from the jail'));
      await new Promise((resolve) => server.listen(ctx.input.port, '0.0.0.0', resolve));
      console.log('listening');
      await new Promise(() => {});
    };
    """)
    execution_id = f"{MARKER}-listener"
    events = client.execute(
        tenant_id="sec-acme",
        steps=[Step("attack", code)],
        input={"port": port},
        execution_id=execution_id,
    )
    refused = None
    kind = None
    async for event in events:
        if event.HasField("log") and event.log.text == "listening":
            with socket.socket() as host_side:
                refused = host_side.connect_ex(("127.0.0.1", port))
            assert await client.cancel("sec-acme", execution_id)
        if event.HasField("execution_finished"):
            kind = ErrorKind.from_proto(event.execution_finished.error_kind)
    assert refused == 111  # ECONNREFUSED
    assert kind is ErrorKind.CANCELLED


async def test_raw_and_packet_sockets_are_out_of_reach_of_node(client: SandboxClient) -> None:
    # Node offers TCP, UDP and unix sockets only; the policy's refusal of AF_PACKET, SOCK_RAW,
    # AF_VSOCK, AF_ALG and netlink families other than route is proven in
    # tests/jail/test_seccomp.py::test_socket_families_outside_the_allowlist_are_eperm.
    code = js(r"""
    const dgram = require('dgram');
    module.exports = async () => ({
      raw: attempt(() => dgram.createSocket('raw')),
      packet: attempt(() => dgram.createSocket({ type: 'packet' })),
    });
    """)
    seen = (await execute(client, code)).value
    assert seen == {"raw": "ERR_SOCKET_BAD_TYPE", "packet": "ERR_SOCKET_BAD_TYPE"}
