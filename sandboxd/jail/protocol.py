"""What the daemon (handle.py) and the fork server (forkserver.py) say to each other: the bound
on one message and how a JailSpec travels as JSON.

Apart from forkserver.py so that the daemon's side loads none of the child's code (launch, prctl).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sandboxd.jail.spec import JailLimits, JailSpec

MAX_MESSAGE = 64 * 1024


def spec_to_json(spec: JailSpec) -> dict[str, Any]:
    return asdict(spec)


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
