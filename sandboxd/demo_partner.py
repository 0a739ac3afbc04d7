"""The demo's outside world: a partner that serves the order export and an API that takes the
orders, both over HTTPS on this machine's loopback, under the names a real integration would use.

`sandboxd demo` starts them before its daemon and gives the daemon what an operator would: the
demo tenant's egress allowlist naming both hosts, a static hosts entry for each name (there is no
DNS for them), their addresses treated as public (they are on loopback, which the egress rules
deny otherwise), and the demo CA the steps trust. The steps then reach them with plain `fetch`,
through the daemon's egress proxy, exactly as they would reach Dropbox and a partner's API.
"""

from __future__ import annotations

import json
import ssl
import tempfile
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trustme

FILES_HOST = "files.partner.example"
API_HOST = "api.partner.example"
# Two loopback addresses of their own, so treating them as public opens nothing else on it.
PARTNER_NETWORK = "127.77.0.0/24"
_ADDRESSES = {FILES_HOST: "127.77.0.1", API_HOST: "127.77.0.2"}
EXPORT_PATH = "/exports/orders.xml"
IMPORT_PATH = "/v2/orders:batchImport"
_MAX_BODY = 16 * 1024 * 1024


@dataclass
class Received:
    """What the partner API was sent: the demo shows it, the tests check it."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class Partners:
    """The running partner servers and what the daemon must be told to reach them."""

    export_url: str
    import_url: str
    allowlist: tuple[str, ...]  # the demo tenant's egress allowlist
    static_hosts: dict[str, str]
    ca_file: str  # the demo CA's certificate (PEM), for egress_ca_file
    received: Received


@contextmanager
def partner_servers(document: str, token: str) -> Iterator[Partners]:
    """Serve `document` at the export URL and take orders authorised by `token`, until exit."""
    authority = trustme.CA(organization_name="sandboxd demo CA")
    received = Received()
    with ExitStack() as stack:
        ca_file = stack.enter_context(tempfile.NamedTemporaryFile(suffix=".pem"))
        authority.cert_pem.write_to_path(ca_file.name)
        ports = {}
        for host, handler in (
            (FILES_HOST, _export_handler(document)),
            (API_HOST, _import_handler(token, received)),
        ):
            server = ThreadingHTTPServer((_ADDRESSES[host], 0), handler)
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            authority.issue_cert(host).configure_cert(context)
            server.socket = context.wrap_socket(server.socket, server_side=True)
            threading.Thread(target=server.serve_forever, name=host, daemon=True).start()
            stack.callback(server.server_close)
            stack.callback(server.shutdown)
            ports[host] = server.server_address[1]
        yield Partners(
            export_url=f"https://{FILES_HOST}:{ports[FILES_HOST]}{EXPORT_PATH}",
            import_url=f"https://{API_HOST}:{ports[API_HOST]}{IMPORT_PATH}",
            allowlist=tuple(f"{host}:{port}" for host, port in ports.items()),
            static_hosts=dict(_ADDRESSES),
            ca_file=ca_file.name,
            received=received,
        )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the demo prints what the steps did, not an access log."""

    def _reply(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: HTTPStatus, value: object) -> None:
        self._reply(status, json.dumps(value).encode(), "application/json")


def _export_handler(document: str) -> type[_Handler]:
    body = document.encode()

    class Export(_Handler):
        def do_GET(self) -> None:
            if self.path != EXPORT_PATH:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no file at {self.path}"})
                return
            self._reply(HTTPStatus.OK, body, "application/xml; charset=utf-8")

    return Export


def _import_handler(token: str, received: Received) -> type[_Handler]:
    class Import(_Handler):
        def do_POST(self) -> None:
            if self.path != IMPORT_PATH:
                self._json(HTTPStatus.NOT_FOUND, {"error": f"no API at {self.path}"})
                return
            if self.headers.get("Authorization") != f"Bearer {token}":
                self._json(HTTPStatus.UNAUTHORIZED, {"error": "bad or missing token"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if not 0 < length <= _MAX_BODY:
                self._json(HTTPStatus.BAD_REQUEST, {"error": "a JSON body is required"})
                return
            orders = json.loads(self.rfile.read(length))["orders"]
            with received.lock:
                received.requests.append(
                    {"orders": len(orders), "bytes": length, "key": self.headers["Idempotency-Key"]}
                )
                batch = f"batch-{len(received.requests):04d}"
            self._json(HTTPStatus.ACCEPTED, {"batchId": batch, "accepted": len(orders)})

    return Import
