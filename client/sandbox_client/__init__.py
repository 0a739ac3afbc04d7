"""Python client of sandboxd: run tenants' JavaScript steps in fresh jails and stream events.

::

    async with SandboxClient("127.0.0.1:50051") as client:
        async for event in client.execute(tenant_id="acme", steps=[Step("parse", code)], input=doc):
            print(format_event(event))
        result = await client.run(tenant_id="acme", steps=[...], input=doc)

Events are the ``sandboxd.v1.sandbox_pb2.ExecutionEvent`` protobuf messages.
``SyncSandboxClient`` offers the same methods to blocking code.

Exceptions (a failed execution or RPC; programming errors such as passing both ``input`` and
``input_json`` raise the usual ValueError/TypeError)::

    Exception
     └── SandboxError       .kind: ErrorKind, .message, .step, .stack, .execution_id, .retry_after

``QueueClient`` and ``ExecutionInfo`` (distributed mode) need Redis: they are imported on first
use, and without the ``queue`` extra (``pip install 'sandboxd-client[queue]'``) that first use
raises ImportError saying so. Everything else needs only grpcio and protobuf.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from sandbox_client._chunks import UPLOAD_ACCEPTED
from sandbox_client._client import SandboxClient
from sandbox_client._errors import ErrorKind, SandboxError
from sandbox_client._events import decode_result, result_of
from sandbox_client._format import format_event
from sandbox_client._request import Destination, Limits, Step
from sandbox_client._session import Session
from sandbox_client._sync import SyncSandboxClient

if TYPE_CHECKING:
    from sandbox_client._queue import ExecutionInfo, QueueClient

__all__ = [
    "UPLOAD_ACCEPTED",
    "Destination",
    "ErrorKind",
    "ExecutionInfo",
    "Limits",
    "QueueClient",
    "SandboxClient",
    "SandboxError",
    "Session",
    "Step",
    "SyncSandboxClient",
    "decode_result",
    "format_event",
    "result_of",
]

_NEEDS_REDIS = frozenset({"ExecutionInfo", "QueueClient"})


def __getattr__(name: str) -> object:
    """QueueClient and ExecutionInfo, imported on first use (module __getattr__, PEP 562)."""
    if name not in _NEEDS_REDIS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        queue = importlib.import_module("sandbox_client._queue")
    except ModuleNotFoundError as exc:
        if exc.name != "redis" and not (exc.name or "").startswith("redis."):
            raise
        raise ImportError(
            f"sandbox_client.{name} needs the redis package: pip install 'sandboxd-client[queue]'",
            name=exc.name,
        ) from exc
    return getattr(queue, name)
