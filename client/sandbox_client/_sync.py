"""SyncSandboxClient: SandboxClient for blocking code, driven by a private event loop thread.

Every method is made from the asyncio client's method of the same name (same parameters, same
behaviour): the coroutine runs on the private loop and the calling thread waits for it.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator, Mapping
from types import TracebackType
from typing import Any, Concatenate, ParamSpec, Self, TypeVar

import grpc

from sandbox_client._client import SandboxClient

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _quiet_grpc_poller(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """Drop grpc.aio's spurious BlockingIOError when several loops poll its completion queue.

    With loops in more than one thread, every loop is woken by gRPC's notification socket and
    all but one find it empty; the RPCs are unaffected (https://github.com/grpc/grpc/issues/25364).
    """
    exception, handle = context.get("exception"), repr(context.get("handle"))
    if not (isinstance(exception, BlockingIOError) and "PollerCompletionQueue" in handle):
        loop.default_exception_handler(context)


class _LoopThread:
    """An asyncio event loop running in a daemon thread, and a blocking way to use it."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(_quiet_grpc_poller)
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="sandbox-client", daemon=True
        )
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._loop.is_closed()

    def run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        """Run ``coroutine`` on the loop and wait for its outcome.

        When the wait is interrupted (KeyboardInterrupt), the coroutine is cancelled too.
        """
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def stop(self) -> None:
        """Finalize open async generators, stop the loop and its thread, close the loop."""
        self.run(self._loop.shutdown_asyncgens())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()


async def _next(iterator: AsyncIterator[_T]) -> tuple[_T] | None:
    """The next item in a 1-tuple, or None when the iterator is exhausted."""
    try:
        return (await anext(iterator),)
    except StopAsyncIteration:
        return None


def _blocking(
    method: Callable[Concatenate[SandboxClient, _P], Coroutine[Any, Any, _T]],
) -> Callable[Concatenate[SyncSandboxClient, _P], _T]:
    """The blocking form of a SandboxClient coroutine method."""

    @functools.wraps(method)
    def blocking(self: SyncSandboxClient, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        return self._loop.run(method(self._client, *args, **kwargs))

    return blocking


def _blocking_iterator(
    method: Callable[Concatenate[SandboxClient, _P], AsyncGenerator[_T, None]],
) -> Callable[Concatenate[SyncSandboxClient, _P], Iterator[_T]]:
    """The blocking form of a SandboxClient async generator method: a plain generator."""

    @functools.wraps(method)
    def blocking(self: SyncSandboxClient, /, *args: _P.args, **kwargs: _P.kwargs) -> Iterator[_T]:
        items = method(self._client, *args, **kwargs)
        try:
            while (item := self._loop.run(_next(items))) is not None:
                yield item[0]
        finally:
            if not self._loop.closed:
                self._loop.run(items.aclose())

    return blocking


async def _open(
    target: str, channel_credentials: grpc.ChannelCredentials | None, options: Mapping[str, Any]
) -> SandboxClient:
    """A SandboxClient made on the loop that will use it (grpc.aio binds the channel to it)."""
    return SandboxClient(target, channel_credentials=channel_credentials, options=options)


class SyncSandboxClient:
    """A blocking client for scripts: ``with SyncSandboxClient("127.0.0.1:50051") as c: ...``.

    The methods are those of :class:`SandboxClient`, blocking; ``execute`` returns an iterator of
    events (``list(...)`` it to collect them). One instance may be shared between threads.
    """

    def __init__(
        self,
        target: str,
        *,
        channel_credentials: grpc.ChannelCredentials | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        """Open a channel to ``target``; the arguments are :class:`SandboxClient`'s."""
        self._loop = _LoopThread()
        self._client = self._loop.run(_open(target, channel_credentials, options or {}))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel (cancelling running RPCs) and stop the private loop."""
        if not self._loop.closed:
            self._loop.run(self._client.close())
            self._loop.stop()

    execute = _blocking_iterator(SandboxClient.execute)
    run = _blocking(SandboxClient.run)
    status = _blocking(SandboxClient.status)
    cancel = _blocking(SandboxClient.cancel)
