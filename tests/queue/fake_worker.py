"""A queue worker process with a FakeRunner instead of jails, for the fleet test and benchmark.

    python -m tests.queue.fake_worker REDIS_URL WORKER_ID [--slots N] [--run-ms MS]

Prints READY once it takes work; on SIGTERM it stops and prints its status as one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import subprocess
import sys
from collections.abc import Sequence

from sandboxd import config
from sandboxd.queue.worker import QueueOptions, QueueWorker
from tests.queue.fake_runner import FakeRunner

READY = "READY"


async def serve(
    redis_url: str, worker_id: str, slots: int, run_s: float, options: QueueOptions
) -> None:
    settings = config.load(None, env={})
    worker = QueueWorker(redis_url, FakeRunner(slots, run_s), settings, worker_id, options)
    stopping = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopping.set)
    await worker.start()
    print(READY, flush=True)
    await stopping.wait()
    await worker.stop(grace=10.0)
    print(json.dumps(worker.status()), flush=True)


def start(
    redis_url: str,
    worker_id: str,
    *,
    slots: int,
    run_ms: float = 0.0,
    idle_check_s: float = 2.0,
    visibility_s: float = 30.0,
) -> subprocess.Popen[str]:
    """The worker as a child process; returns once it takes work."""
    argv = [sys.executable, "-m", "tests.queue.fake_worker", redis_url, worker_id]
    argv += ["--slots", str(slots), "--run-ms", str(run_ms), "--idle-check-s", str(idle_check_s)]
    argv += ["--visibility-s", str(visibility_s)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if line != READY:
        process.kill()
        raise RuntimeError(f"fake worker {worker_id} did not start: {line!r}")
    return process


def stop(process: subprocess.Popen[str]) -> dict[str, object]:
    """SIGTERM (and SIGCONT, should it be stopped), and the status it printed when it stopped."""
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGCONT)
    out, _ = process.communicate(timeout=60)
    status: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.queue.fake_worker")
    parser.add_argument("redis_url")
    parser.add_argument("worker_id")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--run-ms", type=float, default=0.0)
    parser.add_argument("--idle-check-s", type=float, default=2.0)
    parser.add_argument("--visibility-s", type=float, default=30.0)
    args = parser.parse_args(argv)
    options = QueueOptions(idle_check_s=args.idle_check_s, visibility_timeout_s=args.visibility_s)
    asyncio.run(serve(args.redis_url, args.worker_id, args.slots, args.run_ms / 1000, options))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
