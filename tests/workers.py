"""Queue workers as separate processes (`sandboxd worker`), for the queue tests and benchmark."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from sandboxd.queue.worker import QueueOptions

SERVING = "sandboxd: serving on "


def start_worker_process(
    redis_url: str,
    worker_id: str,
    *,
    pool_size: int,
    pool_max: int,
    uid_base: int,
    options: QueueOptions,
    extra_args: Sequence[str] = (),
) -> tuple[subprocess.Popen[str], str]:
    """`sandboxd worker --redis URL`, configured through SANDBOXD_* variables, and the gRPC
    target it serves on; returns once it takes work (it prints its serving line after its queue
    worker has started)."""
    env = {
        **os.environ,
        "SANDBOXD_WORKER_ID": worker_id,
        "SANDBOXD_POOL_MAX": str(pool_max),
        "SANDBOXD_UID_BASE": str(uid_base),
        "SANDBOXD_QUEUE_VISIBILITY_TIMEOUT_S": str(options.visibility_timeout_s),
        "SANDBOXD_QUEUE_MAX_ATTEMPTS": str(options.max_attempts),
        "SANDBOXD_QUEUE_RETRY_BACKOFF_S": str(options.retry_backoff_s),
    }
    argv = [sys.executable, "-m", "sandboxd.cli", "worker", "--redis", redis_url]
    argv += ["--pool-size", str(pool_size), *extra_args]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line.startswith(SERVING):
        process.kill()
        raise RuntimeError(f"worker {worker_id} did not start: {line!r} (exit {process.wait()})")
    return process, line.removeprefix(SERVING).strip()
