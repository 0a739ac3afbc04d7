"""The command line: `sandboxd run` and `sandboxd status`, as a user runs them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from sandboxd.jail import cgroups
from tests.conftest import DaemonProcess

SANDBOXD = [sys.executable, "-m", "sandboxd.cli"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SANDBOXD, *args], check=False, capture_output=True, text=True, timeout=60
    )


def test_run_prints_events_then_the_result(tmp_path: Path) -> None:
    step = tmp_path / "double.js"
    step.write_text(
        "module.exports = async (ctx) => {"
        " console.log('got', ctx.input.n); return ctx.input.n * 2; }"
    )
    done = run_cli("run", str(step), "--input", '{"n": 21}')
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == 42
    assert any("got 21" in line for line in lines[:-1])


def test_run_reads_input_from_a_file_and_fails_with_the_kind(tmp_path: Path) -> None:
    step = tmp_path / "fail.js"
    step.write_text("module.exports = async (ctx) => { throw new RangeError(ctx.input.why); }")
    payload = tmp_path / "input.json"
    payload.write_text('{"why": "no such order"}')
    done = run_cli("run", str(step), "--input", f"@{payload}")
    assert done.returncode == 1
    assert "error: USER_ERROR: RangeError: no such order" in done.stderr


def test_status_prints_the_pool(daemon: DaemonProcess) -> None:
    done = run_cli("status", "--target", daemon.target)
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["serving"] is True
    assert status["cgroupMode"] == cgroups.detect()
    assert status["pool"]["target"] == 4


def test_health_and_reflection(daemon: DaemonProcess) -> None:
    with grpc.insecure_channel(daemon.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "sandboxd.v1.SandboxService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(iter(reflection.ServerReflectionInfo(iter([request]), timeout=5)))
        names = {service.name for service in reply.list_services_response.service}
    assert {"sandboxd.v1.SandboxService", "grpc.health.v1.Health"} <= names
