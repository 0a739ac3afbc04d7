"""Egress for jails: an allowlisting, SSRF-safe HTTP CONNECT proxy inside the daemon.

The value objects (policies, address rules, limits, records) load with the settings; the proxy
itself (asyncio, dnspython, h11) is imported on first use, so loading the settings stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from sandboxd.egress.addresses import AddressPolicy, deny_reason
from sandboxd.egress.policy import EgressDestination, EgressPolicy, EgressPolicyError, narrow
from sandboxd.egress.records import (
    ConnectionRecord,
    EgressGrant,
    EgressLimits,
    EgressUsage,
    Outcome,
)

if TYPE_CHECKING:
    from sandboxd.egress.proxy import EgressProxy, EgressSession

__all__ = [
    "AddressPolicy",
    "ConnectionRecord",
    "EgressDestination",
    "EgressGrant",
    "EgressLimits",
    "EgressPolicy",
    "EgressPolicyError",
    "EgressProxy",
    "EgressSession",
    "EgressUsage",
    "Outcome",
    "deny_reason",
    "narrow",
]

_PROXY = frozenset({"EgressProxy", "EgressSession"})


def __getattr__(name: str) -> object:
    """EgressProxy and EgressSession, imported on first use (module __getattr__, PEP 562)."""
    if name not in _PROXY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module("sandboxd.egress.proxy"), name)
