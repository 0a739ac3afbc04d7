"""OpenTelemetry traces and metrics of the daemon.

Each RPC has its server span by the gRPC conventions (`sandboxd.v1.SandboxService/Execute`, made
by rpc_telemetry.py, continuing the caller's trace); under it one span per execution, and under
that a span for the lease and one per step. sandboxd's own attributes are named under
`sandboxd.`, with no unit in the name: durations are seconds and sizes bytes (docs/telemetry.md
lists them; metric units are the instruments' metadata). Spans and metrics carry identifiers,
outcomes and resource use, and never anything a tenant sent or produced: no input, result, code,
config var, credential, log text or error message (a step's error message is the tenant's own
text and may quote its data).

The observer learns everything from the execution's event stream, so wiring it is one line per
event; times come from the events' own timestamps, so spans are exact even if the stream's
consumer lags. Exporters are chosen by configuration; the standard OTEL_* variables are honoured
(resource, service name, OTLP endpoint and headers, batch and export intervals, sampler,
propagators) because every part is built by the SDK's environment-aware constructors.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from opentelemetry import metrics, propagate, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from sandbox_client.redisqueue.store import QueueDepth, TenantDepth
from sandbox_client.v1 import sandbox_pb2 as pb
from sandboxd import __version__
from sandboxd.egress.records import ConnectionRecord
from sandboxd.exporters import ExporterKind
from sandboxd.kinds import SUCCEEDED, ending_outcome, kind_name, outcome_name
from sandboxd.requests import ExecutionPlan
from sandboxd.rpc_telemetry import RpcTelemetry, serving_context
from sandboxd.tenants import Admission, TenantLoad

# The attributes of metrics as well as spans (the others are written where they are set).
TENANT = "sandboxd.tenant.id"
OUTCOME = "sandboxd.execution.outcome"


_SHORT_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_LONG_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class PoolCounts(Protocol):
    @property
    def failed(self) -> int: ...


class PoolFigures(Protocol):
    """What the gauges read from the pool (sandboxd.pool.JailPool has it)."""

    @property
    def warm(self) -> int: ...
    @property
    def leased(self) -> int: ...
    @property
    def starting(self) -> int: ...
    @property
    def stats(self) -> PoolCounts: ...


def context_from_grpc_metadata(metadata: Sequence[tuple[str, str | bytes]] | None) -> Context:
    """The trace context (W3C traceparent/tracestate, baggage) an RPC's metadata carries."""
    carrier: dict[str, list[str]] = {}
    for key, value in metadata or ():
        if isinstance(value, str):  # binary (-bin) metadata carries no text propagation headers
            carrier.setdefault(key.lower(), []).append(value)
    # An empty base: an execution continues its caller's trace or starts a new one, never
    # whatever span happens to be current in the daemon.
    return propagate.extract(carrier, context=Context())


class _Instruments:
    """The daemon's metric instruments, created once per meter."""

    def __init__(self, meter: metrics.Meter):
        self.meter = meter
        self.executions = meter.create_counter(
            "sandboxd.executions", "{execution}", "Executions ended, by outcome and tenant"
        )
        self.execution_duration = meter.create_histogram(
            "sandboxd.execution.duration",
            "s",
            "Executions from arrival at the executor to their end, lease wait included",
            explicit_bucket_boundaries_advisory=_LONG_BUCKETS_S,
        )
        self.step_duration = meter.create_histogram(
            "sandboxd.step.duration",
            "s",
            "Steps from start to result or failure",
            explicit_bucket_boundaries_advisory=_LONG_BUCKETS_S,
        )
        self.lease_wait = meter.create_histogram(
            "sandboxd.lease.wait",
            "s",
            "Time an execution waited for its jail",
            explicit_bucket_boundaries_advisory=_SHORT_BUCKETS_S,
        )
        self.egress_connections = meter.create_counter(
            "sandboxd.egress.connections",
            "{connection}",
            "Connections from jails to the egress proxy, by outcome",
        )
        self.jail_start = meter.create_histogram(
            "sandboxd.jail.start",
            "s",
            "Time from spawning a jail to its runner saying ready",
            explicit_bucket_boundaries_advisory=_SHORT_BUCKETS_S,
        )


