"""One typed settings object: defaults < TOML file < SANDBOXD_* environment < command-line flags."""

from __future__ import annotations

import functools
import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from typing import Any

from sandboxd.egress import AddressPolicy, EgressPolicy
from sandboxd.exporters import EXPORTERS
from sandboxd.limits import CONTEXT_BYTES, REQUEST_LIMIT_CEILINGS, Limits, minimum_of
from sandboxd.listen import check_transport
from sandboxd.tenants import TenantLimits, TenantPolicy

ENV_PREFIX = "SANDBOXD_"
DEFAULT_ROOTFS = "/var/lib/sandboxd/rootfs"


class ConfigError(ValueError):
    """The settings are not valid; the message names the setting."""


@dataclass(frozen=True, slots=True)
class Settings:
    listen: str = "127.0.0.1:50051"
    rootfs: str = DEFAULT_ROOTFS
    pool_size: int = 4  # warm jails kept ready
    pool_max: int = 32  # jails alive at once, warm and leased
    # Warm jails (at most pool_size) kept for tenants below their share of the jails granted
    # lately, and as many admission slots above max_running for a tenant with nothing running
    # (docs/architecture.md).
    pool_reserve: int = 2
    # Executions running at once. Beyond it they wait in fair admission (round robin over
    # tenants), not first come first served for a jail: 0 means four per core.
    max_running: int = 0
    uid_base: int = 200_000  # jails run as host uids uid_base .. uid_base + pool_max - 1
    seccomp: bool = True
    cgroups: str = "auto"  # auto | v2 | v1 | none ("none" must be chosen explicitly)
    cpu_quota: float = 1.0  # cores per jail
    max_steps: int = 64
    max_session_steps: int = 100_000
    session_idle_timeout_s: float = 60.0
    max_code_bytes: int = 1024 * 1024
    max_input_bytes: int = 64 * 1024 * 1024
    # Request limits (each refused as INVALID_REQUEST naming it; ceilings in limits.py).
    # One request message; larger inputs go chunked. gRPC copies a message into Python on the
    # event loop, ~3 ms per MiB in one turn (docs/security.md): 2 MiB keeps that under 10 ms.
    max_request_bytes: int = 2 * 1024 * 1024
    max_input_depth: int = 256  # arrays/objects nested in an input
    max_credentials: int = 64
    max_credential_bytes: int = 64 * 1024  # names and values of all credentials together
    max_config_vars: int = 256
    max_config_var_bytes: int = 128 * 1024  # names and values of all config vars together
    # Transport (docs/security.md "The service boundary"). With a certificate and key the port
    # speaks TLS; with a client CA too, only clients with a certificate it signed get in (mTLS).
    # Files are read again when they change, for new connections.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    insecure: bool = False  # allow plaintext on an address that is not loopback
    shutdown_grace_s: float = 30.0
    tenant_max_concurrent: int = 16  # per tenant, on this daemon
    tenant_max_queued: int = 100  # per tenant; beyond it QUOTA_EXCEEDED at once
    # Per-tenant overrides, TOML: [tenants.acme] max_concurrent = 4, max_queued = 10
    tenants: dict[str, dict[str, int]] = field(default_factory=dict)
    telemetry_exporter: str = "none"  # none | console | otlp (OTEL_* variables honoured)
    redis_url: str = ""  # set: also run executions queued in Redis (distributed mode)
    worker_id: str = ""  # empty: host name and pid
    queue_visibility_timeout_s: float = 30.0  # a dead worker's entry is re-run after this
    queue_max_attempts: int = 3  # then the execution goes to the dead-letter stream
    queue_retention_s: float = 86_400.0  # events and results stay readable this long
    queue_retry_backoff_s: float = 1.0  # first retry delay of CRASHED / UNAVAILABLE, doubling
    queue_metrics_top_tenants: int = 20  # queue depth metrics name these tenants, sum the rest
    # Egress (docs/egress.md). Per tenant, the destinations its steps may reach through the
    # daemon's proxy; a request may narrow them. TOML: [egress_allow] acme = ["api.partner.com",
    # "*.dropbox.com:443,8443"]. A tenant not listed has no egress.
    egress_allow: dict[str, list[str]] = field(default_factory=dict)
    egress_deny_cidrs: tuple[str, ...] = ()  # denied on top of the built-in ranges
    egress_public_cidrs: tuple[str, ...] = ()  # treated as public: for tests and demos only
    egress_nameservers: tuple[str, ...] = ()  # empty: the host's /etc/resolv.conf
    egress_static_hosts: dict[str, str] = field(default_factory=dict)  # name -> address
    egress_upstream_proxy: str = ""  # "http://host:port": all egress through this gateway
    egress_ca_file: str = ""  # PEM: CAs steps trust besides Node's own
    egress_max_connections: int = 1024  # open at once through this daemon
    egress_tenant_max_connections: int = 256  # open at once by one tenant's executions
    defaults: Limits = field(default_factory=Limits)
    ceilings: Limits = field(
        default_factory=lambda: Limits(
            timeout_ms=300_000,
            cpu_time_ms=600_000,
            memory_bytes=4096 * 1024 * 1024,
            pids=512,
            open_files=4096,
            file_size_bytes=1024 * 1024 * 1024,
            tmpfs_bytes=1024 * 1024 * 1024,
            log_bytes=16 * 1024 * 1024,
            result_bytes=256 * 1024 * 1024,
            log_lines=1_000_000,
            egress_connections=256,
            egress_connect_timeout_ms=60_000,
            egress_idle_timeout_ms=600_000,
            egress_bytes_sent=1024 * 1024 * 1024,
            egress_bytes_received=4096 * 1024 * 1024,
        )
    )

    def validate(self) -> Settings:
        if self.pool_size < 0 or self.pool_max < 1 or self.pool_size > self.pool_max:
            raise ConfigError("pool_size must be between 0 and pool_max, pool_max at least 1")
        if self.pool_reserve < 0:  # above pool_size it is capped at pool_size
            raise ConfigError("pool_reserve must be at least 0")
        if self.uid_base < 1000:
            raise ConfigError("uid_base must be an unprivileged host uid (>= 1000)")
        if self.cgroups not in ("auto", "v2", "v1", "none"):
            raise ConfigError("cgroups must be auto, v2, v1 or none")
        if self.telemetry_exporter not in EXPORTERS:
            raise ConfigError(f"telemetry_exporter must be one of {', '.join(EXPORTERS)}")
        try:
            self.tenant_policy()
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"tenant limits: {exc}") from None
        for item in fields(Limits):
            if getattr(self.defaults, item.name) > getattr(self.ceilings, item.name):
                raise ConfigError(f"default limit {item.name} is above its ceiling")
        self._validate_egress()
        self._validate_boundary()
        return self

    def _validate_boundary(self) -> None:
        for name, ceiling in REQUEST_LIMIT_CEILINGS.items():
            value = getattr(self, name)
            if not 1 <= value <= ceiling:
                raise ConfigError(f"{name} must be between 1 and {ceiling}")
        if self.max_credential_bytes + self.max_config_var_bytes > CONTEXT_BYTES:
            raise ConfigError(
                f"max_credential_bytes + max_config_var_bytes must fit the runner's frame header"
                f" ({CONTEXT_BYTES} bytes)"
            )
        for item in fields(Limits):
            if getattr(self.defaults, item.name) < minimum_of(item.name):
                raise ConfigError(
                    f"default limit {item.name} is below its minimum {minimum_of(item.name)}"
                )
        try:
            check_transport(self)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def _validate_egress(self) -> None:
        try:
            for tenant in self.egress_allow:
                self.egress_policy(tenant)
            self.egress_addresses()
        except ValueError as exc:  # EgressPolicyError included
            raise ConfigError(f"egress: {exc}") from None
        if self.egress_ca_file and not os.access(self.egress_ca_file, os.R_OK):
            raise ConfigError(f"egress_ca_file {self.egress_ca_file}: not readable")

    def egress_policy(self, tenant_id: str) -> EgressPolicy:
        """The destinations `tenant_id`'s executions may reach at most."""
        return _parsed_policy(tuple(self.egress_allow.get(tenant_id, ())))

    def egress_addresses(self) -> AddressPolicy:
        return AddressPolicy.parse(self.egress_deny_cidrs, self.egress_public_cidrs)

    def running_capacity(self) -> int:
        wanted = self.max_running or 4 * (os.cpu_count() or 1)
        return min(wanted, self.pool_max)

    def tenant_policy(self) -> TenantPolicy:
        overrides = {tenant: TenantLimits(**limits) for tenant, limits in self.tenants.items()}
        default = TenantLimits(self.tenant_max_concurrent, self.tenant_max_queued)
        return TenantPolicy(default, overrides)


