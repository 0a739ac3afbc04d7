"""Fixtures: one namespace per test package with its "internet", and a fresh proxy per test."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trustme

from sandboxd.egress import (
    AddressPolicy,
    ConnectionRecord,
    EgressGrant,
    EgressLimits,
    EgressPolicy,
    EgressProxy,
    EgressSession,
)
from tests.egress.netns import Netns, NetnsLoop
from tests.egress.servers import (
    Decoy,
    DnsServer,
    Gateway,
    Partner,
    first_then,
    fixed,
    half_close_server,
    hold_server,
)

TENANT = "acme"  # the tenant the daemons of the package allow the POLICY below
PARTNER = "203.0.113.10"  # partner.test: HTTPS on 443 and 8443, HTTP on 80
PARTNER2 = "198.51.100.10"  # api.partner2.test: HTTPS on 8443
PARTNER6 = "2001:db8:5::10"  # v6.partner.test: HTTPS on 443
GATEWAY = "198.51.100.20"  # the operator's upstream proxy, port 3128
NAMESERVER = "127.0.0.53"
PUBLIC_CIDRS = ("203.0.113.0/24", "198.51.100.0/24", "2001:db8:5::/48")
DECOY_ADDRESSES = (
    "169.254.169.254",  # instance metadata
    "169.254.170.2",  # ECS task metadata and credentials
    "fd00:ec2::254",  # instance metadata over IPv6
    "10.0.0.5",  # a VPC host
    "100.64.0.1",
    "172.16.0.1",
    "192.168.0.1",
    "127.0.0.1",  # the daemon's host loopback services
    "::1",
)
DECOY_PORTS = (80, 443)
ECHO_PORT = 7007  # half_close_server on PARTNER
HOLD_PORT = 7008  # hold_server on PARTNER
SILENT_PORT = 7999  # a full backlog on PARTNER: connects hang

# Every test's tenant allows these; the denial tests show the address rules win regardless.
POLICY = EgressPolicy.parse(
    [
        "partner.test:443,80",
        "*.partner.test:443,8443,80",
        f"{PARTNER}:80,443,{ECHO_PORT},{HOLD_PORT},9,{SILENT_PORT}",
        f"[{PARTNER6}]:443",
        "api.partner2.test:8443",
        "*.evil.test:80,443",
        "169.254.169.254:80",
        "[fd00:ec2::254]:80",
        "10.0.0.5:80",
    ]
)


def zone() -> dict[str, dict[str, Any]]:
    return {
        "partner.test": {"A": fixed(PARTNER)},
        "files.partner.test": {"A": fixed(PARTNER)},
        "v6.partner.test": {"AAAA": fixed(PARTNER6)},
        "api.partner2.test": {"A": fixed(PARTNER2)},
        "metadata.evil.test": {"A": fixed("169.254.169.254")},
        "ecs.evil.test": {"A": fixed("169.254.170.2")},
        "vpc.evil.test": {"A": fixed("10.0.0.5")},
        "loopback.evil.test": {"A": fixed("127.0.0.1")},
        "zero.evil.test": {"A": fixed("0.0.0.0")},
        "cgnat.evil.test": {"A": fixed("100.64.0.1")},
        "meta6.evil.test": {"AAAA": fixed("fd00:ec2::254")},
        "loopback6.evil.test": {"AAAA": fixed("::1")},
        "mapped.evil.test": {"AAAA": fixed("::ffff:169.254.169.254")},
        "nat64.evil.test": {"AAAA": fixed("64:ff9b::a9fe:a9fe")},
        "sixtofour.evil.test": {"AAAA": fixed("2002:a9fe:a9fe::1")},
        "mixed.evil.test": {"A": fixed(PARTNER, "10.0.0.5")},
        "mixed6.evil.test": {"A": fixed(PARTNER), "AAAA": fixed("fd00:ec2::254")},
        "rebind.evil.test": {"A": first_then([PARTNER], ["169.254.169.254"])},
        "rebind-proxy.evil.test": {"A": first_then([PARTNER], ["169.254.169.254"])},
        "slow.partner.test": {"A": fixed(PARTNER)},
    }


@dataclass
class Internet:
    """The namespace and everything listening in it."""

    ns: NetnsLoop
    https: Partner
    http: Partner
    decoys: list[Decoy]
    dns: DnsServer
    gateway: Gateway
    client_tls: ssl.SSLContext
    ca_file: str
    servers: list[asyncio.Server] = field(default_factory=list)

    def decoy_hits(self) -> dict[str, int]:
        return {f"{d.address}:{d.port}": d.hits for d in self.decoys if d.hits}


async def _start(
    internet: Internet, server_tls: ssl.SSLContext, silent: list[socket.socket]
) -> None:
    async def serve(handler: Any, host: str, port: int, tls: ssl.SSLContext | None = None) -> None:
        server = await asyncio.start_server(handler, host, port, ssl=tls, backlog=1024)
        internet.servers.append(server)

    for host, port in ((PARTNER, 443), (PARTNER, 8443), (PARTNER2, 8443), (PARTNER6, 443)):
        await serve(internet.https.serve, host, port, server_tls)
    await serve(internet.http.serve, PARTNER, 80)
    await serve(half_close_server, PARTNER, ECHO_PORT)
    await serve(hold_server, PARTNER, HOLD_PORT)
    await serve(internet.gateway.serve, GATEWAY, 3128)
    for decoy in internet.decoys:
        await serve(decoy.serve, decoy.address, decoy.port)
    await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: internet.dns, local_addr=(NAMESERVER, 53)
    )
    # A listener that never accepts, its backlog filled: the next connect hangs (SYN dropped).
    hung = socket.socket()
    hung.bind((PARTNER, SILENT_PORT))
    hung.listen(0)
    silent.append(hung)
    for _ in range(3):
        filler = socket.socket()
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            filler.connect((PARTNER, SILENT_PORT))
        silent.append(filler)


async def _stop(internet: Internet) -> None:
    for server in internet.servers:
        server.close()
    others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


@pytest.fixture(scope="package")
def internet() -> Iterator[Internet]:
    addresses = [PARTNER, PARTNER2, PARTNER6, GATEWAY, NAMESERVER]
    netns = Netns(
        a for a in addresses + list(DECOY_ADDRESSES) if a not in ("127.0.0.1", "::1", NAMESERVER)
    )
    try:
        routes = netns.routes()
        assert "default" not in routes, routes
        ns = NetnsLoop(netns)
        ca = trustme.CA()
        cert = ca.issue_cert(
            "partner.test", "*.partner.test", "api.partner2.test", PARTNER, PARTNER6
        )
        server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(server_tls)
        client_tls = ssl.create_default_context()
        ca.configure_trust(client_tls)
        with tempfile.NamedTemporaryFile("wb", suffix=".pem", delete=False) as ca_file:
            ca_file.write(ca.cert_pem.bytes())
        internet = Internet(
            ns=ns,
            https=Partner(),
            http=Partner(),
            decoys=[Decoy(a, p) for a in DECOY_ADDRESSES for p in DECOY_PORTS],
            dns=DnsServer(zone(), silent={"slow.partner.test"}),
            gateway=Gateway(),
            client_tls=client_tls,
            ca_file=ca_file.name,
        )
        silent: list[socket.socket] = []
        ns.run(_start(internet, server_tls, silent))
        yield internet
        ns.run(_stop(internet))
        for sock in silent:
            sock.close()
        ns.stop()
    finally:
        netns.remove()


def egress_config(folder: Path, internet: Internet, extra: Sequence[str] = ()) -> Path:
    """A daemon's config file for the namespace: its DNS server and public ranges, the partners'
    CA, and TENANT allowed the package's POLICY and `extra`."""
    config = folder / "sandboxd.toml"
    allow = ", ".join(map(json.dumps, [*map(str, POLICY.destinations), *extra]))
    config.write_text(
        f"egress_nameservers = [{json.dumps(NAMESERVER)}]\n"
        f"egress_public_cidrs = {json.dumps(list(PUBLIC_CIDRS))}\n"
        f"egress_ca_file = {json.dumps(internet.ca_file)}\n"
        f"[egress_allow]\n{TENANT} = [{allow}]\n"
    )
    return config


