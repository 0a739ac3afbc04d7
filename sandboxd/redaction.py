"""Credential values never leave the daemon in logs, error messages or stacks.

A step sees its credentials as `context.credentials`; what it prints, throws or lets leak into a
stack trace is scrubbed before it is streamed: the raw value and the forms it commonly takes on
the way out (JSON string escaping, base64 with or without padding, standard and URL-safe,
URL-encoding with %20 or +). Results are the customer's data and are not rewritten.

All forms of all credentials are found in one pass over the text, by an Aho-Corasick automaton
(the Rust `aho-corasick` crate, leftmost-longest, so a form that contains another is replaced
whole): linear in the text, whatever the number of credentials, and it releases the GIL while it
scans. Its contiguous NFA is used because the crate's DFA takes seconds to build for long
repetitive values. Building it is linear in the forms' total length; the request limits on
credentials (sandboxd/config.py) bound that, and a large set is built on a worker thread while
the jail starts, so the event loop never waits for it.

Not covered: a secret split across two log calls, or transformed otherwise (hex, reversed, base64
of a longer string that contains it at an offset that is not a multiple of 3).
"""

from __future__ import annotations

import base64
import json
import urllib.parse
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import ahocorasick_rs

MARKER = "[REDACTED]"
# Shorter values would redact ordinary words; such a credential is not a secret worth the name.
MIN_SECRET_LENGTH = 4
# Credentials up to this many characters in all are prepared at once (well under a millisecond).
_INLINE_SECRET_CHARS = 512
_builder: ThreadPoolExecutor | None = None


class Redactor:
    def __init__(self, secrets: Iterable[str]):
        kept = [secret for secret in secrets if len(secret) >= MIN_SECRET_LENGTH]
        self._matcher: ahocorasick_rs.AhoCorasick | None = None
        self._building: Future[ahocorasick_rs.AhoCorasick | None] | None = None
        if sum(map(len, kept)) <= _INLINE_SECRET_CHARS:
            self._matcher = _automaton(kept)
        else:
            # Computing the forms (URL-quoting is ~1 µs per character) and the automaton takes
            # tens of milliseconds for the largest credentials allowed.
            self._building = _thread_pool().submit(_automaton, kept)

    def __call__(self, text: str) -> str:
        if not text:
            return text
        if self._building is not None:
            # Built while the jail started: done long before a step can log anything.
            self._matcher = self._building.result()
            self._building = None
        if self._matcher is None:
            return text
        matches = self._matcher.find_matches_as_indexes(text)
        if not matches:
            return text
        pieces: list[str] = []
        done = 0
        for _, start, end in matches:
            pieces += (text[done:start], MARKER)
            done = end
        pieces.append(text[done:])
        return "".join(pieces)


def _automaton(secrets: list[str]) -> ahocorasick_rs.AhoCorasick | None:
    """The automaton of every form of `secrets`; None when there is nothing to find."""
    forms = sorted({form for secret in secrets for form in _forms(secret)})
    if not forms:
        return None
    return ahocorasick_rs.AhoCorasick(
        forms,
        matchkind=ahocorasick_rs.MatchKind.LeftmostLongest,
        implementation=ahocorasick_rs.Implementation.ContiguousNFA,
    )


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
