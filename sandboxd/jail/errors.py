"""The jail's exceptions.

JailError
├── SetupError        a step of building the jail failed (names the step and the errno)
└── JailStartError    the jail did not come up (the child reported a SetupError, or died)
"""

from __future__ import annotations


class JailError(Exception):
    """Base of every jail failure."""


class SetupError(JailError):
    """One step of the jail's set-up failed; the message names the step and the cause."""


class JailStartError(JailError):
    """A jail could not be started."""