class Telemetry:
    """Tracer and meter of one daemon; kept on this object, never installed globally."""

    def __init__(
        self,
        tracer_provider: trace.TracerProvider,
        meter_provider: metrics.MeterProvider,
        shutdown: Callable[[], None] = lambda: None,
        *,
        recording: bool = True,
    ):
        self._tracer = tracer_provider.get_tracer("sandboxd", __version__)
        self._instruments = _Instruments(meter_provider.get_meter("sandboxd", __version__))
        self._shutdown = shutdown
        # False when nothing is exported: then no execution or RPC is observed at all (even
        # no-op spans and metrics cost ~50 µs of the event loop per execution).
        self.recording = recording

    @classmethod
    def setup(
        cls,
        exporter: ExporterKind = "none",
        service_name: str = "sandboxd",
        *,
        span_exporter: SpanExporter | None = None,
        metric_reader: MetricReader | None = None,
    ) -> Telemetry:
        """Telemetry exported as `exporter` says, plus to the given exporter and reader (tests)."""
        processors = _span_processors(exporter, span_exporter)
        readers = _metric_readers(exporter, metric_reader)
        if not processors and not readers:
            # Nothing would be exported: no-op providers, and nothing observed.
            return cls(trace.NoOpTracerProvider(), metrics.NoOpMeterProvider(), recording=False)
        resource = _resource(service_name)
        # Not shut down at interpreter exit: the daemon flushes in its own shutdown, in order.
        tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        for processor in processors:
            tracer_provider.add_span_processor(processor)
        meter_provider = MeterProvider(readers, resource=resource, shutdown_on_exit=False)

        def shutdown() -> None:
            tracer_provider.shutdown()
            meter_provider.shutdown()

        return cls(tracer_provider, meter_provider, shutdown)

    def shutdown(self) -> None:
        """Flush what is pending and stop exporting (blocks up to the exporters' timeouts)."""
        self._shutdown()

    def observe(
        self, plan: ExecutionPlan, metadata: Sequence[tuple[str, str | bytes]] | None = ()
    ) -> Observer:
        """An observer of `plan`'s execution. Its span is a child of the span of the RPC being
        served (rpc_telemetry.py); outside an RPC (distributed mode) it continues the trace in
        `metadata`."""
        if not self.recording:
            return _UNOBSERVED
        parent = serving_context() or context_from_grpc_metadata(metadata)
        return ExecutionObserver(self._tracer, self._instruments, plan, parent)

    def rpc_interceptor(self, server_address: str) -> RpcTelemetry:
        """The server interceptor that traces and times every RPC (rpc_telemetry.py)."""
        return RpcTelemetry(
            self._tracer, self._instruments.meter, server_address, recording=self.recording
        )

    def jail_started(self, seconds: float) -> None:
        self._instruments.jail_start.record(seconds)

    def egress_connection(self, record: ConnectionRecord) -> None:
        """Count one egress connection by outcome (never its host: unbounded cardinality)."""
        self._instruments.egress_connections.add(1, {"sandboxd.egress.outcome": record.outcome})

    def watch_pool(self, pool: PoolFigures) -> None:
        """Gauges of the pool's warm, leased and starting jails, and a count of failed ones."""
        meter = self._instruments.meter
        figures: dict[str, Callable[[], int]] = {
            "warm": lambda: pool.warm,
            "leased": lambda: pool.leased,
            "starting": lambda: pool.starting,
        }
        for figure, read in figures.items():
            meter.create_observable_gauge(
                f"sandboxd.pool.{figure}", [_reading(read)], "{jail}", f"Jails {figure} in the pool"
            )
        meter.create_observable_counter(
            "sandboxd.pool.failed",
            [_reading(lambda: pool.stats.failed)],
            "{jail}",
            "Jails that failed to start or died while idle",
        )

    def watch_admission(self, admission: Admission) -> None:
        """Gauges of running and queued executions per tenant."""
        meter = self._instruments.meter
        meter.create_observable_gauge(
            "sandboxd.tenant.running",
            [_TenantGauge(admission, lambda load: load.running)],
            "{execution}",
            "Executions running, per tenant",
        )
        meter.create_observable_gauge(
            "sandboxd.tenant.queued",
            [_TenantGauge(admission, lambda load: load.queued)],
            "{execution}",
            "Executions waiting for admission, per tenant",
        )

    def watch_queue(self, latest: Callable[[], QueueDepth | None]) -> None:
        """Gauges of the Redis queue (the autoscaler's signal): per tenant, its backlog and the
        age of its oldest waiting entry; delayed and dead-lettered executions in all.

        `latest` returns the last depth the daemon read (reading Redis is async; callbacks are not).
        Only the tenants with the most waiting work get series of their own (the depth holds
        those); the backlog of all others is one series, sandboxd.tenant.id "other": 100,000
        tenants are not 100,000 series.
        """
        meter = self._instruments.meter

        def per_tenant(
            value: Callable[[TenantDepth], float], other: Callable[[QueueDepth], float] | None
        ) -> Callable[..., Iterable[Observation]]:
            def callback(options: CallbackOptions) -> Iterable[Observation]:
                depth = latest()
                if depth is None:
                    return []
                tenants = depth.tenants.items()
                observed = [Observation(value(load), {TENANT: t}) for t, load in tenants]
                if other is not None:
                    observed.append(Observation(other(depth), {TENANT: "other"}))
                return observed

            return callback

        def others_waiting(depth: QueueDepth) -> int:
            return depth.waiting - sum(load.waiting for load in depth.tenants.values())

        def total(value: Callable[[QueueDepth], int]) -> _Callback:
            def callback(options: CallbackOptions) -> Iterable[Observation]:
                depth = latest()
                return [Observation(value(depth))] if depth else []

            return callback

        gauges: list[tuple[str, _Callback, str, str]] = [
            ("sandboxd.queue.waiting", per_tenant(lambda d: d.waiting, others_waiting),
             "{execution}", "Queued executions no worker has taken yet, per top tenant"),
            ("sandboxd.queue.oldest_age", per_tenant(lambda d: d.oldest_age_s, None), "s",
             "Age of the oldest waiting execution, per top tenant"),
            ("sandboxd.queue.delayed", total(lambda d: d.delayed), "{execution}",
             "Executions waiting for their run-at time or a retry"),
            ("sandboxd.queue.dead", total(lambda d: d.dead), "{execution}",
             "Executions in the dead-letter stream"),
        ]  # fmt: skip
        for name, callback, unit, description in gauges:
            meter.create_observable_gauge(name, [callback], unit, description)


