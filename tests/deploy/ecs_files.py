"""The deployment files in deploy/ecs, read once, for the tests that check them and run them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "ecs"
TASK_DEFINITION = DEPLOY / "task-definition.json"
AUTOSCALING = DEPLOY / "autoscaling.json"
INSTANCE_SECCOMP = DEPLOY / "docker-seccomp.json"


def load(path: Path) -> Any:
    with path.open() as handle:
        return json.load(handle)


def daemon_container(task_definition: dict[str, Any]) -> dict[str, Any]:
    """The sandboxd container of the task definition."""
    return next(c for c in task_definition["containerDefinitions"] if c["name"] == "sandboxd")


def environment(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("environment", [])}
