"""SandboxClient: the asyncio client of one sandboxd daemon (grpc.aio)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Iterator,
    Mapping,
    Sequence,
)
from typing import Any, ParamSpec

import grpc

from sandbox_client._chunks import CHUNK_BYTES, UPLOAD_ACCEPTED, Reassembler, upload
from sandbox_client._closing import AsyncClosing
from sandbox_client._errors import error_from_rpc
from sandbox_client._events import result_of
from sandbox_client._request import Egress, Limits, ReturnResults, Step, execute_request
from sandbox_client._session import Session, open_message
from sandbox_client.v1 import sandbox_pb2, sandbox_pb2_grpc

_P = ParamSpec("_P")

MAX_MESSAGE_BYTES = 80 * 1024 * 1024

# Keepalive pings find a dead daemon (or a dropped connection) during a long, silent step. gRPC's
# client default of at most two pings until data arrives is kept: a server with default settings
# tolerates two early pings, so it never answers with GOAWAY "too_many_pings".
_DEFAULT_OPTIONS: Mapping[str, Any] = {
    "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
    "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
    "grpc.keepalive_time_ms": 30_000,
    "grpc.keepalive_timeout_ms": 10_000,
}


def _returning_result(
    execute: Callable[_P, AsyncIterator[sandbox_pb2.ExecutionEvent]],
) -> Callable[_P, Coroutine[Any, Any, Any]]:
    """``run`` made from ``execute``: the same parameters, returns the outcome of the events."""

    async def run(*args: _P.args, **kwargs: _P.kwargs) -> Any:
        """Run the steps and return the last step's result.

        Takes :meth:`execute`'s parameters. The result is the decoded JSON value, or bytes when
        the step returned a Buffer / Uint8Array. Raises :class:`SandboxError` when the execution
        fails (kind, message, step and stack come from the daemon's events) or the RPC does.
        """
        return await result_of(execute(*args, **kwargs))

    # Only __wrapped__, so that help() and inspect.signature() show execute's parameters.
    functools.update_wrapper(run, execute, assigned=(), updated=())
    return run


@contextlib.contextmanager
def _translated(execution_id: str | None = None) -> Iterator[None]:
    """Raise a failed RPC as SandboxError (the gRPC error stays as ``__cause__``)."""
    try:
        yield
    except grpc.aio.AioRpcError as error:
        raise error_from_rpc(error, execution_id) from error


class SandboxClient(AsyncClosing):
    """An asyncio client of one sandboxd daemon; use it as ``async with SandboxClient(...)``.

    Create it inside the event loop that uses it (grpc.aio binds the channel to that loop).
    """

    def __init__(
        self,
        target: str,
        *,
        channel_credentials: grpc.ChannelCredentials | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Open a channel to ``target`` ("host:port").

        Args:
            target: the daemon's address.
            channel_credentials: TLS credentials; None for a plaintext channel.
            options: gRPC channel options that override the defaults (80 MiB messages,
                keepalive every 30 s).
        """
        merged = list({**_DEFAULT_OPTIONS, **(options or {})}.items())
        if channel_credentials is None:
            self._channel = grpc.aio.insecure_channel(target, options=merged)
        else:
            self._channel = grpc.aio.secure_channel(target, channel_credentials, options=merged)
        # The generated stub has no annotations; its methods return grpc.aio calls.
        self._stub = sandbox_pb2_grpc.SandboxServiceStub(self._channel)  # type: ignore[no-untyped-call]

    async def close(self) -> None:
        """Close the channel; RPCs still running are cancelled."""
        await self._channel.close()

    async def execute(
        self,
        *,
        tenant_id: str,
        steps: Sequence[Step],
        input: object = None,
        input_json: bytes | None = None,
        execution_id: str | None = None,
        config_vars: Mapping[str, str] | None = None,
        credentials: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        return_results: ReturnResults = "all",
        egress: Egress | None = None,
        timeout: float | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> AsyncGenerator[sandbox_pb2.ExecutionEvent, None]:
        """Run the steps in one fresh jail and yield the execution's events as they arrive.

        A failure after ``ExecutionStarted`` arrives as events (``StepFailed``, then
        ``ExecutionFinished`` with status FAILED), not as an exception. A request the daemon
        refuses, a lost connection or an exceeded deadline raises :class:`SandboxError`.
        Leaving the loop early (or ``aclose()``) cancels the RPC, which kills the jail.

        Args:
            tenant_id: the tenant the execution is accounted to.
            steps: the steps, run in order.
            input: the execution's input, any JSON-serializable value (``context.input``).
            input_json: the input as UTF-8 JSON bytes, for callers that already hold JSON;
                exclusive with ``input``.
            execution_id: an id chosen by the caller (for :meth:`cancel`); the daemon makes one
                when None. Every event carries it.
            config_vars: ``context.configVars``.
            credentials: ``context.credentials``; never logged by the daemon.
            limits: limits of the execution (each step's own limits override them).
            return_results: whose results come back: "all", "last", "none", or a list of step
                names; the others stay in the jail (later steps still read them) and their
                StepFinished carries only the size.
            egress: the destinations the steps may reach (``fetch``, ``https.request``), as
                :class:`Destination` or "host[:port,...]" strings; within the tenant's
                allowlist. None: no network.
            timeout: seconds until the gRPC deadline; the execution is cancelled then and the
                error kind is DEADLINE_EXCEEDED.
            metadata: extra gRPC request metadata.
        """
        request = execute_request(
            tenant_id=tenant_id,
            steps=steps,
            input=input,
            input_json=input_json,
            execution_id=execution_id,
            config_vars=config_vars,
            credentials=credentials,
            limits=limits,
            return_results=return_results,
            egress=egress,
        )
        writer: asyncio.Task[None] | None = None
        if len(request.input) > CHUNK_BYTES:
            call = self._stub.ExecuteChunked(timeout=timeout, metadata=metadata)
            writer = asyncio.create_task(_upload(call, request))
        else:
            call = self._stub.Execute(request, timeout=timeout, metadata=metadata)
        known_id = execution_id
        results = Reassembler()
        try:
            async for response in call:
                received = response.event
                known_id = received.execution_id or known_id
                if (event := results.feed(received)) is not None:
                    yield event
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error, known_id) from error
        finally:
            call.cancel()
            if writer is not None:
                writer.cancel()
                await asyncio.gather(writer, return_exceptions=True)

    run = _returning_result(execute)

    def session(
        self,
        *,
        tenant_id: str,
        execution_id: str | None = None,
        config_vars: Mapping[str, str] | None = None,
        credentials: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        idle_timeout: float | None = None,
        max_steps: int | None = None,
        egress: Egress | None = None,
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> Session:
        """A session: one jail, steps sent one at a time (``async with`` it; see Session)."""
        message = open_message(
            tenant_id=tenant_id,
            execution_id=execution_id,
            config_vars=config_vars,
            credentials=credentials,
            limits=limits,
            idle_timeout=idle_timeout,
            max_steps=max_steps,
            egress=egress,
        )
        return Session(self._stub.Session(metadata=metadata), message)

    async def status(self, *, timeout: float | None = None) -> sandbox_pb2.GetStatusResponse:
        """The daemon's pool, queue and host figures."""
        with _translated():
            status: sandbox_pb2.GetStatusResponse = await self._stub.GetStatus(
                sandbox_pb2.GetStatusRequest(), timeout=timeout
            )
        return status

    async def cancel(
        self, tenant_id: str, execution_id: str, *, timeout: float | None = None
    ) -> bool:
        """Kill a running execution's jail (it ends CANCELLED); False when the tenant has no
        running execution with that id.

        Works from any client connected to the daemon that runs the execution.
        """
        request = sandbox_pb2.CancelRequest(tenant_id=tenant_id, execution_id=execution_id)
        with _translated(execution_id):
            response: sandbox_pb2.CancelResponse = await self._stub.Cancel(request, timeout=timeout)
        return response.found


async def _upload(call: Any, request: sandbox_pb2.ExecuteRequest) -> None:
    """Write an ExecuteChunked upload: the request and the first chunk, then, once the daemon
    has accepted the declared length (it sends its initial metadata), the rest.

    A daemon that refuses the upload ends the call before the megabytes are sent, and its status
    reaches the reader intact (gRPC turns a call ended during a client's write into INTERNAL).
    """
    messages = upload(request)
    with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
        for message in itertools.islice(messages, 2):
            await call.write(message)
        if UPLOAD_ACCEPTED not in tuple(await call.initial_metadata() or ()):
            return
        for message in messages:
            await call.write(message)
        await call.done_writing()
