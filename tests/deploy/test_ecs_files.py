"""deploy/ecs checked offline against the AWS APIs' own schemas (botocore's parameter validator,
no AWS call), and against what the daemon needs from them."""

from __future__ import annotations

import copy
from typing import Any

import botocore.session
from botocore.validate import ParamValidator

from tests.deploy.ecs_files import AUTOSCALING, TASK_DEFINITION, daemon_container, environment, load

# What the jails need and nothing more (docs/deploy.md says why for each; tests/deploy/test_image.py
# shows the daemon refusing to start without any one of them).
GRANTED_CAPABILITIES = {"SYS_ADMIN", "SETUID", "SETGID"}
FINAL_EVENTS_S = 2.0  # daemon.py: the gRPC server's last grace after the drain


def problems(service: str, operation: str, params: dict[str, Any]) -> str:
    """botocore's report for `params` as input of `operation`; empty when valid."""
    model = botocore.session.get_session().get_service_model(service)
    shape = model.operation_model(operation).input_shape
    return str(ParamValidator().validate(params, shape).generate_report())


def test_task_definition_is_a_valid_register_task_definition_request() -> None:
    assert problems("ecs", "RegisterTaskDefinition", load(TASK_DEFINITION)) == ""


def test_the_validator_catches_a_wrong_task_definition() -> None:
    broken = copy.deepcopy(load(TASK_DEFINITION))
    daemon_container(broken)["ulimits"][0]["softLimit"] = "65536"
    del broken["family"]
    report = problems("ecs", "RegisterTaskDefinition", broken)
    assert 'Missing required parameter in input: "family"' in report
    assert "containerDefinitions[0].ulimits[0].softLimit" in report


def test_scaling_target_and_policies_are_valid_requests() -> None:
    scaling = load(AUTOSCALING)
    target = scaling["RegisterScalableTarget"]
    assert problems("application-autoscaling", "RegisterScalableTarget", target) == ""
    assert len(scaling["PutScalingPolicy"]) == 2
    for policy in scaling["PutScalingPolicy"]:
        assert problems("application-autoscaling", "PutScalingPolicy", policy) == ""
        assert policy["ResourceId"] == target["ResourceId"]


def test_the_daemon_container_grants_only_what_jails_need() -> None:
    container = daemon_container(load(TASK_DEFINITION))
    linux = container["linuxParameters"]
    assert linux["capabilities"]["drop"] == ["ALL"]
    assert sorted(linux["capabilities"]["add"]) == sorted(GRANTED_CAPABILITIES)
    assert container["privileged"] is False
    assert container["readonlyRootFilesystem"] is True
    assert container["dockerSecurityOptions"] == ["no-new-privileges"]
    assert linux["initProcessEnabled"] is True  # the daemon refuses to be pid 1
    assert "pidMode" not in load(TASK_DEFINITION)  # its own pid namespace, not the host's
    assert not container.get("mountPoints") and "volumes" not in load(TASK_DEFINITION)


def test_stop_timeout_covers_the_drain_and_health_asks_the_daemon() -> None:
    container = daemon_container(load(TASK_DEFINITION))
    env = environment(container)
    grace = float(env["SANDBOXD_SHUTDOWN_GRACE_S"])
    assert container["stopTimeout"] >= grace + FINAL_EVENTS_S + 10
    assert container["healthCheck"]["command"] == ["CMD", "sandboxd", "health"]
    port = int(env["SANDBOXD_LISTEN"].rsplit(":", 1)[1])
    assert [m["containerPort"] for m in container["portMappings"]] == [port]


def test_the_redis_url_comes_from_the_secret_store_not_the_environment() -> None:
    container = daemon_container(load(TASK_DEFINITION))
    assert "SANDBOXD_REDIS_URL" not in environment(container)
    assert [s["name"] for s in container["secrets"]] == ["SANDBOXD_REDIS_URL"]
