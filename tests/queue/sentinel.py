"""A primary, a replica and a Sentinel on free loopback ports (Debian's redis-server and
redis-sentinel), for the failover tests."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import cast

import redis

from tests.redis_server import free_port

SERVICE = "queue"
# The Sentinel pings every second; with a one-second window, one late answer on a loaded host
# marks a healthy primary down. A CI run lost its data that way: the freshly promoted primary
# was "down" a second after its promotion, and the Sentinel failed back to the emptied node.
DOWN_AFTER_MS = 3000
_READY_TIMEOUT_S = 30.0


class _Process:
    def __init__(self, argv: list[str], port: int, password: str | None = None):
        self.port = port
        self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.client = redis.Redis(port=port, password=password, socket_timeout=2)
        _until(self._ping, f"port {port} to answer")

    def _ping(self) -> bool:
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.process.args!r} exited {self.process.returncode}")
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def signal(self, number: signal.Signals) -> None:
        self.process.send_signal(number)

    def stop(self) -> None:
        self.client.close()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
        self.process.wait(timeout=30)


def _server(
    directory: Path, name: str, *extra: str, port: int | None = None, password: str | None = None
) -> _Process:
    directory.mkdir(exist_ok=True)
    port = port or free_port()
    argv = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(directory),
            "--save", "", "--appendonly", "no", "--logfile", str(directory / f"{name}.log"),
            *extra]  # fmt: skip
    if password is not None:  # asked of clients, and of the replica by its primary
        argv += ["--requirepass", password, "--masterauth", password]
    return _Process(argv, port, password)


def _in_sync(server: _Process) -> bool:
    replication = server.client.info("replication")
    return bool(replication["role"] == "slave" and replication["master_link_status"] == "up")


def _until(check: object, what: str, timeout_s: float = _READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


class SentinelSet:
    """One primary, one replica of it, and one Sentinel (quorum 1) watching them; with
    `password`, the primary and the replica ask for it, with `sentinel_password` the Sentinel."""

    def __init__(
        self,
        directory: Path,
        *,
        password: str | None = None,
        sentinel_password: str | None = None,
    ):
        self.directory = directory
        self.password = password
        if shutil.which("redis-sentinel") is None:
            raise RuntimeError("redis-sentinel is not installed (apt-get install redis-sentinel)")
        self.primary = _server(directory / "primary", "primary", password=password)
        self.replica = _server(
            directory / "replica",
            "replica",
            "--replicaof",
            "127.0.0.1",
            str(self.primary.port),
            password=password,
        )
        _until(self._replica_in_sync, "the replica to sync")
        config = directory / "sentinel.conf"
        port = free_port()
        config.write_text(
            f"bind 127.0.0.1\nport {port}\ndir {directory}\nlogfile {directory / 'sentinel.log'}\n"
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SERVICE} 10000\n"
        )
        with config.open("a") as more:
            if password is not None:  # quoted: a password may hold spaces
                more.write(f"sentinel auth-pass {SERVICE} {json.dumps(password)}\n")
            if sentinel_password is not None:
                more.write(f"requirepass {json.dumps(sentinel_password)}\n")
        self.sentinel = _Process(["redis-sentinel", str(config)], port, sentinel_password)
        _until(self._sentinel_sees_replica, "the Sentinel to find the replica")

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel.port}/{SERVICE}"

    def primary_port(self) -> int:
        address = cast(
            tuple[str, int], self.sentinel.client.sentinel_get_master_addr_by_name(SERVICE)
        )
        return int(address[1])

    def wait_for_promotion(self, timeout_s: float = 60.0) -> None:
        """Until the Sentinel names the replica as the primary, and the replica says so."""
        _until(
            lambda: (
                self.primary_port() == self.replica.port
                and self.replica.client.info("replication")["role"] == "master"
            ),
            "the replica's promotion",
            timeout_s,
        )

    def restart_old_primary(self) -> None:
        """Start the killed primary again (empty: it kept nothing on disk) as a replica of the
        new primary, as an operator's restart would, and return once it is in sync. (Left to
        come back as a primary, it waits for the Sentinel's own schedule to be converted: past
        30 s once on a loaded machine.) It comes back with replica priority 0, never to be
        promoted, as an operator brings back a node that lost its data: a failover to it (a
        false one, on a loaded host) would empty the queue."""
        self.primary.stop()
        new_primary = str(self.primary_port())
        self.primary = _server(
            self.directory / "primary",
            "primary",
            "--replicaof",
            "127.0.0.1",
            new_primary,
            "--replica-priority",
            "0",
            port=self.primary.port,
            password=self.password,
        )
        _until(lambda: _in_sync(self.primary), "the old primary to sync as a replica", 60.0)

    def _replica_in_sync(self) -> bool:
        return _in_sync(self.replica)

    def _sentinel_sees_replica(self) -> bool:
        replicas = self.sentinel.client.sentinel_slaves(SERVICE)
        return any(r["port"] == self.replica.port and not r["is_sdown"] for r in replicas)

    def stop(self) -> None:
        for process in (self.sentinel, self.replica, self.primary):
            process.stop()
