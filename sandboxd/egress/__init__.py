"""Egress for jails: an allowlisting, SSRF-safe HTTP CONNECT proxy inside the daemon."""

from sandboxd.egress.addresses import AddressPolicy, deny_reason
from sandboxd.egress.policy import EgressDestination, EgressPolicy, EgressPolicyError, narrow
from sandboxd.egress.proxy import EgressProxy, EgressSession
from sandboxd.egress.records import (
    ConnectionRecord,
    EgressGrant,
    EgressLimits,
    EgressUsage,
    Outcome,
)

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
