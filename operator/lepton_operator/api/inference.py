"""``InferenceService``: Triton serving one model, scaled on Triton's own signals.

The model comes from exactly one source (a TrainingJob's export, a URI, or a
path on a claim). ``replicas`` is what ``kubectl scale`` and an external HPA set
through the ``/scale`` subresource; when ``autoscaling`` is present the built-in
autoscaler owns the replica count instead. Autoscaling settings live outside the
pod template on purpose: changing them must never restart a pod. Access control
(``auth``) and gRPC TLS (``tls``) are in ``api.inference_security``.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from lepton_operator.api.common import (
    CA_BUNDLE_RULE,
    S3_SETTINGS_RULE,
    ApiModel,
    CABundle,
    Args,
    Conditions,
    GPUSpec,
    ImageReference,
    LocalObjectReference,
    NodeSelector,
    ObjectName,
    PodSecurity,
    Resource,
    ResourceRequirements,
    Rule,
    S3Endpoint,
    S3Region,
    SecretReference,
    Tolerations,
    name_rules,
)
from lepton_operator.api.inference_security import AUTH_ARGS_RULE, TLS_ARGS_RULE, GrpcTLS, InferenceAuth
from lepton_operator.api.network import NetworkPolicySpec

ModelName = Annotated[str, StringConstraints(min_length=1, max_length=63, pattern=r"^[a-zA-Z0-9][-a-zA-Z0-9_.]*$")]
ModelFormat = Literal["pytorch_libtorch", "onnxruntime"]
Signal = Literal["pendingRequests", "concurrency", "queueTimeMicros", "rps"]
ServicePhase = Literal["Pending", "Progressing", "Ready", "ScaledToZero", "Failed"]
TensorType = Literal[
    "TYPE_BOOL", "TYPE_UINT8", "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64",
    "TYPE_FP16", "TYPE_FP32", "TYPE_FP64", "TYPE_BF16", "TYPE_STRING",
]  # fmt: skip
DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:25.10-py3"
#: uid and gid of the ``triton-server`` user that NGC Triton images create (their USER is root).
TRITON_UID = 1000


class ClaimPath(ApiModel):
    """A path on a PersistentVolumeClaim in this namespace."""

    name: ObjectName
    """Name of the PVC."""
    path: Annotated[str, StringConstraints(max_length=1024)] = ""
    """Directory on the claim holding the model file (and config.pbtxt, if any)."""


class ModelSource(ApiModel):
    """Where the model comes from: exactly one of trainingJobRef, uri, claim.

    A uri source is fetched by each replica's init container, the same way a
    LeptonDataset's source is (same credentials, same S3 settings).
    """

    training_job_ref: LocalObjectReference | None = None
    """A TrainingJob in this namespace; its exported model is served once it Succeeded."""
    uri: Annotated[str, StringConstraints(max_length=2048, pattern=r"^(s3|https?)://\S+$")] | None = None
    """s3:// or http(s):// URI of the model.
Ending like the model file (.pt for pytorch_libtorch, .onnx for onnxruntime): that object,
with the config.pbtxt next to it or one level up.
A .tar, .tar.gz or .tgz archive: unpacked, then read as a directory.
Anything else: a directory (an s3 prefix, an http directory index) holding the model file, e.g. a TrainingJob export."""
    secret_ref: SecretReference | None = None
    """Credentials for the uri (S3 accessKeyId, secretAccessKey, sessionToken; or an HTTP bearer token), passed by reference.
