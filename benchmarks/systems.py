"""The systems under test, behind one interface: run a workload once, return a Sample.

* ``ProcessSystem``: a fresh process per execution running benchmarks/harness.js, either bare
  ``node`` (the floor of the fresh-process model) or ``bwrap ... node`` (a peer jail).
* ``NodeStart``: ``node -e 0``, the cost of starting Node at all (jail start is compared to it).
* ``SandboxdSystem``: a sandboxd daemon over real gRPC through sandbox_client.

Every system's time runs from handing over the request until the caller holds the result and the
execution is over (process reaped; RPC stream ended), and every result is checked afterwards.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from benchmarks.daemons import CpuTime, Daemon
from benchmarks.phases import Clock, Phases
from benchmarks.workloads import Workload
from sandbox_client import Limits, SandboxClient, SandboxError, decode_result
from sandbox_client.v1 import sandbox_pb2 as pb
from sandboxd.kinds import kind_name

HARNESS = Path(__file__).with_name("harness.js")
# No variable at all: this host sets NODE_EXTRA_CA_CERTS, which makes every Node start ~3x slower,
# and sandboxd's jails get a small fixed environment, so the baselines get none.
CLEAN_ENV: dict[str, str] = {}
TENANT_ID = "bench"
EXECUTION_TIMEOUT_S = 120.0
# sandboxd starts a jail for one execution alone when it asks for jail limits other than the
# pool's (pool.lease: "it costs one jail start"). That is how the cold system makes every
# execution start a jail: since the pool follows demand, --pool-size 0 alone keeps jails warm
# as soon as requests arrive. The open-file limit differs from the default (256) and changes
# nothing else for these steps.
COLD_LIMITS = {"open_files": 1021}
_SETTLE_TIMEOUT_S = 30.0
_SETTLE_POLL_S = 0.01
# Closed-loop load drives up to 32 streams; every baseline execution blocks one thread.
_THREADS = 64


@dataclass(frozen=True, slots=True)
class Sample:
    """One execution as a caller saw it."""

    wall_s: float
    error: str | None = None
    cpu_s: float | None = None  # baselines: rusage of the process; sandboxd: the steps' Usage
    peak_memory_bytes: int | None = None  # baselines: max RSS; sandboxd: the steps' Usage
    jail_wait_s: float | None = None  # sandboxd: ExecutionStarted.lease_wait_us
    phases: Phases | None = None  # sandboxd: when each event arrived


class System(Protocol):
    name: str

    async def execute(self, workload: Workload) -> Sample:
        """Run ``workload`` once and measure it."""

    async def settle(self) -> None:
        """Wait until the work an execution left behind (e.g. a pool refill) is done."""

    def daemon_cpu(self) -> CpuTime | None:
        """CPU time of the system's daemon so far; None when there is none (then each Sample
        carries its own process's CPU time)."""


@dataclass(frozen=True, slots=True)
class Finished:
    """A process run to its end."""

    wall_s: float
    exit_code: int
    stdout: bytes
    stderr: bytes
    cpu_s: float
    max_rss_bytes: int


def run_process(argv: Sequence[str], stdin: bytes | None) -> Finished:
    """Run ``argv`` with a clean environment, feed ``stdin``, collect output and rusage.

    Reaped with wait4 (not Popen.wait) to get the rusage of this one process tree. The harness
    reads all of stdin before it writes, so writing first and then reading cannot deadlock.
    """
    started = time.perf_counter()
    with subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL if stdin is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=CLEAN_ENV,
    ) as process:
        killer = threading.Timer(EXECUTION_TIMEOUT_S, process.kill)
        killer.start()
        try:
            if stdin is not None and process.stdin is not None:
                _feed(process.stdin, stdin)
            stdout = _read_all(process.stdout)
            stderr = _read_all(process.stderr)
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            killer.cancel()
        process.returncode = os.waitstatus_to_exitcode(status)
    return Finished(
        wall_s=time.perf_counter() - started,
        exit_code=process.returncode,
        stdout=stdout,
        stderr=stderr,
        cpu_s=usage.ru_utime + usage.ru_stime,
        max_rss_bytes=usage.ru_maxrss * 1024,
    )


