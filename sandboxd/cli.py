"""sandboxd serve | worker | run | demo | status | health."""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import logging
import re
import sys
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path

import grpc
from google.protobuf import json_format

from sandbox_client import SandboxError
from sandbox_client.v1 import sandbox_pb2 as pb
from sandboxd import config, memory
from sandboxd.config import ConfigError, Settings
from sandboxd.daemon import Daemon, ListenError
from sandboxd.jail.errors import JailError
from sandboxd.kinds import kind_name


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose)
    try:
        settings = config.load(
            args.config,
            listen=getattr(args, "listen", None),
            rootfs=args.rootfs,
            pool_size=getattr(args, "pool_size", None),
            redis_url=getattr(args, "redis", None),
            cgroups=args.cgroups,
            seccomp=False if args.no_seccomp else None,
            insecure=True if getattr(args, "insecure", False) else None,
        )
        return int(args.handler(args, settings))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # every failure is one line, its traceback only with -v
        if args.verbose:
            traceback.print_exc()
        print(f"sandboxd: {_one_line(exc)}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigError | JailError) else 1


def _one_line(exc: BaseException) -> str:
    """What went wrong, in one line, without Python's own vocabulary where it can be avoided."""
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    text = str(exc).strip().splitlines()
    named = isinstance(exc, ConfigError | JailError | ListenError | SandboxError)
    first = text[0] if text else ""
    return first if named and first else f"{type(exc).__name__}: {first}".rstrip(": ")


def configure_logging(verbose: bool) -> None:
    """Logs on stderr; stdout is for results and the "serving on" line."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sandboxd", description=__doc__)
    _add_common(parser, None)
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    # The common options are accepted after the command too (`sandboxd serve --config F`).
    common = argparse.ArgumentParser(add_help=False)
    _add_common(common, argparse.SUPPRESS)

    serve = commands.add_parser("serve", parents=[common], help="run the daemon")
    serve.add_argument("--listen", help="HOST:PORT or unix:PATH (default 127.0.0.1:50051)")
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="allow plaintext on an address that is not loopback (anyone reaching it is trusted)",
    )
    serve.add_argument("--pool-size", type=int, help="warm jails kept ready")
    serve.add_argument(
        "--redis",
        help="redis://HOST:PORT/DB or redis+sentinel://HOST:PORT,.../SERVICE: also run executions "
        "queued there",
    )
    serve.set_defaults(handler=_serve)

    worker = commands.add_parser(
        "worker",
        parents=[common],
        help="serve the Redis queue (and gRPC, by default on a free port)",
    )
    worker.add_argument(
        "--redis",
        required=True,
        help="redis://HOST:PORT/DB or redis+sentinel://HOST:PORT,.../SERVICE",
    )
    worker.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT or unix:PATH for gRPC")
    worker.add_argument(
        "--insecure", action="store_true", help="allow plaintext on a non-loopback address"
    )
    worker.add_argument("--pool-size", type=int, help="warm jails kept ready")
    worker.set_defaults(handler=_serve)

    run = commands.add_parser(
        "run", parents=[common], help="run one step in a fresh jail, without a server"
    )
    run.add_argument("file", type=Path, help="the step's JavaScript")
    run.add_argument("--input", default="null", help="JSON, or @FILE to read it from a file")
    run.add_argument("--timeout-ms", type=int, help="the step's wall-clock limit")
    run.set_defaults(handler=_run)

    demo = commands.add_parser(
        "demo", parents=[common], help="run the sample 6-step integration end to end"
    )
    demo.set_defaults(handler=_demo)

    status = commands.add_parser("status", parents=[common], help="print a daemon's status")
    status.add_argument("--target", default="127.0.0.1:50051")
    _add_tls(status)
    status.set_defaults(handler=_status)

    health = commands.add_parser(
        "health", parents=[common], help="exit 0 if a daemon's gRPC health service is SERVING"
    )
    health.add_argument("--target", help="HOST:PORT (default: loopback, the listen port)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for an answer")
    _add_tls(health)
    health.set_defaults(handler=_health)
    return parser


def _add_tls(parser: argparse.ArgumentParser) -> None:
    """How a command that calls a daemon reaches one that listens with TLS (mTLS)."""
    tls = parser.add_argument_group("TLS (a daemon with tls_cert_file; plaintext without these)")
    tls.add_argument("--tls-ca", metavar="FILE", help="PEM: the CA that signed the daemon's cert")
    tls.add_argument("--tls-cert", metavar="FILE", help="PEM: this caller's certificate (mTLS)")
    tls.add_argument("--tls-key", metavar="FILE", help="PEM: this caller's private key (mTLS)")
    tls.add_argument(
        "--tls-server-name", metavar="NAME", help="the name to expect in the daemon's certificate"
    )


def _add_common(parser: argparse.ArgumentParser, default: object) -> None:
    parser.add_argument("--config", default=default, help="a TOML settings file")
    parser.add_argument(
        "--rootfs", default=default, help="the jail image (default /var/lib/sandboxd/rootfs)"
    )
    parser.add_argument("--cgroups", default=default, choices=("auto", "v2", "v1", "none"))
    parser.add_argument(
        "--no-seccomp",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
        help="run jails without seccomp",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default if default is argparse.SUPPRESS else False,
    )


def _serve(args: argparse.Namespace, settings: Settings) -> int:
    memory.restart_with_malloc_tunables()
    asyncio.run(Daemon(settings).serve_forever())
    return 0


def _run(args: argparse.Namespace, settings: Settings) -> int:
    code = args.file.read_text()
    raw_input = Path(args.input[1:]).read_text() if args.input.startswith("@") else args.input
    try:
        input_value = json.loads(raw_input)
    except ValueError as exc:
        print(f"sandboxd run: --input is not JSON: {exc}", file=sys.stderr)
        return 2
    step_name = re.sub(r"[^A-Za-z0-9_-]", "_", args.file.stem) or "step"
    if not step_name[0].isalpha():
        step_name = f"step_{step_name}"

    async def run_step(target: str) -> int:
        from sandbox_client import Limits, SandboxClient, Step, format_event

        result: object = None
        limits = Limits(timeout_ms=args.timeout_ms) if args.timeout_ms else None
        async with SandboxClient(target) as client:
            events = client.execute(
                tenant_id="cli", steps=[Step(step_name, code, limits)], input=input_value
            )
            async for event in events:
                print(format_event(event), flush=True)
                if event.HasField("step_finished"):
                    result = _printable_result(event.step_finished)
                finished = event.execution_finished
                if event.HasField("execution_finished") and finished.error_kind:
                    kind = kind_name(finished.error_kind)
                    print(f"error: {kind}: {finished.error_message}", file=sys.stderr)
                    return 1
        print(json.dumps(result))
        return 0

    return asyncio.run(_with_local_daemon(settings, 1, run_step))


def _printable_result(finished: pb.StepFinished) -> object:
    """The result as JSON can print it: a binary result as base64."""
    from sandbox_client import decode_result

    result = decode_result(finished)
    if isinstance(result, bytes):
        return {"binary_base64": base64.b64encode(result).decode()}
    return result


def _demo(args: argparse.Namespace, settings: Settings) -> int:
    from sandboxd.demo import CREDENTIALS, demo_settings, order_export, run_demo
    from sandboxd.demo_partner import partner_servers

    memory.restart_with_malloc_tunables()
    with partner_servers(order_export(), CREDENTIALS["apiToken"]) as partners:
        run = functools.partial(run_demo, partners=partners)
        return asyncio.run(_with_local_daemon(demo_settings(settings, partners), 2, run))


def _status(args: argparse.Namespace, settings: Settings) -> int:
    from sandbox_client import SyncSandboxClient

    credentials, options = _channel_security(args)
    with SyncSandboxClient(args.target, channel_credentials=credentials, options=options) as client:
        status = client.status()
    print(json_format.MessageToJson(status, always_print_fields_with_no_presence=True))
    return 0


def _health(args: argparse.Namespace, settings: Settings) -> int:
    """The container's health check: one Check call of grpc.health.v1, no shell or curl."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    # In a container the daemon listens on 0.0.0.0:PORT (SANDBOXD_LISTEN); the check asks loopback.
    target = args.target or f"127.0.0.1:{settings.listen.rsplit(':', 1)[1]}"
    credentials, options = _channel_security(args)
    with (
        grpc.secure_channel(target, credentials, options=list(options.items()))
        if credentials
        else grpc.insecure_channel(target)
    ) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            answer = stub.Check(health_pb2.HealthCheckRequest(), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"sandboxd health: {target}: {exc.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    print(f"{target}: {status}")
    return 0 if answer.status == health_pb2.HealthCheckResponse.SERVING else 1


def _channel_security(
    args: argparse.Namespace,
) -> tuple[grpc.ChannelCredentials | None, dict[str, str]]:
    """The channel credentials and options the TLS arguments ask for; None for plaintext."""
    if not (args.tls_ca or args.tls_cert or args.tls_key):
        if args.tls_server_name:
            raise ConfigError("--tls-server-name needs --tls-ca")
        return None, {}
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("--tls-cert and --tls-key go together (the caller's identity for mTLS)")
    pems = [_read_pem(path) for path in (args.tls_ca, args.tls_key, args.tls_cert)]
    options = (
        {"grpc.ssl_target_name_override": args.tls_server_name} if args.tls_server_name else {}
    )
    return grpc.ssl_channel_credentials(*pems), options


def _read_pem(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


async def _with_local_daemon(
    settings: Settings, pool_size: int, body: Callable[[str], Awaitable[int]]
) -> int:
    """Run `body` against a daemon started in this process on a free loopback port."""
    daemon = Daemon(replace(settings, listen="127.0.0.1:0", pool_size=pool_size))
    await daemon.start()
    try:
        return await body(f"127.0.0.1:{daemon.port}")
    finally:
        await daemon.stop(grace=1.0)


if __name__ == "__main__":
    sys.exit(main())
