"""Large payloads on the stream: inputs sent in pieces, results put back together.

No gRPC message carries more than about 1 MiB of payload: the daemon sends a large result as
ResultChunk events before its StepFinished, and the client sends a large input as InputChunk parts.
Both happen here, so callers see whole inputs and results.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from sandbox_client.v1 import sandbox_pb2

CHUNK_BYTES = 1024 * 1024
# The daemon's initial metadata once it has accepted an upload's declared length: a refusal ends
# the call with initial metadata too (without this entry), and a client that took that for a go
# wrote on into a closed call, which gRPC reports as INTERNAL instead of the refusal.
UPLOAD_ACCEPTED = ("sandboxd-upload", "accepted")


def pieces(data: bytes) -> Iterator[sandbox_pb2.InputChunk]:
    """`data` as chunks with their offsets, the first declaring the total length and the
    SHA-256 of the whole, the last one marked (an empty input is one empty chunk)."""
    offsets = range(0, max(1, len(data)), CHUNK_BYTES)
    for offset in offsets:
        chunk = sandbox_pb2.InputChunk(
            offset=offset, data=data[offset : offset + CHUNK_BYTES], last=offset == offsets[-1]
        )
        if offset == 0:
            chunk.total_bytes = len(data)
            chunk.sha256 = hashlib.sha256(data).digest()
        yield chunk


def upload(request: sandbox_pb2.ExecuteRequest) -> Iterator[sandbox_pb2.ExecuteChunkedRequest]:
    """The messages of an ExecuteChunked call: the request without its input, then the input."""
    data = request.input
    head = sandbox_pb2.ExecuteRequest()
    head.CopyFrom(request)
    head.input = b""
    yield sandbox_pb2.ExecuteChunkedRequest(request=head)
    for chunk in pieces(data):
        yield sandbox_pb2.ExecuteChunkedRequest(input_chunk=chunk)


class Reassembler:
    """Folds ResultChunk events into the StepFinished that follows them."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._binary = False

    def feed(self, event: sandbox_pb2.ExecutionEvent) -> sandbox_pb2.ExecutionEvent | None:
        """The event to hand to the caller, or None for a chunk held back."""
        kind = event.WhichOneof("event")
        if kind == "result_chunk":
            self._parts.append(event.result_chunk.data)
            self._binary = event.result_chunk.binary
            return None
        if kind == "step_finished" and event.step_finished.result_chunks:
            data = b"".join(self._parts)
            self._parts = []
            if self._binary:
                event.step_finished.binary = data
            else:
                event.step_finished.json = data
        return event
