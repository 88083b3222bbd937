"""``networkPolicy``: how the pods of one object are isolated on the network.

The same block sits on the spec of every kind (TrainingJob, InferenceService,
LeptonDataset), and the operator renders it into one Kubernetes NetworkPolicy
per object (``render.network``). The defaults isolate: with nothing set, each
kind's pods accept only the traffic the workload needs (its own group, the
operator's progress reads, the monitoring namespace's scrapes and, for a
service, clients of its namespace). ``allowFrom`` widens ingress, ``egress``
narrows egress, ``enabled: false`` leaves the pods open.

Peers are a subset of the NetworkPolicy peer on purpose: selectors are
``matchLabels`` only (no expressions to get wrong), and ``ipBlock`` stands
alone, as the Kubernetes API requires. Every rule below is checked at admission
(schema bounds and patterns, and CEL through :class:`~lepton_operator.api.common.Rule`),
so a policy the operator renders from a valid spec is one the API server takes.
Two things are not in the CRD's schema: label *keys* (a structural schema has
no ``propertyNames``, and a CEL rule over every key of every selector costs
more than the API server's budget allows) are checked by the operator when it
parses the spec, so a bad key is a terminal ``InvalidSpec`` condition, not an
apply that fails forever; and that each ``except`` lies inside its ``cidr``
is left to the API server at apply time (CEL's CIDR functions need a newer API
server than the CRDs otherwise do).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import Field, StringConstraints, field_validator

from lepton_operator.api.common import ApiModel, Rule

#: A label value: at most 63 characters, alphanumeric at both ends, ``-_.`` inside.
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
#: A label key: an optional DNS-subdomain prefix and ``/``, then a name shaped like a label value (1-63).
LABEL_KEY = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_CIDR = rf"{_OCTET}(\.{_OCTET}){{3}}/(3[0-2]|[12]?[0-9])"
_IPV6_CIDR = r"[0-9a-fA-F:.]*:[0-9a-fA-F:.]*/(12[0-8]|1[01][0-9]|[1-9]?[0-9])"
#: An IPv4 or IPv6 CIDR such as 10.0.0.0/8 or fd00::/8.
CIDR_PATTERN = rf"^({_IPV4_CIDR}|{_IPV6_CIDR})$"
MAX_PEERS = 16
MAX_PORTS = 16

Cidr = Annotated[str, StringConstraints(min_length=3, max_length=64, pattern=CIDR_PATTERN)]
LabelValue = Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE)]
Protocol = Literal["TCP", "UDP", "SCTP"]


class LabelSelector(ApiModel):
    """Selects namespaces or pods by their labels: every label listed must match."""

    match_labels: dict[str, LabelValue] = Field(default_factory=dict, max_length=16)
    """Labels the namespace or pod must have, e.g. {team: search}.
Empty or unset: every namespace (as namespaceSelector) or every pod of the namespace (as podSelector)."""

    @field_validator("match_labels")
    @classmethod
    def _keys_are_label_keys(cls, labels: dict[str, str]) -> dict[str, str]:
        for key in labels:
            prefix, _, name = key.rpartition("/")
            if not re.match(LABEL_KEY, key) or len(name) > 63 or len(prefix) > 253:
                raise ValueError(f"{key!r} is not a label key (an optional DNS-subdomain prefix and '/', then"
                                 " 1-63 letters, digits, '-', '_' or '.', alphanumeric at both ends)")  # fmt: skip
        return labels


class IPBlock(ApiModel):
    """A range of IP addresses, for traffic from or to outside the cluster's pods."""

    cidr: Cidr
    """The range, e.g. 10.1.0.0/16 or fd00::/8."""
    except_: Annotated[list[Cidr], Field(max_length=MAX_PEERS)] | None = Field(default=None, alias="except")
    """Sub-ranges of cidr to leave out."""


PEER_RULES = (
    Rule(
        "has(self.namespaceSelector) || has(self.podSelector) || has(self.ipBlock)",
        "a peer needs namespaceSelector, podSelector or ipBlock",
        lambda p: p.namespace_selector is not None or p.pod_selector is not None or p.ip_block is not None,
    ),
    Rule(
        "!has(self.ipBlock) || (!has(self.namespaceSelector) && !has(self.podSelector))",
        "ipBlock cannot be combined with namespaceSelector or podSelector",
        lambda p: p.ip_block is None or (p.namespace_selector is None and p.pod_selector is None),
        ".ipBlock",
    ),
)
"""The rules of a peer; each model that is a peer declares them (the CRD takes a model's own rules only)."""


class NetworkPeer(ApiModel):
    """Where traffic may come from: pods by label, namespaces by label, or an IP range.

    podSelector alone: those pods of this namespace. namespaceSelector alone: every pod of those namespaces.
    Both: those pods, in those namespaces only. ipBlock stands alone.
    """

    namespace_selector: LabelSelector | None = None
    """Namespaces by label; the name of a namespace is its label kubernetes.io/metadata.name."""
    pod_selector: LabelSelector | None = None
    """Pods by label (in this namespace, or in the namespaces namespaceSelector picks)."""
    ip_block: IPBlock | None = None
    """An IP range (load balancers, nodes, clients outside the cluster)."""

    __rules__ = PEER_RULES


class NetworkPort(ApiModel):
    """A destination port."""

    port: int = Field(ge=1, le=65535)
    """Port number."""
    protocol: Protocol = "TCP"
    """TCP, UDP or SCTP."""


class EgressPeer(NetworkPeer):
    """Where the pods may connect to: a peer as in allowFrom (an ipBlock for a store outside the cluster), and on which ports."""

    ports: Annotated[list[NetworkPort], Field(max_length=MAX_PORTS)] | None = None
    """Destination ports; unset: every port."""

    __rules__ = PEER_RULES


class EgressPolicy(ApiModel):
    """Restricted egress: the pods may reach DNS (port 53, UDP and TCP), the object's own pods, and allowTo."""

    allow_to: Annotated[list[EgressPeer], Field(max_length=MAX_PEERS)] = Field(default_factory=list)
    """Destinations beyond DNS and the object's own pods: sources, model stores, checkpoint stores, trackers.
Empty: nothing else."""


class NetworkPolicySpec(ApiModel):
    """Network isolation of this object's pods, by a NetworkPolicy the operator keeps in step with this block.

    Default ingress, per kind: a TrainingJob's workers accept each other on every port, the operator
    on the progress port only; an InferenceService's Triton (and activator) pods accept this namespace's
    pods on HTTP 8000 and gRPC 8001, and the monitoring namespace on metrics 8002; a LeptonDataset's
    prepare pods accept the operator on the progress port only. Egress is open unless egress is set.
    Isolation needs a cluster whose network plugin enforces NetworkPolicies.
    """

    enabled: bool = True
    """Render the NetworkPolicy; false: none (an existing one is deleted) and the pods accept any traffic."""
    allow_from: Annotated[list[NetworkPeer], Field(max_length=MAX_PEERS)] | None = None
    """More sources allowed in, beside the defaults.
TrainingJob: to every port of its workers. InferenceService: to HTTP 8000 and gRPC 8001 (not metrics).
LeptonDataset: to its prepare pods (whose one port is the progress endpoint)."""
    egress: EgressPolicy | None = None
    """Unset: egress is open (data sources, S3 and checkpoint stores may be anywhere).
Set: the pods may reach only DNS, the object's own pods and egress.allowTo."""
