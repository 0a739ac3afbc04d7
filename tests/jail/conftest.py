"""Fixtures of the jail tests: the real fork server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from sandboxd.jail.handle import JailLauncher


@pytest.fixture
async def launcher() -> AsyncIterator[JailLauncher]:
    started = await JailLauncher.start(seccomp=True)
    yield started
    await started.close()
