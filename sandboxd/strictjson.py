"""One strict JSON for every input: exactly what the runner's `JSON.parse` accepts, bounded.

Accepted: UTF-8 (no other encoding, no byte order mark), RFC 8259 (no NaN, Infinity, comments
or trailing commas), nested at most `max_depth` arrays/objects deep. Node's `JSON.parse` has no
depth limit of its own; the bound keeps Python's parser (recursive, ~1000 frames) and every later
consumer of the value safe, and it is checked before any parser recurses. Integers of any length
are accepted, as in JavaScript (Python's int conversion stops at 4300 digits, so numbers are
read as floats: only validity matters here).

Large inputs are checked in a child process: Python's JSON parser holds the GIL for the whole
parse (~5 ms per MiB), so a thread would stall the daemon's event loop as much as the loop itself.
The children run this file (`python -I`: no environment, no user site), and live as
long as the daemon: starting one per input cost more than the check (~50-250 ms against a few ms
for a megabyte). A thread talks to a child over its pipes (the GIL is let go while it waits); a
child ends when the daemon's end of its stdin closes, the daemon's exit included.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import re
import struct
import subprocess
import sys
import weakref
from typing import cast

import msgspec

# Inputs up to this size are checked on the event loop (a millisecond or two).
INLINE_BYTES = 64 * 1024
_CHILD_TIMEOUT_S = 60.0
# Checks at once (per event loop): each costs a core while it parses; more wait their turn.
_CHILDREN_AT_ONCE = 2

# Escapes inside strings (\\" included): removed first, so that every remaining quote opens or
# closes a string.
_ESCAPE = re.compile(rb"\\.", re.DOTALL)
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_NESTING = [0] * 256
_NESTING[ord("[")] = _NESTING[ord("{")] = 1
_NESTING[ord("]")] = _NESTING[ord("}")] = -1
_DEPTH_SLICE = 1024 * 1024


# msgspec checks JSON syntax without building values (msgspec.Raw), ten to forty times faster
# than the standard parser: what it accepts, JSON.parse accepts. It refuses a little more (a lone
# surrogate escape, "\ud800", which JSON.parse takes), so its "no" is only a reason to ask the
# standard parser, whose verdict and message stand.
_SYNTAX = msgspec.json.Decoder(msgspec.Raw)


class InvalidJson(ValueError):
    """The input is not strict JSON; the message says why."""


def check(raw: bytes | bytearray, max_depth: int) -> None:
    """Raise InvalidJson unless `raw` is strict JSON nested at most `max_depth` deep."""
    # ASCII is UTF-8: a scan without the decoded copy (16 MiB of text took 15-30 ms to make).
    if not raw.isascii():
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidJson(f"not UTF-8: {exc.reason} at byte {exc.start}") from None
    if _nests_deeper(raw, max_depth):
        raise InvalidJson(f"nested more than max_input_depth={max_depth} arrays and objects deep")
    try:
        _SYNTAX.decode(raw)
        return
    except msgspec.DecodeError:
        pass  # the standard parser has the last word, and says why
    try:
        # parse_int: any integer is valid JSON; converting it is not needed, and Python's int()
        # refuses more than 4300 digits where JavaScript reads a float.
        json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, parse_int=len)
    except ValueError as exc:  # JSONDecodeError included
        raise InvalidJson(str(exc)) from None


async def check_async(raw: bytes, max_depth: int) -> None:
    """`check` without stalling the event loop: inline when small, in a child when large."""
    if len(raw) <= INLINE_BYTES:
        check(raw, max_depth)
        return
    loop = asyncio.get_running_loop()
    turns = _turns.setdefault(loop, asyncio.Semaphore(_CHILDREN_AT_ONCE))
    async with turns:
        checker = _idle.pop() if _idle else _Checker()
        try:
            async with asyncio.timeout(_CHILD_TIMEOUT_S):
                verdict = await asyncio.to_thread(checker.verdict, raw, max_depth)
        except BaseException:
            checker.kill()  # a timeout or a cancelled caller: the thread's read ends at once
            raise
        _idle.append(checker)
    if verdict:
        raise InvalidJson(verdict)


class _Checker:
    """One long-lived checker child; serves one input at a time."""

    def __init__(self) -> None:
        self._process = subprocess.Popen(
            [sys.executable, "-I", __file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )

    def verdict(self, raw: bytes, max_depth: int) -> str:
        """The child's verdict on `raw`: "" when valid, else why not. Blocks: call in a thread."""
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(_HEADER.pack(len(raw), max_depth))
            stdin.write(raw)
            stdin.flush()
        except BrokenPipeError:
            raise RuntimeError("the JSON checker exited") from None
        head = stdout.read(_HEADER.size)
        if len(head) != _HEADER.size:
            raise RuntimeError(f"the JSON checker exited with status {self._process.wait()}")
        size, _ = _HEADER.unpack(head)
        return stdout.read(size).decode()

    def kill(self) -> None:
        self._process.kill()
        self._process.wait()


# A request to a child is this header (input length, max depth) and the input; the answer is
# this header (verdict length, 0) and the verdict, empty when the input is valid.
_HEADER = struct.Struct("=QI")
_idle: list[_Checker] = []  # children waiting for an input, shared by every event loop
_turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _nests_deeper(raw: bytes | bytearray, max_depth: int) -> bool:
    """Whether arrays and objects nest deeper than `max_depth`, brackets in strings not counted.
    Linear and at C speed (regular expressions, split, translate, accumulate), never recursive,
    with early answers for the common case of few brackets."""
    # Strings' brackets counted too: a bound. find() is memchr; count() took 10 ms for 16 MiB.
    if _found(raw, b"[", max_depth) + _found(raw, b"{", max_depth) <= max_depth:
        return False
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


def _found(raw: bytes | bytearray, byte: bytes, limit: int) -> int:
    """How many times `byte` is in `raw`, counted no further than `limit` + 1."""
    found, at = 0, raw.find(byte)
    while at >= 0 and found <= limit:
        found += 1
        at = raw.find(byte, at + 1)
    return found


def _refuse_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def _serve() -> None:
    """The child: inputs on stdin, verdicts on stdout, until stdin closes."""
    stdin, stdout = cast(io.BufferedIOBase, sys.stdin.buffer), sys.stdout.buffer
    while head := stdin.read(_HEADER.size):
        size, max_depth = _HEADER.unpack(head)
        try:
            check(_read_exactly(stdin, size), max_depth)
            verdict = b""
        except InvalidJson as exc:
            verdict = str(exc).encode()
        stdout.write(_HEADER.pack(len(verdict), 0) + verdict)
        stdout.flush()


def _read_exactly(stream: io.BufferedIOBase, size: int) -> bytearray:
    """`size` bytes read into one buffer (read(size) gathers pieces, then copies them)."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    done = 0
    while done < size:
        got = stream.readinto(view[done:])
        if not got:
            raise SystemExit(0)  # the daemon went away mid-input
        done += got
    return buffer


if __name__ == "__main__":
    _serve()
