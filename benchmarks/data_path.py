"""Moving data: `python -m benchmarks.data_path [--sizes 1,16,64] [--runs N]`.

* Round trip of a payload: a step returns its input (`ctx.input`), sent and received over gRPC
  (chunked above 1 MiB), against what Node itself needs to `JSON.parse` + `JSON.stringify` the
  same document (measured in a bare Node with a clean environment, the floor of any design that
  hands JSON to JavaScript).
* Session step overhead: 500 steps on one jail; per step, the client's time minus the step's own
  time in the jail (StepFinished.usage.duration_us); the median.

Prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import daemons
from sandbox_client import SandboxClient, Step

MiB = 1024 * 1024
_UID_BASE = 620_000
ECHO = Step("echo", "module.exports = async (ctx) => ctx.input")
NEXT = "module.exports = async (ctx) => ctx.input.n + 1"
NODE_PARSE_STRINGIFY = """
const size = Number(process.argv[1]);
const text = JSON.stringify({ data: 'x'.repeat(size) });
const times = [];
for (let i = 0; i < 5; i++) {
  const began = performance.now();
  JSON.stringify(JSON.parse(text));
  times.push(performance.now() - began);
}
times.sort((a, b) => a - b);
console.log(times[2]);
"""


def node_floor_ms(size: int) -> float:
    """Median ms of JSON.parse + JSON.stringify of the document, in a bare Node."""
    done = subprocess.run(
        ["node", "-e", NODE_PARSE_STRINGIFY, str(size)],
        env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return float(done.stdout)


async def round_trip_ms(client: SandboxClient, size: int, runs: int) -> float:
    document = {"data": "x" * size}
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        result = await client.run(tenant_id="bench", steps=[ECHO], input=document)
        times.append((time.perf_counter() - began) * 1000)
        assert len(result["data"]) == size
    return statistics.median(times)


async def session_overhead_ms(client: SandboxClient, steps: int) -> dict[str, float]:
    overheads = []
    async with client.session(tenant_id="bench") as session:
        for n in range(steps):
            began = time.perf_counter()
            assert await session.step("next", NEXT, {"n": n}) == n + 1
            client_ms = (time.perf_counter() - began) * 1000
            in_jail_us = next(
                e.step_finished.usage.duration_us
                for e in reversed(session.history)
                if e.HasField("step_finished")
            )
            overheads.append(client_ms - in_jail_us / 1000)
    return {
        "steps": steps,
        "overhead_ms_p50": round(statistics.median(overheads), 3),
        "overhead_ms_p90": round(sorted(overheads)[int(0.9 * len(overheads))], 3),
    }


async def measure(sizes_mib: list[int], runs: int) -> dict[str, object]:
    log = Path(tempfile.gettempdir(), "sandboxd-data-path.log")
    daemon = daemons.start("data", pool_size=2, uid_base=_UID_BASE, env={}, log=log)
    payloads = []
    try:
        async with SandboxClient(daemon.target) as client:
            for mib in sizes_mib:
                # The result carries a few bytes of JSON around the data: stay under 64 MiB.
                size = mib * MiB - 1024
                sandboxd_ms = await round_trip_ms(
                    client, size, runs if mib < 64 else max(1, runs // 2)
                )
                floor_ms = node_floor_ms(size)
                payloads.append(
                    {
                        "mib": mib,
                        "round_trip_ms": round(sandboxd_ms, 1),
                        "node_parse_stringify_ms": round(floor_ms, 1),
                        "ratio": round(sandboxd_ms / floor_ms, 2),
                    }
                )
            session = await session_overhead_ms(client, 500)
    finally:
        daemon.stop()
    return {"payloads": payloads, "session": session}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.data_path")
    parser.add_argument("--sizes", default="1,16,64", help="payload sizes in MiB")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    sizes = [int(size) for size in args.sizes.split(",")]
    json.dump(asyncio.run(measure(sizes, args.runs)), sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
