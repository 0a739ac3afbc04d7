"""Spans and metrics of real executions, through a real daemon and real gRPC."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sandbox_client import SandboxClient, SandboxError, Step
from sandboxd import config
from sandboxd.daemon import Daemon
from sandboxd.telemetry import Telemetry

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
PARENT_SPAN = "b7ad6b7169203331"
SECRET = "tok-123456789"


@pytest.fixture
async def observed() -> AsyncIterator[tuple[str, InMemorySpanExporter, InMemoryMetricReader]]:
    spans, metrics = InMemorySpanExporter(), InMemoryMetricReader()
    telemetry = Telemetry.setup("none", span_exporter=spans, metric_reader=metrics)
    settings = config.load(None, env={}, listen="127.0.0.1:0", pool_size=1, uid_base=480_000)
    daemon = Daemon(settings, telemetry=telemetry)
    await daemon.start()
    try:
        yield f"127.0.0.1:{daemon.port}", spans, metrics
    finally:
        await daemon.stop(grace=1.0)


async def test_an_execution_is_one_trace_continuing_the_callers(
    observed: tuple[str, InMemorySpanExporter, InMemoryMetricReader],
) -> None:
    target, spans, metrics = observed
    steps = [
        Step("first", "module.exports = async (ctx) => ctx.credentials.token.length"),
        Step("second", "module.exports = async (ctx) => { throw new Error('no') }"),
    ]
    traceparent = f"00-{TRACE_ID}-{PARENT_SPAN}-01"
    async with SandboxClient(target) as client:
        with pytest.raises(SandboxError):
            await client.run(
                tenant_id="acme",
                steps=steps,
                input={"order": SECRET},
                credentials={"token": SECRET},
                metadata=[("traceparent", traceparent)],
            )
    finished = {span.name: span for span in spans.get_finished_spans()}
    rpc = finished["sandboxd.v1.SandboxService/Execute"]
    assert rpc.context.trace_id == int(TRACE_ID, 16)
    assert rpc.parent is not None and rpc.parent.span_id == int(PARENT_SPAN, 16)
    execution = finished["sandboxd.execution"]
    assert execution.context.trace_id == int(TRACE_ID, 16)
    assert execution.parent is not None and execution.parent.span_id == rpc.context.span_id
    assert execution.attributes is not None
    assert execution.attributes["sandboxd.tenant.id"] == "acme"
    assert execution.attributes["sandboxd.execution.outcome"] == "USER_ERROR"
    assert execution.attributes["sandboxd.execution.failed_step"] == "second"
    step_spans = [s for s in spans.get_finished_spans() if s.name == "sandboxd.step"]
    names = [(s.attributes or {}).get("sandboxd.step.name") for s in step_spans]
    assert names == ["first", "second"]
    assert [(s.attributes or {}).get("sandboxd.step.outcome") for s in step_spans] == [
        "SUCCEEDED",
        "USER_ERROR",
    ]
    for child in [*step_spans, finished["sandboxd.lease"]]:
        assert child.parent is not None and child.parent.span_id == execution.context.span_id
    every_attribute = [v for s in spans.get_finished_spans() for v in (s.attributes or {}).values()]
    assert not any(SECRET in str(value) for value in every_attribute)
    data = metrics.get_metrics_data()
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert {
        "sandboxd.executions",
        "sandboxd.execution.duration",
        "sandboxd.step.duration",
        "sandboxd.lease.wait",
        "sandboxd.jail.start",
        "sandboxd.pool.warm",
    } <= names