The service waits (ModelAvailable False: SecretNotFound, SecretKeyMissing) until the Secret and its keys exist."""
    endpoint: S3Endpoint | None = None
    """S3 endpoint URL for S3-compatible stores (MinIO, Ceph, versitygw); s3:// uris only."""
    region: S3Region | None = None
    """S3 region; s3:// uris only."""
    ca_bundle: CABundle | None = None
    """CA certificates (PEM, in a ConfigMap) the model stager trusts for the uri, besides the system roots.
For https:// uris and s3:// uris over https; verification is never turned off.
The service waits (ModelAvailable False: ConfigMapNotFound, ConfigMapKeyMissing) until the ConfigMap and key exist.
A uri whose certificate does not verify fails staging with SourceTLSError."""
    claim: ClaimPath | None = None
    """A directory on a PVC."""

    __rules__ = (
        Rule(
            "[has(self.trainingJobRef), has(self.uri), has(self.claim)].filter(x, x).size() == 1",
            "model.source needs exactly one of trainingJobRef, uri, claim",
            lambda s: [s.training_job_ref, s.uri, s.claim].count(None) == 2,
        ),
        Rule(
            "!has(self.secretRef) || has(self.uri)",
            "model.source.secretRef applies to uri sources only",
            lambda s: s.secret_ref is None or s.uri is not None,
            ".secretRef",
        ),
        S3_SETTINGS_RULE,
        CA_BUNDLE_RULE,
    )


class TensorSpec(ApiModel):
    """One input or output tensor of the model, as in Triton's config.pbtxt."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=128)]
    """Tensor name (TorchScript: INPUT__0, OUTPUT__0, ...)."""
    data_type: TensorType = "TYPE_FP32"
    """Triton data type."""
    dims: Annotated[list[Annotated[int, Field(ge=-1)]], Field(min_length=1, max_length=8)]
    """Shape without the batch dimension; -1 for a variable size."""


class DynamicBatching(ApiModel):
    """Triton's dynamic batcher: requests are merged into batches server-side."""

    preferred_batch_sizes: Annotated[list[Annotated[int, Field(ge=1)]], Field(max_length=16)] | None = None
    """Batch sizes the batcher aims for."""
    max_queue_delay_microseconds: int = Field(default=100, ge=0, le=10_000_000)
    """How long a request may wait for a batch to fill."""


class ModelSpec(ApiModel):
    """The model Triton serves and how Triton runs it (becomes config.pbtxt)."""

    name: ModelName
    """Model name in Triton's repository and URLs (/v2/models/<name>)."""
    source: ModelSource
    """Where the model comes from."""
    format: ModelFormat = "pytorch_libtorch"
    """Triton backend: pytorch_libtorch (TorchScript model.pt) or onnxruntime (model.onnx)."""
    max_batch_size: int = Field(default=8, ge=0, le=4096)
    """Largest batch Triton forms; 0 disables batching."""
    dynamic_batching: DynamicBatching | None = None
    """Enable Triton's dynamic batcher."""
    instance_count: int = Field(default=1, ge=1, le=64)
    """Model instances per replica (Triton instance_group count)."""
    inputs: Annotated[list[TensorSpec], Field(max_length=32)] | None = None
    """Input tensors; taken from the exported config.pbtxt when unset."""
    outputs: Annotated[list[TensorSpec], Field(max_length=32)] | None = None
    """Output tensors; taken from the exported config.pbtxt when unset."""

    __rules__ = (
        Rule(
            "!has(self.dynamicBatching) || self.maxBatchSize > 0",
            "model.dynamicBatching needs model.maxBatchSize > 0",
            lambda m: m.dynamic_batching is None or m.max_batch_size > 0,
            ".maxBatchSize",
        ),
    )


class TritonSpec(ApiModel):
    """The Triton Inference Server container."""

    image: ImageReference = DEFAULT_TRITON_IMAGE
    """Triton image (NGC tritonserver)."""
    args: Args | None = None
    """Extra tritonserver arguments."""
    exit_timeout_seconds: int = Field(default=30, ge=0, le=3600)
    """tritonserver --exit-timeout-secs: time to finish in-flight requests on shutdown."""
    model_load_timeout_seconds: int = Field(default=600, ge=10, le=86400)
    """How long the startup probe waits for the model to load."""


