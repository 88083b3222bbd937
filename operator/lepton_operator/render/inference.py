"""InferenceService -> its children: the model-config ConfigMap, the Triton Deployment, the Service.

Pure: spec + what the reconciler resolved (the model source, the replica count)
-> manifests. Three rules shape it:

- **The pod template depends on the model and the server only.** Replicas and
  everything under ``spec.autoscaling`` live outside the template, so scaling
  and autoscaling edits never restart a pod (the template hash, and so the
  ReplicaSet, stay the same). Model-config changes do restart pods: the
  template carries the config's digest, because Triton reads the config only
  at load. For the same reason it carries the ``resourceVersion`` of the
  Secrets Triton reads at start (API key, TLS; ``controllers.secret_versions``):
  a rotated key rolls the pods.
- **Readiness means the model is ready**, not that a port is open: the
  readiness probe is ``/v2/models/<model>/ready``; a startup probe on
  ``/v2/health/ready`` gives model loading ``modelLoadTimeoutSeconds`` before
  liveness counts. On scale-down a ``preStop`` pause lets the endpoints drop
  the pod before Triton stops accepting, then ``--exit-timeout-secs`` lets
  in-flight requests finish; the grace period covers both.
- **One config generator.** ``config.pbtxt`` is built by
  ``lepton_workloads.triton_config`` (validated by Triton's ModelConfig
  protobuf). When the spec names the tensors the operator renders the whole
  config into a ConfigMap; otherwise the init container (``stage_model``) takes
  the config exported next to the model and applies the spec's settings to it.

``spec.auth`` (an API key) and ``spec.tls`` (gRPC TLS) add Triton's own flags,
the key's ``secretKeyRef`` and the TLS Secret's volume
(``render.inference_security``); the probes stay HTTP and open.

Services that may scale to zero get an activator in their request path; its
Deployment and the Services' wiring are rendered by ``render.activator`` with
:func:`service` and :func:`child_metadata` from here.

A uri source's S3 settings and credentials reach the stager through
``common.source_env``, the preparer's environment: credentials by
``secretKeyRef`` only; its ``caBundle`` through ``common.source_trust`` (the
ConfigMap mounted read-only into the stager alone, not into Triton). The stager writes why it failed (``<Reason>: <message>``)
to its termination message; ``FallbackToLogsOnError`` keeps the log's last
lines when it could not.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lepton_workloads import triton_config

from lepton_operator.api.common import CABundle, SecretReference
from lepton_operator.api.inference import InferenceServiceSpec, ModelSpec, TensorSpec
from lepton_operator.api.training import SERVED_AS, OutputSpec
from lepton_operator.render import common
from lepton_operator.render.inference_security import container_security

KIND = "InferenceService"
ROLE = "server"
#: The init container that stages the model (``lepton_workloads.stage_model``).
STAGER = "stage-model"
HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
MODEL_REPOSITORY = "/models"
CONFIG_MOUNT = "/lepton/config"
SOURCE_MOUNT = "/lepton/source"
CONFIG_FILE = "config.pbtxt"
#: Seconds the endpoints get to drop a terminating pod before Triton stops accepting.
PRESTOP_SECONDS = 5
PROBE_PERIOD_SECONDS = 5
CONFIG_DIGEST_ANNOTATION = "lepton.ai/model-config-sha256"
#: ``name=resourceVersion,...`` of the Secrets Triton reads at start (API key, TLS): a new version rolls the pods.
SECRET_VERSIONS_ANNOTATION = "lepton.ai/secret-versions"
SCRAPE_ANNOTATIONS = {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": str(METRICS_PORT),
    "prometheus.io/path": "/metrics",
}
PVC_SCHEME = "pvc://"


@dataclass(frozen=True)
class ClaimSource:
    """The model is a directory on a claim (a claim path or a TrainingJob's export)."""

    claim: str
    path: str


@dataclass(frozen=True)
class UriSource:
    """The model is fetched from a URI by the init container, with these S3 settings, credentials and CA."""

    uri: str
    secret_ref: SecretReference | None = None
    endpoint: str | None = None
    region: str | None = None
    ca_bundle: CABundle | None = None


Source = ClaimSource | UriSource


def parse_pvc_uri(uri: str) -> ClaimSource:
    """``pvc://claim/some/path`` -> ``ClaimSource("claim", "some/path")``; ``ValueError`` otherwise."""
    if not uri.startswith(PVC_SCHEME):
        raise ValueError(f"{uri!r} is not a pvc://claim/path URI")
    claim, _, path = uri[len(PVC_SCHEME) :].partition("/")
    if not claim:
        raise ValueError(f"{uri!r} names no claim")
    return ClaimSource(claim, path.strip("/"))


class SourceUnavailable(Exception):
    """The model cannot be staged yet (``stalled``: not without a change)."""

    def __init__(self, reason: str, message: str, *, stalled: bool = False) -> None:
        super().__init__(message)
        self.reason, self.message, self.stalled = reason, message, stalled


def resolve_source(spec: InferenceServiceSpec, training_job: Mapping[str, Any] | None) -> Source:
    """Where the init container takes the model from; a TrainingJob's export once it Succeeded.

    ``training_job`` is the referenced job as read (``None``: not found).
    Raises :class:`SourceUnavailable` while there is nothing to stage, and for
    good (stalled) when the job exports a format ``model.format`` does not serve.
    """
    source = spec.model.source
    if source.claim is not None:
        return ClaimSource(source.claim.name, source.claim.path.strip("/"))
    if source.uri is not None:
        return UriSource(source.uri, source.secret_ref, source.endpoint, source.region, source.ca_bundle)
    assert source.training_job_ref is not None  # exactly one source: an API rule
    job = source.training_job_ref.name
    if training_job is None:
        raise SourceUnavailable("TrainingJobNotFound", f"TrainingJob {job!r} does not exist (yet)")
    exported = str(((training_job.get("spec") or {}).get("output") or {}).get("format") or OutputSpec().format)
    if SERVED_AS.get(exported, spec.model.format) != spec.model.format:
        raise SourceUnavailable("ModelFormatMismatch", f"TrainingJob {job!r} exports {exported}, which Triton serves as"
                                f" {SERVED_AS[exported]}; model.format is {spec.model.format}", stalled=True)  # fmt: skip
    status = training_job.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase == "Failed":
        raise SourceUnavailable("TrainingJobFailed", f"TrainingJob {job!r} failed; nothing to serve", stalled=True)
    if phase != "Succeeded":
        raise SourceUnavailable("WaitingForTrainingJob", f"TrainingJob {job!r} is {phase}; waiting for it to succeed")
    uri = (status.get("output") or {}).get("uri")
    if not uri:
        raise SourceUnavailable("NoModelExported", f"TrainingJob {job!r} succeeded without status.output.uri", stalled=True)
    try:
        return parse_pvc_uri(str(uri))
    except ValueError as error:
        raise SourceUnavailable("UnsupportedModelUri", f"TrainingJob {job!r}: {error}", stalled=True) from error


def replicas(spec: InferenceServiceSpec, current: int | None) -> int:
    """Replicas to apply: ``spec.replicas`` without autoscaling; otherwise the autoscaler's count kept in bounds.

    ``current`` is the Deployment's replica count (``None`` before it exists).
    A new autoscaled service starts with at least one replica, so it serves at once.
    """
    scaling = spec.autoscaling
    if scaling is None:
        return spec.replicas
    start = max(scaling.min_replicas, 1) if current is None else current
    return min(max(start, scaling.min_replicas), scaling.max_replicas)


def names(name: str) -> dict[str, str]:
    """Names of the children: Deployment and Service share the object's name.

    ``activator`` and ``backend`` (the Service of the Triton pods behind it) exist
    only for services that scale to zero (``render.activator``).
    """
    return {
        "deployment": name,
        "service": name,
        "configmap": f"{name}-model-config",
        "activator": f"{name}-activator",
        "backend": f"{name}-triton",
    }


def selector(name: str) -> dict[str, str]:
    """The labels that select this service's replicas (Deployment, Service, status.selector)."""
    return common.selector_labels(KIND, name, ROLE)


def _tensors(specs: list[TensorSpec]) -> tuple[triton_config.Tensor, ...]:
    return tuple(triton_config.Tensor(t.name, t.data_type, tuple(t.dims)) for t in specs)


def instance_kind(spec: InferenceServiceSpec) -> str:
    return "KIND_GPU" if spec.gpu is not None else "KIND_CPU"


def model_config(spec: InferenceServiceSpec) -> triton_config.ModelConfig | None:
    """The whole Triton config when the spec names the tensors; ``None`` when the export's config is used."""
    model = spec.model
    if not model.inputs or not model.outputs:
        return None
    batching = model.dynamic_batching
    return triton_config.ModelConfig(
        name=model.name,
        format=model.format,
        inputs=_tensors(model.inputs),
        outputs=_tensors(model.outputs),
        max_batch_size=model.max_batch_size,
        instance_count=model.instance_count,
        instance_kind=instance_kind(spec),
        dynamic_batching=batching is not None,
        preferred_batch_sizes=tuple(batching.preferred_batch_sizes or ()) if batching else (),
        max_queue_delay_microseconds=batching.max_queue_delay_microseconds if batching else 0,
    )


def config_text(spec: InferenceServiceSpec) -> str | None:
    """``config.pbtxt`` for the ConfigMap (``ValueError`` when Triton would refuse it)."""
    config = model_config(spec)
    return None if config is None else triton_config.render(config)


def child_metadata(name: str, namespace: str, uid: str, child: str, role: str = ROLE) -> dict[str, Any]:
    return {
        "name": child,
        "namespace": namespace,
        "labels": common.child_labels(KIND, name, role),
        "ownerReferences": [common.owner_reference(KIND, name, uid)],
    }


def configmap(name: str, namespace: str, uid: str, spec: InferenceServiceSpec) -> dict[str, Any]:
    """The ConfigMap the init container reads ``config.pbtxt`` from (empty when the export's is used)."""
    text = config_text(spec)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": child_metadata(name, namespace, uid, names(name)["configmap"]),
        "data": {CONFIG_FILE: text} if text is not None else {},
    }


