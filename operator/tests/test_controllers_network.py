"""The operator's side of network isolation: its settings at start, and what it ships (Deployment, RBAC).

How each kind's pass syncs its policy is tested with the kind's reconciler
(test_controllers_training/_dataset/_inference.py); what the policies allow,
in test_render_network.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import kopf
import pytest
import yaml

from lepton_operator.api.meta import TRAINING_JOB
from lepton_operator.api.training import TrainingJobSpec
from lepton_operator.controllers import network
from lepton_operator.controllers.wakeups import ObjectKey
from lepton_operator.controllers.config import OPERATOR_NAMESPACE_ENV, OperatorOptions
from lepton_operator.render import network as render
from lepton_operator.render.network import NetworkContext

REPO = Path(__file__).resolve().parents[2]


def documents(path: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all((REPO / path).read_text()) if doc]


def test_the_policies_take_the_operators_network_settings_at_startup(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(network, "POLICIES", network.PolicySync())
    context = NetworkContext(monitoring_namespace="obs", operator_namespace="ops", operator_pod_labels={"app": "lepton"})
    handler: Any = network.configure_policies  # kopf types the decorated function as its protocol
    asyncio.run(handler(memo=kopf.Memo(options=OperatorOptions(priority=1, network=context))))
    assert network.POLICIES.context == context


def test_the_shipped_operator_pods_are_the_ones_the_default_policies_let_read_progress() -> None:
    [deployment] = documents("manifests/base/deployment.yaml")
    template = deployment["spec"]["template"]
    assert dict(render.DEFAULT_OPERATOR_POD_LABELS).items() <= template["metadata"]["labels"].items()
    [container] = template["spec"]["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert env[OPERATOR_NAMESPACE_ENV]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}


@pytest.mark.parametrize("path", ["manifests/base/rbac.yaml", "manifests/overlays/single-namespace/rbac.yaml"])
def test_rbac_grants_exactly_the_verbs_policies_need(path: str) -> None:
    """Server-side apply is create + patch, a disabled policy is deleted, deletions by others are watched."""
    rules = [rule for doc in documents(path) for rule in doc.get("rules") or [] if "networking.k8s.io" in rule["apiGroups"]]
    assert rules == [{"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"], "verbs": ["list", "watch", "create", "patch", "delete"]}]


def test_a_policy_deleted_by_someone_else_is_applied_again_on_the_next_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    policies = network.PolicySync()
    monkeypatch.setattr(network, "POLICIES", policies)
    applied: list[str] = []
    monkeypatch.setattr(network.kube, "apply", lambda policy: applied.append(policy["metadata"]["name"]))
    woken: list[ObjectKey] = []
    monkeypatch.setattr(network.WAKEUPS, "wake", woken.append)
    spec = TrainingJobSpec.model_validate({"image": "trainer:1", "entrypoint": {"module": "train"}})
    key = ObjectKey(TRAINING_JOB.kind, "ns", "job")
    policies.sync(key, "u1", 1, spec)
    policies.sync(key, "u1", 1, spec)
    assert applied == ["job-training"]  # steady passes write nothing

    policy = render.object_policy("job", "ns", "u1", spec, policies.context)
    assert policy is not None
    handler: Any = network.restore_deleted_policy  # kopf types the decorated function as its protocol
    asyncio.run(handler(body=policy, type="MODIFIED"))
    assert woken == []
    asyncio.run(handler(body=policy, type="DELETED"))
    assert woken == [key]
    policies.sync(key, "u1", 1, spec)
    assert applied == ["job-training", "job-training"]

    policies.forget(key)  # the job's loop ended (the job deleted): its policy goes with it, nobody is woken
    asyncio.run(handler(body=policy, type="DELETED"))
    assert woken == [key]
