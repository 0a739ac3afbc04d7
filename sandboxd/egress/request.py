"""Reading what a jail asks the egress proxy, strictly: `CONNECT host:port` or an absolute URI.

h11 parses the request head (bounded size, one request) and the body of a forwarded request
(Content-Length or chunked, never both: a proxy that trusts one framing while the origin trusts
the other lets a request smuggle a second one). The forwarded request is rebuilt, not copied:
origin-form target, Host set to the checked destination, hop-by-hop and proxy headers removed,
`Connection: close`, re-framed by h11 again.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http import HTTPStatus

import h11

from sandboxd.egress.hosts import Host, HostError, format_host, parse_host

MAX_HEAD_BYTES = 16 * 1024
MAX_HEADERS = 100
READ_SIZE = 64 * 1024
HTTP_PORT = 80
_PORT = re.compile(r"^[0-9]{1,5}$")
# Headers about this hop (RFC 9110 7.6.1) or about the proxy, never sent on; Expect is answered
# by the proxy itself, Upgrade would turn a forwarded request into a tunnel the policy never saw.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"upgrade",
        b"expect",
        b"host",
    }
)


class RequestError(Exception):
    """A request the proxy refuses to read further, with the HTTP status that says why."""

    def __init__(self, status: HTTPStatus, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    tunnel: bool  # CONNECT; otherwise an absolute-URI request to forward
    host: Host
    port: int
    method: bytes = b"CONNECT"
    target: bytes = b""  # origin-form, for forwards
    headers: tuple[tuple[bytes, bytes], ...] = ()  # what is sent on, for forwards
    expects_continue: bool = False
    content_length: int | None = None
    early_data: bytes = b""  # bytes the client sent after a CONNECT head, before our answer

    @property
    def authority(self) -> str:
        return f"{format_host(self.host)}:{self.port}"


def split_authority(text: str, default_port: int | None) -> tuple[Host, int]:
    """The host and port of "host:port", "[v6]:port" (or just the host, given a default port)."""
    if text.startswith("["):
        host_text, _, rest = text.partition("]")
        host_text += "]"
        if rest and not rest.startswith(":"):
            raise RequestError(HTTPStatus.BAD_REQUEST, f"malformed authority {text!r}")
        port_text = rest[1:] if rest else None
    elif ":" in text:
        host_text, _, port_text = text.rpartition(":")
    else:
        host_text, port_text = text, None
    if port_text is None:
        if default_port is None:
            raise RequestError(HTTPStatus.BAD_REQUEST, f"CONNECT target {text!r} has no port")
        port = default_port
    elif _PORT.match(port_text) and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise RequestError(HTTPStatus.BAD_REQUEST, f"bad port in {text!r}")
    try:
        return parse_host(host_text), port
    except HostError as error:
        raise RequestError(HTTPStatus.BAD_REQUEST, str(error)) from None


def _absolute_uri(target: str) -> tuple[Host, int, bytes]:
    """Host, port and origin-form target of "http://host[:port][/path][?query]"."""
    scheme, separator, rest = target.partition("://")
    if not separator or scheme.lower() != "http":
        raise RequestError(
            HTTPStatus.BAD_REQUEST,
            "the egress proxy takes CONNECT host:port or an absolute http:// URI"
            " (https goes through CONNECT)",
        )
    if "#" in rest or "\\" in rest:
        raise RequestError(HTTPStatus.BAD_REQUEST, "request target has a fragment or backslash")
    cut = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    authority, path = rest[:cut], rest[cut:]
    if "@" in authority:
        raise RequestError(HTTPStatus.BAD_REQUEST, "request target carries credentials")
    host, port = split_authority(authority, HTTP_PORT)
    if not path.startswith("/"):
        path = "/" + path
    return host, port, path.encode("ascii")


def _forwarded_headers(
    request: h11.Request, host: Host, port: int
) -> tuple[tuple[bytes, bytes], ...]:
    named_by_connection = {
        token.strip().lower()
        for name, value in request.headers
        if name == b"connection"
        for token in value.split(b",")
    }
    authority = format_host(host) if port == HTTP_PORT else f"{format_host(host)}:{port}"
    kept = [
        (name, value)
        for name, value in request.headers
        if name not in _HOP_BY_HOP and name not in named_by_connection
    ]
    return ((b"host", authority.encode("ascii")), *kept, (b"connection", b"close"))


def _content_length(request: h11.Request) -> int | None:
    names = {name for name, _ in request.headers}
    if b"content-length" in names and b"transfer-encoding" in names:
        raise RequestError(
            HTTPStatus.BAD_REQUEST, "request has both Content-Length and Transfer-Encoding"
        )
    for name, value in request.headers:
        if name == b"content-length":
            return int(value)
    return None


def _to_proxy_request(request: h11.Request, parser: h11.Connection) -> ProxyRequest:
    if len(request.headers) > MAX_HEADERS:
        raise RequestError(
            HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, f"more than {MAX_HEADERS} header fields"
        )
    try:
        target = request.target.decode("ascii")
    except UnicodeDecodeError:
        raise RequestError(HTTPStatus.BAD_REQUEST, "request target is not ASCII") from None
    if request.method == b"CONNECT":
        host, port = split_authority(target, None)
        early, _ = parser.trailing_data
        return ProxyRequest(tunnel=True, host=host, port=port, early_data=bytes(early))
    host, port, origin_target = _absolute_uri(target)
    expects = any(
        name == b"expect" and value.lower() == b"100-continue" for name, value in request.headers
    )
    return ProxyRequest(
        tunnel=False,
        host=host,
        port=port,
        method=request.method,
        target=origin_target,
        headers=_forwarded_headers(request, host, port),
        expects_continue=expects,
        content_length=_content_length(request),
    )


def _next_event(parser: h11.Connection) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
    try:
        return parser.next_event()
    except h11.RemoteProtocolError as error:
        status = HTTPStatus(error.error_status_hint)
        raise RequestError(status, f"malformed request: {error}") from None


async def read_request(reader: asyncio.StreamReader, parser: h11.Connection) -> ProxyRequest:
    """The next request head from `reader` (the caller bounds the time it may take).

    At most MAX_HEAD_BYTES are read for the head: h11 bounds only a head that arrives in pieces.
    """
    received = 0
    while True:
        event = _next_event(parser)
        if isinstance(event, h11.Request):
            return _to_proxy_request(event, parser)
        if event is not h11.NEED_DATA:
            raise RequestError(HTTPStatus.BAD_REQUEST, "malformed request")
        if received >= MAX_HEAD_BYTES:
            raise RequestError(
                HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                f"request head larger than {MAX_HEAD_BYTES} bytes",
            )
        data = await reader.read(MAX_HEAD_BYTES - received)
        received += len(data)
        if not data:
            raise RequestError(HTTPStatus.BAD_REQUEST, "connection closed before a full request")
        parser.receive_data(data)


async def read_body(
    reader: asyncio.StreamReader, parser: h11.Connection, idle_timeout_s: float
) -> AsyncIterator[bytes]:
    """The body of the request `parser` has read the head of, chunk by chunk."""
    while True:
        event = _next_event(parser)
        if isinstance(event, h11.Data):
            yield bytes(event.data)
        elif isinstance(event, h11.EndOfMessage):
            return
        elif event is h11.NEED_DATA:
            async with asyncio.timeout(idle_timeout_s):
                data = await reader.read(READ_SIZE)
            if not data:
                raise RequestError(HTTPStatus.BAD_REQUEST, "connection closed inside the body")
            parser.receive_data(data)
        else:
            raise RequestError(HTTPStatus.BAD_REQUEST, "malformed request body")


def new_parser() -> h11.Connection:
    return h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