def stager_args(model: ModelSpec, kind: str, source: Source, has_config: bool) -> list[str]:
    """Arguments of ``python -m lepton_workloads.stage_model`` (see that module)."""
    origin = SOURCE_MOUNT if isinstance(source, ClaimSource) else source.uri
    args = [
        f"--source={origin}",
        f"--model-repository={MODEL_REPOSITORY}",
        f"--name={model.name}",
        f"--format={model.format}",
        f"--max-batch-size={model.max_batch_size}",
        f"--instance-count={model.instance_count}",
        f"--instance-kind={kind}",
        f"--termination-log={common.TERMINATION_MESSAGE_PATH}",
    ]
    if model.dynamic_batching is not None:
        sizes = ",".join(str(size) for size in model.dynamic_batching.preferred_batch_sizes or ())
        args += [
            "--dynamic-batching",
            f"--preferred-batch-sizes={sizes}",
            f"--max-queue-delay-microseconds={model.dynamic_batching.max_queue_delay_microseconds}",
        ]
    if has_config:
        args.append(f"--config={CONFIG_MOUNT}/{CONFIG_FILE}")
    return args


def _http_probe(path: str, failure_threshold: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": PROBE_PERIOD_SECONDS,
        "failureThreshold": failure_threshold,
        "timeoutSeconds": 2,
    }


