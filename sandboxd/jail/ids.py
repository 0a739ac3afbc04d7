"""User and group ids: each jail's user namespace maps its one user to its own host uid.

The maps are written from outside (by the fork server, root in the parent namespace), which is
what lets a jail map to an arbitrary unprivileged host id instead of to the caller's own.
"""

from __future__ import annotations

import os

from sandboxd.jail.errors import SetupError
from sandboxd.jail.spec import JAIL_GID, JAIL_UID


def write_id_maps(pid: int, host_uid: int, host_gid: int) -> None:
    """Map the jail's user and group of process `pid` to `host_uid`/`host_gid` (parent side)."""
    for name, inside, outside in (("uid_map", JAIL_UID, host_uid), ("gid_map", JAIL_GID, host_gid)):
        if outside == 0:
            raise SetupError(f"write {name}: refusing to map the jail to host id 0")
        try:
            with open(f"/proc/{pid}/{name}", "w") as handle:
                handle.write(f"{inside} {outside} 1\n")
        except OSError as exc:
            raise SetupError(f"write {name}: {exc}") from None


def become_jail_user() -> None:
    """Drop supplementary groups and take the jail's ids (child side, after the maps exist).

    The capabilities of the new namespace survive this change of uid because its uid 0 is not
    mapped; they are lost at exec, where a non-root uid gets an empty capability set.
    """
    try:
        # The host's root groups would otherwise still count for host file permissions.
        os.setgroups([])
        os.setresgid(JAIL_GID, JAIL_GID, JAIL_GID)
        os.setresuid(JAIL_UID, JAIL_UID, JAIL_UID)
    except OSError as exc:
        raise SetupError(f"set ids: {exc}") from None
