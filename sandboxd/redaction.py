"""Credential values never leave the daemon in logs, error messages or stacks.

A step sees its credentials as `context.credentials`; what it prints, throws or lets leak into a
stack trace is scrubbed before it is streamed: the raw value and the forms it commonly takes on
the way out (JSON string escaping, base64 with or without padding, standard and URL-safe,
URL-encoding with %20 or +). Results are the customer's data and are not rewritten.

Not covered: a secret split across two log calls, or transformed otherwise (hex, reversed, base64
of a longer string that contains it at an offset that is not a multiple of 3).
"""

from __future__ import annotations

import base64
import json
import re
import urllib.parse
from collections.abc import Iterable

MARKER = "[REDACTED]"
# Shorter values would redact ordinary words; such a credential is not a secret worth the name.
MIN_SECRET_LENGTH = 4


class Redactor:
    def __init__(self, secrets: Iterable[str]):
        forms = {
            form
            for secret in secrets
            if len(secret) >= MIN_SECRET_LENGTH
            for form in _forms(secret)
        }
        # Longest first, so a form that contains another is replaced whole.
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self._pattern is None or not text:
            return text
        return self._pattern.sub(MARKER, text)


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
