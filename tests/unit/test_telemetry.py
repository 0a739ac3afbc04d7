"""Telemetry: spans and metrics of real ExecutionEvent streams, read back through the SDK's
in-memory exporter and reader, and OTLP export to a collector on loopback."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_service
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_service
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, Metric, NumberDataPoint
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, get_current_span, use_span

from sandbox_client.redisqueue.store import QueueDepth, TenantDepth
from sandbox_client.v1 import sandbox_pb2 as pb
from sandboxd.limits import Limits
from sandboxd.requests import ExecutionPlan, StepPlan
from sandboxd.telemetry import Telemetry, context_from_grpc_metadata
from sandboxd.tenants import Admission, QuotaExceeded, TenantLimits, TenantPolicy

SECRETS = ("INPUT-SECRET", "CRED-SECRET", "CONFIG-SECRET", "CODE-SECRET", "RESULT-SECRET")
MESSAGE_SECRET = "MESSAGE-SECRET"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_SPAN_ID = "00f067aa0ba902b7"
MS = 1_000_000  # nanoseconds


def make_plan(*names: str) -> ExecutionPlan:
    return ExecutionPlan(
        execution_id="exec-1",
        tenant_id="acme",
        steps=tuple(
            StepPlan(i, name, f"module.exports = () => 'CODE-SECRET {i}'", Limits())
            for i, name in enumerate(names)
        ),
        input=json.dumps({"card": "INPUT-SECRET"}).encode(),
        limits=Limits(),
        config_vars={"endpoint": "CONFIG-SECRET"},
        credentials={"token": "CRED-SECRET"},
        attempt=2,
    )


class Stream:
    """Builds the events of one execution, `ms` milliseconds after a base time."""

    def __init__(self, base_ns: int):
        self.base_ns = base_ns
        self._seq = 0

    def at(self, ms: float, **event: Any) -> pb.ExecutionEvent:
        stamp = Timestamp()
        stamp.FromNanoseconds(self.base_ns + int(ms * MS))
        message = pb.ExecutionEvent(execution_id="exec-1", seq=self._seq, time=stamp, **event)
        self._seq += 1
        return message


def usage(duration_ms: int, cpu_ms: int, peak_mib: int) -> pb.Usage:
    return pb.Usage(
        duration_us=duration_ms * 1000,
        cpu_time_us=cpu_ms * 1000,
        peak_memory_bytes=peak_mib * 1024 * 1024,
    )


def started(stream: Stream, steps: int) -> pb.ExecutionEvent:
    return stream.at(
        5,
        execution_started=pb.ExecutionStarted(
            tenant_id="acme", step_count=steps, attempt=2, lease_wait_us=2500
        ),
    )


def succeeding_events(stream: Stream) -> list[pb.ExecutionEvent]:
    """Two steps that succeed, with secrets in the log text and the results."""
    return [
        started(stream, 2),
        stream.at(6, step_started=pb.StepStarted(step="fetch", index=0)),
        stream.at(7, log=pb.Log(step="fetch", level=pb.LOG_LEVEL_INFO, text="INPUT-SECRET")),
        stream.at(
            26,
            step_finished=pb.StepFinished(
                step="fetch",
                index=0,
                json=b'"RESULT-SECRET"',
                result_bytes=15,
                usage=usage(20, 12, 40),
            ),
        ),
        stream.at(27, step_started=pb.StepStarted(step="shape", index=1)),
        stream.at(
            57,
            step_finished=pb.StepFinished(
                step="shape",
                index=1,
                binary=b"RESULT-SECRET",
                result_bytes=13,
                usage=usage(30, 25, 48),
            ),
        ),
        stream.at(
            58,
            execution_finished=pb.ExecutionFinished(
                status=pb.EXECUTION_STATUS_SUCCEEDED, steps_completed=2, usage=usage(52, 37, 48)
            ),
        ),
    ]


def failing_events(stream: Stream) -> list[pb.ExecutionEvent]:
    """Step one succeeds, step two throws (USER_ERROR) with secrets in its message and stack."""
    secret = f"{MESSAGE_SECRET} INPUT-SECRET"
    return [
        started(stream, 2),
        stream.at(6, step_started=pb.StepStarted(step="fetch", index=0)),
        stream.at(
            16,
            step_finished=pb.StepFinished(
                step="fetch", index=0, json=b"{}", result_bytes=2, usage=usage(10, 4, 30)
            ),
        ),
        stream.at(17, step_started=pb.StepStarted(step="shape", index=1)),
        stream.at(
            40,
            step_failed=pb.StepFailed(
                step="shape", index=1, kind=pb.ERROR_KIND_USER_ERROR, message=secret, stack=secret
            ),
        ),
        stream.at(
            41,
            execution_finished=pb.ExecutionFinished(
                status=pb.EXECUTION_STATUS_FAILED,
                error_kind=pb.ERROR_KIND_USER_ERROR,
                error_message=secret,
                failed_step="shape",
                steps_completed=1,
                usage=usage(35, 9, 31),
            ),
        ),
    ]


@dataclass
class Recorded:
    telemetry: Telemetry
    spans: InMemorySpanExporter = field(default_factory=InMemorySpanExporter)
    reader: InMemoryMetricReader = field(default_factory=InMemoryMetricReader)

    def finished_spans(self) -> dict[str, list[ReadableSpan]]:
        by_name: dict[str, list[ReadableSpan]] = {}
        for span in self.spans.get_finished_spans():
            by_name.setdefault(span.name, []).append(span)
        return by_name

    def metrics(self) -> dict[str, Metric]:
        data = self.reader.get_metrics_data()
        if data is None:  # nothing recorded or observed in this collection
            return {}
        return {
            metric.name: metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
        }

    def points(self, name: str) -> dict[frozenset[tuple[str, Any]], Any]:
        """The data points of metric `name`, by their attributes."""
        return {
            frozenset((point.attributes or {}).items()): point
            for point in self.metrics()[name].data.data_points
        }

    def observe(
        self,
        plan: ExecutionPlan,
        events: Sequence[pb.ExecutionEvent],
        metadata: Sequence[tuple[str, str | bytes]] = (),
    ) -> None:
        with self.telemetry.observe(plan, metadata) as observer:
            for event in events:
                observer.event(event)


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    spans = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    telemetry = Telemetry.setup("none", span_exporter=spans, metric_reader=reader)
    yield Recorded(telemetry, spans, reader)
    telemetry.shutdown()


def base_time() -> int:
    """A base for event times safely after the start of the observer a test creates next."""
    return time.time_ns() + 1000 * MS


def number(point: object) -> float:
    """The value of a counter or gauge data point."""
    assert isinstance(point, NumberDataPoint)
    return point.value


def assert_no_secrets(recorded: Recorded) -> None:
    """No tenant data in any span attribute, event, status or metric attribute."""
    texts = []
    for span in recorded.spans.get_finished_spans():
        texts += [str(value) for value in (span.attributes or {}).values()]
        texts += [str(event.attributes) for event in span.events]
        texts.append(str(span.status.description))
    for metric in recorded.metrics().values():
        texts += [str(point.attributes) for point in metric.data.data_points]
    for secret in (*SECRETS, MESSAGE_SECRET):
        assert not [text for text in texts if secret in text], secret


def test_a_successful_execution_makes_linked_spans_with_ids_outcome_and_usage(
    recorded: Recorded,
) -> None:
    base = base_time()
    recorded.observe(make_plan("fetch", "shape"), succeeding_events(Stream(base)))

    spans = recorded.finished_spans()
    assert sorted(spans) == ["sandboxd.execution", "sandboxd.lease", "sandboxd.step"]
    (execution,) = spans["sandboxd.execution"]
    (lease,) = spans["sandboxd.lease"]
    fetch, shape = spans["sandboxd.step"]

    assert execution.kind == SpanKind.INTERNAL  # under the RPC's server span (rpc_telemetry)
    assert execution.parent is None
    assert execution.status.status_code == StatusCode.OK
    assert dict(execution.attributes or {}) == {
        "sandboxd.tenant.id": "acme",
        "sandboxd.execution.id": "exec-1",
        "sandboxd.execution.attempt": 2,
        "sandboxd.execution.step_count": 2,
        "sandboxd.execution.outcome": "SUCCEEDED",
        "sandboxd.execution.steps_completed": 2,
        "sandboxd.usage.duration": 0.052,
        "sandboxd.usage.cpu_time": 0.037,
        "sandboxd.usage.peak_memory": 48 * 1024 * 1024,
    }
    assert execution.end_time == base + 58 * MS

    execution_context = execution.get_span_context()
    assert execution_context is not None
    for child in (lease, fetch, shape):
        assert child.parent is not None
        assert child.parent.span_id == execution_context.span_id
        assert child.context is not None
        assert child.context.trace_id == execution_context.trace_id

    assert dict(lease.attributes or {}) == {}  # the span's duration is the wait
    assert (lease.start_time, lease.end_time) == (base + int(2.5 * MS), base + 5 * MS)

    assert dict(fetch.attributes or {}) == {
        "sandboxd.step.name": "fetch",
        "sandboxd.step.index": 0,
        "sandboxd.step.outcome": "SUCCEEDED",
        "sandboxd.step.result.size": 15,
        "sandboxd.usage.duration": 0.020,
        "sandboxd.usage.cpu_time": 0.012,
        "sandboxd.usage.peak_memory": 40 * 1024 * 1024,
    }
    assert (fetch.start_time, fetch.end_time) == (base + 6 * MS, base + 26 * MS)
    assert fetch.status.status_code == StatusCode.OK
    assert (shape.attributes or {})["sandboxd.step.name"] == "shape"
    assert (shape.start_time, shape.end_time) == (base + 27 * MS, base + 57 * MS)
    assert_no_secrets(recorded)


def test_a_successful_execution_is_counted_and_timed(recorded: Recorded) -> None:
    recorded.observe(make_plan("fetch", "shape"), succeeding_events(Stream(base_time())))

    executions = recorded.points("sandboxd.executions")
    assert {key: point.value for key, point in executions.items()} == {
        frozenset({("sandboxd.execution.outcome", "SUCCEEDED"), ("sandboxd.tenant.id", "acme")}): 1
    }
    (steps,) = recorded.points("sandboxd.step.duration").values()
    assert steps.attributes == {"sandboxd.step.outcome": "SUCCEEDED"}
    assert (steps.count, steps.sum) == (2, pytest.approx(0.050))  # the steps' own durations
    (lease,) = recorded.points("sandboxd.lease.wait").values()
    assert (lease.count, lease.sum) == (1, pytest.approx(0.0025))
    (duration,) = recorded.points("sandboxd.execution.duration").values()
    assert duration.attributes == {"sandboxd.execution.outcome": "SUCCEEDED"}
    assert duration.count == 1
    assert duration.sum >= 0.058  # from the observer's start, before the lease, to the end
    assert recorded.metrics()["sandboxd.execution.duration"].unit == "s"


def test_a_user_error_marks_the_step_and_execution_without_its_message(
    recorded: Recorded,
) -> None:
    base = base_time()
    recorded.observe(make_plan("fetch", "shape"), failing_events(Stream(base)))

    spans = recorded.finished_spans()
    (execution,) = spans["sandboxd.execution"]
    fetch, shape = spans["sandboxd.step"]
    assert fetch.status.status_code == StatusCode.OK
    assert shape.status.status_code == StatusCode.ERROR
    assert shape.status.description == "USER_ERROR"
    assert dict(shape.attributes or {}) == {
        "sandboxd.step.name": "shape",
        "sandboxd.step.index": 1,
        "sandboxd.step.outcome": "USER_ERROR",
        "error.type": "USER_ERROR",
    }
    assert (shape.start_time, shape.end_time) == (base + 17 * MS, base + 40 * MS)

    assert execution.status.status_code == StatusCode.ERROR
    assert execution.status.description == "USER_ERROR"
    attributes = execution.attributes or {}
    assert attributes["sandboxd.execution.outcome"] == "USER_ERROR"
    assert attributes["error.type"] == "USER_ERROR"
    assert attributes["sandboxd.execution.failed_step"] == "shape"
    assert attributes["sandboxd.execution.steps_completed"] == 1

    executions = recorded.points("sandboxd.executions")
    assert {key: point.value for key, point in executions.items()} == {
        frozenset({("sandboxd.execution.outcome", "USER_ERROR"), ("sandboxd.tenant.id", "acme")}): 1
    }
    steps = recorded.points("sandboxd.step.duration")
    assert steps[frozenset({("sandboxd.step.outcome", "SUCCEEDED")})].sum == pytest.approx(0.010)
    assert steps[frozenset({("sandboxd.step.outcome", "USER_ERROR")})].sum == pytest.approx(0.023)
    assert_no_secrets(recorded)


def test_outcomes_accumulate_per_outcome_and_tenant(recorded: Recorded) -> None:
    recorded.observe(make_plan("fetch", "shape"), succeeding_events(Stream(base_time())))
    recorded.observe(make_plan("fetch", "shape"), succeeding_events(Stream(base_time())))
    recorded.observe(make_plan("fetch", "shape"), failing_events(Stream(base_time())))

    executions = recorded.points("sandboxd.executions")
    by_outcome = {dict(key)["sandboxd.execution.outcome"]: p.value for key, p in executions.items()}
    assert by_outcome == {"SUCCEEDED": 2, "USER_ERROR": 1}


def test_the_callers_trace_is_continued(recorded: Recorded) -> None:
    metadata: list[tuple[str, str | bytes]] = [
        ("user-agent", "grpc-python"),
        ("x-binary-bin", b"\x00\x01"),
        ("traceparent", f"00-{TRACE_ID}-{PARENT_SPAN_ID}-01"),
    ]
    recorded.observe(make_plan("fetch", "shape"), succeeding_events(Stream(0)), metadata)

    (execution,) = recorded.finished_spans()["sandboxd.execution"]
    assert execution.parent is not None
    assert execution.parent.is_remote
    assert f"{execution.parent.span_id:016x}" == PARENT_SPAN_ID
    assert execution.context is not None
    assert f"{execution.context.trace_id:032x}" == TRACE_ID
    for step in recorded.finished_spans()["sandboxd.step"]:
        assert step.context is not None
        assert f"{step.context.trace_id:032x}" == TRACE_ID


def test_without_traceparent_an_execution_starts_its_own_trace(recorded: Recorded) -> None:
    """Not a child of whatever span is current in the daemon's task."""
    other = TracerProvider().get_tracer("elsewhere")
    with use_span(other.start_span("unrelated"), end_on_exit=True):
        recorded.observe(make_plan("fetch"), [], [("traceparent", "garbage")])
    (execution,) = recorded.finished_spans()["sandboxd.execution"]
    assert execution.parent is None


