"""The daemon's lifecycle: build the parts in order, serve, and shut down cleanly.

Order matters: the fork server starts first, before gRPC creates any thread, and it is the last
to go, taking every jail it started with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Sequence
from typing import cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.exceptions import RedisError

from sandbox_client.redisqueue.store import QueueDepth
from sandbox_client.v1 import sandbox_pb2
from sandboxd import memory, preflight
from sandboxd.config import ConfigError, Settings
from sandboxd.decoding import add_service
from sandboxd.egress import EgressProxy
from sandboxd.executions import EgressGateway, Executor
from sandboxd.exporters import ExporterKind
from sandboxd.jail import cgroups
from sandboxd.jail.handle import JailLauncher
from sandboxd.listen import (
    UNIX_PREFIXES,
    parse_listen,
    transport_security,
    unavailable_reason,
)
from sandboxd.pool import JailPool
from sandboxd.queue.worker import QueueOptions, QueueWorker, default_worker_id
from sandboxd.server import SandboxService
from sandboxd.telemetry import Telemetry
from sandboxd.tenants import Admission
from sandboxd.tls import CertificateFiles

log = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 80 * 1024 * 1024
# How far over max_request_bytes a message is still read, to be refused with the limit named.
_READ_OVER_LIMIT_BYTES = 1024 * 1024
_SERVICE_NAME = sandbox_pb2.DESCRIPTOR.services_by_name["SandboxService"].full_name
_HEALTH_INTERVAL_S = 1.0
_TELEMETRY_FLUSH_S = 5.0
_FINAL_EVENTS_S = 2.0
_QUEUE_DEPTH_INTERVAL_S = 5.0  # for cancelled executions to send their last events
_KEEPALIVE_S = 10
_KEEPALIVE_TIMEOUT_S = 5


def open_cgroups(settings: Settings) -> tuple[cgroups.CgroupDriver | None, str]:
    """The cgroup driver the settings ask for; ConfigError if cgroups are wanted but unusable."""
    if settings.cgroups == "none":
        log.warning("running WITHOUT cgroups: no memory, pids or cpu limits on jails")
        return None, "none"
    mode = (
        cgroups.detect()
        if settings.cgroups == "auto"
        else cast(cgroups.CgroupMode, settings.cgroups)
    )
    if mode == "none":
        raise ConfigError("no usable cgroup hierarchy; start with --cgroups none to run without")
    try:
        driver = cgroups.open_driver(mode, cgroups.daemon_parent_name())
        for name in cgroups.remove_dead_daemons(driver, mode):
            log.warning("removed cgroups left by a dead daemon: %s", name)
        return driver, mode
    except cgroups.CgroupError as exc:
        raise ConfigError(
            f"cgroups ({mode}): {exc}; start with --cgroups none to run without"
        ) from None


class Daemon:
    """A running sandboxd: fork server, pool, gRPC server with health and reflection."""

    def __init__(self, settings: Settings, telemetry: Telemetry | None = None):
        """`telemetry` replaces the one the settings describe (tests inject in-memory exporters)."""
        self.settings = settings
        self._given_telemetry = telemetry
        self.port = 0
        self.service: SandboxService | None = None
        self.executor: Executor | None = None
        self._egress: EgressGateway | None = None
        self.admission: Admission | None = None
        self.queue: QueueWorker | None = None
        self._queue_depth: QueueDepth | None = None
        self._queue_depth_task: asyncio.Task[None] | None = None
        self.telemetry: Telemetry | None = None
        self._launcher: JailLauncher | None = None
        self._pool: JailPool | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health.aio.HealthServicer()
        self._health_task: asyncio.Task[None] | None = None
        self._memory_task: asyncio.Task[None] | None = None
        self._cgroups: cgroups.CgroupDriver | None = None

    async def start(self) -> None:
        """Start every part; a start that fails stops what it had started and leaves nothing."""
        try:
            await self._start()
        except BaseException:
            await self._close_parts()
            raise

    async def _start(self) -> None:
        settings = self.settings
        preflight.run(settings)  # refuses to start, naming the privilege a jail would lack
        self._cgroups, mode = open_cgroups(settings)
        self._launcher = await JailLauncher.start(seccomp=settings.seccomp)
        self.telemetry = self._given_telemetry or Telemetry.setup(
            cast(ExporterKind, settings.telemetry_exporter)
        )
        self.admission = Admission(
            settings.tenant_policy(),
            capacity=settings.running_capacity(),
            spare=settings.pool_reserve,  # as many as the warm jails kept for quiet tenants
        )
        self._pool = JailPool(
            self._launcher,
            rootfs=settings.rootfs,
            limits=settings.defaults.jail_limits(settings.cpu_quota),
            size=settings.pool_size,
            maximum=settings.pool_max,
            uid_base=settings.uid_base,
            cgroups=self._cgroups,
            reserve=settings.pool_reserve,
            on_started=self.telemetry.jail_started,
        )
        self._egress = _egress_gateway(settings, self.telemetry)
        self.executor = Executor(self._pool, self.admission, self.telemetry, self._egress)
        self.service = SandboxService(
            settings,
            self.executor,
            cgroup_mode=mode,
            transport_security=transport_security(settings),
        )
        # The port is bound before any jail starts: a daemon that cannot listen starts none.
        address = parse_listen(settings.listen)
        rpc_telemetry = self.telemetry.rpc_interceptor(
            address.path if address.unix else address.host
        )
        self._server = self._make_server(self.service, rpc_telemetry)
        self.port = _bind(self._server, settings)
        rpc_telemetry.server_port = None if address.unix else self.port
        await self._pool.start()
        self.telemetry.watch_pool(self._pool)
        self.telemetry.watch_admission(self.admission)
        if settings.redis_url:
            self.queue = QueueWorker(
                settings.redis_url,
                self.executor,
                settings,
                settings.worker_id or default_worker_id(),
                QueueOptions(
                    visibility_timeout_s=settings.queue_visibility_timeout_s,
                    max_attempts=settings.queue_max_attempts,
                    retention_s=settings.queue_retention_s,
                    retry_backoff_s=settings.queue_retry_backoff_s,
                    depth_top_tenants=settings.queue_metrics_top_tenants,
                ),
            )
            self.service.queue = self.queue
            await self.queue.start()
            self._queue_depth_task = asyncio.create_task(self._watch_queue_depth(self.queue))
            self.telemetry.watch_queue(lambda: self._queue_depth)
        await self._server.start()
        self._health_task = asyncio.create_task(self._watch_health())
        self._memory_task = asyncio.create_task(memory.give_back_after_growth())
        log.info(
            "sandboxd listening on %s port %d, %s (cgroups %s, seccomp %s)",
            settings.listen,
            self.port,
            self.service.transport_security,
            mode,
            "on" if settings.seccomp else "OFF",
        )

    def _make_server(
        self, service: SandboxService, rpc_telemetry: grpc.aio.ServerInterceptor
    ) -> grpc.aio.Server:
        server = grpc.aio.server(
            interceptors=[rpc_telemetry], options=_server_options(self.settings.max_request_bytes)
        )
        add_service(service, server, self.settings.max_request_bytes)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        return server

    async def _watch_health(self) -> None:
        """SERVING only while the pool can hand out jails and the daemon is not draining."""
        while True:
            assert self.service is not None
            # Not status(): that gathers host figures (psutil), which health does not need.
            serving = self.service.serving and (self.queue is None or self.queue.connected)
            status = (
                health_pb2.HealthCheckResponse.SERVING
                if serving
                else health_pb2.HealthCheckResponse.NOT_SERVING
            )
            for name in ("", _SERVICE_NAME):
                await self._health.set(name, status)
            await asyncio.sleep(_HEALTH_INTERVAL_S)

    async def _watch_queue_depth(self, queue: QueueWorker) -> None:
        """Read the queue's depth for the metrics every few seconds; Redis may be away."""
        while True:
            try:
                self._queue_depth = await queue.depth()
            except RedisError as exc:
                log.debug("queue depth unavailable: %s", exc)
            await asyncio.sleep(_QUEUE_DEPTH_INTERVAL_S)

    async def stop(self, grace: float | None = None) -> None:
        """Drain: stop admitting gRPC work and taking queue entries at once, let running
        executions of both finish within one grace period, then stop.

        Executions still running when the grace is over are cancelled while their streams are
        still open, so their callers receive StepFailed/ExecutionFinished CANCELLED; the queue
        hands back the entries it could not finish, for another worker.
        """
        grace = self.settings.shutdown_grace_s if grace is None else grace
        deadline = time.monotonic() + grace
        if self.service is not None:
            self.service.draining = True
        if self.admission is not None:
            self.admission.close()  # queued requests get UNAVAILABLE now and can go elsewhere
        for task in (self._health_task, self._memory_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._health.enter_graceful_shutdown()
        if self._queue_depth_task is not None:
            self._queue_depth_task.cancel()
        # The queue stops taking entries at once, then waits for its own until the deadline.
        queue_stopped = None if self.queue is None else asyncio.create_task(self.queue.stop(grace))
        if self.executor is not None:
            await _drained(self.executor, deadline)
        if queue_stopped is not None:
            await queue_stopped  # what it could not finish is handed back, not cancelled here
        if self.executor is not None and self.executor.running:
            log.warning("grace over: cancelling %d executions", len(self.executor.running))
            self.executor.cancel_all()
        await self._close_parts()

    async def _close_parts(self) -> None:
        """Stop the server, then the parts under it in reverse order of their start."""
        if self._server is not None:
            await self._server.stop(_FINAL_EVENTS_S)
        if self._egress is not None:
            await self._egress.proxy.close()
        if self._pool is not None:
            await self._pool.close()
        if self._launcher is not None:
            await self._launcher.close()
        if self._cgroups is not None:
            self._cgroups.close()
        if self.telemetry is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_TELEMETRY_FLUSH_S):
                    await asyncio.to_thread(self.telemetry.shutdown)

    async def serve_forever(self) -> None:
        """Run until SIGTERM or SIGINT, then drain and stop."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        # One line on stdout that scripts and tests wait for (the port may have been chosen by us).
        listen = self.settings.listen
        where = (
            listen
            if listen.startswith(UNIX_PREFIXES)
            else f"{listen.rsplit(':', 1)[0]}:{self.port}"
        )
        print(f"sandboxd: serving on {where}", flush=True)
        memory.settle()
        await stop.wait()
        log.info("shutting down: draining for up to %.0f s", self.settings.shutdown_grace_s)
        await self.stop()


class ListenError(Exception):
    """The daemon cannot listen where the settings say (the port is taken, the path unusable)."""


async def _drained(executor: Executor, deadline: float) -> None:
    """Wait until no execution runs, or until the deadline."""
    while executor.running and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def _server_options(max_request_bytes: int) -> list[tuple[str, int]]:
    return [
        # A message a little over max_request_bytes is read and refused as INVALID_REQUEST naming
        # the limit (decoding.py); one far over it is refused by gRPC itself, unread, as
        # RESOURCE_EXHAUSTED: reading it would copy every byte into Python on the event loop
        # (about 2 ms per MB, a stall for every tenant).
        ("grpc.max_receive_message_length", max_request_bytes + _READ_OVER_LIMIT_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        # One daemon per port: with SO_REUSEPORT a second daemon would share it silently.
        ("grpc.so_reuseport", 0),
        # A connection that died without a reset (host gone, cable pulled) is found by pings;
        # a reset is seen at once. Either way its calls are cancelled and their jails killed.
        ("grpc.keepalive_time_ms", _KEEPALIVE_S * 1000),
        ("grpc.keepalive_timeout_ms", _KEEPALIVE_TIMEOUT_S * 1000),
        ("grpc.keepalive_permit_without_calls", 1),
        # Clients ping every 30 s during long silent steps (sandbox_client): welcome.
        ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ]


def _bind(server: grpc.aio.Server, settings: Settings) -> int:
    """Bind the listening socket (the server does not accept yet); ListenError if it cannot."""
    listen = settings.listen
    address = parse_listen(listen)
    if transport_security(settings) == "insecure" and not address.loopback:
        log.warning(
            "listening on %s WITHOUT TLS (--insecure): anyone who reaches it is trusted", listen
        )
    reason = unavailable_reason(address)
    if reason:
        raise ListenError(f"cannot listen on {listen}: {reason}")
    try:
        if settings.tls_cert_file:
            files = CertificateFiles(
                settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
            )
            port = server.add_secure_port(listen, files.credentials())
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise ListenError(f"cannot listen on {listen}: {exc}") from None
    if not port and not address.unix:
        raise ListenError(f"cannot listen on {listen}")
    return int(port)


def _egress_gateway(settings: Settings, telemetry: Telemetry) -> EgressGateway:
    """The egress proxy every jail's traffic goes through (docs/egress.md)."""
    ca_pem = ""
    if settings.egress_ca_file:
        with open(settings.egress_ca_file, encoding="ascii") as handle:
            ca_pem = handle.read()
    static_hosts: dict[str, str | Sequence[str]] = dict(settings.egress_static_hosts)
    proxy = EgressProxy(
        settings.egress_addresses(),
        settings.egress_nameservers,
        static_hosts,
        settings.egress_upstream_proxy or None,
        on_connection=telemetry.egress_connection,
        max_connections=settings.egress_max_connections,
        max_connections_per_tenant=settings.egress_tenant_max_connections,
    )
    return EgressGateway(proxy, ca_pem)