def _feed(pipe: IO[bytes], data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except BrokenPipeError:
        pass  # the process died early; its exit code and stderr tell why


def _read_all(pipe: IO[bytes] | None) -> bytes:
    return pipe.read() if pipe is not None else b""


class ProcessSystem:
    """A fresh ``[*prefix, harness.js]`` process per execution.

    ``rusage_complete`` says whether wait4 sees the CPU and memory of every process of an
    execution. Not for bwrap: it exits without reaping its pid-1 helper, whose node child's
    times then go to the host's init, so its rusage would show bwrap alone.
    """

    def __init__(self, name: str, prefix: Sequence[str], *, rusage_complete: bool = True):
        self.name = name
        self.argv = [*prefix, str(HARNESS)]
        self._rusage_complete = rusage_complete
        self._threads = ThreadPoolExecutor(_THREADS, thread_name_prefix=name)

    async def execute(self, workload: Workload) -> Sample:
        stdin = workload.harness_stdin
        loop = asyncio.get_running_loop()
        done = await loop.run_in_executor(self._threads, run_process, self.argv, stdin)
        error = _harness_error(done, workload)
        if not self._rusage_complete:
            return Sample(done.wall_s, error)
        return Sample(done.wall_s, error, done.cpu_s, done.max_rss_bytes)

    async def settle(self) -> None:
        """Nothing outlives a process that was reaped."""

    def daemon_cpu(self) -> None:
        return None

    def close(self) -> None:
        self._threads.shutdown()


def _harness_error(done: Finished, workload: Workload) -> str | None:
    """Why the harness run failed, or None when its result is the expected one."""
    last_line = done.stdout.rstrip(b"\n").rpartition(b"\n")[2]
    try:
        value: Any = json.loads(last_line)
    except ValueError:
        value = None
    if done.exit_code != 0:
        reported = value.get("error") if isinstance(value, dict) else None
        tail = done.stderr.decode(errors="replace").strip()[-300:]
        return f"exit code {done.exit_code}: {reported or tail or 'no output'}"
    return None if workload.check(value) else "wrong result"


class NodeStart:
    """``node -e 0``: starting Node and nothing else."""

    def __init__(self, node: str):
        self.name = "node_start"
        self.argv = [node, "-e", "0"]

    async def execute(self, workload: Workload) -> Sample:
        done = await asyncio.to_thread(run_process, self.argv, None)
        error = None if done.exit_code == 0 else f"exit code {done.exit_code}"
        return Sample(done.wall_s, error, done.cpu_s, done.max_rss_bytes)

    async def settle(self) -> None:
        """Nothing outlives a process that was reaped."""

    def daemon_cpu(self) -> None:
        return None


class SandboxdSystem:
    """A running sandboxd daemon, driven through one gRPC channel (HTTP/2 streams share it)."""

    def __init__(
        self,
        name: str,
        client: SandboxClient,
        daemon: Daemon,
        *,
        cold: bool = False,
        tenant_id: str = TENANT_ID,
    ):
        self.name = name
        self.client = client
        self.daemon = daemon
        self.cold = cold
        self.tenant_id = tenant_id

    def for_tenant(self, tenant_id: str) -> SandboxdSystem:
        """The same daemon, with executions accounted to ``tenant_id``."""
        name = f"{self.name}/{tenant_id}"
        return SandboxdSystem(name, self.client, self.daemon, cold=self.cold, tenant_id=tenant_id)

    def _limits(self, workload: Workload) -> Limits | None:
        if not self.cold:
            return workload.limits
        return dataclasses.replace(workload.limits or Limits(), **COLD_LIMITS)

    def daemon_cpu(self) -> CpuTime:
        return self.daemon.cpu()

    async def execute(self, workload: Workload) -> Sample:
        started = time.perf_counter()
        clock = Clock()
        steps: list[pb.StepFinished] = []
        finished: pb.ExecutionFinished | None = None
        wait_s: float | None = None
        try:
            async for event in self.client.execute(
                tenant_id=self.tenant_id,
                steps=workload.steps,
                input_json=workload.input_json,
                config_vars=workload.config_vars,
                credentials=workload.credentials,
                limits=self._limits(workload),
                # Like the baselines' harness, only the last result travels back; earlier ones
                # stay in the jail for later steps.
                return_results="last",
                timeout=EXECUTION_TIMEOUT_S,
            ):
                clock.saw(event)
                if event.HasField("execution_started"):
                    wait_s = event.execution_started.lease_wait_us / 1e6
                elif event.HasField("step_finished"):
                    steps.append(event.step_finished)
                elif event.HasField("execution_finished"):
                    finished = event.execution_finished
        except SandboxError as error:
            return Sample(time.perf_counter() - started, f"{error.kind.name}: {error.message}")
        wall_s = time.perf_counter() - started
        phases = clock.ended()
        return Sample(
            wall_s,
            error=_execution_error(finished, steps, workload),
            cpu_s=sum(step.usage.cpu_time_us for step in steps) / 1e6 or None,
            peak_memory_bytes=max((s.usage.peak_memory_bytes for s in steps), default=0) or None,
            jail_wait_s=wait_s,
            phases=phases,
        )

    async def settle(self, poll_s: float = _SETTLE_POLL_S) -> None:
        """Wait until nothing runs and the pool is back at its target (refills cost CPU).

        Each poll is a GetStatus call, which costs the daemon CPU too: a measurement of the
        daemon's own CPU polls less often (``poll_s``).
        """
        deadline = time.monotonic() + _SETTLE_TIMEOUT_S
        while time.monotonic() < deadline:
            status = await self.client.status(timeout=5.0)
            pool = status.pool
            if not status.running and not pool.starting and pool.warm >= pool.target:
                return
            await asyncio.sleep(poll_s)
        print(
            f"warning: {self.name} did not settle within {_SETTLE_TIMEOUT_S:.0f} s", file=sys.stderr
        )


def _execution_error(
    finished: pb.ExecutionFinished | None, steps: list[pb.StepFinished], workload: Workload
) -> str | None:
    """Why the execution failed, or None when its last result is the expected one."""
    if finished is None:
        return "the event stream ended before ExecutionFinished"
    if finished.status != pb.EXECUTION_STATUS_SUCCEEDED:
        return f"{kind_name(finished.error_kind)}: {finished.error_message}"
    if not steps or not workload.check(decode_result(steps[-1])):
        return "wrong result"
    return None
