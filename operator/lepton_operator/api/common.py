"""Types shared by the three resources: the model base, conditions, refs, GPUs.

``ApiModel`` fixes the conventions once: camelCase on the wire, unknown fields
refused, and field docstrings become the descriptions ``kubectl explain`` shows.
Optional fields default to ``None`` and are left out of serialised objects, so a
field the user did not set never appears as ``null`` in a manifest we write.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, GetJsonSchemaHandler, StringConstraints, model_validator
from pydantic.alias_generators import to_camel
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from lepton_operator.api.quantity import Quantity, parse_quantity

# RFC 1123 label: the shape of names that become hostnames and label values.
DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
# RFC 1035 label: Service names (a letter first).
DNS_1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
# RFC 1123 subdomain: the shape of object names (Secrets, claims, datasets).
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

ObjectName = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)]
LabelName = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=DNS_LABEL)]
ShortText = Annotated[str, StringConstraints(max_length=1024)]


@dataclass(frozen=True)
class Rule:
    """A cross-field rule, declared once and enforced twice.

    ``cel`` goes into the CRD as an ``x-kubernetes-validations`` entry, so the
    API server refuses a breaking object at admission; ``holds`` is the same rule
    in Python, checked whenever a model is built, so the operator (and offline
    checks) refuse it too. A rule with ``holds=None`` compares an object with its
    previous version (CEL's ``oldSelf``) and exists at admission only.
    """

    cel: str
    message: str
    holds: Callable[[Any], bool] | None
    field_path: str | None = None

    def schema(self) -> dict[str, str]:
        entry = {"rule": self.cel, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        return entry


class ApiModel(BaseModel):
    """Base of every API model: camelCase aliases, no unknown fields, documented fields."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
    )

    #: Cross-field rules of this model; see :class:`Rule`.
    __rules__: ClassVar[tuple[Rule, ...]] = ()

    @classmethod
    def __get_pydantic_json_schema__(
        cls, core_schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        schema = handler(core_schema)
        rules = cls.__dict__.get("__rules__", ())
        if rules:
            handler.resolve_ref_schema(schema)["x-kubernetes-validations"] = [rule.schema() for rule in rules]
        return schema

    @model_validator(mode="after")
    def _rules_hold(self) -> Self:
        for rule in type(self).__rules__:
            if rule.holds is not None and not rule.holds(self):
                raise ValueError(rule.message)
        return self

    def to_wire(self) -> dict[str, Any]:
        """The object as the API server stores it: camelCase keys, unset fields left out."""
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class Resource(ApiModel):
    """A whole object as stored: the base of the three top-level kinds.

    Subclasses add ``kind``, ``spec`` and ``status``; their docstring becomes the
    CRD's description and their ``__rules__`` the CEL rules at the CRD's root.
    """

    api_version: Literal["lepton.ai/v1alpha1"] = "lepton.ai/v1alpha1"
    metadata: dict[str, object] = Field(default_factory=dict)


ConditionStatus = Literal["True", "False", "Unknown"]


class Condition(ApiModel):
    """A kstatus-style condition (Ready, Reconciling, Stalled and kind-specific ones)."""

    type: Annotated[str, StringConstraints(min_length=1, max_length=316)]
    """Condition type, e.g. Ready, Reconciling, Stalled, Validated."""
    status: ConditionStatus
    """True, False or Unknown."""
    reason: Annotated[str, StringConstraints(max_length=1024, pattern=r"^([A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?)?$")] = ""
    """One CamelCase word a machine can switch on."""
    message: Annotated[str, StringConstraints(max_length=32768)] = ""
    """What happened, for a person."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation this condition was computed from."""
    last_transition_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    """When the status last changed (RFC 3339)."""


Conditions = Annotated[
    list[Condition],
    Field(
        max_length=32,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    ),
]


class LocalObjectReference(ApiModel):
    """A reference to an object in the same namespace."""

    name: ObjectName
    """Name of the referenced object."""


class SecretReference(ApiModel):
    """A Secret in the same namespace, and which of its keys to use.

    The operator passes the keys to pods by reference (secretKeyRef); their
    values are never copied into any object, event or log the operator writes.
    """

    name: ObjectName
    """Name of the Secret."""
    keys: dict[str, Annotated[str, StringConstraints(min_length=1, max_length=253)]] | None = Field(
        default=None, max_length=16
    )
    """Map from the credential the source needs (e.g. accessKeyId, secretAccessKey, token)
    to the key in the Secret that holds it. Unset: the Secret's keys are used by those names."""


ConfigMapKey = Annotated[str, StringConstraints(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")]
"""A key of a ConfigMap (the API server's rule for data keys)."""


class ConfigMapKeyReference(ApiModel):
    """One key of a ConfigMap in the same namespace."""

    name: ObjectName
    """Name of the ConfigMap."""
    key: ConfigMapKey = "ca.crt"
    """Key holding the PEM bundle; ca.crt when unset (OpenShift's injected bundle uses ca-bundle.crt)."""


class CABundle(ApiModel):
    """PEM CA certificates to trust for this source, in addition to the image's system roots.

    For a source whose server certificate is signed by a private CA (a corporate
    CA, an in-cluster MinIO or Ceph gateway): the fetching pod verifies the source
    against the system roots plus these certificates, and refuses it otherwise
    (SourceTLSError); verification is never turned off. The ConfigMap is mounted
    read-only, so a bundle that trust-manager or OpenShift's CA injection updates
    reaches the next fetch. Nothing is fetched until the ConfigMap and its key
    exist (reason ConfigMapNotFound or ConfigMapKeyMissing meanwhile).
    """

    config_map_ref: ConfigMapKeyReference
    """The ConfigMap and key holding the PEM bundle."""


S3Endpoint = Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://\S+$")]
"""An S3 endpoint URL (MinIO, Ceph, versitygw, another cloud's S3 API); AWS when unset."""
S3Region = Annotated[str, StringConstraints(max_length=64)]
"""An S3 region."""
S3_SETTINGS_RULE = Rule(
    "(!has(self.endpoint) && !has(self.region)) || (has(self.uri) && self.uri.startsWith('s3://'))",
    "endpoint and region apply to s3:// sources only",
    lambda s: (s.endpoint is None and s.region is None) or (s.uri or "").startswith("s3://"),
    ".endpoint",
)
"""The rule of every source with ``uri``, ``endpoint`` and ``region`` fields (datasets, models)."""
CA_BUNDLE_RULE = Rule(
    "!has(self.caBundle) || (has(self.uri) && (self.uri.startsWith('https://') || (self.uri.startsWith('s3://')"
    " && (!has(self.endpoint) || self.endpoint.startsWith('https://')))))",
    "caBundle applies to sources fetched over TLS only: https://, or s3:// with no endpoint or an https:// one",
    lambda s: s.ca_bundle is None or over_tls(s.uri, s.endpoint),
    ".caBundle",
)
"""The rule of every source with a ``caBundle`` field: a CA is only for a source fetched over TLS."""


def over_tls(uri: str | None, endpoint: str | None) -> bool:
    """Whether a source is fetched over TLS: https://, or s3:// through AWS or an https:// endpoint."""
    uri = uri or ""
    return uri.startswith("https://") or (uri.startswith("s3://") and (endpoint is None or endpoint.startswith("https://")))


#: Resource names a container may ask for without a domain (the API server's standard container resources).
STANDARD_CONTAINER_RESOURCES = ("cpu", "memory", "ephemeral-storage")
_RESOURCE_NAMES_CEL = "k in ['cpu', 'memory', 'ephemeral-storage'] || k.startsWith('hugepages-') || k.contains('/')"
# The maps hold at most 16 entries (maxProperties), which keeps the rules' CEL cost bounded.
MAX_RESOURCES = 16


def _resource_name_ok(name: str) -> bool:
    return name in STANDARD_CONTAINER_RESOURCES or name.startswith("hugepages-") or "/" in name


def _requests_within_limits(requests: dict[str, int | str] | None, limits: dict[str, int | str] | None) -> bool:
    bounds = limits or {}
    return all(parse_quantity(value) <= parse_quantity(bounds[name]) for name, value in (requests or {}).items() if name in bounds)


class ResourceRequirements(ApiModel):
    """CPU, memory and other resources for a container, as in a Pod spec.

    The API server refuses a Pod whose request exceeds its limit (``memory:
    256Gi`` over a ``1m`` limit, anything over a limit of ``0``), a negative
    quantity, or a resource name it does not know; those rules are here too, so
    such a spec is refused at ``kubectl apply`` rather than by every Pod create
    the operator would try.
    """

    requests: dict[str, Quantity] | None = Field(default=None, max_length=MAX_RESOURCES)
    """Minimum resources the scheduler reserves (e.g. cpu: 2, memory: 8Gi)."""
    limits: dict[str, Quantity] | None = Field(default=None, max_length=MAX_RESOURCES)
    """Maximum resources the container may use."""

    __rules__ = (
        Rule(
            "!has(self.requests) || !has(self.limits) || self.requests.all(k, !(k in self.limits)"
            " || quantity(string(self.requests[k])).compareTo(quantity(string(self.limits[k]))) <= 0)",
            "resources: a request must not exceed the limit of the same resource (nothing fits under a limit of 0)",
            lambda r: _requests_within_limits(r.requests, r.limits),
            ".requests",
        ),
        Rule(
            "(!has(self.requests) || self.requests.all(k, !quantity(string(self.requests[k])).isLessThan(quantity('0'))))"
            " && (!has(self.limits) || self.limits.all(k, !quantity(string(self.limits[k])).isLessThan(quantity('0'))))",
            "resources: requests and limits must not be negative",
            lambda r: all(parse_quantity(v) >= 0 for v in [*(r.requests or {}).values(), *(r.limits or {}).values()]),
        ),
        Rule(
            f"(!has(self.requests) || self.requests.all(k, {_RESOURCE_NAMES_CEL}))"
            f" && (!has(self.limits) || self.limits.all(k, {_RESOURCE_NAMES_CEL}))",
            "resources: a resource is cpu, memory, ephemeral-storage, hugepages-<size> or a domain-qualified"
            " name such as nvidia.com/gpu",
            lambda r: all(_resource_name_ok(k) for k in [*(r.requests or {}), *(r.limits or {})]),
        ),
    )


def positive_size_rule(what: str, optional: bool = False) -> Rule:
    """``self.size`` is a quantity above zero: a claim of ``0`` (or less) is refused by the API server."""
    cel = "quantity(string(self.size)).isGreaterThan(quantity('0'))"
    return Rule(
        f"!has(self.size) || {cel}" if optional else cel,
        f"{what}.size must be greater than 0",
        lambda s: s.size is None or parse_quantity(s.size) > 0,
        ".size",
    )


def name_rules(kind: str, max_length: int, why_length: str, *, service: bool) -> tuple[Rule, Rule]:
    """The rules on ``metadata.name`` of a kind whose children are named and labelled after it.

    ``max_length`` comes from the longest child name or label value the kind
    renders (``why_length`` says which). ``service``: the name is also a
    Service's, an RFC 1035 label (a letter first); otherwise an RFC 1123 label.
    The API server only holds custom objects' names to the 253-character
    subdomain shape, so without these a child create is refused later.
    """
    pattern = DNS_1035_LABEL if service else DNS_LABEL
    shape = "start with a letter" if service else "start with a letter or digit"
    return (
        Rule(
            f"self.metadata.name.size() <= {max_length}",
            f"metadata.name: a {kind} name is at most {max_length} characters ({why_length})",
            lambda obj: len(str(obj.metadata.get("name", ""))) <= max_length,
        ),
        Rule(
            f"self.metadata.name.size() > {max_length} || self.metadata.name.matches('{pattern}')",
            f"metadata.name: a {kind} name holds only lowercase letters, digits and '-', and must {shape}"
            " and end with a letter or digit (no dots: it becomes a hostname)",
            lambda obj: len(str(obj.metadata.get("name", ""))) > max_length
            or re.fullmatch(pattern, str(obj.metadata.get("name", ""))) is not None,
        ),
    )


class Toleration(ApiModel):
    """A Pod toleration, letting pods land on nodes with a matching taint."""

    key: Annotated[str, StringConstraints(max_length=316)] | None = None
    """Taint key; empty with operator Exists matches every taint."""
    operator: Literal["Exists", "Equal"] = "Equal"
    """Exists matches any value; Equal needs value to match."""
    value: Annotated[str, StringConstraints(max_length=63)] | None = None
    """Taint value, for operator Equal."""
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: int | None = Field(default=None, ge=0)
    """For NoExecute: how long the pod stays bound after the taint appears."""

    __rules__ = (
        Rule(
            "self.operator != 'Exists' || !has(self.value) || self.value == ''",
            "a toleration with operator Exists must not set value",
            lambda t: t.operator != "Exists" or not t.value,
            ".value",
        ),
    )


GPU_PRODUCT_PATTERN = r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"


class GPUSpec(ApiModel):
    """NVIDIA GPUs per pod, through the device plugin's ``nvidia.com/gpu`` resource.

    ``count`` becomes the ``nvidia.com/gpu`` limit; ``product`` a node selector on
    the GPU feature discovery label ``nvidia.com/gpu.product``; the pods also get
    the toleration for the ``nvidia.com/gpu`` taint that GPU node pools carry.
    """

    count: int = Field(default=1, ge=1, le=16)
    """GPUs per pod."""
    product: Annotated[str, StringConstraints(max_length=63, pattern=GPU_PRODUCT_PATTERN)] | None = None
    """Value of the node label nvidia.com/gpu.product to require, e.g. NVIDIA-H100-80GB-HBM3."""


ID_MAX = 2**31 - 1


class PodSecurity(ApiModel):
    """Who a pod's processes run as.

    Every pod the operator creates is hardened the same way so that it is admitted
    in a namespace enforcing Pod Security ``restricted``: seccomp ``RuntimeDefault``,
    no privilege escalation, all capabilities dropped, and ``runAsNonRoot``. These
    fields only choose the identity. ``runAsUser: 0`` is the one explicit way to run
    as root (for images that need it, in namespaces whose policy allows it); it keeps
    seccomp but drops the non-root and capability settings.
    """

    run_as_user: int | None = Field(default=None, ge=0, le=ID_MAX)
    """UID of every container; the image's USER when unset (which must then be non-root and numeric)."""
    run_as_group: int | None = Field(default=None, ge=0, le=ID_MAX)
    """Primary GID of every container."""
    fs_group: int | None = Field(default=None, ge=0, le=ID_MAX)
    """Group that owns mounted volumes that support ownership management (most PVCs)."""

    @property
    def root(self) -> bool:
        """Whether the pod explicitly runs as root."""
        return self.run_as_user == 0


class EnvVar(ApiModel):
    """An environment variable for the main container."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")]
    """Variable name."""
    value: Annotated[str, StringConstraints(max_length=32768)] = ""
    """Variable value."""


AccessMode = Literal["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]
AccessModes = Annotated[list[AccessMode], Field(min_length=1, max_length=4)]
# The shapes below are what the API server checks on the children (a claim's class, a pod's node
# selector and image): checked here too, a bad value is refused at apply, not by the child's create.
StorageClassName = Annotated[
    str, StringConstraints(max_length=253, pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)?$")
]
"""A StorageClass name (an RFC 1123 subdomain), or "" for a claim bound to a volume without a class."""
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$"
NodeSelector = Annotated[
    dict[str, Annotated[str, StringConstraints(max_length=63, pattern=LABEL_VALUE)]], Field(max_length=32)
]
ImageReference = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^\S(.*\S)?$")]
"""A container image, with no leading or trailing whitespace (the API server refuses such a Pod)."""
Tolerations = Annotated[list[Toleration], Field(max_length=32)]
EnvVars = Annotated[list[EnvVar], Field(max_length=128)]
Args = Annotated[list[Annotated[str, StringConstraints(max_length=4096)]], Field(max_length=256)]
