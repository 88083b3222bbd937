"""One NetworkPolicy per object, isolating its pods: pure functions of spec and the operator's configuration.

Each kind's pods get ingress only from what the workload needs; ``allowFrom``
widens the client-facing part, ``egress`` (when set) narrows egress, and
``enabled: false`` renders nothing (the controller then deletes the policy).
What comes from the operator's configuration rather than the spec, the
monitoring namespace and where the operator's own pods run, is one frozen
:class:`NetworkContext`.

======================  ======================================================================
pods                    ingress allowed
======================  ======================================================================
TrainingJob workers     the job's own workers, every port (torchrun rendezvous, c10d, gloo,
                        NCCL pick ports at run time); ``allowFrom`` peers, every port; the
                        operator's pods on the progress port (it polls rank 0's ``/progress``).
                        Workers serve no metrics port (the trainer exports none; the operator
                        publishes training metrics itself), so there is no monitoring rule.
InferenceService        Triton and activator pods: every pod of the namespace and ``allowFrom``
                        peers on HTTP 8000 and gRPC 8001 (the activator reaches Triton this way
                        too); the monitoring namespace on metrics 8002 (Triton's and the
                        activator's). The autoscaler reads Prometheus, never the pods.
LeptonDataset prepare   the operator's pods on the progress port, the one port the preparer
                        serves (the operator polls it for ``status.progress``); ``allowFrom``
                        peers. Nothing else.
======================  ======================================================================

With ``egress`` set the policy also has policyType Egress: DNS (port 53, UDP
and TCP, to any address: cluster DNS may be a Service, a node-local cache or an
external resolver), the object's own pods, and each ``allowTo`` peer on its
ports. Unset, egress is open: data sources, S3 and checkpoint stores live
anywhere. Kubelet probes come from the node, which NetworkPolicy always allows.

Policies are named ``<object>-<suffix>`` with a suffix per kind
(:data:`NAME_SUFFIXES`), not after the object alone: a TrainingJob and the
InferenceService serving its model are often given the same name in one
namespace, and no suffix ends another, so no two objects' policies collide.
They are owned and labelled like every other child (``common.child_labels``,
role :data:`ROLE`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lepton_operator.api.dataset import LeptonDatasetSpec
from lepton_operator.api.inference import InferenceServiceSpec
from lepton_operator.api.meta import INFERENCE_SERVICE, LEPTON_DATASET, TRAINING_JOB
from lepton_operator.api.network import EgressPolicy, NetworkPeer, NetworkPolicySpec
from lepton_operator.api.training import TrainingJobSpec
from lepton_operator.render import common
from lepton_operator.render.activator import ROLE_ACTIVATOR
from lepton_operator.render.dataset import PREPARE_ROLE
from lepton_operator.render.inference import GRPC_PORT, HTTP_PORT, METRICS_PORT
from lepton_operator.render.inference import ROLE as SERVER_ROLE
from lepton_operator.render.training import worker_selector

API_GROUP, VERSION, PLURAL = "networking.k8s.io", "v1", "networkpolicies"
API_VERSION = f"{API_GROUP}/{VERSION}"
KIND = "NetworkPolicy"
ROLE = "network"
#: The label every namespace carries with its own name (set by the API server).
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"
DNS_PORT = 53
DEFAULT_MONITORING_NAMESPACE = "monitoring"
DEFAULT_OPERATOR_NAMESPACE = "lepton-system"
#: The labels of the operator's pods in manifests/base/deployment.yaml.
DEFAULT_OPERATOR_POD_LABELS: Mapping[str, str] = {"app.kubernetes.io/name": "lepton-operator"}
#: The spec of any kind (each has a networkPolicy).
Spec = TrainingJobSpec | InferenceServiceSpec | LeptonDatasetSpec
NAME_SUFFIXES: Mapping[str, str] = {
    TRAINING_JOB.kind: "training",
    INFERENCE_SERVICE.kind: "serving",
    LEPTON_DATASET.kind: "prepare",
}


@dataclass(frozen=True)
class NetworkContext:
    """What the policies take from the operator's configuration rather than from a spec."""

    monitoring_namespace: str = DEFAULT_MONITORING_NAMESPACE
    """The namespace whose pods (Prometheus) may scrape metrics ports."""
    operator_namespace: str = DEFAULT_OPERATOR_NAMESPACE
    """The namespace the operator runs in."""
    operator_pod_labels: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_OPERATOR_POD_LABELS))
    """Labels of the operator's pods, which poll the progress ports."""

    def operator_peer(self) -> dict[str, Any]:
        """The operator's pods, in the operator's namespace."""
        return {**_namespace_peer(self.operator_namespace), "podSelector": {"matchLabels": dict(self.operator_pod_labels)}}

    def monitoring_peer(self) -> dict[str, Any]:
        """Every pod of the monitoring namespace."""
        return _namespace_peer(self.monitoring_namespace)


def parse_labels(text: str) -> dict[str, str]:
    """``key=value,key=value`` (how the operator's pod labels are configured) -> a dict; ``ValueError`` if malformed."""
    labels: dict[str, str] = {}
    for item in text.split(","):
        key, equals, value = item.strip().partition("=")
        if not key or not equals:
            raise ValueError(f"{item.strip()!r} is not key=value")
        labels[key] = value
    return labels


