"""Chunked inputs: offsets, declared length, last marker and digest are all checked."""

from __future__ import annotations

import hashlib

import pytest

from sandbox_client.v1 import sandbox_pb2 as pb
from sandboxd.requests import ChunkedInput, InvalidRequest

DATA = b'{"payload": "' + b"x" * 100 + b'"}'


def chunks(data: bytes = DATA, size: int = 30, digest: bool = True) -> list[pb.InputChunk]:
    offsets = list(range(0, len(data), size))
    made = [
        pb.InputChunk(offset=o, data=data[o : o + size], last=o == offsets[-1]) for o in offsets
    ]
    made[0].total_bytes = len(data)
    if digest:
        made[0].sha256 = hashlib.sha256(data).digest()
    return made


def assemble(parts: list[pb.InputChunk], max_bytes: int = 1 << 20) -> bytes:
    upload = ChunkedInput(max_bytes, "input_chunk")
    for part in parts:
        upload.add(part)
    return upload.value()


def test_ordered_chunks_assemble() -> None:
    assert assemble(chunks()) == DATA
    assert assemble(chunks(digest=False)) == DATA


def test_an_empty_input_is_one_empty_last_chunk() -> None:
    assert assemble([pb.InputChunk(offset=0, last=True)]) == b""


@pytest.mark.parametrize(
    ("mangle", "message"),
    [
        (lambda c: [c[0], c[2], c[1], c[3]], "starts at offset 60, expected 30"),
        (lambda c: [c[0], c[2], c[3]], "starts at offset 60, expected 30"),
        (lambda c: [c[0], c[0]], "starts at offset 0, expected 30"),
        (lambda c: c[:3], "the input ended without a chunk marked last"),
        (lambda c: [*c, pb.InputChunk(offset=len(DATA), data=b"x")], "came after the chunk"),
    ],
    ids=["out-of-order", "missing", "overlapping", "no-last", "after-last"],
)
def test_broken_sequences_are_refused(mangle: object, message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        assemble(mangle(chunks()))  # type: ignore[operator]
    assert message in str(caught.value)
    assert caught.value.field == "input_chunk"


def test_the_first_chunk_declares_the_length() -> None:
    parts = chunks()
    parts[0].total_bytes = 0
    with pytest.raises(InvalidRequest, match="must declare total_bytes"):
        assemble(parts)


def test_a_declared_length_over_the_limit_is_refused_before_the_data() -> None:
    upload = ChunkedInput(100, "input_chunk")
    with pytest.raises(InvalidRequest, match="input of 1000 bytes is over the limit of 100"):
        upload.add(pb.InputChunk(offset=0, data=b"x", total_bytes=1000))


def test_more_or_fewer_bytes_than_declared_are_refused() -> None:
    longer = chunks()
    longer[0].total_bytes = len(DATA) - 1
    with pytest.raises(InvalidRequest, match=f"longer than its declared {len(DATA) - 1} bytes"):
        assemble(longer)
    shorter = chunks()
    shorter[0].total_bytes = len(DATA) + 1
    with pytest.raises(InvalidRequest, match=f"after {len(DATA)} of its declared"):
        assemble(shorter)


def test_a_wrong_digest_is_refused() -> None:
    parts = chunks()
    parts[0].sha256 = hashlib.sha256(b"other").digest()
    with pytest.raises(InvalidRequest, match="does not match its sha256"):
        assemble(parts)
