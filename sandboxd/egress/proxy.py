"""The egress proxy: what the daemon runs on each jail's proxy socket.

One `EgressProxy` per daemon, on its event loop. For each jail the daemon attaches the listening
socket that was made inside the jail's network namespace (`attach`); which socket accepted a
connection tells whose it is, so a jail cannot claim another's grant. Per request: parse strictly,
check the destination against the grant's allowlist, resolve it, check every address, connect to
exactly a checked address, relay. Nothing is read from a CONNECT tunnel (TLS stays end to end) nor
from a forwarded response (redirects are the client's new requests, checked again).

Fairness: connections are capped per execution (its grant), per tenant and in total, and DNS
lookups per tenant, so one tenant flooding connections or slow names cannot take another's egress.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from http import HTTPStatus

import h11

from sandboxd.egress.addresses import DEFAULT_ADDRESS_POLICY, AddressPolicy, IPAddress
from sandboxd.egress.dialer import Dialer, DialError, Streams, Upstream
from sandboxd.egress.hosts import Host, format_host
from sandboxd.egress.records import (
    ConnectionRecord,
    EgressGrant,
    EgressUsage,
    Outcome,
)
from sandboxd.egress.relay import Meter, TunnelClosed, pump, relay, send
from sandboxd.egress.request import (
    ProxyRequest,
    RequestError,
    new_parser,
    read_body,
    read_request,
)
from sandboxd.egress.resolver import ResolutionError, Resolver

log = logging.getLogger("sandboxd.egress")

ConnectionCallback = Callable[[ConnectionRecord], None]
# accept() errors that mean "out of descriptors or memory for now", not "the socket is gone".
_TRANSIENT_ACCEPT_ERRORS = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
LINGER_S = 1.0  # how long an answered client may finish sending before the socket is closed
MAX_REASON_CHARS = 300


class ProxyError(Exception):
    """A request the proxy answers itself, with a status and a reason the step can read."""

    def __init__(self, status: HTTPStatus, reason: str, outcome: Outcome):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.outcome = outcome


@dataclass(slots=True)
class _Attempt:
    """What is known of one connection so far, for its record."""

    host: str = ""
    port: int = 0
    address: str = ""
    outcome: Outcome = Outcome.REJECTED
    status: int = 0
    reason: str = ""


def _header_safe(reason: str) -> str:
    text = reason.encode("ascii", "backslashreplace").decode("ascii")
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:MAX_REASON_CHARS]


def _refusal(error: ProxyError) -> bytes:
    reason = _header_safe(error.reason)
    body = f"{reason}\n".encode("ascii")
    header = (
        "X-Sandboxd-Egress-Denied" if error.outcome is Outcome.DENIED else "X-Sandboxd-Egress-Error"
    )
    head = (
        f"HTTP/1.1 {error.status.value} {error.status.phrase}\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Connection: close\r\n"
        f"{header}: {reason}\r\n\r\n"
    )
    return head.encode("ascii") + body


async def _answer(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, error: ProxyError
) -> None:
    """Sends the refusal, then lets the client finish sending so that closing does not reset
    the connection before the client read the answer."""
    with contextlib.suppress(OSError, TimeoutError):
        writer.write(_refusal(error))
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(LINGER_S):
            while await reader.read(65536):
                pass


class EgressSession:
    """One execution's proxy socket: accepts, serves, counts, and closes everything at the end."""

    def __init__(self, proxy: EgressProxy, listener: socket.socket, grant: EgressGrant):
        self.grant = grant
        self._proxy = proxy
        self._listener = listener
        self._usage = EgressUsage()
        self.open_connections = 0
        self._tasks: set[asyncio.Task[None]] = set()
        listener.setblocking(False)
        self._accepting = asyncio.create_task(self._accept_loop())

    @property
    def usage(self) -> EgressUsage:
        return replace(self._usage)

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                connection, _ = await loop.sock_accept(self._listener)
            except OSError as error:
                if error.errno not in _TRANSIENT_ACCEPT_ERRORS:
                    log.error(
                        "egress: accepting for execution %s: %s", self.grant.execution_id, error
                    )
                    return
                log.warning("egress: accept: %s; retrying", error)
                await asyncio.sleep(0.1)
                continue
            task = asyncio.create_task(self._proxy._serve(self, connection))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        """Stops accepting, closes every tunnel of this execution, and closes the socket."""
        self._accepting.cancel()
        tasks = [self._accepting, *self._tasks]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._listener.close()
        self._proxy._sessions.discard(self)


