"""One strict JSON: exactly what the runner's JSON.parse accepts, nested at most max_depth."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess

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
        b"[" + b",".join([b"[{}]"] * 20) + b"]",  # more brackets than the depth, 3 deep
        b'"' + b"[{" * 20 + b'"',  # more brackets than the depth, all in a string
        '{"a": "é€😀"}'.encode(),  # not ASCII: UTF-8 checked by decoding
        b'"\\ud800"',  # a lone surrogate escape: JSON.parse takes it, msgspec alone would not
        b'[1e999, "\x7f", {"a": 1, "a": 2}]',  # Infinity by overflow, DEL, a repeated key
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


# Inputs at the edges of JSON: what node's JSON.parse decides about each is the reference. The
# bytes are decoded strictly (invalid UTF-8 and a byte order mark refused): the daemon's encoding
# rule is stricter than the runner's TextDecoder on purpose; the syntax must match exactly.
EDGES = [
    *(b"1", b"-0", b"1E+2", b"1e999", b"-1e-999", b"01", b"1.", b".5", b"+1", b"-", b"1e", b"0x10"),
    *(b'"\\ud800"', b'"\\udc00\\ud800"', b'"\\u00"', b'"\\u00zz"', b'"\\x"', b'"\\/"', b'"\\\'"'),
    *(b'"\x00"', b'"\x1f"', b'"\x7f"', b'"a\nb"', b'"\t"', b'"\xed\xa0\x80"'),
    b'"\xf4\x90\x80\x80"',  # past U+10FFFF
    *(b"\x0c1", b"\xc2\xa01", b"\r\n\t 1 ", b"", b" ", b"\xef\xbb\xbf1", b"1 2", b"[]]", b"[1 2]"),
    *(b"nul", b"null", b"true", b"tru", b"NaN", b"-Infinity", b"[,1]", b"{,}", b'{"a" 1}'),
    *(b'{"a":1,}', b"[1,]", b'{"a":1,"a":2}', b'{"a":1 "b":2}', b"{1:2}", b"{'a':1}", b"[]"),
]


def test_the_verdict_on_every_edge_is_node_json_parse() -> None:
    script = (
        "const inputs = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "console.log(JSON.stringify(inputs.map((b64) => {"
        "  try { JSON.parse(new TextDecoder('utf-8', { fatal: true, ignoreBOM: true })"
        "    .decode(Buffer.from(b64, 'base64'))); return true; } catch { return false; } })));"
    )
    encoded = json.dumps([base64.b64encode(raw).decode() for raw in EDGES])
    node = subprocess.run(
        ["node", "-e", script], input=encoded, capture_output=True, text=True, check=True, env={}
    )
    verdicts = dict(zip(EDGES, json.loads(node.stdout), strict=True))
    ours = {raw: _accepted(raw) for raw in EDGES}
    assert ours == verdicts


def _accepted(raw: bytes) -> bool:
    try:
        strictjson.check(raw, max_depth=8)
    except InvalidJson:
        return False
    return True