def _namespace_peer(namespace: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}}}


def policy_name(kind: str, name: str) -> str:
    """The NetworkPolicy of object ``name`` of ``kind``: ``<name>-<suffix of the kind>``."""
    return f"{name}-{NAME_SUFFIXES[kind]}"


def peer(spec: NetworkPeer) -> dict[str, Any]:
    """A spec's peer as a NetworkPolicy peer (its ports, for an egress peer, go into the rule)."""
    selected = {"namespace_selector", "pod_selector", "ip_block"}
    return spec.model_dump(by_alias=True, exclude_none=True, mode="json", include=selected)


def tcp(*ports: int) -> list[dict[str, Any]]:
    """NetworkPolicy ports: these, over TCP."""
    return [{"port": port, "protocol": "TCP"} for port in ports]


def egress_rules(own_pods: Mapping[str, Any], egress: EgressPolicy) -> list[dict[str, Any]]:
    """Restricted egress: DNS anywhere, the object's own pods on every port, and each ``allowTo`` peer."""
    rules: list[dict[str, Any]] = [
        {"ports": [{"port": DNS_PORT, "protocol": "UDP"}, {"port": DNS_PORT, "protocol": "TCP"}]},
        {"to": [{"podSelector": dict(own_pods)}]},
    ]
    for target in egress.allow_to:
        rule: dict[str, Any] = {"to": [peer(target)]}
        if target.ports:
            rule["ports"] = [port.to_wire() for port in target.ports]
        rules.append(rule)
    return rules


def network_policy(kind: str, name: str, namespace: str, uid: str, pods: Mapping[str, Any],
                   ingress: list[dict[str, Any]], settings: NetworkPolicySpec) -> dict[str, Any] | None:  # fmt: skip
    """The policy selecting ``pods`` (a label selector) with these ingress rules; ``None`` when disabled."""
    if not settings.enabled:
        return None
    spec: dict[str, Any] = {"podSelector": dict(pods), "policyTypes": ["Ingress"], "ingress": ingress}
    if settings.egress is not None:
        spec["policyTypes"].append("Egress")
        spec["egress"] = egress_rules(pods, settings.egress)
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": policy_name(kind, name),
            "namespace": namespace,
            "labels": common.child_labels(kind, name, ROLE),
            "ownerReferences": [common.owner_reference(kind, name, uid)],
        },
        "spec": spec,
    }


def _allowed(settings: NetworkPolicySpec) -> list[dict[str, Any]]:
    return [peer(source) for source in settings.allow_from or []]


def training_policy(job: str, namespace: str, uid: str, spec: TrainingJobSpec, context: NetworkContext) -> dict[str, Any] | None:
    """The workers of a TrainingJob: each other and ``allowFrom`` on every port, the operator on progress."""
    workers = {"matchLabels": worker_selector(job)}
    ingress = [
        {"from": [{"podSelector": workers}, *_allowed(spec.network_policy)]},
        {"from": [context.operator_peer()], "ports": tcp(common.progress_port(spec.master_port))},
    ]
    return network_policy(TRAINING_JOB.kind, job, namespace, uid, workers, ingress, spec.network_policy)


def inference_policy(name: str, namespace: str, uid: str, spec: InferenceServiceSpec,
                     context: NetworkContext) -> dict[str, Any] | None:  # fmt: skip
    """Triton and activator pods: the namespace and ``allowFrom`` on HTTP and gRPC, monitoring on metrics."""
    servers = {
        "matchLabels": {common.owner_label(INFERENCE_SERVICE.kind): name},
        "matchExpressions": [{"key": common.ROLE_LABEL, "operator": "In", "values": [SERVER_ROLE, ROLE_ACTIVATOR]}],
    }
    ingress = [
        {"from": [{"podSelector": {}}, *_allowed(spec.network_policy)], "ports": tcp(HTTP_PORT, GRPC_PORT)},
        {"from": [context.monitoring_peer()], "ports": tcp(METRICS_PORT)},
    ]
    return network_policy(INFERENCE_SERVICE.kind, name, namespace, uid, servers, ingress, spec.network_policy)


def dataset_policy(name: str, namespace: str, uid: str, spec: LeptonDatasetSpec,
                   context: NetworkContext) -> dict[str, Any] | None:  # fmt: skip
    """The prepare pods: the operator on the progress port (the one port they serve), ``allowFrom`` peers."""
    preparers = {"matchLabels": common.selector_labels(LEPTON_DATASET.kind, name, PREPARE_ROLE)}
    ingress = [{"from": [context.operator_peer()], "ports": tcp(common.progress_port())}]
    allowed = _allowed(spec.network_policy)
    if allowed:
        ingress.append({"from": allowed})
    return network_policy(LEPTON_DATASET.kind, name, namespace, uid, preparers, ingress, spec.network_policy)


def object_policy(name: str, namespace: str, uid: str, spec: Spec, context: NetworkContext) -> dict[str, Any] | None:
    """The policy of an object of any kind, by the type of its spec."""
    if isinstance(spec, TrainingJobSpec):
        return training_policy(name, namespace, uid, spec, context)
    if isinstance(spec, InferenceServiceSpec):
        return inference_policy(name, namespace, uid, spec, context)
    return dataset_policy(name, namespace, uid, spec, context)