@pytest.fixture(autouse=True)
def no_decoy_hit(internet: Internet) -> Iterator[None]:
    """Whatever a test does, nothing reaches a decoy."""
    yield
    assert internet.decoy_hits() == {}


@dataclass
class ProxyUnderTest:
    proxy: EgressProxy
    internet: Internet
    records: list[ConnectionRecord]

    def attach(
        self,
        policy: EgressPolicy = POLICY,
        limits: EgressLimits | None = None,
        tenant: str = "acme",
        execution: str = "exec-1",
    ) -> tuple[EgressSession, int]:
        """A session on a fresh listening socket in the namespace; returns it and its port."""
        grant = EgressGrant(tenant, execution, policy, limits or EgressLimits())
        return self.internet.ns.run(self._attach(grant))

    async def _attach(self, grant: EgressGrant) -> tuple[EgressSession, int]:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(4096)
        return self.proxy.attach(listener, grant), listener.getsockname()[1]

    def run(self, coroutine: Any, timeout: float = 60) -> Any:
        return self.internet.ns.run(coroutine, timeout)

    def settled(self, count: int, timeout: float = 30) -> list[ConnectionRecord]:
        """The records, once `count` connections have ended (the proxy records at the end)."""
        self.run(_until(lambda: len(self.records) >= count, timeout), timeout + 5)
        return self.records


async def _until(condition: Callable[[], bool], timeout: float) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


MakeProxy = Callable[..., ProxyUnderTest]


@pytest.fixture
def make_proxy(internet: Internet) -> Iterator[MakeProxy]:
    made: list[EgressProxy] = []

    def make(**options: Any) -> ProxyUnderTest:
        records: list[ConnectionRecord] = []
        settings: dict[str, Any] = {
            "addresses": AddressPolicy.parse(public_cidrs=PUBLIC_CIDRS),
            "nameservers": (NAMESERVER,),
            "static_hosts": {"static.partner.test": PARTNER2},
            "on_connection": records.append,
            "dns_timeout_s": 1.0,
            "header_timeout_s": 2.0,
        }
        settings.update(options)
        proxy = EgressProxy(**settings)
        made.append(proxy)
        return ProxyUnderTest(proxy, internet, records)

    yield make
    for proxy in made:
        internet.ns.run(proxy.close())


@pytest.fixture
def proxy(make_proxy: MakeProxy) -> ProxyUnderTest:
    return make_proxy()