_Callback = Callable[[CallbackOptions], Iterable[Observation]]


def _reading(read: Callable[[], int]) -> _Callback:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(read())]

    return callback


class _TenantGauge:
    """One observation per active tenant; a tenant that went idle reads 0 once, then drops out,
    so its last non-zero value does not linger in the exported series."""

    def __init__(self, admission: Admission, read: Callable[[TenantLoad], int]):
        self._admission = admission
        self._read = read
        self._reported: set[str] = set()

    def __call__(self, options: CallbackOptions) -> Iterable[Observation]:
        loads = self._admission.snapshot()
        observations = [
            Observation(self._read(load), {TENANT: tenant}) for tenant, load in loads.items()
        ]
        observations += [
            Observation(0, {TENANT: tenant}) for tenant in self._reported - loads.keys()
        ]
        self._reported = set(loads)
        return observations


class Observer:
    """What the executor tells about an execution: each event, then its end. This one records
    nothing: the observer when nothing is exported."""

    def __enter__(self) -> Observer:
        return self

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        self.close(error)

    def event(self, event: pb.ExecutionEvent) -> None:
        pass

    def close(self, error: BaseException | None = None, past_deadline: bool = False) -> None:
        pass


_UNOBSERVED = Observer()


@dataclass
class _OpenStep:
    span: Span
    started_ns: int


