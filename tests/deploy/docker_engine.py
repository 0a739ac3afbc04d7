"""A Docker engine of the test's own (Debian's docker.io), a Debian base image made offline, and the
translation of the ECS task definition into `docker run` flags.

dockerd runs as root with its data and exec roots in a temporary directory, no iptables and no
bridge (nothing on the host's network changes); it gets the instance seccomp profile of
deploy/ecs as its default, as an ECS instance of sandboxd would. Containers use the host's
network namespace (a bridge with published ports needs iptables or a host bridge interface), so
the daemon is told to listen on a free loopback port: nothing listens beyond 127.0.0.1.
"""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import prctl
import psutil

from tests.deploy.ecs_files import INSTANCE_SECCOMP, environment

# Debian's client and engine; /usr/local/bin/docker on these machines is another, newer client.
DOCKER = "/usr/bin/docker"
DOCKERD = "/usr/sbin/dockerd"
BASE_IMAGE = "sandboxd-test/base:bookworm"
BASE_PACKAGES = "python3,libseccomp2,libcap2"


class EngineError(Exception):
    """The engine, the base or the build could not be made: the test step fails, loudly."""


@dataclass
class Engine:
    root: Path
    process: subprocess.Popen[bytes] | None = None
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.root / "dockerd.log"

    @property
    def host(self) -> str:
        return f"unix://{self.root}/docker.sock"

    def start(self) -> None:
        for binary in (DOCKER, DOCKERD):
            if not os.access(binary, os.X_OK):
                raise EngineError(f"{binary} missing: scripts/setup installs docker.io")
        argv = [
            DOCKERD,
            f"--data-root={self.root}/data",
            f"--exec-root={self.root}/exec",
            f"--pidfile={self.root}/dockerd.pid",
            f"--host={self.host}",
            "--iptables=false",
            "--ip6tables=false",
            "--bridge=none",
            f"--seccomp-profile={INSTANCE_SECCOMP}",
        ]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while self.docker("version", check=False).returncode != 0:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise EngineError(f"dockerd did not start: {self.log.read_text()[-2000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=60)
        # dockerd leaves its default netns bound under the exec root.
        for part in psutil.disk_partitions(all=True):
            if part.mountpoint.startswith(f"{self.root}/"):
                subprocess.run(["umount", "--lazy", part.mountpoint], check=False)

    def docker(
        self, *args: str, check: bool = True, timeout: float = 600
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [DOCKER, f"--host={self.host}", *args],
            check=False,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise EngineError(f"docker {' '.join(args)}: {result.stderr.strip()}")
        return result

    def import_debian_base(self) -> None:
        """`mmdebstrap --variant=minbase bookworm` from Debian's mirror, then `docker import`."""
        with tempfile.TemporaryDirectory(dir=self.root) as work:
            tarball = f"{work}/base.tar"
            made = subprocess.run(
                ["mmdebstrap", "--quiet", "--variant=minbase", f"--include={BASE_PACKAGES}",
                 "bookworm", tarball],
                check=False, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            if made.returncode != 0:
                raise EngineError(f"mmdebstrap failed: {made.stderr.strip()[-2000:]}")
            self.docker("import", tarball, BASE_IMAGE)

    def env_for_clients(self) -> dict[str, str]:
        return {**os.environ, "DOCKER": DOCKER, "DOCKER_HOST": self.host}


def free_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- the task definition as docker run flags ------------------------------------------------------


def privilege_flags(container: dict[str, Any]) -> dict[str, list[str]]:
    """Each privilege the task definition grants, by the name the daemon gives it when missing."""
    linux = container.get("linuxParameters", {})
    granted = {f"CAP_{cap}": ["--cap-add", cap] for cap in linux["capabilities"].get("add", [])}
    if linux.get("initProcessEnabled"):
        granted["initProcessEnabled"] = ["--init"]
    if container.get("privileged"):
        granted["privileged"] = ["--privileged"]
    return granted


def restriction_flags(container: dict[str, Any], listen_port: int) -> list[str]:
    """Everything else of the container definition that `docker run` can express."""
    linux = container.get("linuxParameters", {})
    flags = [flag for cap in linux["capabilities"].get("drop", []) for flag in ("--cap-drop", cap)]
    if container.get("readonlyRootFilesystem"):
        flags.append("--read-only")
    for option in container.get("dockerSecurityOptions", []):
        flags += ["--security-opt", option]
    for mount in linux.get("tmpfs", []):
        options = ",".join([f"size={mount['size']}m", *mount.get("mountOptions", [])])
        flags += ["--tmpfs", f"{mount['containerPath']}:{options}"]
    for limit in container.get("ulimits", []):
        soft, hard = _within_own_limits(limit)
        flags += ["--ulimit", f"{limit['name']}={soft}:{hard}"]
    if "user" in container:
        flags += ["--user", container["user"]]
    flags += [
        f"--memory={container['memory']}m",
        f"--memory-reservation={container['memoryReservation']}m",
        f"--cpu-shares={container['cpu']}",
        f"--stop-timeout={container['stopTimeout']}",
        *_health_flags(container["healthCheck"]),
        "--network=host",
    ]
    env = environment(container)
    env["SANDBOXD_LISTEN"] = f"127.0.0.1:{listen_port}"
    env["SANDBOXD_TELEMETRY_EXPORTER"] = "none"  # no collector sidecar here
    for name, value in sorted(env.items()):
        flags += ["--env", f"{name}={value}"]
    return flags


def _within_own_limits(limit: dict[str, Any]) -> tuple[int, int]:
    """The task's ulimit, lowered to this machine's hard limit: raising it needs CAP_SYS_RESOURCE,
    which an ECS instance's dockerd has and the root of these test machines may lack."""
    which = getattr(resource, f"RLIMIT_{limit['name'].upper()}")
    own_hard = resource.getrlimit(which)[1]
    if own_hard == resource.RLIM_INFINITY or prctl.cap_effective.sys_resource:
        return limit["softLimit"], limit["hardLimit"]
    return min(limit["softLimit"], own_hard), min(limit["hardLimit"], own_hard)


def _health_flags(check: dict[str, Any]) -> list[str]:
    kind, *command = check["command"]
    if kind != "CMD":
        raise ValueError(f"health check kind {kind}: only CMD is translated")
    return [
        # docker run only has the shell form; the base has /bin/sh and the words need no quoting.
        f"--health-cmd={' '.join(command)}",
        f"--health-interval={check['interval']}s",
        f"--health-timeout={check['timeout']}s",
        f"--health-retries={check['retries']}",
        f"--health-start-period={check['startPeriod']}s",
    ]
