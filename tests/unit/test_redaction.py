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


def test_short_values_are_not_secrets() -> None:
    assert Redactor(["abc"])("abc abc") == "abc abc"


def test_large_credential_sets_are_built_aside_and_scans_stay_linear() -> None:
    secrets = [f"{i:02}" + "s€" * 500 for i in range(64)]
    began = time.monotonic()
    redact = Redactor(secrets)
    assert time.monotonic() - began < 0.05  # the automaton is built on a worker thread
    text = ("log line without secrets " * 40_000) + secrets[63]
    assert redact(text).endswith(MARKER)
    began = time.monotonic()
    redact(text * 4)  # 4 MB
    assert time.monotonic() - began < 1.0
