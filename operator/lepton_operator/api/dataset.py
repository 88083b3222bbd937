"""``LeptonDataset``: data declared once, prepared once into verified shards on a PVC.

The spec says where the data is and how to shard it; the status says how far
preparation got and what came out (integer sizes, shard count, manifest digest),
so a TrainingJob can wait for ``Ready`` and mount the claim read-only. Rules that
only make sense against the previous object (the claim may grow but not shrink,
its storage class is fixed) exist only as CEL transition rules: the operator
never sees the old object.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from lepton_operator.api.common import (
    CA_BUNDLE_RULE,
    S3_SETTINGS_RULE,
    CABundle,
    ImageReference,
    AccessModes,
    ApiModel,
    Conditions,
    NodeSelector,
    ObjectName,
    PodSecurity,
    Resource,
    ResourceRequirements,
    Rule,
    S3Endpoint,
    S3Region,
    SecretReference,
    StorageClassName,
    Tolerations,
    name_rules,
    positive_size_rule,
)
from lepton_operator.api.network import NetworkPolicySpec
from lepton_operator.api.quantity import Quantity

SOURCE_URI_PATTERN = (
    r"^(s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/\S*)?"
    r"|https?://[^\s/?#]+(/\S*)?"
    r"|pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/\S*)?)$"
)
Modality = Literal["image", "audio", "text", "tabular", "multimodal"]
DatasetPhase = Literal["Pending", "Preparing", "Ready", "Failed"]
SPLIT_TOLERANCE = 1e-6


class DataSource(ApiModel):
    """Where the raw data lives and how to authenticate."""

    uri: Annotated[str, StringConstraints(min_length=6, max_length=2048, pattern=SOURCE_URI_PATTERN)]
    """s3://bucket/prefix, https://host/path (http:// too), or pvc://claim/path in this namespace."""
    secret_ref: SecretReference | None = None
    """Credentials for the source (S3 keys, an HTTP bearer token); passed to the preparer by reference."""
    endpoint: S3Endpoint | None = None
    """S3 endpoint URL for S3-compatible stores (MinIO, Ceph, versitygw); s3:// sources only."""
    region: S3Region | None = None
    """S3 region; s3:// sources only."""
    ca_bundle: CABundle | None = None
    """CA certificates (PEM, in a ConfigMap) the preparer trusts for this source, besides the system roots.
For https:// sources and s3:// sources over https; verification is never turned off.
Preparation waits (ConfigMapNotFound, ConfigMapKeyMissing) until the ConfigMap and key exist.
A source whose certificate does not verify fails with SourceTLSError."""

    __rules__ = (S3_SETTINGS_RULE, CA_BUNDLE_RULE)


class ShardSpec(ApiModel):
    """How records are grouped into shards: by target size or by count (at most one)."""

    target_size_bytes: int | None = Field(default=None, ge=1024, le=2**40)
    """Close each shard once it holds about this many bytes. Default when neither is set: 256 MiB."""
    count: int | None = Field(default=None, ge=1, le=100000)
    """About this many shards in all: every shard holds ceil(records / count) records (each split ends in its own shard)."""

    __rules__ = (
        Rule(
            "!(has(self.targetSizeBytes) && has(self.count))",
            "set shards.targetSizeBytes or shards.count, not both",
            lambda s: s.target_size_bytes is None or s.count is None,
            ".count",
        ),
    )


class SplitSpec(ApiModel):
    """Train/validation split of the records, made once and recorded in the manifest."""

    train: float = Field(default=0.9, ge=0.0, le=1.0)
    """Fraction of records in the train split."""
    validation: float | None = Field(default=None, ge=0.0, le=1.0)
    """Fraction in the validation split. Unset: everything not in train."""
    seed: int = Field(default=0, ge=0)
    """Seed of the shuffle that assigns records to splits."""

    __rules__ = (
        Rule(
            f"!has(self.validation) || self.train + self.validation <= {1 + SPLIT_TOLERANCE}",
            "splits.train + splits.validation must not exceed 1",
            lambda s: s.validation is None or s.train + s.validation <= 1 + SPLIT_TOLERANCE,
            ".validation",
        ),
    )


class VerifySpec(ApiModel):
    """Integrity checks on the fetched data."""

    sha256: Annotated[str, StringConstraints(pattern=r"^[a-f0-9]{64}$")] | None = None
    """Expected sha256 of the source object (single-file sources); preparation fails on mismatch."""


