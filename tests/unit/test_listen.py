"""Where the daemon listens, and whether plaintext is allowed there."""

from __future__ import annotations

import socket
from dataclasses import replace

import pytest

from sandboxd.config import ConfigError, Settings
from sandboxd.listen import parse_listen, transport_security, unavailable_reason


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.8.9.10:1", True),
        ("[::1]:50051", True),
        ("localhost:50051", True),
        ("unix:/run/sandboxd.sock", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.0.0.5:50051", False),
        ("sandboxd.internal:50051", False),
    ],
)
def test_loopback_addresses(listen: str, loopback: bool) -> None:
    assert parse_listen(listen).loopback is loopback


def test_unix_paths() -> None:
    assert parse_listen("unix:///run/x.sock").path == "/run/x.sock"
    assert parse_listen("unix:relative.sock").path == "relative.sock"


def test_plaintext_off_loopback_is_refused_unless_insecure() -> None:
    with pytest.raises(ConfigError, match="is not a loopback address"):
        replace(Settings(), listen="0.0.0.0:50051").validate()
    insecure = replace(Settings(), listen="0.0.0.0:50051", insecure=True).validate()
    assert transport_security(insecure) == "insecure"
    assert transport_security(replace(Settings(), listen="unix:/tmp/s.sock")) == "unix"


def test_tls_settings_go_together() -> None:
    with pytest.raises(ConfigError, match="tls_cert_file and tls_key_file go together"):
        replace(Settings(), tls_cert_file="/etc/hostname").validate()
    with pytest.raises(ConfigError, match="tls_client_ca_file needs tls_cert_file"):
        replace(Settings(), tls_client_ca_file="/etc/hostname").validate()


def test_request_limits_have_ceilings_and_minimums() -> None:
    with pytest.raises(ConfigError, match="max_input_depth must be between 1 and 512"):
        replace(Settings(), max_input_depth=1000).validate()
    with pytest.raises(ConfigError, match="must fit the runner's frame header"):
        replace(Settings(), max_credential_bytes=150_000, max_config_var_bytes=150_000).validate()


def test_a_port_in_use_is_named() -> None:
    with socket.create_server(("127.0.0.1", 0)) as holder:
        port = holder.getsockname()[1]
        assert unavailable_reason(parse_listen(f"127.0.0.1:{port}")) == "Address already in use"
    assert unavailable_reason(parse_listen("127.0.0.1:0")) == ""