class EgressProxy:
    def __init__(
        self,
        addresses: AddressPolicy = DEFAULT_ADDRESS_POLICY,
        nameservers: Sequence[str] = (),
        static_hosts: dict[str, str | Sequence[str]] | None = None,
        upstream: str | None = None,
        on_connection: ConnectionCallback | None = None,
        *,
        max_connections: int = 1024,
        max_connections_per_tenant: int = 256,
        max_dns_lookups: int = 64,
        max_dns_lookups_per_tenant: int = 8,
        dns_timeout_s: float = 5.0,
        header_timeout_s: float = 10.0,
    ):
        self._addresses = addresses
        self._resolver = Resolver(nameservers, static_hosts, dns_timeout_s, max_dns_lookups)
        self._dialer = Dialer(self._resolver, Upstream.parse(upstream) if upstream else None)
        self._on_connection = on_connection
        self._max_connections = max_connections
        self._max_per_tenant = max_connections_per_tenant
        self._dns_per_tenant = max_dns_lookups_per_tenant
        self._dns_timeout_s = dns_timeout_s
        self._header_timeout_s = header_timeout_s
        self._open = 0
        self._open_by_tenant: collections.Counter[str] = collections.Counter()
        self._refusing = 0
        self._dns_slots: dict[str, asyncio.Semaphore] = {}
        self._sessions: set[EgressSession] = set()
        if addresses.public_cidrs:
            nets = ", ".join(map(str, addresses.public_cidrs))
            log.warning("egress: treating %s as public: for tests only", nets)

    def attach(self, listener: socket.socket, grant: EgressGrant) -> EgressSession:
        """Serves `grant` on `listener` (a listening TCP socket) until the session is closed.
        Called on the event loop the proxy runs on; the session owns the socket from now on."""
        session = EgressSession(self, listener, grant)
        self._sessions.add(session)
        return session

    async def close(self) -> None:
        for session in list(self._sessions):
            await session.close()

    # -- admission ---------------------------------------------------------------------------

    def _admit(self, session: EgressSession) -> ProxyError | None:
        grant = session.grant
        limit = grant.limits.max_connections
        tenant = grant.tenant_id
        if session.open_connections >= limit:
            reason = (
                f"execution {grant.execution_id} has {limit} egress connections open (its limit)"
            )
            return ProxyError(HTTPStatus.TOO_MANY_REQUESTS, reason, Outcome.LIMITED)
        if self._open_by_tenant[tenant] >= self._max_per_tenant:
            reason = (
                f"tenant {tenant} has {self._max_per_tenant} egress connections open (its limit)"
            )
            return ProxyError(HTTPStatus.TOO_MANY_REQUESTS, reason, Outcome.LIMITED)
        if self._open >= self._max_connections:
            reason = f"the egress proxy is at capacity ({self._max_connections} connections)"
            return ProxyError(HTTPStatus.SERVICE_UNAVAILABLE, reason, Outcome.LIMITED)
        session.open_connections += 1
        self._open_by_tenant[tenant] += 1
        self._open += 1
        return None

    def _release(self, session: EgressSession) -> None:
        session.open_connections -= 1
        self._open_by_tenant[session.grant.tenant_id] -= 1
        if not self._open_by_tenant[session.grant.tenant_id]:
            del self._open_by_tenant[session.grant.tenant_id]
        self._open -= 1

    # -- one connection ----------------------------------------------------------------------

    async def _serve(self, session: EgressSession, connection: socket.socket) -> None:
        started = time.monotonic()
        session._usage.connections += 1
        attempt = _Attempt()
        meter = Meter(session._usage, session.grant.limits)
        refusal = self._admit(session)
        if refusal is not None and self._refusing >= self._max_connections:
            # Even refusing costs a task and a buffer: past this many, drop without an answer.
            connection.close()
            self._finish(session, attempt, meter, started, refusal)
            return
        self._refusing += refusal is not None
        try:
            reader, writer = await asyncio.open_connection(sock=connection)
            try:
                await self._serve_streams(session, (reader, writer), attempt, meter, refusal)
            finally:
                writer.close()
        except Exception as error:  # a bug here must end this connection only, and be seen
            log.exception("egress: connection of execution %s failed", session.grant.execution_id)
            attempt.outcome, attempt.reason = Outcome.FAILED, f"internal error: {error!r}"
        finally:
            if refusal is None:
                self._release(session)
            else:
                self._refusing -= 1
            self._finish(session, attempt, meter, started, None)

    async def _serve_streams(
        self,
        session: EgressSession,
        client: Streams,
        attempt: _Attempt,
        meter: Meter,
        refusal: ProxyError | None,
    ) -> None:
        try:
            await self._handle(session, client, attempt, meter, refusal)
        except ProxyError as error:
            attempt.outcome, attempt.status, attempt.reason = (
                error.outcome,
                error.status.value,
                error.reason,
            )
            await _answer(client[0], client[1], error)
        except TunnelClosed as closed:
            attempt.reason = closed.reason
            if closed.limited:
                attempt.outcome = Outcome.LIMITED
        except (ConnectionError, TimeoutError) as error:
            attempt.reason = f"ended: {error.__class__.__name__}"

    async def _handle(
        self,
        session: EgressSession,
        client: Streams,
        attempt: _Attempt,
        meter: Meter,
        refusal: ProxyError | None,
    ) -> None:
        parser = new_parser()
        request = await self._read_head(client[0], parser)
        attempt.host, attempt.port = format_host(request.host).strip("[]"), request.port
        if refusal is not None:
            raise refusal
        addresses = await self._checked_addresses(session.grant, request)
        _check_body_budget(request, meter)
        try:
            upstream, address = await self._dialer.dial(
                addresses, request.port, session.grant.limits.connect_timeout_s
            )
        except DialError as error:
            status = HTTPStatus.GATEWAY_TIMEOUT if error.timed_out else HTTPStatus.BAD_GATEWAY
            raise ProxyError(status, error.reason, Outcome.FAILED) from None
        attempt.address, attempt.outcome = str(address), Outcome.ALLOWED
        try:
            if request.tunnel:
                attempt.status = HTTPStatus.OK.value
                await _tunnel(client, upstream, request, meter)
            else:
                await _forward(client, upstream, request, parser, meter)
        finally:
            upstream[1].close()

    async def _read_head(
        self, reader: asyncio.StreamReader, parser: h11.Connection
    ) -> ProxyRequest:
        try:
            async with asyncio.timeout(self._header_timeout_s):
                return await read_request(reader, parser)
        except TimeoutError:
            reason = f"no complete request within {self._header_timeout_s:g} s"
            raise ProxyError(HTTPStatus.REQUEST_TIMEOUT, reason, Outcome.REJECTED) from None
        except RequestError as error:
            raise ProxyError(error.status, error.reason, Outcome.REJECTED) from None

    async def _checked_addresses(
        self, grant: EgressGrant, request: ProxyRequest
    ) -> tuple[IPAddress, ...]:
        """The addresses of the request's host, each checked; denials raise 403."""
        host = request.host
        if not isinstance(host, str):
            # An address: what it is matters more than whether someone listed it.
            self._check_address(host, None)
        denial = grant.policy.denial(host, request.port)
        if denial is not None:
            raise ProxyError(HTTPStatus.FORBIDDEN, denial, Outcome.DENIED)
        addresses = await self._resolve(grant.tenant_id, host)
        for address in addresses:
            self._check_address(address, host if isinstance(host, str) else None)
        return addresses

    def _check_address(self, address: IPAddress, name: str | None) -> None:
        reason = self._addresses.deny_reason(address)
        if reason is not None:
            of_name = f" of {name!r}" if name else ""
            raise ProxyError(
                HTTPStatus.FORBIDDEN, f"address {address}{of_name} is {reason}", Outcome.DENIED
            )

    async def _resolve(self, tenant: str, host: Host) -> tuple[IPAddress, ...]:
        slots = self._dns_slots.setdefault(tenant, asyncio.Semaphore(self._dns_per_tenant))
        try:
            # The wait for one of the tenant's lookup slots counts too: a tenant whose names are
            # slow waits for itself, never for another tenant.
            async with asyncio.timeout(self._dns_timeout_s), slots:
                return await self._resolver.resolve(host)
        except TimeoutError:
            reason = f"resolving {format_host(host)!r} timed out after {self._dns_timeout_s:g} s"
            raise ProxyError(HTTPStatus.GATEWAY_TIMEOUT, reason, Outcome.FAILED) from None
        except ResolutionError as error:
            status = HTTPStatus.GATEWAY_TIMEOUT if error.timed_out else HTTPStatus.BAD_GATEWAY
            raise ProxyError(status, error.reason, Outcome.FAILED) from None

    # -- accounting --------------------------------------------------------------------------

    def _finish(
        self,
        session: EgressSession,
        attempt: _Attempt,
        meter: Meter,
        started: float,
        dropped: ProxyError | None,
    ) -> None:
        if dropped is not None:
            attempt.outcome, attempt.reason = dropped.outcome, f"dropped: {dropped.reason}"
        usage = session._usage
        if attempt.outcome is Outcome.DENIED:
            usage.denied += 1
        elif attempt.outcome is Outcome.FAILED:
            usage.failed += 1
        elif attempt.outcome is Outcome.LIMITED:
            usage.limited += 1
        grant = session.grant
        record = ConnectionRecord(
            tenant_id=grant.tenant_id,
            execution_id=grant.execution_id,
            host=attempt.host,
            port=attempt.port,
            outcome=attempt.outcome,
            status=attempt.status,
            reason=attempt.reason,
            address=attempt.address,
            bytes_sent=meter.sent,
            bytes_received=meter.received,
            duration_s=time.monotonic() - started,
        )
        _log(record)
        if self._on_connection is not None:
            try:
                self._on_connection(record)
            except Exception:
                log.exception("egress: on_connection callback failed")