class PrometheusSource(ApiModel):
    """Where the autoscaler reads Triton's metrics."""

    url: Annotated[str, StringConstraints(max_length=2048, pattern=r"^https?://\S+$")]
    """Prometheus base URL, e.g. http://prometheus.monitoring:9090."""


class AutoscalingSpec(ApiModel):
    """The built-in autoscaler. Present means on; replicas is then ignored."""

    min_replicas: int = Field(default=1, ge=0, le=1000)
    """Fewest replicas; 0 allows scale to zero (with scaleToZeroAfterSeconds)."""
    max_replicas: int = Field(ge=1, le=1000)
    """Most replicas."""
    signal: Signal = "pendingRequests"
    """Triton signal: pendingRequests per replica, concurrency (Little's law) per replica,
    queueTimeMicros per request, or rps per replica."""
    target: float = Field(gt=0)
    """Target value of the signal per replica."""
    window_seconds: int = Field(default=30, ge=5, le=600)
    """Rate window for counter-based signals."""
    scale_up_stabilization_seconds: int = Field(default=0, ge=0, le=3600)
    """Scale up to the lowest recommendation over this window (0: at once)."""
    scale_down_stabilization_seconds: int = Field(default=300, ge=0, le=3600)
    """Scale down to the highest recommendation over this window."""
    scale_to_zero_after_seconds: int | None = Field(default=None, ge=1, le=86400)
    """Idle time (no requests) before going to zero replicas; needs minReplicas 0."""
    prometheus: PrometheusSource | None = None
    """Prometheus to query; the operator's default when unset."""

    __rules__ = (
        Rule(
            "self.minReplicas <= self.maxReplicas",
            "autoscaling.minReplicas must not exceed autoscaling.maxReplicas",
            lambda a: a.min_replicas <= a.max_replicas,
            ".minReplicas",
        ),
        Rule(
            "!has(self.scaleToZeroAfterSeconds) || self.minReplicas == 0",
            "autoscaling.scaleToZeroAfterSeconds needs autoscaling.minReplicas 0",
            lambda a: a.scale_to_zero_after_seconds is None or a.min_replicas == 0,
            ".scaleToZeroAfterSeconds",
        ),
    )


class InferenceServiceSpec(ApiModel):
    """Desired state of an InferenceService."""

    model: ModelSpec
    """The model and its Triton configuration."""
    triton: TritonSpec = Field(default_factory=TritonSpec)
    """The Triton server container."""
    replicas: int = Field(default=1, ge=0, le=1000)
    """Replicas when autoscaling is off (the /scale subresource sets this)."""
    resources: ResourceRequirements | None = None
    """CPU and memory of the Triton container (GPUs go in gpu)."""
    gpu: GPUSpec | None = None
    """GPUs per replica."""
    node_selector: NodeSelector | None = None
    """Node labels each replica must match."""
    tolerations: Tolerations | None = None
    """Extra tolerations."""
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)
    """Network isolation of the Triton and activator pods (a NetworkPolicy the operator renders; on by default)."""
    security_context: PodSecurity = Field(
        default_factory=lambda: PodSecurity(run_as_user=TRITON_UID, run_as_group=TRITON_UID)
    )
    """Identity of the replicas (default: the triton-server user of NGC Triton images); hardened for Pod Security restricted."""
    autoscaling: AutoscalingSpec | None = None
    """Built-in autoscaling on Triton's signals."""
    auth: InferenceAuth | None = None
    """Require an API key, sent in a header, for inference, metadata and every management API.
Health and readiness (/v2/health/live, /v2/health/ready, /v2/models/<model>/ready) stay open for the probes.
Triton enforces it: without the key HTTP answers 403, gRPC UNAVAILABLE. Metrics (port 8002) are not covered.
Unset: anyone who reaches the Service may call the model."""
    tls: GrpcTLS | None = None
    """TLS (optionally mutual) on the gRPC endpoint (port 8001), from a kubernetes.io/tls Secret (as cert-manager writes it).
The certificate must name the address clients dial (e.g. <name>.<namespace>.svc); Triton reads it at start, so a renewed one is served once the pods restart.
Triton's HTTP endpoint (8000) has no TLS: put a TLS-terminating ingress, gateway or mesh in front of it."""

    __rules__ = (AUTH_ARGS_RULE, TLS_ARGS_RULE)


