"""python -m sandboxd.queue --redis URL: a daemon that serves the queue (and gRPC on a free port).

Prints one line, READY with its id, once it takes work; stops on SIGTERM
or SIGINT, handing back what it could not finish within the grace.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

from sandboxd import config
from sandboxd.cli import configure_logging
from sandboxd.config import ConfigError, Settings
from sandboxd.daemon import Daemon
from sandboxd.jail.errors import JailError
from sandboxd.queue.worker import QueueOptions, default_worker_id

READY = "sandboxd: worker {} serving the queue\n"


def command(
    redis_url: str,
    worker_id: str,
    *,
    pool_size: int,
    pool_max: int,
    uid_base: int,
    options: QueueOptions,
) -> list[str]:
    """The command line of a worker process (for tests, benchmarks and scripts)."""
    return [
        sys.executable, "-m", "sandboxd.queue",
        "--redis", redis_url,
        "--worker-id", worker_id,
        "--pool-size", str(pool_size),
        "--pool-max", str(pool_max),
        "--uid-base", str(uid_base),
        "--visibility-timeout", str(options.visibility_timeout_s),
        "--max-attempts", str(options.max_attempts),
        "--retry-backoff", str(options.retry_backoff_s),
    ]  # fmt: skip


async def serve_worker(settings: Settings) -> None:
    """Run a daemon with its queue worker until SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    daemon = Daemon(settings)
    await daemon.start()
    print(READY.format(settings.worker_id), end="", flush=True)
    try:
        await stop.wait()
    finally:
        await daemon.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sandboxd.queue", description=__doc__)
    parser.add_argument("--redis", required=True, help="redis://HOST:PORT/DB")
    parser.add_argument("--worker-id", default=default_worker_id())
    parser.add_argument("--config", help="a TOML settings file")
    parser.add_argument("--listen", default="127.0.0.1:0", help="gRPC HOST:PORT")
    parser.add_argument("--pool-size", type=int)
    parser.add_argument("--pool-max", type=int)
    parser.add_argument("--uid-base", type=int)
    parser.add_argument("--cgroups", choices=("auto", "v2", "v1", "none"))
    defaults = QueueOptions()
    parser.add_argument("--visibility-timeout", type=float, default=defaults.visibility_timeout_s)
    parser.add_argument("--max-attempts", type=int, default=defaults.max_attempts)
    parser.add_argument("--retry-backoff", type=float, default=defaults.retry_backoff_s)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        settings = config.load(
            args.config,
            listen=args.listen,
            pool_size=args.pool_size,
            pool_max=args.pool_max,
            uid_base=args.uid_base,
            cgroups=args.cgroups,
            redis_url=args.redis,
            worker_id=args.worker_id,
            queue_visibility_timeout_s=args.visibility_timeout,
            queue_max_attempts=args.max_attempts,
            queue_retry_backoff_s=args.retry_backoff,
        )
        asyncio.run(serve_worker(settings))
    except (ConfigError, JailError) as exc:
        print(f"sandboxd: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
