"""The activator of scale-to-zero InferenceServices: only for them, in front once ready, restricted, the CLI's command line."""

from __future__ import annotations

from typing import Any

import pytest

import restricted_policy

from lepton_operator.activator import SHUTDOWN_SECONDS
from lepton_operator.api.inference import InferenceServiceSpec
from lepton_operator.render import activator, inference
from test_render_inference import BASE, SOURCE


def spec(**overrides: Any) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate({**BASE, **overrides})


def deployment(parsed: InferenceServiceSpec) -> dict[str, Any]:
    return inference.deployment("serve", "ns", "uid-1", parsed, SOURCE, 1)


SCALE_TO_ZERO = {"minReplicas": 0, "maxReplicas": 3, "target": 2, "scaleToZeroAfterSeconds": 60}


@pytest.mark.parametrize(
    "overrides",
    [{}, {"autoscaling": {"minReplicas": 1, "maxReplicas": 3, "target": 2}}],
    ids=["no-autoscaling", "min-1"],
)
def test_services_that_cannot_scale_to_zero_have_no_activator_and_no_extra_hop(overrides: dict[str, Any]) -> None:
    parsed = spec(**overrides)
    assert not activator.scale_to_zero(parsed)
    for ready in (False, True):
        assert activator.services("serve", "ns", "uid-1", parsed, activator_ready=ready) == [
            inference.service("serve", "ns", "uid-1")
        ]
    # What a switch away from minReplicas 0 deletes.
    assert activator.obsolete("serve", parsed) == [("apps/v1", "Deployment", "serve-activator"), ("v1", "Service", "serve-triton")]


def test_scale_to_zero_services_put_the_activator_in_front_once_it_is_ready() -> None:
    parsed = spec(autoscaling=SCALE_TO_ZERO)
    assert activator.scale_to_zero(parsed) and activator.obsolete("serve", parsed) == []
    backend, public = activator.services("serve", "ns", "uid-1", parsed, activator_ready=True)
    assert backend["metadata"]["name"] == "serve-triton" and backend["spec"]["selector"] == inference.selector("serve")
    assert public["metadata"]["name"] == "serve" and public["spec"]["selector"] == activator.selector("serve")
    assert backend["spec"]["ports"] == public["spec"]["ports"] == inference.service("serve", "ns", "uid-1")["spec"]["ports"]
    # The activator still starting: the public Service keeps pointing at Triton, never at no endpoints.
    _, starting = activator.services("serve", "ns", "uid-1", parsed, activator_ready=False)
    assert starting["spec"]["selector"] == inference.selector("serve")
    # The Triton replicas themselves are the same either way.
    assert deployment(parsed)["spec"]["template"] == deployment(spec())["spec"]["template"]


def test_the_activator_forwards_to_the_triton_service_from_the_operator_image() -> None:
    from lepton_operator.cli import build_parser  # noqa: PLC0415

    rendered = activator.deployment("serve", "ns", "uid-1", "localhost/lepton-operator:test")
    assert rendered["metadata"]["name"] == "serve-activator"
    assert rendered["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    template = rendered["spec"]["template"]
    assert rendered["spec"]["selector"]["matchLabels"] == activator.selector("serve")
    assert template["metadata"]["labels"]["lepton.ai/role"] == "activator"
    assert template["metadata"]["labels"]["lepton.ai/inferenceservice"] == "serve"  # the scrape's service label
    assert template["metadata"]["annotations"] == inference.SCRAPE_ANNOTATIONS
    [container] = template["spec"]["containers"]
    assert container["image"] == "localhost/lepton-operator:test"
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    # The entry point takes exactly the rendered command line.
    assert container["command"][0] == "lepton-operator"
    args = build_parser().parse_args([*container["command"][1:], *container["args"]])
    assert args.backend == "http://serve-triton.ns.svc:8000" and args.grpc_backend == "serve-triton.ns.svc:8001"
    assert (args.port, args.grpc_port, args.metrics_port) == (8000, 8001, 8002)
    assert args.hold_timeout_seconds == activator.HOLD_TIMEOUT_SECONDS
    assert args.max_held_requests == activator.MAX_HELD_REQUESTS


def test_the_activator_passes_pod_security_restricted_without_api_access() -> None:
    pod = activator.deployment("serve", "ns", "uid-1")["spec"]["template"]["spec"]
    assert restricted_policy.violations(pod) == []
    assert pod["automountServiceAccountToken"] is False  # it needs no RBAC
    assert pod["securityContext"]["runAsUser"] == activator.UID
    assert pod["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True
    assert "nodeSelector" not in pod and "tolerations" not in pod  # never on the GPU nodes Triton needs
    prestop = int(pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > prestop + SHUTDOWN_SECONDS  # in-flight requests finish