def test_context_from_grpc_metadata_reads_w3c_headers() -> None:
    context = context_from_grpc_metadata(
        [("Traceparent", f"00-{TRACE_ID}-{PARENT_SPAN_ID}-00"), ("tracestate", "vendor=1")]
    )
    span_context = get_current_span(context).get_span_context()
    assert f"{span_context.trace_id:032x}" == TRACE_ID
    assert f"{span_context.span_id:016x}" == PARENT_SPAN_ID
    assert not span_context.trace_flags.sampled
    assert span_context.trace_state.get("vendor") == "1"
    assert not get_current_span(context_from_grpc_metadata(None)).get_span_context().is_valid


def test_an_execution_cancelled_mid_step_ends_its_spans_as_cancelled(recorded: Recorded) -> None:
    stream = Stream(base_time())
    with (
        pytest.raises(asyncio.CancelledError),
        recorded.telemetry.observe(make_plan("fetch", "shape")) as observer,
    ):
        observer.event(started(stream, 2))
        observer.event(stream.at(6, step_started=pb.StepStarted(step="fetch", index=0)))
        raise asyncio.CancelledError

    spans = recorded.finished_spans()
    (execution,) = spans["sandboxd.execution"]
    (step,) = spans["sandboxd.step"]
    assert (step.attributes or {})["sandboxd.step.outcome"] == "CANCELLED"
    assert step.status.description == "CANCELLED"
    assert (execution.attributes or {})["sandboxd.execution.outcome"] == "CANCELLED"
    assert (execution.attributes or {})["exception.type"] == "CancelledError"
    executions = recorded.points("sandboxd.executions")
    assert [dict(key)["sandboxd.execution.outcome"] for key in executions] == ["CANCELLED"]


