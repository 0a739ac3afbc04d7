"""A jail the pool started: its handle, channel, and the resources the pool gave it."""

from __future__ import annotations

from dataclasses import dataclass

from sandboxd.channel import RunnerChannel
from sandboxd.jail.cgroups import JailCgroup
from sandboxd.jail.handle import Jail


@dataclass(eq=False)
class PooledJail:
    """A running jail with its channel and the resources the pool gave it."""

    jail: Jail
    channel: RunnerChannel
    cgroup: JailCgroup | None
    uid: int
    start_s: float

    @property
    def jail_id(self) -> str:
        return self.jail.jail_id

    def kill(self) -> None:
        """Kill every process of the jail: SIGKILL to its init ends its whole pid namespace,
        which no process can leave. Its cgroup is killed again and removed when the jail is
        freed (`JailReaper`), in a thread: v1's freeze-then-kill waits, the loop must not.
        """
        self.jail.kill()

    def take_proxy_fd(self) -> int:
        """The jail's egress socket (listening on its own loopback), for the egress proxy.

        Whoever takes it owns it: an execution without egress closes it at once, and the jail's
        connections to the proxy address are then refused, as if it did not exist.
        """
        return self.jail.take_proxy_fd()