def _log(record: ConnectionRecord) -> None:
    level = logging.WARNING if record.outcome is Outcome.DENIED else logging.INFO
    log.log(
        level,
        "egress tenant=%s execution=%s host=%s port=%d outcome=%s status=%d address=%s"
        " sent=%d received=%d duration_ms=%.0f reason=%s",
        record.tenant_id,
        record.execution_id,
        record.host or "-",
        record.port,
        record.outcome,
        record.status,
        record.address or "-",
        record.bytes_sent,
        record.bytes_received,
        record.duration_s * 1000,
        _header_safe(record.reason) or "-",
    )


def _check_body_budget(request: ProxyRequest, meter: Meter) -> None:
    declared = request.content_length
    if declared is None:
        return
    left = meter.limits.max_bytes_sent - meter.usage.bytes_sent
    if declared > left:
        reason = f"request body of {declared} bytes exceeds the {left} bytes left to send"
        raise ProxyError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, reason, Outcome.LIMITED)


async def _tunnel(client: Streams, upstream: Streams, request: ProxyRequest, meter: Meter) -> None:
    client[1].write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    if request.early_data:
        await send(upstream[1], request.early_data, meter, meter.count_sent)
    await relay(client, upstream, meter)


async def _forward(
    client: Streams,
    upstream: Streams,
    request: ProxyRequest,
    parser: h11.Connection,
    meter: Meter,
) -> None:
    """Sends the rebuilt request and its body, then relays the response until the origin closes
    (the request said `Connection: close`): one request per connection, response unread."""
    framer = h11.Connection(h11.CLIENT)
    head = h11.Request(method=request.method, target=request.target, headers=list(request.headers))
    await send(upstream[1], framer.send(head) or b"", meter, meter.count_sent)
    if request.expects_continue:
        client[1].write(b"HTTP/1.1 100 Continue\r\n\r\n")
    try:
        async for chunk in read_body(client[0], parser, meter.limits.idle_timeout_s):
            data = framer.send(h11.Data(data=chunk)) or b""
            await send(upstream[1], data, meter, meter.count_sent)
    except RequestError as error:
        raise ProxyError(error.status, error.reason, Outcome.REJECTED) from None
    except TimeoutError:
        raise TunnelClosed(
            f"closed: request body idle for {meter.limits.idle_timeout_s:g} s", limited=False
        ) from None
    await send(upstream[1], framer.send(h11.EndOfMessage()) or b"", meter, meter.count_sent)
    await pump(upstream[0], client[1], meter, meter.count_received)