def test_a_refused_execution_is_recorded_with_its_error_kind(recorded: Recorded) -> None:
    with (
        pytest.raises(QuotaExceeded),
        recorded.telemetry.observe(make_plan("fetch")),
    ):
        raise QuotaExceeded("acme", "tenant 'acme' is full", 1.0)

    (execution,) = recorded.finished_spans()["sandboxd.execution"]
    assert (execution.attributes or {})["sandboxd.execution.outcome"] == "QUOTA_EXCEEDED"
    assert execution.status.description == "QUOTA_EXCEEDED"
    assert "sandboxd.lease" not in recorded.finished_spans()


@dataclass
class PoolStats:
    failed: int = 0


@dataclass
class PoolFigures:
    warm: int = 0
    leased: int = 0
    starting: int = 0
    stats: PoolStats = field(default_factory=PoolStats)


def test_pool_gauges_and_jail_start_times(recorded: Recorded) -> None:
    pool = PoolFigures(warm=3, leased=2, starting=1, stats=PoolStats(failed=4))
    recorded.telemetry.watch_pool(pool)
    recorded.telemetry.jail_started(0.040)
    recorded.telemetry.jail_started(0.060)

    def values() -> dict[str, float]:
        metrics = recorded.metrics()
        names = ("warm", "leased", "starting", "failed")
        return {n: number(metrics[f"sandboxd.pool.{n}"].data.data_points[0]) for n in names}

    assert values() == {"warm": 3, "leased": 2, "starting": 1, "failed": 4}
    pool.warm, pool.leased = 4, 1
    assert values()["warm"] == 4
    assert values()["leased"] == 1
    (starts,) = recorded.points("sandboxd.jail.start").values()
    assert (starts.count, starts.sum) == (2, pytest.approx(0.100))


