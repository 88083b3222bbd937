"""The NetworkPolicy of each kind, judged by what it lets through, not by its shape.

A small evaluator (:func:`admits`, :func:`egress_admits`) reads a rendered
policy the way a NetworkPolicy implementation does (selectors, namespaces, IP
blocks, ports), and the pods it must select are the ones the other renderers
really produce, so a label that drifts between a pod and its policy fails here.
Enforcement on real pods is the e2e suite's part.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import pytest

from lepton_operator.api.dataset import LeptonDatasetSpec
from lepton_operator.api.inference import InferenceServiceSpec
from lepton_operator.api.training import TrainingJobSpec
from lepton_operator.render import activator, dataset, inference, network, training
from lepton_operator.render.network import NetworkContext
from test_render_inference import SOURCE

CONTEXT = NetworkContext()
NS = "team"
MASTER_PORT = 29500
PROGRESS = 9400  # the container port "progress" of a worker (checked below)
NCCL_PORT = 43123


@dataclass(frozen=True)
class Pod:
    namespace: str
    labels: dict[str, str] = field(default_factory=dict)
    namespace_labels: dict[str, str] = field(default_factory=dict)
    ip: str = "10.244.1.7"


OPERATOR = Pod("lepton-system", {"app.kubernetes.io/name": "lepton-operator"})
PROMETHEUS = Pod("monitoring", {"app": "prometheus"})
NEIGHBOUR = Pod(NS, {"app": "client"})
STRANGER = Pod("elsewhere", {"app": "client"})


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    if any(labels.get(key) != value for key, value in (selector.get("matchLabels") or {}).items()):
        return False
    for expression in selector.get("matchExpressions") or []:
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return True


def peer_matches(peer: dict[str, Any], pod: Pod, namespace: str) -> bool:
    assert set(peer) <= {"namespaceSelector", "podSelector", "ipBlock"}
    if "ipBlock" in peer:
        address = ipaddress.ip_address(pod.ip)
        block = peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(cidr) for cidr in block.get("except") or []
        )
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": pod.namespace, **pod.namespace_labels})
    else:
        in_namespace = pod.namespace == namespace
    return in_namespace and selects(peer.get("podSelector") or {}, pod.labels)


def port_matches(rule: dict[str, Any], port: int, protocol: str) -> bool:
    ports = rule.get("ports")
    return not ports or any(p["port"] == port and p.get("protocol", "TCP") == protocol for p in ports)


def admits(policy: dict[str, Any], source: Pod, port: int, protocol: str = "TCP") -> bool:
    """Whether ``policy`` lets ``source`` connect to a selected pod on ``port``."""
    namespace = policy["metadata"]["namespace"]
    return any(
        port_matches(rule, port, protocol) and any(peer_matches(peer, source, namespace) for peer in rule["from"])
        for rule in policy["spec"]["ingress"]
    )


def egress_admits(policy: dict[str, Any], target: Pod, port: int, protocol: str = "TCP") -> bool:
    """Whether ``policy`` lets a selected pod connect to ``target`` on ``port``."""
    if "Egress" not in policy["spec"]["policyTypes"]:
        return True
    namespace = policy["metadata"]["namespace"]
    return any(
        port_matches(rule, port, protocol) and (not rule.get("to") or any(peer_matches(p, target, namespace) for p in rule["to"]))
        for rule in policy["spec"]["egress"]
    )


def training_spec(**network_policy: Any) -> TrainingJobSpec:
    return TrainingJobSpec.model_validate({"image": "trainer:1", "masterPort": MASTER_PORT, "networkPolicy": network_policy})


def inference_spec(**network_policy: Any) -> InferenceServiceSpec:
    return InferenceServiceSpec.model_validate({"model": {"name": "resnet", "source": {"claim": {"name": "models"}}},
                                                "networkPolicy": network_policy})  # fmt: skip


def dataset_spec(**network_policy: Any) -> LeptonDatasetSpec:
    return LeptonDatasetSpec.model_validate({"source": {"uri": "https://data.example.com/a.tar"}, "modality": "image",
                                             "networkPolicy": network_policy})  # fmt: skip


def training_policy(spec: TrainingJobSpec | None = None, context: NetworkContext = CONTEXT) -> dict[str, Any]:
    policy = network.training_policy("bert", NS, "uid-1", spec or training_spec(), context)
    assert policy is not None
    return policy


def inference_policy(spec: InferenceServiceSpec | None = None) -> dict[str, Any]:
    policy = network.inference_policy("serve", NS, "uid-2", spec or inference_spec(), CONTEXT)
    assert policy is not None
    return policy


def dataset_policy(spec: LeptonDatasetSpec | None = None) -> dict[str, Any]:
    policy = network.dataset_policy("imagenet", NS, "uid-3", spec or dataset_spec(), CONTEXT)
    assert policy is not None
    return policy


def worker(job: str = "bert", index: int = 0, group: int = 0) -> Pod:
    pod = training.worker_pod(job, NS, "uid-1", training_spec(), index, 2, group)
    return Pod(NS, pod["metadata"]["labels"])


def test_training_policy_selects_every_worker_of_every_group_and_nothing_else() -> None:
    pods = training_policy()["spec"]["podSelector"]
    assert all(selects(pods, worker(index=i, group=g).labels) for i in (0, 1) for g in (0, 3))
    assert not selects(pods, worker(job="other").labels)
    assert not selects(pods, training.headless_service("bert", NS, "uid-1", training_spec())["metadata"]["labels"])


def test_training_workers_accept_their_own_job_on_every_port_and_nobody_else() -> None:
    policy = training_policy()
    for port in (MASTER_PORT, NCCL_PORT, PROGRESS):
        assert admits(policy, worker(index=1, group=3), port)
    for outsider in (worker(job="other"), NEIGHBOUR, STRANGER, PROMETHEUS):
        assert not any(admits(policy, outsider, port) for port in (MASTER_PORT, NCCL_PORT, PROGRESS))
    assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress stays open by default


def test_only_the_operator_reads_a_workers_progress_port() -> None:
    policy = training_policy()
    ports = training.worker_pod("bert", NS, "uid-1", training_spec(), 0, 1, 0)["spec"]["containers"][0]["ports"]
    assert {p["name"]: p["containerPort"] for p in ports}["progress"] == PROGRESS
    assert admits(policy, OPERATOR, PROGRESS)
    assert not admits(policy, OPERATOR, MASTER_PORT) and not admits(policy, OPERATOR, NCCL_PORT)
    assert not admits(policy, Pod("lepton-system", {"app": "other"}), PROGRESS)  # another pod of that namespace
    assert not admits(policy, Pod(NS, OPERATOR.labels), PROGRESS)  # the operator's labels in a user's namespace
    moved = training_policy(training_spec(), NetworkContext(operator_namespace="ops", operator_pod_labels={"app": "lepton"}))
    assert admits(moved, Pod("ops", {"app": "lepton"}), PROGRESS) and not admits(moved, OPERATOR, PROGRESS)
    # The trainer serves progress on the next port when the master port takes the default.
    clash = training_policy(TrainingJobSpec.model_validate({"image": "t:1", "masterPort": 9400}))
    assert admits(clash, OPERATOR, 9401) and not admits(clash, OPERATOR, 9400)


def test_allow_from_widens_training_ingress_to_every_port() -> None:
    debuggers = {"namespaceSelector": {"matchLabels": {"team": "tools"}}, "podSelector": {"matchLabels": {"app": "debugger"}}}
    spec = training_spec(allowFrom=[debuggers, {"ipBlock": {"cidr": "192.168.0.0/16", "except": ["192.168.9.0/24"]}}])
    policy = training_policy(spec)
    debugger = Pod("tools-ns", {"app": "debugger"}, {"team": "tools"})
    assert admits(policy, debugger, MASTER_PORT) and admits(policy, debugger, NCCL_PORT)
    assert not admits(policy, Pod("tools-ns", {"app": "other"}, {"team": "tools"}), MASTER_PORT)  # both selectors must match
    assert not admits(policy, Pod("tools-ns", {"app": "debugger"}), MASTER_PORT)  # a namespace without the label
    assert admits(policy, Pod("x", ip="192.168.1.5"), NCCL_PORT)
    assert not admits(policy, Pod("x", ip="192.168.9.5"), NCCL_PORT)  # the except
    assert admits(policy, worker(index=1), MASTER_PORT)  # the defaults stay


def test_inference_policy_selects_triton_and_activator_pods_of_this_service_only() -> None:
    pods = inference_policy()["spec"]["podSelector"]
    triton = inference.deployment("serve", NS, "uid-2", inference_spec(), SOURCE, 1)["spec"]["template"]["metadata"]["labels"]
    front = activator.deployment("serve", NS, "uid-2")["spec"]["template"]["metadata"]["labels"]
    other = inference.deployment("other", NS, "uid-9", inference_spec(), SOURCE, 1)["spec"]["template"]["metadata"]["labels"]
    assert selects(pods, triton) and selects(pods, front) and not selects(pods, other)


def test_inference_accepts_its_namespace_on_http_and_grpc_and_monitoring_on_metrics() -> None:
    policy = inference_policy()
    activator_pod = Pod(NS, activator.selector("serve"))  # the activator forwards to Triton
    for client in (NEIGHBOUR, activator_pod):
        assert admits(policy, client, inference.HTTP_PORT) and admits(policy, client, inference.GRPC_PORT)
        assert not admits(policy, client, inference.METRICS_PORT)
    assert not admits(policy, STRANGER, inference.GRPC_PORT) and not admits(policy, STRANGER, inference.HTTP_PORT)
    assert admits(policy, PROMETHEUS, inference.METRICS_PORT)
    assert not admits(policy, PROMETHEUS, inference.GRPC_PORT)
    assert not admits(policy, Pod("monitoring", ip="10.0.0.1"), 8003)
    assert not admits(policy, NEIGHBOUR, inference.HTTP_PORT, "UDP")
    elsewhere = network.inference_policy("serve", NS, "u", inference_spec(), NetworkContext(monitoring_namespace="obs"))
    assert elsewhere is not None
    assert admits(elsewhere, Pod("obs"), inference.METRICS_PORT) and not admits(elsewhere, PROMETHEUS, inference.METRICS_PORT)


def test_allow_from_widens_inference_http_and_grpc_but_not_metrics() -> None:
    web = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "web"}}}
    policy = inference_policy(inference_spec(allowFrom=[web]))
    frontend = Pod("web", {"app": "frontend"})
    assert admits(policy, frontend, inference.HTTP_PORT) and admits(policy, frontend, inference.GRPC_PORT)
    assert not admits(policy, frontend, inference.METRICS_PORT)
    assert not admits(policy, STRANGER, inference.GRPC_PORT) and admits(policy, NEIGHBOUR, inference.GRPC_PORT)


def test_dataset_prepare_pods_accept_only_the_operator_on_the_progress_port() -> None:
    policy = dataset_policy()
    template = dataset.prepare_job("imagenet", NS, "uid-3", dataset_spec())["spec"]["template"]
    assert selects(policy["spec"]["podSelector"], template["metadata"]["labels"])
    [port] = [p["containerPort"] for p in template["spec"]["containers"][0]["ports"]]
    assert admits(policy, OPERATOR, port) and not admits(policy, OPERATOR, 8080)
    for other in (NEIGHBOUR, STRANGER, PROMETHEUS):
        assert not admits(policy, other, port)
    widened = dataset_policy(dataset_spec(allowFrom=[{"podSelector": {"matchLabels": {"app": "client"}}}]))
    assert admits(widened, NEIGHBOUR, port) and not admits(widened, STRANGER, port)


def test_policies_are_owned_labelled_children_whose_names_never_collide() -> None:
    policies = {"TrainingJob": training_policy(), "InferenceService": inference_policy(), "LeptonDataset": dataset_policy()}
    for kind, policy in policies.items():
        metadata = policy["metadata"]
        assert (policy["apiVersion"], policy["kind"], metadata["namespace"]) == ("networking.k8s.io/v1", "NetworkPolicy", NS)
        [owner] = metadata["ownerReferences"]
        assert owner["kind"] == kind and owner["controller"] is True
        assert metadata["labels"]["lepton.ai/role"] == "network" and metadata["labels"][f"lepton.ai/{kind.lower()}"]
    assert [p["metadata"]["name"] for p in policies.values()] == ["bert-training", "serve-serving", "imagenet-prepare"]
    same = {network.policy_name(kind, "resnet") for kind in network.NAME_SUFFIXES}
    assert len(same) == 3  # a job and the service serving its model often share a name
    suffixes = ["-" + suffix for suffix in network.NAME_SUFFIXES.values()]
    assert not any(a != b and a.endswith(b) for a in suffixes for b in suffixes)  # so no two names of any objects collide


@pytest.mark.parametrize("render", [network.training_policy, network.inference_policy, network.dataset_policy])
def test_disabled_renders_no_policy(render: Any) -> None:
    spec = {network.training_policy: training_spec, network.inference_policy: inference_spec,
            network.dataset_policy: dataset_spec}[render](enabled=False)  # fmt: skip
    assert render("x", NS, "u", spec, CONTEXT) is None


def test_egress_when_set_allows_dns_own_pods_and_allow_to_only() -> None:
    store = {"ipBlock": {"cidr": "10.1.0.0/16"}, "ports": [{"port": 443}]}
    tracker = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "mlflow"}}}
    policy = training_policy(training_spec(egress={"allowTo": [store, tracker]}))
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    resolver = Pod("kube-system", {"k8s-app": "kube-dns"}, ip="10.96.0.10")
    assert egress_admits(policy, resolver, 53, "UDP") and egress_admits(policy, resolver, 53, "TCP")
    assert egress_admits(policy, worker(index=1, group=2), NCCL_PORT)
    assert egress_admits(policy, Pod("x", ip="10.1.2.3"), 443) and not egress_admits(policy, Pod("x", ip="10.1.2.3"), 80)
    assert egress_admits(policy, Pod("mlflow", {"app": "server"}), 5000)  # a peer without ports: every port
    assert not egress_admits(policy, Pod("x", ip="52.216.0.1"), 443)
    assert not egress_admits(policy, NEIGHBOUR, 80) and not egress_admits(policy, worker(job="other"), NCCL_PORT)
    triton = Pod(NS, inference.selector("serve"))
    preparer = Pod(NS, dataset.prepare_job("imagenet", NS, "uid-3", dataset_spec())["spec"]["template"]["metadata"]["labels"])
    closed = ((inference_policy(inference_spec(egress={})), triton), (dataset_policy(dataset_spec(egress={})), preparer))
    for rendered, own in closed:
        assert rendered["spec"]["policyTypes"] == ["Ingress", "Egress"]  # egress: {} is DNS and own pods only
        assert egress_admits(rendered, own, 8000) and not egress_admits(rendered, NEIGHBOUR, 8000)


def test_egress_stays_open_when_unset() -> None:
    for policy in (training_policy(), inference_policy(), dataset_policy()):
        assert "egress" not in policy["spec"] and egress_admits(policy, Pod("x", ip="52.216.0.1"), 443)
