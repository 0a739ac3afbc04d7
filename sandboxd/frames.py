"""The frames a runner may send, as exact schemas: every field typed and bounded.

A header from a jail is decoded straight into one of these structs (msgspec, tagged by `t`): a
missing, unknown or mistyped field, a value out of range or a nested value is refused while
decoding, before anything is built from it. Headers are flat objects of scalars, so decoding
never descends into nested JSON (no depth to exhaust).

Each type also has its largest legitimate size (see docs/channel.md): the runner caps names,
messages and stacks in UTF-16 units, so the largest error header is known; every other header
is a few dozen bytes, and only `log` and `result` frames carry a body.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec


class ProtocolError(Exception):
    """The peer sent something that is not a well-formed frame within the limits."""


# What the runner caps (images/node/runner.js: MAX_NAME_UNITS, MAX_TEXT_UNITS), plus the
# "... (truncated)" marker it appends, with room to spare.
_NAME_CHARS = 256 + 64
_TEXT_CHARS = 16 * 1024 + 64
# JSON escapes a character as at most 6 bytes (\uXXXX).
_ESCAPED_BYTES_PER_CHAR = 6
# The fields of every header but `error`'s: a type, a sequence number, a level, a time.
SMALL_HEADER_BYTES = 256
ERROR_HEADER_BYTES = _ESCAPED_BYTES_PER_CHAR * (3 * _NAME_CHARS + 2 * _TEXT_CHARS) + 1024
MAX_HEADER_BYTES = ERROR_HEADER_BYTES

# A google.protobuf.Timestamp holds 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999Z.
_TIMESTAMP_MIN_MS = -62_135_596_800_000
_TIMESTAMP_MAX_MS = 253_402_300_799_999

Seq = Annotated[int, msgspec.Meta(ge=0, le=2**32 - 1)]
Name = Annotated[str, msgspec.Meta(max_length=_NAME_CHARS)]
Text = Annotated[str, msgspec.Meta(max_length=_TEXT_CHARS)]


class _Header(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="t"):
    pass


class Ready(_Header, tag="ready", frozen=True):
    node: Name


class Log(_Header, tag="log", frozen=True):
    seq: Seq
    level: Literal["debug", "info", "warn", "error"]
    ts: Annotated[int, msgspec.Meta(ge=_TIMESTAMP_MIN_MS, le=_TIMESTAMP_MAX_MS)]


class Truncated(_Header, tag="truncated", frozen=True):
    seq: Seq


class Result(_Header, tag="result", frozen=True):
    seq: Seq
    encoding: Literal["json", "binary"]
    size: Annotated[int, msgspec.Meta(ge=0, le=2**53)]
    kept: bool


class Error(_Header, tag="error", frozen=True):
    seq: Seq
    # Only the kinds a step may cause by itself: see sandboxd/outcomes.py.
    kind: Literal["USER_ERROR", "RESULT_TOO_LARGE", "OUTPUT_LIMIT"]
    name: Name
    message: Text
    stack: Text
    code: Name = ""


RunnerHeader = Ready | Log | Truncated | Result | Error
StepHeader = Log | Truncated | Result | Error

_DECODER = msgspec.json.Decoder(RunnerHeader)


def type_of(header: RunnerHeader) -> str:
    """The header's `t`."""
    return str(header.__struct_config__.tag)


def decode_header(raw: bytes) -> RunnerHeader:
    """The header as its type's struct; ProtocolError saying what is wrong otherwise."""
    try:
        return _DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        raise ProtocolError(f"header does not fit the protocol: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"header is not JSON: {exc}") from None


def header_limit(header: RunnerHeader) -> int:
    """The largest header of this type the runner ever sends."""
    return ERROR_HEADER_BYTES if isinstance(header, Error) else SMALL_HEADER_BYTES


def body_problem(header: RunnerHeader, body_len: int, log_bytes: int, result_bytes: int) -> str:
    """What is wrong with a body of `body_len` bytes under `header`, "" when nothing: a log line
    fits the step's log limit, a result its result limit and its own `size` (a kept result has
    no body), and the other types carry none."""
    if isinstance(header, Log):
        limit = log_bytes
    elif isinstance(header, Result) and not header.kept:
        if body_len != header.size:
            return f"body of {body_len} bytes, but the header says size {header.size}"
        limit = result_bytes
    else:
        limit = 0
    return f"body of {body_len} bytes (limit {limit})" if body_len > limit else ""
