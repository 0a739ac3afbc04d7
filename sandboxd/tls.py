"""The daemon's TLS: its certificate and key, and the CA that signs its clients' (mTLS).

Certificates rotate without a restart: gRPC asks for the certificate configuration at each new
connection's handshake, and the files are read again when one of them changed (size, time or
inode: an atomic rename counts). Connections already open keep the certificate they started
with. Rotate by writing new files beside the old ones and renaming them into place, key first.
"""

from __future__ import annotations

import logging
import os
import threading

import grpc

log = logging.getLogger(__name__)


class CertificateFiles:
    """The PEM files of the daemon's TLS, read again whenever one of them changes."""

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str = ""):
        self._paths = tuple(path for path in (cert_file, key_file, client_ca_file) if path)
        self._cert_file, self._key_file, self._client_ca_file = cert_file, key_file, client_ca_file
        self._lock = threading.Lock()  # handshakes run on gRPC's threads
        self._seen = self._stamps()

    def credentials(self) -> grpc.ServerCredentials:
        """Server credentials that follow the files; client certificates required with a CA."""
        return grpc.dynamic_ssl_server_credentials(
            self._configuration(),
            self._changed_configuration,
            require_client_authentication=bool(self._client_ca_file),
        )

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        key, chain = _read(self._key_file), _read(self._cert_file)
        client_ca = _read(self._client_ca_file) if self._client_ca_file else None
        return grpc.ssl_server_certificate_configuration([(key, chain)], client_ca)

    def _changed_configuration(self) -> grpc.ServerCertificateConfiguration | None:
        """Called by gRPC before each handshake: a new configuration, or None for "unchanged"."""
        with self._lock:
            try:
                stamps = self._stamps()
                if stamps == self._seen:
                    return None
                configuration = self._configuration()
            except OSError as exc:
                log.warning("TLS files unreadable, keeping the previous ones: %s", exc)
                return None
            self._seen = stamps
            log.info("TLS certificate files changed: new connections use them")
            return configuration

    def _stamps(self) -> tuple[tuple[int, int, int], ...]:
        stats = [os.stat(path) for path in self._paths]
        return tuple((stat.st_ino, stat.st_size, stat.st_mtime_ns) for stat in stats)


def _read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()
