"""Credential values never leave the daemon in logs, error messages or stacks.

A step sees its credentials as `context.credentials`; what it prints, throws or lets leak into a
stack trace is scrubbed before it is streamed: the raw value and the forms it commonly takes on
the way out (JSON string escaping, base64 with or without padding, standard and URL-safe,
URL-encoding with %20 or +). Results are the customer's data and are not rewritten.

The forms are found by Aho-Corasick automata (the Rust `aho-corasick` crate, leftmost-longest, so
a form that contains another is replaced whole): each scan is linear in the text and releases the
GIL. Their contiguous NFA is used because the crate's DFA takes seconds to build for long
repetitive values. Building is linear in the forms' total length (0.1-0.2 µs per byte) but
holds the GIL throughout, so a large set is built in groups of at most 8 KB of forms, each about
1.5 ms, on a worker thread, pausing between groups so that the event loop gets the GIL back;
and only once a step has printed or failed (`Redactor.ready`): built while the jail started, its
GIL holds fell on the daemon's busiest moments with a large request. A form longer than a group
gets no automaton (the URL-encoded form of a 64 KiB credential, 192 KiB, took 16 ms to build): it
is found by `bytes.find`, which needs no build and is linear too (two-way), a window of the text
at a time so that each call holds the GIL briefly. The text then takes one pass per long form
and per group, the longest forms first, so that a form is replaced before any shorter form it
contains. The request limits on credentials (sandboxd/config.py) bound the passes: 64
random credentials of 1,000 letters and punctuation made 75 groups. The passes release the GIL
but not the thread that makes them, so a long text is scrubbed on a worker thread
(`Redactor.scrub`): a 1 MiB log line under that set takes some 18 ms, and a line at the 16 MiB
ceiling of the log limit a quarter of a second.

Not covered: a secret split across two log calls, or transformed otherwise (hex, reversed, base64
of a longer string that contains it at an offset that is not a multiple of 3).
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import urllib.parse
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import ahocorasick_rs

MARKER = "[REDACTED]"
_MARKER_BYTES = MARKER.encode()
# Shorter values would redact ordinary words; such a credential is not a secret worth the name.
MIN_SECRET_LENGTH = 4
# Credentials up to this many characters in all are prepared at once (well under a millisecond).
_INLINE_SECRET_CHARS = 512
# The bytes of forms in one automaton: its build holds the GIL for about 1.5 ms. A longer form is
# found with bytes.find instead, at most this many bytes of text (plus the form) per call, which
# holds the GIL for about half a millisecond.
_GROUP_BYTES = 8192
_FIND_WINDOW_BYTES = 1024 * 1024
# Texts up to this many characters are scrubbed on the event loop: 75 passes over 16 KiB take
# about 0.7 ms.
_INLINE_TEXT_CHARS = 16 * 1024
_PAUSE_S = 0.0005
_builder: ThreadPoolExecutor | None = None
# An automaton of a group of forms, or one long form on its own.
_Matcher = ahocorasick_rs.BytesAhoCorasick | bytes


class Redactor:
    """Scrubs every form of the credentials from text. A large set's automata are built on a
    worker thread at the first need (`ready`): most executions never print anything."""

    def __init__(self, secrets: Iterable[str]):
        self._secrets = [secret for secret in secrets if len(secret) >= MIN_SECRET_LENGTH]
        self._matchers: list[_Matcher] | None = None
        self._building: Future[list[_Matcher]] | None = None
        if sum(map(len, self._secrets)) <= _INLINE_SECRET_CHARS:
            self._matchers = _matchers(self._secrets)

    async def ready(self) -> None:
        """Build the automata, if they are not yet, without blocking the event loop: computing
        the forms (URL-quoting is ~1 µs per character) and the automata takes tens of
        milliseconds for the largest credentials allowed."""
        if self._matchers is not None:
            return
        if self._building is None:
            self._building = _thread_pool().submit(_matchers, self._secrets)
        self._matchers = await asyncio.wrap_future(self._building)

    async def scrub(self, text: str) -> str:
        """`text` scrubbed, without blocking the event loop: automata built first if need be, a
        long text scanned on a worker thread."""
        await self.ready()
        if len(text) <= _INLINE_TEXT_CHARS or not self._matchers:
            return self(text)
        return await asyncio.to_thread(self, text)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        if self._matchers is None:
            # Not made ready: built here, blocking, rather than let a secret through.
            built = self._building.result() if self._building else _matchers(self._secrets)
            self._matchers = built
        if not self._matchers:
            return text
        # Scanned as UTF-8: the crate's str search converts every offset to a character index,
        # 100 times slower than its byte search. UTF-8 forms match only at character boundaries.
        raw = text.encode("utf-8", "surrogatepass")
        redacted = raw
        for matcher in self._matchers:
            redacted = _redacted(matcher, redacted)
        return text if redacted is raw else redacted.decode("utf-8", "surrogatepass")


def _redacted(matcher: _Matcher, text: bytes) -> bytes:
    if isinstance(matcher, bytes):
        spans = _occurrences(matcher, text)
    else:
        spans = [(start, end) for _, start, end in matcher.find_matches_as_indexes(text)]
    if not spans:
        return text
    pieces: list[bytes] = []
    done = 0
    for start, end in spans:
        pieces += (text[done:start], _MARKER_BYTES)
        done = end
    pieces.append(text[done:])
    return b"".join(pieces)


def _occurrences(form: bytes, text: bytes) -> list[tuple[int, int]]:
    """Where `form` is in `text`, leftmost first and not overlapping, found a window at a time."""
    spans: list[tuple[int, int]] = []
    start = 0
    while start + len(form) <= len(text):
        end = min(len(text), start + _FIND_WINDOW_BYTES + len(form))
        found = text.find(form, start, end)
        if found < 0:
            start = end - len(form) + 1  # no occurrence starts before this
        else:
            spans.append((found, found + len(form)))
            start = found + len(form)
    return spans


def _matchers(secrets: list[str]) -> list[_Matcher]:
    """What finds every form of `secrets`, longest forms first: each form longer than a group
    on its own, then an automaton per group of shorter forms."""
    forms = sorted(
        {form.encode() for secret in secrets for form in _forms(secret)},
        key=lambda form: (-len(form), form),
    )
    long_forms = [form for form in forms if len(form) > _GROUP_BYTES]
    groups: list[list[bytes]] = []
    size = _GROUP_BYTES
    for form in forms[len(long_forms) :]:
        if size + len(form) > _GROUP_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(form)
        size += len(form)
    matchers: list[_Matcher] = list(long_forms)
    for index, group in enumerate(groups):
        if index:
            # A pause, not just a gap between builds: a thread that wants the GIL (the event
            # loop's) asks for it only after 5 ms (sys.getswitchinterval), and it competes
            # with the other threads that wait for it.
            time.sleep(_PAUSE_S)
        matchers.append(
            ahocorasick_rs.BytesAhoCorasick(
                group,
                matchkind=ahocorasick_rs.MatchKind.LeftmostLongest,
                implementation=ahocorasick_rs.Implementation.ContiguousNFA,
            )
        )
    return matchers


def _thread_pool() -> ThreadPoolExecutor:
    global _builder  # noqa: PLW0603 - one pool per process, made on first need
    if _builder is None:
        _builder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="redaction")
    return _builder


def _forms(secret: str) -> set[str]:
    raw = secret.encode()
    encoded = {
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
    }
    return {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret),
        *encoded,
        *(form.rstrip("=") for form in encoded),
    } - {""}