@functools.cache
def _parsed_policy(entries: tuple[str, ...]) -> EgressPolicy:
    return EgressPolicy.parse(entries)


def load(path: str | None = None, env: dict[str, str] | None = None, **flags: Any) -> Settings:
    """Settings from the defaults, then `path` (TOML), then the environment, then `flags`."""
    settings = Settings()
    if path:
        settings = _apply(settings, _read_toml(path), source=path)
    settings = _apply(settings, _from_env(os.environ if env is None else env), source="env")
    given = {key: value for key, value in flags.items() if value is not None}
    return _apply(settings, given, source="flags").validate()


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from None


def _from_env(env: dict[str, str] | os._Environ[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, value in env.items():
        if key.startswith(ENV_PREFIX):
            values[key[len(ENV_PREFIX) :].lower()] = value
    return values


def _apply(settings: Settings, values: dict[str, Any], source: str) -> Settings:
    changes: dict[str, Any] = {}
    types = {item.name: item.type for item in fields(Settings)}
    for key, value in values.items():
        if key not in types:
            raise ConfigError(f"{source}: unknown setting {key!r}")
        try:
            changes[key] = _convert(settings, key, value)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: setting {key}: {exc}") from None
    return replace(settings, **changes)


def _convert(settings: Settings, key: str, value: Any) -> Any:
    current = getattr(settings, key)
    if isinstance(current, Limits):
        if not isinstance(value, dict):
            raise TypeError("expected a table of limits")
        return Limits.from_mapping(value, base=current)
    if isinstance(current, dict):
        if not isinstance(value, dict):
            raise TypeError("expected a table")
        return value
    if isinstance(current, tuple):
        # A TOML array, or a comma-separated environment variable.
        items = value.split(",") if isinstance(value, str) else value
        return tuple(str(item).strip() for item in items if str(item).strip())
    if isinstance(current, bool):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on"):
            return True
        if str(value).lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"not a boolean: {value!r}")
    return type(current)(value)
