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
"""

from sandbox_client._client import SandboxClient
from sandbox_client._errors import ErrorKind, SandboxError
from sandbox_client._events import decode_result, result_of
from sandbox_client._format import format_event
from sandbox_client._queue import ExecutionInfo, QueueClient
from sandbox_client._request import Destination, Limits, Step
from sandbox_client._session import Session
from sandbox_client._sync import SyncSandboxClient

__all__ = [
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
