"""The daemon's large buffers on transparent huge pages.

A large request is copied a few times on the event loop (gRPC's receive buffer, the protobuf
message, the joined input), and freed there. In 4 KiB pages every copy into fresh memory takes
a page fault per page and every free unmaps them one by one: 10-12 ms of a single loop turn for
a 64 MiB input. glibc's `glibc.malloc.hugetlb=1` tunable (glibc 2.35 and later) makes malloc ask
for transparent huge pages where the kernel's THP mode is `madvise` (Debian's and Amazon Linux's
default) or `always`: 512 times fewer faults and unmaps. glibc reads its tunables when a process
starts, so the daemon's commands start themselves again with it set (exec: the same pid).

The jails are not affected: the fork server and the runners get an environment of their own.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")

log = logging.getLogger(__name__)


def restart_with_hugepage_malloc() -> None:
    """Exec this process again with the tunable set; returns only when it is set already, or
    when the kernel has THP off (nothing to gain)."""
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if TUNABLE in tunables or not thp_available():
        return
    env = dict(os.environ, GLIBC_TUNABLES=":".join(filter(None, (tunables, f"{TUNABLE}=1"))))
    log.info("starting again with GLIBC_TUNABLES=%s", env["GLIBC_TUNABLES"])
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, sys.orig_argv, env)


def thp_available() -> bool:
    """Whether the kernel gives transparent huge pages to a process that asks (madvise)."""
    try:
        return "[never]" not in THP_MODE.read_text()
    except OSError:
        return False