def pod_template(
    name: str, spec: InferenceServiceSpec, source: Source, stager_image: str, secret_versions: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The replicas' pod template: a function of model, server, resources and scheduling only, and of
    ``secret_versions`` (``name -> resourceVersion`` of the Secrets Triton reads, when it reads any)."""
    model, triton = spec.model, spec.triton
    text = config_text(spec)
    volumes: list[dict[str, Any]] = [
        {"name": "model-repository", "emptyDir": {}},
        {"name": "model-config", "configMap": {"name": names(name)["configmap"]}},
    ]
    stager_mounts = [
        {"name": "model-repository", "mountPath": MODEL_REPOSITORY},
        {"name": "model-config", "mountPath": CONFIG_MOUNT, "readOnly": True},
    ]
    if isinstance(source, ClaimSource):
        volumes.append({"name": "model-source", "persistentVolumeClaim": {"claimName": source.claim, "readOnly": True}})
        mount = {"name": "model-source", "mountPath": SOURCE_MOUNT, "readOnly": True}
        stager_mounts.append({**mount, "subPath": source.path} if source.path else mount)
    trust = common.source_trust(source.ca_bundle if isinstance(source, UriSource) else None)
    stager_mounts += trust.mounts
    volumes += trust.volumes
    security = container_security(spec)
    volumes += security.volumes
    server_args = [
        f"--model-repository={MODEL_REPOSITORY}",
        f"--exit-timeout-secs={triton.exit_timeout_seconds}",
        f"--http-port={HTTP_PORT}",
        f"--grpc-port={GRPC_PORT}",
        f"--metrics-port={METRICS_PORT}",
        "--allow-metrics=true",
        *security.args,
        *(triton.args or []),
    ]
    container: dict[str, Any] = {
        "name": "triton",
        "image": triton.image,
        "command": ["tritonserver"],
        "args": server_args,
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "startupProbe": _http_probe(
            "/v2/health/ready", math.ceil(triton.model_load_timeout_seconds / PROBE_PERIOD_SECONDS)
        ),
        "readinessProbe": _http_probe(f"/v2/models/{model.name}/ready", 2),
        "livenessProbe": _http_probe("/v2/health/live", 6),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}},
        "volumeMounts": [{"name": "model-repository", "mountPath": MODEL_REPOSITORY, "readOnly": True}, *security.mounts],
    }
    if security.env:
        container["env"] = security.env
    resources = common.container_resources(spec.resources, spec.gpu)
    if resources:
        container["resources"] = resources
    stager: dict[str, Any] = {
        "name": STAGER,
        "image": stager_image,
        "command": ["python", "-m", "lepton_workloads.stage_model"],
        "args": stager_args(model, instance_kind(spec), source, text is not None),
        "volumeMounts": stager_mounts,
        "terminationMessagePath": common.TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if isinstance(source, UriSource):
        env = common.source_env(source.uri, source.secret_ref, source.endpoint, source.region) + trust.env
        if env:
            stager["env"] = env
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": triton.exit_timeout_seconds + PRESTOP_SECONDS + 5,
        "initContainers": [stager],
        "containers": [container],
        "volumes": volumes,
    }
    pod.update(common.placement(spec.node_selector, spec.tolerations, spec.gpu))
    annotations = dict(SCRAPE_ANNOTATIONS)
    if text is not None:
        annotations[CONFIG_DIGEST_ANNOTATION] = hashlib.sha256(text.encode()).hexdigest()
    if secret_versions:
        annotations[SECRET_VERSIONS_ANNOTATION] = ",".join(f"{n}={v}" for n, v in sorted(secret_versions.items()))
    return {
        "metadata": {"labels": common.child_labels(KIND, name, ROLE), "annotations": annotations},
        "spec": common.harden(pod, spec.security_context),
    }


def deployment(
    name: str,
    namespace: str,
    uid: str,
    spec: InferenceServiceSpec,
    source: Source,
    replicas: int,
    stager_image: str = common.DEFAULT_WORKLOADS_IMAGE,
    secret_versions: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The Triton Deployment with ``replicas`` replicas (chosen by the reconciler or the autoscaler)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(name, namespace, uid, names(name)["deployment"]),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector(name)},
            # Never below the serving count while a new template rolls out.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": pod_template(name, spec, source, stager_image, secret_versions),
        },
    }


def service(name: str, namespace: str, uid: str, *, child: str | None = None, role: str = ROLE) -> dict[str, Any]:
    """A Service named ``child`` (default: the public one) in front of the ready pods of ``role``.

    The ports are the same for Triton and activator pods: HTTP, gRPC and metrics by name.
    """
    metadata = child_metadata(name, namespace, uid, child or names(name)["service"], role)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "selector": common.selector_labels(KIND, name, role),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }


def url(name: str, namespace: str, model: str) -> str:
    """In-cluster HTTP URL of the model."""
    return f"http://{name}.{namespace}.svc:{HTTP_PORT}/v2/models/{model}"
