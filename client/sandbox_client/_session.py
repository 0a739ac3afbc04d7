"""Sessions: one jail, steps sent one at a time as the orchestrator decides.

    async with client.session(tenant_id="acme") as session:
        files = await session.step("list", list_code, {"folder": "/in"})
        for name in files:
            await session.step("convert", convert_code, {"file": name})  # reads context.steps

A step that throws raises SandboxError(USER_ERROR) from `step()` and the session goes on; a
failure that kills the jail (TIMEOUT, MEMORY_LIMIT, ...) ends it, and later steps raise.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from types import TracebackType
from typing import Any, Self

import grpc

from sandbox_client._chunks import CHUNK_BYTES, Reassembler, pieces
from sandbox_client._errors import ErrorKind, SandboxError, error_from_rpc
from sandbox_client._events import decode_result
from sandbox_client._request import Egress, Limits, egress_policy, input_bytes
from sandbox_client.v1 import sandbox_pb2


class Session:
    """An open session; use through :meth:`SandboxClient.session`."""

    # `call` is a grpc.aio.StreamStreamCall; grpc ships no type information for it.
    def __init__(self, call: Any, open_message: sandbox_pb2.SessionOpen):
        self._call = call
        self._open = open_message
        self._events = self._received()
        self.execution_id: str | None = open_message.execution_id or None
        self.history: list[sandbox_pb2.ExecutionEvent] = []  # every event so far, in order
        self.finished: sandbox_pb2.ExecutionFinished | None = None

    async def __aenter__(self) -> Self:
        await self._write(sandbox_pb2.SessionRequest(open=self._open))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if exc_type is not None and not issubclass(exc_type, SandboxError):
            self._call.cancel()
            return
        await self.close()

    async def close(self) -> sandbox_pb2.ExecutionFinished | None:
        """End the session (half-close) and wait for its ExecutionFinished."""
        if self.finished is None and not self._call.done():
            await self._call.done_writing()
            async for _ in self._events:
                pass
        return self.finished

    async def step(
        self,
        name: str,
        code: str,
        input: object = None,
        *,
        input_json: bytes | None = None,
        keep_result: bool = False,
        limits: Limits | None = None,
    ) -> Any:
        """Run one step in the session's jail; its result (None when kept), or SandboxError."""
        if self.finished is not None:
            raise self._ended()
        raw = input_bytes(input, input_json)
        chunked = len(raw) > CHUNK_BYTES
        step = sandbox_pb2.SessionStep(
            name=name,
            code=code,
            input=b"" if chunked else raw,
            input_chunked=chunked,
            keep_result=keep_result,
            limits=limits.to_proto() if limits else None,
        )
        await self._write(sandbox_pb2.SessionRequest(step=step))
        if chunked:
            for chunk in pieces(raw):
                await self._write(sandbox_pb2.SessionRequest(input_chunk=chunk))
        return await self._outcome(name)

    async def _outcome(self, name: str) -> Any:
        async for event in self._events:
            match event.WhichOneof("event"):
                case "step_finished" if event.step_finished.step == name:
                    return decode_result(event.step_finished)
                case "step_failed" if event.step_failed.step == name:
                    failed = event.step_failed
                    raise SandboxError(
                        ErrorKind.from_proto(failed.kind),
                        failed.message,
                        step=failed.step,
                        stack=failed.stack or None,
                        execution_id=self.execution_id,
                    )
        raise self._ended()

    async def _received(self) -> AsyncIterator[sandbox_pb2.ExecutionEvent]:
        results = Reassembler()
        try:
            async for response in self._call:
                event = results.feed(response.event)
                if event is None:
                    continue
                self.execution_id = event.execution_id or self.execution_id
                self.history.append(event)
                if event.HasField("execution_finished"):
                    self.finished = event.execution_finished
                yield event
        except grpc.aio.AioRpcError as error:
            raise error_from_rpc(error, self.execution_id) from error

    async def _write(self, message: sandbox_pb2.SessionRequest) -> None:
        try:
            await self._call.write(message)
        except (grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.InvalidStateError) as error:
            if not self._call.done():
                raise
            # The daemon already ended the session (idle, a fatal step, a refusal): say why.
            async for _ in self._events:
                pass
            if self.finished is not None:
                raise self._ended() from error
            raise error_from_rpc(await self._rpc_error(), self.execution_id) from error

    async def _rpc_error(self) -> grpc.aio.AioRpcError:
        code = await self._call.code()
        details = await self._call.details()
        trailing = await self._call.trailing_metadata()
        return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details)

    def _ended(self) -> SandboxError:
        finished = self.finished
        if finished is None:
            return SandboxError(ErrorKind.INTERNAL, "the session ended without ExecutionFinished")
        return SandboxError(
            ErrorKind.from_proto(finished.error_kind),
            finished.error_message or "the session has ended",
            step=finished.failed_step or None,
            execution_id=self.execution_id,
        )


def open_message(
    *,
    tenant_id: str,
    execution_id: str | None,
    config_vars: Mapping[str, str] | None,
    credentials: Mapping[str, str] | None,
    limits: Limits | None,
    idle_timeout: float | None,
    max_steps: int | None,
    egress: Egress | None = None,
) -> sandbox_pb2.SessionOpen:
    return sandbox_pb2.SessionOpen(
        tenant_id=tenant_id,
        execution_id=execution_id or "",
        config_vars=dict(config_vars or {}),
        credentials=dict(credentials or {}),
        limits=limits.to_proto() if limits else None,
        idle_timeout_ms=round(idle_timeout * 1000) if idle_timeout else 0,
        max_steps=max_steps or 0,
        egress=egress_policy(egress),
    )