class ScaleDecision(ApiModel):
    """One decision of the autoscaler."""

    from_replicas: int = Field(ge=0, alias="from")
    """Replicas before."""
    to_replicas: int = Field(ge=0, alias="to")
    """Replicas after."""
    reason: str
    """Why, e.g. AboveTarget, BelowTarget, Idle, PendingDemand, Hold."""


class AutoscalingStatus(ApiModel):
    """What the autoscaler saw and did last."""

    signal: Signal | None = None
    """The signal in use."""
    value: float | None = None
    """Its last value per replica (absent when unknown)."""
    target: float | None = None
    """The target per replica."""
    last_scale_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    """When the replica count last changed."""
    last_decision: ScaleDecision | None = None
    """The last decision."""


class InferenceServiceStatus(ApiModel):
    """Observed state of an InferenceService."""

    phase: ServicePhase | None = None
    """Pending, Progressing, Ready, ScaledToZero or Failed."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation this status describes."""
    conditions: Conditions | None = None
    """Ready, Reconciling, Stalled and service-specific conditions."""
    replicas: int | None = Field(default=None, ge=0)
    """Replicas that exist (the /scale subresource reads this)."""
    ready_replicas: int | None = Field(default=None, ge=0)
    """Replicas whose model is ready."""
    desired_replicas: int | None = Field(default=None, ge=0)
    """Replicas wanted now."""
    selector: str | None = None
    """Label selector of the replicas (for the /scale subresource and HPA)."""
    url: str | None = None
    """In-cluster HTTP URL of the model, e.g. http://name.ns.svc:8000/v2/models/<model>."""
    autoscaling: AutoscalingStatus | None = None
    """The autoscaler's view."""


#: The Service ``<name>`` and the label ``lepton.ai/inferenceservice=<name>`` of every child: an RFC 1035
#: label (a letter first), at most 63 characters. (The ConfigMap ``<name>-model-config``, Deployment
#: ``<name>-activator`` and NetworkPolicy ``<name>-serving`` are object names, 253 characters.)
MAX_SERVICE_NAME_LENGTH = 63
#: A scale-to-zero service's Triton pods are behind Service ``<name>-triton`` (a 63-character DNS label).
MAX_SCALE_TO_ZERO_NAME_LENGTH = 63 - len("-triton")


def _fits_behind_an_activator(service: InferenceService) -> bool:
    scaling = service.spec.autoscaling
    return scaling is None or scaling.min_replicas > 0 or len(str(service.metadata.get("name", ""))) <= MAX_SCALE_TO_ZERO_NAME_LENGTH


class InferenceService(Resource):
    """Triton Inference Server serving one model, scaled by Lepton on Triton's signals."""

    kind: Literal["InferenceService"] = "InferenceService"
    spec: InferenceServiceSpec
    status: InferenceServiceStatus | None = None

    __rules__ = (
        *name_rules(
            "InferenceService", MAX_SERVICE_NAME_LENGTH, "it names a Service and is the value of a label", service=True
        ),
        Rule(
            "!has(self.spec.autoscaling) || self.spec.autoscaling.minReplicas > 0"
            f" || self.metadata.name.size() <= {MAX_SCALE_TO_ZERO_NAME_LENGTH}",
            f"metadata.name: an InferenceService with autoscaling.minReplicas 0 has a name of at most"
            f" {MAX_SCALE_TO_ZERO_NAME_LENGTH} characters (its Triton pods are behind Service <name>-triton)",
            _fits_behind_an_activator,
        ),
    )
