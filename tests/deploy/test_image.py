"""The image run the way ECS runs it: built on a Debian base made here, started with exactly the
privileges of deploy/ecs/task-definition.json (translated by tests/deploy/docker_engine.py from
the file itself), healthy, serving the demo and refusing escapes over gRPC, draining on SIGTERM;
and refusing to start, naming it, without any one of the privileges.

Its own CI step (scripts/test-image, SANDBOXD_TEST_IMAGE=1); in the main test run it is skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandbox_client import Limits, SandboxClient, SandboxError, Step
from sandboxd.demo import demo_request
from tests.deploy.docker_engine import (
    BASE_IMAGE,
    Engine,
    free_loopback_port,
    privilege_flags,
    restriction_flags,
)
from tests.deploy.ecs_files import INSTANCE_SECCOMP, TASK_DEFINITION, daemon_container, load

REPO = Path(__file__).resolve().parents[2]
IMAGE = "sandboxd:test"
CONTAINER = daemon_container(load(TASK_DEFINITION))
HEALTHY_WITHIN_S = 120.0

pytestmark = pytest.mark.skipif(
    os.environ.get("SANDBOXD_TEST_IMAGE") != "1",
    reason="the image test is its own CI step: scripts/test-image",
)


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    # A short path: containerd's sockets live under the exec root (108-byte limit).
    root = Path(
        subprocess.check_output(["mktemp", "-d", "/tmp/sbd-docker.XXXXXX"], text=True).strip()
    )
    started = Engine(root)
    try:
        started.start()
        began = time.monotonic()
        started.import_debian_base()
        print(f"\nimage test: debian base made and imported in {time.monotonic() - began:.0f} s")
        began = time.monotonic()
        subprocess.run(
            [f"{REPO}/images/sandboxd/build", "--base", BASE_IMAGE, "--tag", IMAGE],
            env=started.env_for_clients(), check=True, capture_output=True, timeout=900,
        )  # fmt: skip
        size = int(started.docker("image", "inspect", "-f", "{{.Size}}", IMAGE).stdout)
        print(f"image test: {IMAGE} built in {time.monotonic() - began:.0f} s, {size / 1e6:.0f} MB")
        yield started
    finally:
        started.stop()
        subprocess.run(["rm", "-rf", "--one-file-system", str(root)], check=False)


@dataclass
class Running:
    name: str
    target: str


def run_flags(port: int, without: str | None = None) -> list[str]:
    granted = privilege_flags(CONTAINER)
    flags = restriction_flags(CONTAINER, port)
    for name, privilege in granted.items():
        if name != without:
            flags += privilege
    return flags


@pytest.fixture(scope="module")
def running(engine: Engine) -> Iterator[Running]:
    port = free_loopback_port()
    name = f"sandboxd-test-{os.getpid()}"
    engine.docker("run", "--detach", "--name", name, *run_flags(port), IMAGE, *CONTAINER["command"])
    try:
        wait_healthy(engine, name)
        yield Running(name, f"127.0.0.1:{port}")
    finally:
        # The daemon's warnings and errors, for whoever reads a failure.
        logs = engine.docker("logs", name, check=False).stderr.splitlines()
        print("\n".join(line for line in logs if " INFO " not in line)[-4000:])
        engine.docker("rm", "--force", name, check=False)


def wait_healthy(engine: Engine, name: str) -> None:
    deadline = time.monotonic() + HEALTHY_WITHIN_S
    while (status := state(engine, name)["Health"]["Status"]) != "healthy":
        if (
            status == "unhealthy"
            or time.monotonic() > deadline
            or not state(engine, name)["Running"]
        ):
            logs = engine.docker("logs", name, check=False)
            pytest.fail(f"container {status}: {logs.stdout[-2000:]}{logs.stderr[-2000:]}")
        time.sleep(1)


def state(engine: Engine, name: str) -> dict[str, Any]:
    return dict(json.loads(engine.docker("inspect", "-f", "{{json .State}}", name).stdout))


@pytest.fixture
async def client(running: Running) -> AsyncIterator[SandboxClient]:
    async with SandboxClient(running.target) as connected:
        yield connected


# --- serving --------------------------------------------------------------------------------------


async def test_the_demo_runs_against_the_container(client: SandboxClient) -> None:
    request = demo_request()
    summary = await client.run(
        tenant_id="demo",
        steps=request.steps,
        input=request.input,
        config_vars=request.config_vars,
        credentials=request.credentials,
    )
    assert summary["orders"]["received"] == 200
    assert summary["orders"]["valid"] + summary["orders"]["invalid"] == 200
    assert summary["grandTotal"]["currency"] == "USD"
    assert summary["partnerResponse"] is None  # prepared, not sent: no network here


ESCAPES = {
    "sees only its own processes": (
        "require('fs').readdirSync('/proc').filter((n) => /^[0-9]+$/.test(n))",
        ["1"],
    ),
    "writes nothing of the image": (
        "(() => { try { require('fs').writeFileSync('/sandboxd/runner.js', ''); return 'wrote' }"
        " catch (e) { return e.code } })()",
        "EROFS",
    ),
    "holds no capability and runs under seccomp": (
        "require('fs').readFileSync('/proc/self/status', 'utf8').split('\\n')"
        ".filter((l) => /^(CapEff|CapBnd|Seccomp):/.test(l)).map((l) => l.replace(/\\s+/g, ' '))",
        ["CapEff: 0000000000000000", "CapBnd: 0000000000000000", "Seccomp: 2"],
    ),
    "reaches no host device": (
        "(() => { try { require('fs').readdirSync('/sys'); return 'listed' }"
        " catch (e) { return e.code } })()",
        "ENOENT",
    ),
}


@pytest.mark.parametrize("attempt", sorted(ESCAPES))
async def test_escape_attempts_fail_in_the_container(client: SandboxClient, attempt: str) -> None:
    expression, expected = ESCAPES[attempt]
    step = Step("attack", f"module.exports = async () => {expression}")
    assert await client.run(tenant_id="attacker", steps=[step]) == expected


async def test_the_daemons_port_is_unreachable_from_a_jail(
    client: SandboxClient, running: Running
) -> None:
    port = running.target.rsplit(":", 1)[1]
    code = (
        "module.exports = async () => new Promise((done) => {"
        f" const s = require('net').connect({port}, '127.0.0.1');"
        " s.on('connect', () => done('connected')); s.on('error', (e) => done(e.code)); })"
    )
    assert await client.run(tenant_id="attacker", steps=[Step("attack", code)]) == "ECONNREFUSED"


async def test_a_memory_balloon_is_memory_limit_under_the_containers_cgroup(
    client: SandboxClient,
) -> None:
    balloon = Step(
        "balloon",
        "module.exports = async () => { const a = []; for (;;) a.push(Buffer.alloc(1 << 20, 1)) }",
    )
    with pytest.raises(SandboxError) as failed:
        await client.run(
            tenant_id="attacker", steps=[balloon], limits=Limits(memory_bytes=128 * 1024 * 1024)
        )
    assert failed.value.kind.name.endswith("MEMORY_LIMIT")


# --- SIGTERM as ECS sends it: drain, then exit 0 --------------------------------------------------


async def test_sigterm_drains_the_running_execution_and_exits_zero(
    engine: Engine, running: Running, client: SandboxClient
) -> None:
    slow = Step(
        "slow",
        "module.exports = async () => {"
        " await new Promise((r) => setTimeout(r, 3000)); return 'done' }",
    )
    execution = asyncio.create_task(client.run(tenant_id="drain", steps=[slow]))
    await asyncio.sleep(1.0)  # the step is running
    stopped = threading.Event()
    # `docker stop` is what ECS does: SIGTERM, then SIGKILL after stopTimeout.
    stopper = threading.Thread(
        target=lambda: (engine.docker("stop", running.name, timeout=200), stopped.set())
    )
    began = time.monotonic()
    stopper.start()
    assert await execution == "done"
    await asyncio.to_thread(stopper.join)
    assert stopped.is_set()
    assert time.monotonic() - began < CONTAINER["stopTimeout"]  # drained, not killed
    final = state(engine, running.name)
    assert (final["Running"], final["OOMKilled"], final["ExitCode"]) == (False, False, 0)


# --- each privilege is needed ---------------------------------------------------------------------


def without_instance_seccomp(tmp_path: Path) -> list[str]:
    """The instance profile with pivot_root refused too, as Docker's own default refuses it."""
    profile = load(INSTANCE_SECCOMP)
    profile["syscalls"].append({"names": ["pivot_root"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1})
    path = tmp_path / "seccomp.json"
    path.write_text(json.dumps(profile))
    return ["--security-opt", f"seccomp={path}"]


REFUSALS = {
    "CAP_SYS_ADMIN": "missing CAP_SYS_ADMIN",
    "CAP_SETUID": "missing CAP_SETUID",
    "CAP_SETGID": "missing CAP_SETGID",
    "initProcessEnabled": "(initProcessEnabled: true; docker run --init)",
    "instance seccomp profile": "pivot_root failed (EPERM): pivot_root is refused by",
}


def test_every_granted_privilege_is_listed_here() -> None:
    assert set(privilege_flags(CONTAINER)) | {"instance seccomp profile"} == set(REFUSALS)


@pytest.mark.parametrize("privilege", sorted(REFUSALS))
def test_without_a_privilege_the_daemon_refuses_to_start_naming_it(
    engine: Engine, privilege: str, tmp_path: Path
) -> None:
    flags = run_flags(free_loopback_port(), without=privilege)
    if privilege == "instance seccomp profile":
        flags += without_instance_seccomp(tmp_path)
    result = engine.docker(
        "run", "--rm", *flags, IMAGE, *CONTAINER["command"], check=False, timeout=120
    )
    last_line = result.stderr.strip().splitlines()[-1]
    assert result.returncode == 2, result.stderr
    assert last_line.startswith("sandboxd: preflight: ")
    assert REFUSALS[privilege] in last_line