async def test_tenant_gauges_follow_admission(recorded: Recorded) -> None:
    admission = Admission(TenantPolicy(default=TenantLimits(1, 10)), capacity=4)
    recorded.telemetry.watch_admission(admission)

    def gauge(name: str) -> dict[str, float]:
        points = recorded.metrics()[f"sandboxd.tenant.{name}"].data.data_points
        return {str((p.attributes or {})["sandboxd.tenant.id"]): number(p) for p in points}

    release = asyncio.Event()

    async def hold(tenant: str) -> None:
        async with admission.admit(tenant):
            await release.wait()

    tasks = [asyncio.create_task(hold(t)) for t in ("acme", "acme", "acme", "tiny")]
    for _ in range(3):
        await asyncio.sleep(0)
    assert gauge("running") == {"acme": 1, "tiny": 1}
    assert gauge("queued") == {"acme": 2, "tiny": 0}

    release.set()
    await asyncio.gather(*tasks)
    assert gauge("queued") == {"acme": 0, "tiny": 0}  # gone idle: reported as 0 once
    assert "sandboxd.tenant.queued" not in recorded.metrics()  # then no longer reported


def test_none_exports_nothing_and_costs_nothing() -> None:
    telemetry = Telemetry.setup("none")
    with telemetry.observe(make_plan("fetch")) as observer:
        for event in succeeding_events(Stream(0)):
            observer.event(event)
    telemetry.jail_started(0.1)
    telemetry.shutdown()