class ExecutionObserver(Observer):
    """Turns one execution's events into spans and metrics.

    Use as a context manager around the event loop and call `event` for every event; an
    execution that ends without ExecutionFinished (cancelled, refused, broken) is recorded with
    the outcome its exception implies.
    """

    def __init__(
        self,
        tracer: trace.Tracer,
        instruments: _Instruments,
        plan: ExecutionPlan,
        parent: Context,
    ):
        self._tracer = tracer
        self._instruments = instruments
        self._tenant = plan.tenant_id
        self._started_ns = time.time_ns()
        self._span = tracer.start_span(
            "sandboxd.execution",
            context=parent,
            kind=SpanKind.INTERNAL,
            start_time=self._started_ns,
            attributes={
                TENANT: plan.tenant_id,
                "sandboxd.execution.id": plan.execution_id,
                "sandboxd.execution.attempt": plan.attempt,
                "sandboxd.execution.step_count": len(plan.steps),
            },
        )
        self._context = trace.set_span_in_context(self._span, parent)
        self._step: _OpenStep | None = None
        self._ended = False

    def event(self, event: pb.ExecutionEvent) -> None:
        at_ns = event.time.ToNanoseconds() or time.time_ns()
        match event.WhichOneof("event"):
            case "execution_started":
                self._leased(event.execution_started, at_ns)
            case "step_started":
                self._step_started(event.step_started, at_ns)
            case "step_finished":
                self._step_finished(event.step_finished, at_ns)
            case "step_failed":
                self._step_failed(event.step_failed, at_ns)
            case "execution_finished":
                self._finished(event.execution_finished, at_ns)
            case _:  # logs: their text is the tenant's, and their count says little
                pass

    def close(self, error: BaseException | None = None, past_deadline: bool = False) -> None:
        """End whatever is still open; without ExecutionFinished the outcome comes from `error`
        (and whether the caller's deadline had passed), as the executor counts it."""
        if self._ended:
            return
        outcome = ending_outcome(error, past_deadline)
        if self._step is not None:
            self._end_step(outcome, {}, time.time_ns())
        if error is not None:
            self._span.set_attribute("exception.type", type(error).__qualname__)
        self._end({OUTCOME: outcome, "error.type": outcome}, time.time_ns())

    def _leased(self, started: pb.ExecutionStarted, at_ns: int) -> None:
        wait_s = started.lease_wait_us / 1e6
        began_ns = max(self._started_ns, at_ns - started.lease_wait_us * 1000)
        span = self._tracer.start_span(
            "sandboxd.lease",
            context=self._context,
            start_time=began_ns,
        )
        span.end(end_time=max(began_ns, at_ns))
        self._instruments.lease_wait.record(wait_s)

    def _step_started(self, started: pb.StepStarted, at_ns: int) -> None:
        span = self._tracer.start_span(
            "sandboxd.step",
            context=self._context,
            start_time=at_ns,
            attributes={"sandboxd.step.name": started.step, "sandboxd.step.index": started.index},
        )
        self._step = _OpenStep(span, at_ns)

    def _step_finished(self, finished: pb.StepFinished, at_ns: int) -> None:
        attributes = {
            "sandboxd.step.result.size": finished.result_bytes,
            **_usage_attributes(finished.usage),
        }
        self._end_step(SUCCEEDED, attributes, at_ns, duration_s=finished.usage.duration_us / 1e6)

    def _step_failed(self, failed: pb.StepFailed, at_ns: int) -> None:
        self._end_step(kind_name(failed.kind), {}, at_ns)

    def _end_step(
        self,
        outcome: str,
        attributes: dict[str, float | int],
        at_ns: int,
        duration_s: float | None = None,
    ) -> None:
        step = self._step
        if step is None:
            return
        self._step = None
        step.span.set_attributes({"sandboxd.step.outcome": outcome, **attributes})
        if outcome != SUCCEEDED:
            step.span.set_attribute("error.type", outcome)
        step.span.set_status(_status(outcome))
        step.span.end(end_time=max(step.started_ns, at_ns))
        if duration_s is None:
            duration_s = max(0, at_ns - step.started_ns) / 1e9
        self._instruments.step_duration.record(duration_s, {"sandboxd.step.outcome": outcome})

    def _finished(self, finished: pb.ExecutionFinished, at_ns: int) -> None:
        attributes: dict[str, str | float | int] = {
            OUTCOME: outcome_name(finished),
            "sandboxd.execution.steps_completed": finished.steps_completed,
            **_usage_attributes(finished.usage),
        }
        if finished.status != pb.EXECUTION_STATUS_SUCCEEDED:
            attributes["error.type"] = attributes[OUTCOME]
            attributes["sandboxd.execution.failed_step"] = finished.failed_step
        self._end(attributes, at_ns)

    def _end(self, attributes: dict[str, str | float | int], at_ns: int) -> None:
        self._ended = True
        outcome = str(attributes[OUTCOME])
        self._span.set_attributes(attributes)
        self._span.set_status(_status(outcome))
        self._span.end(end_time=max(self._started_ns, at_ns))
        instruments = self._instruments
        instruments.executions.add(1, {OUTCOME: outcome, TENANT: self._tenant})
        instruments.execution_duration.record(
            max(0, at_ns - self._started_ns) / 1e9, {OUTCOME: outcome}
        )


def _status(outcome: str) -> Status:
    if outcome == SUCCEEDED:
        return Status(StatusCode.OK)
    # The kind only: the message of a failure may quote the tenant's data.
    return Status(StatusCode.ERROR, outcome)


def _usage_attributes(usage: pb.Usage) -> dict[str, float | int]:
    """Seconds and bytes, as the OpenTelemetry conventions measure (units: docs/telemetry.md)."""
    return {
        "sandboxd.usage.duration": usage.duration_us / 1e6,
        "sandboxd.usage.cpu_time": usage.cpu_time_us / 1e6,
        "sandboxd.usage.peak_memory": usage.peak_memory_bytes,
    }


def _resource(service_name: str) -> Resource:
    """The SDK's resource with `service_name`, which OTEL_SERVICE_NAME and
    OTEL_RESOURCE_ATTRIBUTES override (Resource.create alone would let ours win)."""
    return Resource.create({SERVICE_NAME: service_name}).merge(OTELResourceDetector().detect())


def _span_processors(exporter: ExporterKind, injected: SpanExporter | None) -> list[SpanProcessor]:
    processors: list[SpanProcessor] = []
    if exporter == "console":
        # stderr: stdout carries the daemon's "serving on" line that scripts wait for.
        processors.append(BatchSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        processors.append(BatchSpanProcessor(OTLPSpanExporter()))
    if injected is not None:
        # Synchronous, so a test sees a span as soon as it ends.
        processors.append(SimpleSpanProcessor(injected))
    return processors


def _metric_readers(exporter: ExporterKind, injected: MetricReader | None) -> list[MetricReader]:
    readers: list[MetricReader] = []
    if exporter == "console":
        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stderr)))
    elif exporter == "otlp":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if injected is not None:
        readers.append(injected)
    return readers
