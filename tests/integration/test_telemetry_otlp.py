"""Spans and metrics as a collector receives them: a daemon process exporting over OTLP/gRPC to a
real OTLP receiver in this test (loopback), checked against the OpenTelemetry conventions.

The receiver is the collector's own service definition (opentelemetry-proto) served by grpc; the
daemon is configured only by the standard OTEL_* variables and SANDBOXD_TELEMETRY_EXPORTER=otlp.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from sandbox_client import ErrorKind, SandboxClient, SandboxError, Step

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
SERVICE = "sandboxd.v1.SandboxService"
# Attribute names the OpenTelemetry conventions define; every other one must be sandboxd's own.
CONVENTIONS = {
    "rpc.system",
    "rpc.service",
    "rpc.method",
    "rpc.grpc.status_code",
    "server.address",
    "server.port",
    "error.type",
    "exception.type",
    "exception.message",
    "exception.stacktrace",
}
UNIT_SUFFIX = re.compile(r"_(s|ms|us|ns|bytes|seconds)$")


@dataclass
class Received:
    spans: list[Span] = field(default_factory=list)
    metrics: list[Metric] = field(default_factory=list)


class _Collector(
    trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer
):
    def __init__(self, received: Received) -> None:
        self._received = received

    def Export(self, request, context):  # type: ignore[no-untyped-def]  # noqa: N802
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    self._received.spans.extend(scope.spans)
            return trace_service_pb2.ExportTraceServiceResponse()
        for resource in request.resource_metrics:
            for scope in resource.scope_metrics:
                self._received.metrics.extend(scope.metrics)
        return metrics_service_pb2.ExportMetricsServiceResponse()


@pytest.fixture
def collector() -> Iterator[tuple[int, Received]]:
    """An OTLP/gRPC receiver on a free loopback port."""
    received = Received()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = _Collector(received)
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port, received
    server.stop(grace=None)


@dataclass
class ExportingDaemon:
    target: str
    process: subprocess.Popen[str]

    def stop(self) -> int:
        """SIGTERM: the daemon drains, flushes its exporters, and exits."""
        self.process.terminate()
        return self.process.wait(timeout=60)


@pytest.fixture
def exporting_daemon(collector: tuple[int, Received]) -> Iterator[ExportingDaemon]:
    """`sandboxd serve` exporting to the collector, in its own process."""
    port, _ = collector
    env = {
        **os.environ,
        "SANDBOXD_TELEMETRY_EXPORTER": "otlp",
        "SANDBOXD_UID_BASE": "540000",
        "SANDBOXD_POOL_MAX": "4",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_SERVICE_NAME": "sandboxd-otlp-test",
    }
    argv = [sys.executable, "-m", "sandboxd.cli", "serve", "--listen", "127.0.0.1:0"]
    process = subprocess.Popen(
        [*argv, "--pool-size", "1"], stdout=subprocess.PIPE, text=True, env=env
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith("sandboxd: serving on "):
        process.kill()
        pytest.fail(f"daemon did not start: {line!r} (exit {process.wait()})")
    daemon = ExportingDaemon(line.rsplit(" ", 1)[1].strip(), process)
    yield daemon
    if process.poll() is None:
        process.kill()
        process.wait()


def attributes(items: Iterable[KeyValue]) -> dict[str, object]:
    """OTLP key-values as a dict of plain values."""
    found: dict[str, object] = {}
    for item in items:
        which = item.value.WhichOneof("value")
        found[item.key] = getattr(item.value, which) if which else None
    return found


def own_names_are_namespaced(names: Iterable[str]) -> list[str]:
    """The names that are neither the conventions' nor under `sandboxd.`, or carry a unit."""
    return [
        name
        for name in names
        if (name not in CONVENTIONS and not name.startswith("sandboxd."))
        or UNIT_SUFFIX.search(name)
    ]


def point_attributes_of(metric: Metric) -> Iterator[KeyValue]:
    """The attributes of every data point of `metric`, whatever its type."""
    for points in (metric.sum.data_points, metric.gauge.data_points, metric.histogram.data_points):
        for point in points:
            yield from point.attributes


async def test_spans_and_metrics_follow_the_grpc_conventions(
    exporting_daemon: ExportingDaemon, collector: tuple[int, Received]
) -> None:
    _, received = collector
    target = exporting_daemon.target
    port = int(target.rsplit(":", 1)[1])
    traceparent = [("traceparent", f"00-{TRACE_ID}-{CALLER_SPAN}-01")]
    async with SandboxClient(target) as client:
        steps = [Step("double", "module.exports = (c) => c.input * 2")]
        assert await client.run(tenant_id="acme", steps=steps, input=21, metadata=traceparent) == 42
        with pytest.raises(SandboxError) as refused:
            await client.run(tenant_id="acme", steps=[Step("bad name", "module.exports = 1")])
        assert refused.value.kind is ErrorKind.INVALID_REQUEST
    assert exporting_daemon.stop() == 0

    spans = {(span.name, bytes(span.trace_id).hex()): span for span in received.spans}
    rpc = spans[(f"{SERVICE}/Execute", TRACE_ID)]
    assert rpc.kind == Span.SPAN_KIND_SERVER
    assert rpc.parent_span_id.hex() == CALLER_SPAN
    assert attributes(rpc.attributes) == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "Execute",
        "rpc.grpc.status_code": 0,
        "server.address": "127.0.0.1",
        "server.port": port,
    }
    execution = spans[("sandboxd.execution", TRACE_ID)]
    assert execution.parent_span_id == rpc.span_id  # sandboxd's spans are the RPC's children
    for name in ("sandboxd.lease", "sandboxd.step"):
        assert spans[(name, TRACE_ID)].parent_span_id == execution.span_id
    assert attributes(execution.attributes)["sandboxd.execution.outcome"] == "SUCCEEDED"

    (refusal,) = [s for s in received.spans if bytes(s.trace_id).hex() != TRACE_ID]
    assert refusal.name == f"{SERVICE}/Execute"
    assert attributes(refusal.attributes) == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "Execute",
        "rpc.grpc.status_code": grpc.StatusCode.INVALID_ARGUMENT.value[0],
        "server.address": "127.0.0.1",
        "server.port": port,
        "error.type": "INVALID_REQUEST",
    }
    every_span_attribute = {kv.key for span in received.spans for kv in span.attributes}
    assert own_names_are_namespaced(every_span_attribute) == []

    metrics = {metric.name: metric for metric in received.metrics}
    duration = metrics["rpc.server.duration"]
    assert duration.unit == "ms"
    calls = {
        (point_attributes["rpc.method"], point_attributes["rpc.grpc.status_code"])
        for point in duration.histogram.data_points
        if (point_attributes := attributes(point.attributes))["rpc.service"] == SERVICE
    }
    assert {("Execute", 0), ("Execute", 3)} <= calls
    executions = metrics["sandboxd.executions"]
    assert executions.unit == "{execution}"
    point_names = {kv.key for metric in received.metrics for kv in point_attributes_of(metric)}
    assert "sandboxd.tenant.id" in point_names
    assert own_names_are_namespaced(point_names) == []
    assert {name for name in metrics if not name.startswith("sandboxd.")} == {"rpc.server.duration"}