class Collector(
    trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer
):
    """An OTLP collector on loopback that keeps what it receives."""

    def __init__(self) -> None:
        self.traces: list[trace_service.ExportTraceServiceRequest] = []
        self.metrics: list[metrics_service.ExportMetricsServiceRequest] = []
        self.lock = threading.Lock()

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        with self.lock:
            if isinstance(request, trace_service.ExportTraceServiceRequest):
                self.traces.append(request)
                return trace_service.ExportTraceServiceResponse()
            self.metrics.append(request)
            return metrics_service.ExportMetricsServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    keeper = Collector()
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(keeper, server)  # type: ignore[no-untyped-call]
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(keeper, server)  # type: ignore[no-untyped-call]
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield keeper, port
    server.stop(grace=None)


def test_otlp_exports_to_the_endpoint_and_resource_the_environment_names(
    collector: tuple[Collector, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    keeper, port = collector
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "sandboxd-test")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci")
    telemetry = Telemetry.setup("otlp")
    with telemetry.observe(make_plan("fetch", "shape")) as observer:
        for event in succeeding_events(Stream(0)):
            observer.event(event)
    telemetry.shutdown()  # flushes the batch span processor and the periodic metric reader

    spans = [
        span
        for request in keeper.traces
        for resource_spans in request.resource_spans
        for scope in resource_spans.scope_spans
        for span in scope.spans
    ]
    assert sorted(span.name for span in spans) == [
        "sandboxd.execution",
        "sandboxd.lease",
        "sandboxd.step",
        "sandboxd.step",
    ]
    resource = {
        attribute.key: attribute.value.string_value
        for attribute in keeper.traces[0].resource_spans[0].resource.attributes
    }
    assert resource["service.name"] == "sandboxd-test"
    assert resource["deployment.environment"] == "ci"
    metric_names = {
        metric.name
        for request in keeper.metrics
        for resource_metrics in request.resource_metrics
        for scope in resource_metrics.scope_metrics
        for metric in scope.metrics
    }
    assert {"sandboxd.executions", "sandboxd.step.duration"} <= metric_names


def test_the_service_name_defaults_to_sandboxd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    spans = InMemorySpanExporter()
    telemetry = Telemetry.setup("none", span_exporter=spans)
    with telemetry.observe(make_plan("fetch")):
        pass
    (span,) = spans.get_finished_spans()
    assert span.resource.attributes["service.name"] == "sandboxd"
    telemetry.shutdown()


def test_queue_gauges_follow_the_last_depth_read(recorded: Recorded) -> None:
    depth: list[QueueDepth | None] = [None]
    recorded.telemetry.watch_queue(lambda: depth[0])
    assert "sandboxd.queue.waiting" not in recorded.metrics()  # nothing read from Redis yet
    depth[0] = QueueDepth(
        tenants={"acme": TenantDepth(waiting=7, running=2, oldest_age_s=3.5)},
        waiting=10,
        running=2,
        delayed=4,
        dead=1,
        tenants_waiting=3,
    )
    tenant = frozenset({("sandboxd.tenant.id", "acme")})
    assert number(recorded.points("sandboxd.queue.waiting")[tenant]) == 7
    # The tenants beyond the top ones (here: 2 tenants, 3 executions) are one series.
    others = frozenset({("sandboxd.tenant.id", "other")})
    assert number(recorded.points("sandboxd.queue.waiting")[others]) == 3
    assert others not in recorded.points("sandboxd.queue.oldest_age")
    assert number(recorded.points("sandboxd.queue.oldest_age")[tenant]) == 3.5
    assert number(recorded.points("sandboxd.queue.delayed")[frozenset()]) == 4
    assert number(recorded.points("sandboxd.queue.dead")[frozenset()]) == 1
