"""Credential redaction: every form of every credential, in one linear pass."""

from __future__ import annotations

import asyncio
import base64
import time
import urllib.parse

from sandboxd import redaction
from sandboxd.redaction import MARKER, Redactor


def test_every_form_is_replaced_and_the_longest_wins() -> None:
    secret = "p@ss w/rd+1"
    redact = Redactor([secret, "w/rd"])
    forms = [
        secret,
        "p%40ss%20w%2Frd%2B1",
        "p%40ss+w%2Frd%2B1",
        base64.b64encode(secret.encode()).decode(),
    ]
    assert redact(" | ".join(forms)) == " | ".join([MARKER] * len(forms))
    assert redact("just w/rd here") == f"just {MARKER} here"
    assert redact("nothing to see") == "nothing to see"


def test_many_credentials_are_found_in_groups_and_a_long_form_wins_over_one_it_contains() -> None:
    """Thousands of characters of forms are built into several automata (each build holds the
    GIL); the longest forms' group runs first, so a secret containing another goes whole."""
    inner = "inner-secret"
    outer = "0" * 2000 + inner + "1" * 2000
    others = [f"{i:02}" + "k" * 1000 for i in range(16)]
    redact = Redactor([inner, *others, outer])
    text = f"a {outer} b {inner} c {others[7]} d " + base64.b64encode(others[0].encode()).decode()
    assert redact(text) == f"a {MARKER} b {MARKER} c {MARKER} d {MARKER}"
    assert len(redact._matchers) >= 3  # the forms took several groups


def test_a_redactor_used_before_it_is_ready_still_redacts() -> None:
    secrets = [f"{i:02}" + "k" * 1000 for i in range(8)]
    assert Redactor(secrets)(f"a {secrets[5]} b") == f"a {MARKER} b"


def test_short_values_are_not_secrets() -> None:
    assert Redactor(["abc"])("abc abc") == "abc abc"


async def test_large_credential_sets_are_built_aside_when_needed_and_scans_stay_linear() -> None:
    secrets = [f"{i:02}" + "s€" * 500 for i in range(64)]
    redact = Redactor(secrets)
    assert (redact._matchers, redact._building) == (None, None)  # nothing printed: not built
    await redact.ready()  # built on a worker thread
    assert redact._matchers
    text = ("log line without secrets " * 40_000) + secrets[63]
    assert redact(text).endswith(MARKER)
    began = time.monotonic()
    redact(text * 4)  # 4 MB
    assert time.monotonic() - began < 1.0


async def test_a_long_form_is_found_without_an_automaton_across_find_windows() -> None:
    """A 64 KiB credential's forms (its URL-encoded one is 192 KiB) would take one automaton
    each, whose build holds the GIL for up to 16 ms: they are found by bytes.find instead, a
    window of the text at a time, including an occurrence that straddles two windows."""
    secret = "€/" * 13_107  # 65,535 bytes of UTF-8
    redact = Redactor([secret])
    await redact.ready()
    quoted = urllib.parse.quote(secret, safe="")
    long_forms = [m for m in redact._matchers or () if isinstance(m, bytes)]
    assert quoted.encode() in long_forms and secret.encode() in long_forms
    straddling = "x" * (redaction._FIND_WINDOW_BYTES + 1000)  # past the first window's end
    text = f"{straddling}{quoted} a {secret} b {quoted}"
    assert redact(text) == f"{straddling}{MARKER} a {MARKER} b {MARKER}"
    assert redact(quoted[:-1]) == quoted[:-1]  # a form cut short is not the form


async def test_a_long_text_is_scrubbed_while_the_event_loop_runs() -> None:
    """The passes over a long text release the GIL but hold their thread: they run on a worker
    thread, and the event loop goes on meanwhile (a 1 MiB log line under the largest credential
    set held the loop for 18 ms)."""
    secrets = [f"{i:02}" + "/€" * 333 for i in range(64)]
    redact = Redactor(secrets)
    await redact.ready()
    text = "log line without secrets " * 160_000 + secrets[40]  # 4 MB
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0)
            ticks += 1

    ticker = asyncio.create_task(tick())
    scrubbed = await redact.scrub(text)
    ticker.cancel()
    assert scrubbed == text[: -len(secrets[40])] + MARKER
    assert ticks > 0
    assert await redact.scrub(f"short {secrets[3]}") == f"short {MARKER}"
