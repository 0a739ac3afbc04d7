"""What the daemon (handle.py) and the fork server (forkserver.py) say to each other: the bound
on one message and how a JailSpec travels as JSON.

Apart from forkserver.py so that the daemon's side loads none of the child's code (launch, prctl).
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from sandboxd.jail.spec import JailLimits, JailSpec

MAX_MESSAGE = 64 * 1024


def spec_to_json(spec: JailSpec) -> dict[str, Any]:
    # Field by field, not dataclasses.asdict: that deep-copies every tuple of the spec, some 60
    # µs of the daemon's loop per jail; json.dumps writes the tuples as the same lists.
    return {**_fields_of(spec), "limits": _fields_of(spec.limits)}


def _fields_of(value: JailSpec | JailLimits) -> dict[str, Any]:
    return {field.name: getattr(value, field.name) for field in fields(value)}


def spec_from_json(data: dict[str, Any]) -> JailSpec:
    return JailSpec(
        jail_id=data["jail_id"],
        rootfs=data["rootfs"],
        host_uid=data["host_uid"],
        host_gid=data["host_gid"],
        limits=JailLimits(**data["limits"]),
        cgroup_procs=tuple(data["cgroup_procs"]),
        hostname=data["hostname"],
        argv=tuple(data["argv"]),
        env=tuple((key, value) for key, value in data["env"]),
    )
