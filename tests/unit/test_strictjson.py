"""One strict JSON: exactly what the runner's JSON.parse accepts, nested at most max_depth."""

from __future__ import annotations

import asyncio
import signal

import pytest

from sandboxd import strictjson
from sandboxd.strictjson import InvalidJson

BOM = "Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)"


@pytest.mark.parametrize(
    "raw",
    [
        b'{"a": [1, 2.5, -3e400, true, null, "x"]}',
        b"1" * 5000,  # JavaScript reads it as a float; Python's int() would refuse it
        b'{"a": "[[[[ \\" {{{{"}',  # brackets and escaped quotes inside strings do not nest
        b"[" * 8 + b"]" * 8,
    ],
)
def test_what_the_runner_parses_is_accepted(raw: bytes) -> None:
    strictjson.check(raw, max_depth=8)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"NaN", "NaN is not JSON"),
        (b"[Infinity]", "Infinity is not JSON"),
        ('{"a": 1}'.encode("utf-16"), "not UTF-8: invalid start byte at byte 0"),
        (b'"\xc3"', "not UTF-8: invalid continuation byte at byte 1"),
        (
            b"\xef\xbb\xbf{}",
            BOM,
        ),
        (b"[1,]", "Expecting value: line 1 column 4 (char 3)"),
        (b"[" * 9 + b"]" * 9, "nested more than max_input_depth=8 arrays and objects deep"),
        (b'[{"a": [[[[[[[]]]]]]]}]', "nested more than max_input_depth=8 arrays and objects deep"),
    ],
)
def test_anything_else_is_refused_with_the_reason(raw: bytes, message: str) -> None:
    with pytest.raises(InvalidJson) as caught:
        strictjson.check(raw, max_depth=8)
    assert str(caught.value) == message


async def test_a_large_input_is_checked_in_a_child_with_the_same_verdicts() -> None:
    large = b'{"pad": "' + b"p" * (strictjson.INLINE_BYTES + 1) + b'", "v": [[1]]}'
    await strictjson.check_async(large, max_depth=3)
    with pytest.raises(InvalidJson) as caught:
        await strictjson.check_async(large, max_depth=2)
    assert str(caught.value) == "nested more than max_input_depth=2 arrays and objects deep"
    with pytest.raises(InvalidJson) as caught:
        await strictjson.check_async(large.replace(b"[[1]]", b"NaN"), max_depth=3)
    assert str(caught.value) == "NaN is not JSON"


async def test_checker_children_live_on_and_a_cancelled_check_kills_its_own() -> None:
    large = b'{"pad": "' + b"p" * (strictjson.INLINE_BYTES + 1) + b'"}'
    await strictjson.check_async(large, max_depth=3)
    children = [checker._process for checker in strictjson._idle]
    await strictjson.check_async(large, max_depth=3)
    assert [checker._process for checker in strictjson._idle] == children
    assert all(child.poll() is None for child in children)

    huge = b'"' + b"h" * (256 << 20) + b'"'  # long enough to be cancelled while it is checked
    checking = asyncio.create_task(strictjson.check_async(huge, max_depth=3))
    await asyncio.sleep(0.05)
    checking.cancel()
    with pytest.raises(asyncio.CancelledError):
        await checking
    # The child taken last (the last idle one) was killed; the others wait on.
    assert [checker._process for checker in strictjson._idle] == children[:-1]
    assert children[-1].returncode == -signal.SIGKILL
    await strictjson.check_async(large, max_depth=3)  # a new child takes its place
