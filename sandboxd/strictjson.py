"""One strict JSON for every input: exactly what the runner's `JSON.parse` accepts, bounded.

Accepted: UTF-8 (no other encoding, no byte order mark), RFC 8259 (no NaN, Infinity, comments
or trailing commas), nested at most `max_depth` arrays/objects deep. Node's `JSON.parse` has no
depth limit of its own; the bound keeps Python's parser (recursive, ~1000 frames) and every later
consumer of the value safe, and it is checked before any parser recurses. Integers of any length
are accepted, as in JavaScript (Python's int conversion stops at 4300 digits, so numbers are
read as floats: only validity matters here).

Large inputs are checked in a child process: Python's JSON parser holds the GIL for the whole
parse (~5 ms per MiB), so a thread would stall the daemon's event loop as much as the loop itself.
The child runs this file with nothing but the standard library (`python -I -S`).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import sys
import weakref

# Inputs up to this size are checked on the event loop (a millisecond or two).
INLINE_BYTES = 64 * 1024
_CHILD_TIMEOUT_S = 60.0
_PIPE_PIECE_BYTES = 1024 * 1024
# Children at once: each costs a core while it parses; more large inputs wait their turn.
_CHILDREN_AT_ONCE = 2
_children: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)

# Escapes inside strings (\\" included): removed first, so that every remaining quote opens or
# closes a string.
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_NESTING = [0] * 256
_NESTING[ord("[")] = _NESTING[ord("{")] = 1
_NESTING[ord("]")] = _NESTING[ord("}")] = -1
_DEPTH_SLICE = 1024 * 1024


class InvalidJson(ValueError):
    """The input is not strict JSON; the message says why."""


def check(raw: bytes, max_depth: int) -> None:
    """Raise InvalidJson unless `raw` is strict JSON nested at most `max_depth` deep."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidJson(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    if _nests_deeper(raw, max_depth):
        raise InvalidJson(f"nested more than max_input_depth={max_depth} arrays and objects deep")
    try:
        # parse_int: any integer is valid JSON; converting it is not needed, and Python's int()
        # refuses more than 4300 digits where JavaScript reads a float.
        json.loads(text, parse_constant=_refuse_constant, parse_int=len)
    except ValueError as exc:  # JSONDecodeError included
        raise InvalidJson(str(exc)) from None


async def check_async(raw: bytes, max_depth: int) -> None:
    """`check` without stalling the event loop: inline when small, in a child when large."""
    if len(raw) <= INLINE_BYTES:
        check(raw, max_depth)
        return
    loop = asyncio.get_running_loop()
    children = _children.setdefault(loop, asyncio.Semaphore(_CHILDREN_AT_ONCE))
    async with children:
        verdict = await _check_in_child(raw, max_depth)
    if verdict:
        raise InvalidJson(verdict)


def _nests_deeper(raw: bytes, max_depth: int) -> bool:
    """Whether arrays and objects nest deeper than `max_depth`, brackets in strings not counted.
    Linear and at C speed (regular expressions, split, translate, accumulate), never recursive,
    with an early answer for the common case of few brackets."""
    outside_strings = b"".join(_ESCAPE.sub(b"", raw).split(b'"')[0::2])
    brackets = outside_strings.translate(None, _NOT_BRACKETS)
    if brackets.count(b"[") + brackets.count(b"{") <= max_depth:
        return False
    level = 0
    for start in range(0, len(brackets), _DEPTH_SLICE):
        piece = brackets[start : start + _DEPTH_SLICE]
        levels = list(itertools.accumulate(map(_NESTING.__getitem__, piece), initial=level))
        if max(levels) > max_depth:
            return True
        level = levels[-1]
    return False


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


async def _check_in_child(raw: bytes, max_depth: int) -> str:
    """The child's verdict on `raw`: "" when valid, else why not."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-S",
        __file__,
        str(max_depth),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        async with asyncio.timeout(_CHILD_TIMEOUT_S):
            view = memoryview(raw)
            for start in range(0, len(raw), _PIPE_PIECE_BYTES):
                child.stdin.write(view[start : start + _PIPE_PIECE_BYTES])
                await child.stdin.drain()
            child.stdin.close()
            answer = await child.stdout.read()
            status = await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    if status != 0 or not answer.startswith(b"="):
        raise RuntimeError(f"the JSON checker exited with status {status}")
    return answer[1:].decode()


def _main() -> None:
    """The child: the input on stdin, "=" and the verdict ("" when valid) on stdout."""
    try:
        check(sys.stdin.buffer.read(), int(sys.argv[1]))
        verdict = ""
    except InvalidJson as exc:
        verdict = str(exc)
    sys.stdout.write("=" + verdict)


if __name__ == "__main__":
    _main()
