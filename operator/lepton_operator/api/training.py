"""``TrainingJob``: a PyTorch DDP gang of worker pods, restarted as one, elastic if asked.

Shapes follow torchrun, not Kubeflow: ``WORLD_SIZE`` is the total number of
processes (replicas x nprocPerNode), elasticity is ``minReplicas:maxReplicas``
nodes, and a failure restarts the whole group. The restart policy is explicit
about *why* a pod may be retried (exit code lists, node loss) because an opaque
"OnFailure" is what produces Kubeflow's restart storms. Limits on names exist
because the job name becomes pod hostnames (63 characters).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from lepton_operator.api.common import (
    AccessModes,
    ApiModel,
    Args,
    Conditions,
    EnvVars,
    GPUSpec,
    ImageReference,
    LocalObjectReference,
    NodeSelector,
    ObjectName,
    PodSecurity,
    Resource,
    ResourceRequirements,
    Rule,
    StorageClassName,
    Tolerations,
    name_rules,
    positive_size_rule,
)
from lepton_operator.api.network import NetworkPolicySpec
from lepton_operator.api.quantity import Quantity

#: Labels of every worker pod: its index and its group generation (see render.training).
WORKER_INDEX_LABEL = "lepton.ai/worker-index"
WORKER_GROUP_LABEL = "lepton.ai/group"
#: The longest child name is worker ``index``'s hostname ``<name>-worker-<index>``, a 63-character DNS label;
#: ``-worker-1023`` (at most MAX_WORKERS workers) takes 12, and 50 leaves one spare. The headless Service is
#: named ``<name>`` too, so the name is an RFC 1035 label (a letter first).
MAX_JOB_NAME_LENGTH = 50
MAX_WORKERS = 1024
AbsolutePath = Annotated[str, StringConstraints(min_length=1, max_length=1024, pattern=r"^/\S*$")]
TrainingPhase = Literal["Pending", "Starting", "Running", "Restarting", "Succeeded", "Failed", "Suspended"]


class Entrypoint(ApiModel):
    """A Python module run under torchrun (``python -m module args...``)."""

    module: Annotated[str, StringConstraints(min_length=1, max_length=256, pattern=r"^[A-Za-z_][A-Za-z0-9_.]*$")]
    """Module to run, e.g. lepton_workloads.train."""
    args: Args | None = None
    """Arguments after the module name."""


class DatasetMount(ApiModel):
    """A LeptonDataset the job reads; the job waits for it to be Ready and mounts it read-only."""

    name: ObjectName
    """Name of the LeptonDataset in this namespace."""
    mount_path: AbsolutePath = "/data"
    """Where the shards and manifest.json appear in the workers."""


class WorkerSpec(ApiModel):
    """The worker pods: how many, how big, where."""

    replicas: int = Field(default=1, ge=1, le=MAX_WORKERS)
    """Worker pods (nodes, in torchrun's words). With elasticity, the size to start from."""
    min_replicas: int | None = Field(default=None, ge=1, le=MAX_WORKERS)
    """Elastic lower bound; the job runs with as few as this many workers."""
    max_replicas: int | None = Field(default=None, ge=1, le=MAX_WORKERS)
    """Elastic upper bound; the job grows to this many when GPUs are free."""
    nproc_per_node: int | None = Field(default=None, ge=1, le=64)
    """Processes per worker pod; defaults to gpu.count, else 1. At most gpu.count with GPUs."""
    resources: ResourceRequirements | None = None
    """CPU and memory of each worker container (GPUs go in gpu)."""
    gpu: GPUSpec | None = None
    """GPUs per worker."""
    node_selector: NodeSelector | None = None
    """Node labels each worker must match (besides the GPU product label)."""
    tolerations: Tolerations | None = None
    """Extra tolerations (the nvidia.com/gpu toleration is added for GPU jobs)."""

    __rules__ = (
        Rule(
            "!has(self.minReplicas) || !has(self.maxReplicas) || self.minReplicas <= self.maxReplicas",
            "workers.minReplicas must not exceed workers.maxReplicas",
            lambda w: w.min_replicas is None or w.max_replicas is None or w.min_replicas <= w.max_replicas,
            ".minReplicas",
        ),
        Rule(
            "(!has(self.minReplicas) || self.minReplicas <= self.replicas)"
            " && (!has(self.maxReplicas) || self.replicas <= self.maxReplicas)",
            "workers.replicas must lie within [minReplicas, maxReplicas]",
            lambda w: (w.min_replicas or w.replicas) <= w.replicas <= (w.max_replicas or w.replicas),
            ".replicas",
        ),
        Rule(
            "!has(self.nprocPerNode) || !has(self.gpu) || self.nprocPerNode <= self.gpu.count",
            "workers.nprocPerNode must not exceed workers.gpu.count (one process per GPU at most)",
            lambda w: w.nproc_per_node is None or w.gpu is None or w.nproc_per_node <= w.gpu.count,
            ".nprocPerNode",
        ),
    )

    @property
    def elastic(self) -> bool:
        """Whether the group may change size while the job runs."""
        return (self.min_replicas or self.replicas) != (self.max_replicas or self.replicas)

    @property
    def processes_per_node(self) -> int:
        """torchrun's nproc_per_node: explicit, else one per GPU, else 1."""
        if self.nproc_per_node is not None:
            return self.nproc_per_node
        return self.gpu.count if self.gpu is not None else 1


class BackoffSpec(ApiModel):
    """Exponential delay between group restarts."""

    initial_seconds: int = Field(default=10, ge=0, le=3600)
    """Delay before the first restart."""
    max_seconds: int = Field(default=300, ge=0, le=86400)
    """Cap on the delay (it doubles per restart)."""


class RestartPolicy(ApiModel):
    """When a failed group is restarted, and how often.

    Exit codes in ``retryableExitCodes`` (and pods killed by a node loss or a
    preemption) restart the whole group, each reason with its own budget of
    ``backoffLimit`` restarts; any other non-zero exit fails the job at once.
    """

    backoff_limit: int = Field(default=3, ge=0, le=1000)
    """Group restarts allowed per reason before the job is Failed."""
    retryable_exit_codes: Annotated[list[Annotated[int, Field(ge=1, le=255)]], Field(max_length=64)] = [
        130,
        137,
        143,
    ]
    """Exit codes that restart the group (default: SIGINT, SIGKILL incl. OOMKilled, SIGTERM)."""
    on_node_loss: Literal["Replace", "Fail"] = "Replace"
    """What to do when a worker's node is deleted or NotReady past the grace period."""
    node_loss_grace_seconds: int = Field(default=60, ge=0, le=3600)
    """How long a worker's node may be NotReady before its pods are replaced."""
    backoff: BackoffSpec = Field(default_factory=BackoffSpec)
    """Delay between restarts."""


class CheckpointSpec(ApiModel):
    """Where checkpoints go, so a restarted group resumes instead of starting over."""

    claim_name: ObjectName | None = None
    """An existing PVC for checkpoints."""
    size: Quantity | None = None
    """Size of a PVC the operator creates for checkpoints (deleted with the job)."""
    storage_class_name: StorageClassName | None = None
    """Storage class of the PVC the operator creates; the cluster default when unset."""
    access_modes: AccessModes = ["ReadWriteMany"]
    """Access modes of the PVC the operator creates. Every worker mounts it, so workers on several
    nodes need ReadWriteMany; on a one-node cluster (kind) ReadWriteOnce is enough."""
    path: AbsolutePath = "/checkpoints"
    """Mount path in the workers (LEPTON_CHECKPOINT_DIR)."""
    every_steps: int = Field(default=100, ge=1)
    """Checkpoint interval in optimizer steps."""

    __rules__ = (
        positive_size_rule("checkpoint", optional=True),
        Rule(
            "!(has(self.claimName) && has(self.size))",
            "checkpoint: set claimName (existing PVC) or size (new PVC), not both",
            lambda c: c.claim_name is None or c.size is None,
            ".size",
        ),
    )


class RunPolicy(ApiModel):
    """Lifecycle of the job as a whole."""

    active_deadline_seconds: int | None = Field(default=None, ge=1)
    """Fail the job if it runs longer than this."""
    ttl_seconds_after_finished: int | None = Field(default=None, ge=0)
    """Delete the job this long after it Succeeded or Failed."""
    clean_pod_policy: Literal["None", "Running", "All"] = "Running"
    """Pods deleted when the job finishes: Running ones (failed pods stay for inspection), All, or None."""
    suspend: bool = False
    """Delete the pods but keep the job; setting it back to false starts the group again."""


ExportFormat = Literal["torchscript", "onnx"]
#: The InferenceService ``model.format`` (Triton backend) that serves each export format.
SERVED_AS: dict[str, str] = {"torchscript": "pytorch_libtorch", "onnx": "onnxruntime"}


class OutputSpec(ApiModel):
    """Where the trained model is exported."""

    claim_name: ObjectName | None = None
    """PVC receiving the export; defaults to the checkpoint claim."""
    path: AbsolutePath = "/output"
    """Mount path in the workers (LEPTON_OUTPUT_DIR)."""
    format: ExportFormat = "torchscript"
    """Export format (LEPTON_OUTPUT_FORMAT): torchscript (1/model.pt) or onnx (1/model.onnx), each with a Triton config.pbtxt."""


class TrainingJobSpec(ApiModel):
    """Desired state of a TrainingJob."""

    image: ImageReference
    """Container image of the workers."""
    command: Args | None = None
    """Full command of the workers, replacing torchrun; not with entrypoint."""
    args: Args | None = None
    """Arguments to command."""
    entrypoint: Entrypoint | None = None
    """A module run as `torchrun ... -m module args`; not with command."""
    env: EnvVars | None = None
    """Extra environment variables."""
    dataset: DatasetMount | None = None
    """The LeptonDataset to train on."""
    workers: WorkerSpec = Field(default_factory=WorkerSpec)
    """Worker pods."""
    master_port: int = Field(default=29500, ge=1024, le=65535)
    """Rendezvous port on worker 0 (MASTER_PORT)."""
    restart_policy: RestartPolicy = Field(default_factory=RestartPolicy)
    """Group restarts on failure."""
    checkpoint: CheckpointSpec | None = None
    """Checkpoint storage."""
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    """Deadline, TTL, cleanup, suspend."""
    output: OutputSpec | None = None
    """Model export."""
    service_account_name: ObjectName | None = None
    """ServiceAccount of the worker pods."""
    image_pull_secrets: Annotated[list[LocalObjectReference], Field(max_length=16)] | None = None
    """Secrets for pulling the image."""
    security_context: PodSecurity | None = None
    """Identity the workers run as; they are hardened for Pod Security restricted whatever it is."""
    network_policy: NetworkPolicySpec = Field(default_factory=NetworkPolicySpec)
    """Network isolation of the workers (a NetworkPolicy the operator renders; on by default)."""

    __rules__ = (
        Rule(
            "!(has(self.command) && has(self.entrypoint))",
            "set command or entrypoint, not both",
            lambda s: s.command is None or s.entrypoint is None,
            ".entrypoint",
        ),
        Rule(
            "!has(self.args) || has(self.command)",
            "args go with command (use entrypoint.args with entrypoint)",
            lambda s: s.args is None or s.command is not None,
            ".args",
        ),
    )


class WorkerCounts(ApiModel):
    """Worker pods by state."""

    desired: int = Field(default=0, ge=0)
    """Workers the group should have now (elastic jobs: what the cluster can give)."""
    active: int = Field(default=0, ge=0)
    """Worker pods that exist and have not finished."""
    ready: int = Field(default=0, ge=0)
    """Worker pods Running and ready."""
    succeeded: int = Field(default=0, ge=0)
    """Worker pods that exited 0."""
    failed: int = Field(default=0, ge=0)
    """Worker pods that failed."""


class RestartCounts(ApiModel):
    """Group restarts so far."""

    total: int = Field(default=0, ge=0)
    """All group restarts."""
    by_reason: dict[str, int] | None = None
    """Restarts per reason (RetryableExitCode, OOMKilled, NodeLost, Preempted, Resized)."""
    last_reason: str | None = None
    """Reason of the latest group restart."""
    last_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    """When the latest group restart was decided; the new group starts after the backoff."""


class TrainingProgress(ApiModel):
    """Progress reported by the trainer."""

    step: int | None = Field(default=None, ge=0)
    """Optimizer steps done."""
    epoch: int | None = Field(default=None, ge=0)
    """Current epoch."""
    loss: float | None = None
    """Last reported training loss."""
    resumed_from: int | None = Field(default=None, ge=0)
    """The checkpoint step this group started from (0: from scratch); after a restart, where it resumed."""
    torn_checkpoints: list[str] | None = Field(default=None, max_length=8)
    """Checkpoints this group's trainer found torn (empty, truncated, failing their checksum) and skipped,
    newest first; it resumed from the one before them (``resumedFrom``). A Warning event says so once."""
    update_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    """When the trainer last reported."""


class TrainingOutput(ApiModel):
    """Where the exported model is."""

    uri: str | None = None
    """pvc://claim/path of the export (model file + config.pbtxt)."""


class TrainingJobStatus(ApiModel):
    """Observed state of a TrainingJob."""

    phase: TrainingPhase | None = None
    """Computed from the pods on every reconcile."""
    reason: str | None = None
    """Why the job is in its phase, as one CamelCase word."""
    observed_generation: int | None = Field(default=None, ge=0)
    """The metadata.generation this status describes."""
    conditions: Conditions | None = None
    """Ready, Reconciling, Stalled and job-specific conditions."""
    workers: WorkerCounts | None = None
    """Worker pods by state."""
    restarts: RestartCounts | None = None
    """Group restarts."""
    group: int | None = Field(default=None, ge=0)
    """Generation of the current worker group (label lepton.ai/group); bumped by restarts and suspends."""
    start_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    """When the group first ran."""
    completion_time: str | None = Field(default=None, json_schema_extra={"format": "date-time"})
    """When the job Succeeded or Failed."""
    progress: TrainingProgress | None = None
    """Trainer-reported progress."""
    output: TrainingOutput | None = None
    """The exported model."""


JOB_NAME_RULES = name_rules(
    "TrainingJob", MAX_JOB_NAME_LENGTH, "worker pod names derived from it are hostnames", service=True
)


class TrainingJob(Resource):
    """PyTorch DDP training across worker pods, restarted as a group, optionally elastic."""

    kind: Literal["TrainingJob"] = "TrainingJob"
    spec: TrainingJobSpec
    status: TrainingJobStatus | None = None

    __rules__ = JOB_NAME_RULES