class StorageSpec(ApiModel):
    """The PersistentVolumeClaim that holds the prepared shards."""

    size: Quantity = "10Gi"
    """Claim size; may grow later, never shrink."""
    storage_class_name: StorageClassName | None = None
    """Storage class of the claim; the cluster default when unset. Fixed after creation."""
    access_modes: AccessModes = ["ReadWriteOnce"]
    """Access modes of the claim; ReadWriteMany lets jobs on several nodes share it."""

    __rules__ = (
        positive_size_rule("storage"),
        Rule(
            "quantity(string(self.size)).compareTo(quantity(string(oldSelf.size))) >= 0",
            "storage.size may grow but not shrink (a PVC cannot shrink)",
            None,
            ".size",
        ),
        Rule(
            "has(self.storageClassName) == has(oldSelf.storageClassName)"
            " && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)",
            "storage.storageClassName is immutable",
            None,
            ".storageClassName",
        ),
    )


class PrepareSpec(ApiModel):
    """The Job that fetches, validates and shards the data."""

    image: ImageReference | None = None
    """Preparer image; the operator's configured workloads image when unset."""
    resources: ResourceRequirements | None = None
    """Resources of the preparer container."""
    node_selector: NodeSelector | None = None
    """Node labels the preparer pod must match."""
    tolerations: Tolerations | None = None
    """Tolerations of the preparer pod."""
    pod_annotations: dict[str, Annotated[str, StringConstraints(max_length=65536)]] | None = Field(
        default=None, max_length=64
    )
    """Annotations of the preparer pod (e.g. to opt out of a service mesh sidecar). Changing them never re-prepares."""
    backoff_limit: int = Field(default=3, ge=0, le=100)
    """Retries of the preparer pod before the dataset is Failed."""
    timeout_seconds: int = Field(default=3600, ge=10, le=7 * 24 * 3600)
    """Deadline for the whole preparation."""
    security_context: PodSecurity | None = None
    """Identity the preparer runs as; it is hardened for Pod Security restricted whatever it is."""


class LeptonDatasetSpec(ApiModel):
    """Desired state of a LeptonDataset."""

    source: DataSource
    """Where the raw data is."""
    modality: Modality
    """What the records are: image (files + labels), audio (wav + transcripts), text, tabular or multimodal."""
    format: Literal["webdataset"] = "webdataset"
    """Shard format written to the claim: webdataset-style tar shards."""
    shards: ShardSpec = Field(default_factory=ShardSpec)
    """How records are grouped into shards."""
    splits: SplitSpec = Field(default_factory=SplitSpec)
    """Train/validation split."""
    verify: VerifySpec | None = None
    """Integrity checks on the source."""
    storage: StorageSpec = Field(default_factory=StorageSpec)
    """The claim that holds the shards."""
    prepare: PrepareSpec = Field(default_factory=PrepareSpec)
    """The preparation Job."""
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)
    """Network isolation of the prepare pods (a NetworkPolicy the operator renders; on by default)."""


class DatasetProgress(ApiModel):
    """How far preparation has got."""

    bytes_done: int = Field(default=0, ge=0)
    """Bytes fetched and written so far."""
    bytes_total: int | None = Field(default=None, ge=0)
    """Bytes to fetch, when the source says."""


class LeptonDatasetStatus(ApiModel):
    """Observed state of a LeptonDataset."""

    phase: DatasetPhase | None = None
    """Pending, Preparing, Ready or Failed; recomputed on every reconcile."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation this status describes."""
    conditions: Conditions | None = None
    """Validated, Prepared, Ready, Reconciling, Stalled."""
    claim_name: str | None = None
    """The PVC holding the shards and manifest.json."""
    size_bytes: int | None = Field(default=None, ge=0)
    """Total bytes of the prepared shards."""
    records: int | None = Field(default=None, ge=0)
    """Number of records."""
    shards: int | None = Field(default=None, ge=0)
    """Number of shards."""
    digest: str | None = None
    """sha256 of manifest.json, e.g. sha256:ab12..."""
    progress: DatasetProgress | None = None
    """Preparation progress."""
    start_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    """When preparation started."""
    completion_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    """When preparation finished."""


#: The claim, the prepare Job and the NetworkPolicy carry the label ``lepton.ai/leptondataset=<name>``:
#: a label value, at most 63 characters. (The claim is named ``<name>``; the Job's name is cut to fit.)
MAX_DATASET_NAME_LENGTH = 63


class LeptonDataset(Resource):
    """Data declared once, prepared into verified shards on a PVC, shared read-only with jobs."""

    kind: Literal["LeptonDataset"] = "LeptonDataset"
    spec: LeptonDatasetSpec
    status: LeptonDatasetStatus | None = None

    __rules__ = name_rules(
        "LeptonDataset", MAX_DATASET_NAME_LENGTH, "its children carry the label lepton.ai/leptondataset=<name>", service=False
    )


__all__ = ["LeptonDataset", "LeptonDatasetSpec", "LeptonDatasetStatus", "ObjectName"]
