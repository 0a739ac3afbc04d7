"""Credential redaction: every form of every credential, in one linear pass."""

from __future__ import annotations

import base64
import time

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
    began = time.monotonic()
    redact = Redactor(secrets)
    assert time.monotonic() - began < 0.05
    assert (redact._matchers, redact._building) == (None, None)  # nothing printed: not built
    await redact.ready()  # built on a worker thread
    assert redact._matchers
    text = ("log line without secrets " * 40_000) + secrets[63]
    assert redact(text).endswith(MARKER)
    began = time.monotonic()
    redact(text * 4)  # 4 MB
    assert time.monotonic() - began < 1.0
