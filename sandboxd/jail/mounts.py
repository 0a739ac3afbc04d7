"""The jail's filesystem: a read-only root of node + runner, a capped tmpfs, its own /proc.

Runs in the jail's first process, inside its new mount namespace, with the namespace's
capabilities. The root filesystem is prepared once by images/node/build-rootfs.sh and holds the
mount points used here (/tmp, /proc, /dev/null, ...); nothing of the host stays reachable after
the old root is detached.
"""

from __future__ import annotations

import os

from sandboxd.jail.spec import JAIL_GID, JAIL_UID
from sandboxd.jail.syscalls import (
    MNT_DETACH,
    MS_BIND,
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_PRIVATE,
    MS_RDONLY,
    MS_REC,
    MS_REMOUNT,
    mount,
    pivot_root,
    umount2,
)

DEVICES = ("null", "zero", "random", "urandom")


def enter_root(rootfs: str, tmpfs_bytes: int) -> None:
    """Make `rootfs` the jail's read-only root; afterwards the host's tree is gone."""
    # Nothing mounted here may propagate back to the host's namespace.
    mount(None, "/", None, MS_REC | MS_PRIVATE)
    # pivot_root needs the new root to be a mount point; binding the image onto itself makes it one.
    mount(rootfs, rootfs, None, MS_BIND | MS_REC)
    _mount_tmp(f"{rootfs}/tmp", tmpfs_bytes)
    mount("proc", f"{rootfs}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for device in DEVICES:
        _bind_device(f"/dev/{device}", f"{rootfs}/dev/{device}")
    _pivot(rootfs)
    # Read-only last: the mount points above had to be reachable while the root was writable.
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _mount_tmp(target: str, size_bytes: int) -> None:
    # noexec: nothing written by jail code (an ELF, a .node addon) can be executed or mapped.
    options = f"size={size_bytes},nr_inodes=16384,mode=1777,uid={JAIL_UID},gid={JAIL_GID}"
    mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, options)


def _bind_device(source: str, target: str) -> None:
    mount(source, target, None, MS_BIND)
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NOEXEC)


def _pivot(rootfs: str) -> None:
    # pivot_root(".", ".") stacks the old root under the new one; detaching it leaves no way back.
    os.chdir(rootfs)
    pivot_root(".", ".")
    umount2(".", MNT_DETACH)
    os.chdir("/")
