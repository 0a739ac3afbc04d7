"""Request messages decoded so that a bad one is the caller's INVALID_REQUEST, not UNKNOWN.

gRPC ends a call whose request its deserializer cannot decode with a bare UNKNOWN, before any
servicer code runs. The service is registered here with deserializers that never raise: a message
over the size limit (not even parsed) or malformed (bad wire format, invalid UTF-8 in a string
field) becomes an `Undecodable`, which the servicer refuses like any other invalid request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError, Message

from sandbox_client.v1 import sandbox_pb2 as pb
from sandboxd import memory

SERVICE = pb.DESCRIPTOR.services_by_name["SandboxService"]


@dataclass(frozen=True, slots=True)
class Undecodable:
    """A request message that could not be taken: why, for the refusal, and its size."""

    reason: str
    size: int

    def release(self) -> None:
        """Give the memory the message took back to the system, if it was large: gRPC reads it
        into many buffers that glibc keeps after they are freed (a burst of refused 60 MB
        messages left the daemon 65 MB larger)."""
        if self.size >= memory.GIVE_BACK_AFTER_BYTES:
            memory.give_back()


def add_service(servicer: object, server: grpc.aio.Server, max_request_bytes: int) -> None:
    """Register SandboxService's methods of `servicer` on `server`, decoding requests safely."""
    handlers = {}
    for method in SERVICE.methods:
        message_type = getattr(pb, method.input_type.name)
        response_type = getattr(pb, method.output_type.name)
        handlers[method.name] = _handler_factory(method)(
            getattr(servicer, method.name),
            request_deserializer=_tolerant(message_type, max_request_bytes),
            response_serializer=response_type.SerializeToString,
        )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),)
    )
    server.add_registered_method_handlers(SERVICE.full_name, handlers)


def _handler_factory(method: Any) -> Callable[..., grpc.RpcMethodHandler]:
    if method.client_streaming and method.server_streaming:
        return grpc.stream_stream_rpc_method_handler  # type: ignore[no-any-return]
    if method.client_streaming:
        return grpc.stream_unary_rpc_method_handler  # type: ignore[no-any-return]
    if method.server_streaming:
        return grpc.unary_stream_rpc_method_handler  # type: ignore[no-any-return]
    return grpc.unary_unary_rpc_method_handler  # type: ignore[no-any-return]


def _tolerant(
    message_type: type[Message], max_bytes: int
) -> Callable[[bytes], Message | Undecodable]:
    name = message_type.DESCRIPTOR.name

    def decode(raw: bytes) -> Message | Undecodable:
        if len(raw) > max_bytes:
            return Undecodable(
                f"the {name} message of {len(raw)} bytes is over the limit of {max_bytes} bytes"
                " (max_request_bytes); send a large input in chunks (ExecuteChunked)",
                len(raw),
            )
        try:
            return message_type.FromString(raw)
        except DecodeError:
            return Undecodable(
                f"the {name} message is not valid protobuf (malformed, or a string field that is"
                " not UTF-8)",
                len(raw),
            )

    return decode
