"""Pieces every rendered child shares: labels, owner references, GPU scheduling, hardening.

Children are found by label (``lepton.ai/<kind>=<name>``, plus
``lepton.ai/role``) and garbage-collected through a controller owner reference,
so these two must be rendered the same way for every kind. GPU scheduling is
the same for training workers and Triton replicas: the device plugin's
``nvidia.com/gpu`` limit, a node selector on GPU feature discovery's product
label, and a toleration for the taint GPU node pools carry.

Every pod the operator creates (workers, preparer Jobs, Triton replicas and
their init containers) is hardened by one function, :func:`harden`, so that it is
admitted where Pod Security ``restricted`` is enforced; the API's
``securityContext`` only picks the identity (see ``api.common.PodSecurity``).

Workloads that report progress while they run (the trainer's rank 0, the
preparer) serve it on ``GET /progress`` (``lepton_workloads.progress_server``);
their containers get the port in ``LEPTON_PROGRESS_PORT`` and as a container
port named :data:`PROGRESS_PORT_NAME`, which is how the operator finds what to
poll (``controllers.progress``): a pod without that port is never polled.

Pods that fetch a remote source (the dataset preparer, the model stager) get
its settings and credentials from one function, :func:`source_env`: the
environment ``lepton_workloads.sources`` reads, with every credential a
``secretKeyRef`` (the Secret's name and key, never a value). A source's CA
bundle (``caBundle``) reaches them from its sibling, :func:`source_trust`: the
ConfigMap mounted read-only and one variable naming the file.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from lepton_operator.api.common import CABundle, GPUSpec, PodSecurity, ResourceRequirements, SecretReference, Toleration
from lepton_operator.api.meta import API_VERSION

ROLE_LABEL = "lepton.ai/role"
PART_OF_LABEL = "app.kubernetes.io/part-of"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
GPU_RESOURCE = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GPU_TOLERATION: dict[str, str] = {"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}
#: The Lepton workloads image (images/workloads: preparer, trainer, model stager) that the
#: operator's own pods run unless the operator is configured with another one
#: (``LEPTON_WORKLOADS_IMAGE``, see ``controllers.config.workloads_image``).
DEFAULT_WORKLOADS_IMAGE = "lepton/workloads:0.1.0"
PROGRESS_PORT_NAME = "progress"
PROGRESS_PORT_ENV = "LEPTON_PROGRESS_PORT"
PROGRESS_PORT = 9400


def progress_port(taken: int | None = None) -> int:
    """The port of the progress endpoint: :data:`PROGRESS_PORT`, or the next one when ``taken`` is it."""
    return PROGRESS_PORT + 1 if taken == PROGRESS_PORT else PROGRESS_PORT


def progress_endpoint(port: int) -> tuple[dict[str, str], dict[str, Any]]:
    """The container's environment variable and named container port of the progress endpoint."""
    return {"name": PROGRESS_PORT_ENV, "value": str(port)}, {"name": PROGRESS_PORT_NAME, "containerPort": port}


def owner_label(kind: str) -> str:
    """The label that names a child's owner: ``lepton.ai/trainingjob`` for a TrainingJob."""
    return f"lepton.ai/{kind.lower()}"


def selector_labels(kind: str, name: str, role: str) -> dict[str, str]:
    """The labels that select one role of one object's children (stable: used in selectors)."""
    return {owner_label(kind): name, ROLE_LABEL: role}


def child_labels(kind: str, name: str, role: str) -> dict[str, str]:
    """All labels of a child: the selector labels plus the standard app.kubernetes.io ones."""
    return {**selector_labels(kind, name, role), PART_OF_LABEL: "lepton", MANAGED_BY_LABEL: "lepton-operator"}


def label_selector(labels: Mapping[str, str]) -> str:
    """``a=b,c=d`` for list calls."""
    return ",".join(f"{key}={value}" for key, value in sorted(labels.items()))


def owner_reference(kind: str, name: str, uid: str) -> dict[str, Any]:
    """A controller owner reference, so children go when their owner is deleted."""
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def claim_spec_of(size: str, access_modes: Sequence[str], storage_class: str | None) -> dict[str, Any]:
    """The spec of a PersistentVolumeClaim the operator creates (no class: the cluster's default)."""
    spec: dict[str, Any] = {"accessModes": list(access_modes), "resources": {"requests": {"storage": size}}}
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return spec


def container_resources(resources: ResourceRequirements | None, gpu: GPUSpec | None) -> dict[str, Any]:
    """A container's ``resources``: the user's requests/limits plus the GPU limit."""
    requests = dict(resources.requests or {}) if resources else {}
    limits = dict(resources.limits or {}) if resources else {}
    if gpu is not None:
        limits[GPU_RESOURCE] = gpu.count
    rendered: dict[str, Any] = {}
    if requests:
        rendered["requests"] = requests
    if limits:
        rendered["limits"] = limits
    return rendered


def node_selector(selector: Mapping[str, str] | None, gpu: GPUSpec | None) -> dict[str, str]:
    """The user's node selector plus the GPU product label when a product is asked for."""
    rendered = dict(selector or {})
    if gpu is not None and gpu.product:
        rendered[GPU_PRODUCT_LABEL] = gpu.product
    return rendered


def placement(
    selector: Mapping[str, str] | None, extra: list[Toleration] | None, gpu: GPUSpec | None
) -> dict[str, Any]:
    """A pod spec's ``nodeSelector`` and ``tolerations`` (only those that are not empty)."""
    rendered: dict[str, Any] = {}
    selected = node_selector(selector, gpu)
    if selected:
        rendered["nodeSelector"] = selected
    tolerated = tolerations(extra, gpu)
    if tolerated:
        rendered["tolerations"] = tolerated
    return rendered


def tolerations(extra: list[Toleration] | None, gpu: GPUSpec | None) -> list[dict[str, Any]]:
    """The user's tolerations plus the ``nvidia.com/gpu`` one for GPU pods (no duplicates)."""
    rendered = [toleration.to_wire() for toleration in extra or []]
    if gpu is not None and GPU_TOLERATION not in rendered:
        rendered.append(dict(GPU_TOLERATION))
    return rendered


def harden(pod_spec: Mapping[str, Any], security: PodSecurity | None) -> dict[str, Any]:
    """``pod_spec`` with the pod and every (init) container hardened for Pod Security ``restricted``.

    ``runAsUser: 0`` opts out of the non-root and capability settings (root needs a
    namespace whose policy allows it); seccomp and no privilege escalation always stay.
    """
    security = security or PodSecurity()
    pod_context: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if not security.root:
        pod_context["runAsNonRoot"] = True
    for key, value in (
        ("runAsUser", security.run_as_user),
        ("runAsGroup", security.run_as_group),
        ("fsGroup", security.fs_group),
    ):
        if value is not None:
            pod_context[key] = value
    if security.fs_group is not None:
        # A dataset volume holds many files: chown them only when the root of the volume is wrong.
        pod_context["fsGroupChangePolicy"] = "OnRootMismatch"
    container_context: dict[str, Any] = {"allowPrivilegeEscalation": False}
    if not security.root:
        container_context["capabilities"] = {"drop": ["ALL"]}
    hardened = {**pod_spec, "securityContext": pod_context}
    for key in ("initContainers", "containers"):
        if key in pod_spec:
            hardened[key] = [{**container, "securityContext": dict(container_context)} for container in pod_spec[key]]
    return hardened


#: Where a pod writes why it ended; the kubelet keeps it in the container's status.
TERMINATION_MESSAGE_PATH = "/dev/termination-log"
#: Credentials a source may need -> the environment variable ``lepton_workloads.sources`` reads.
CREDENTIAL_ENV: dict[str, str] = {
    "token": "LEPTON_SOURCE_TOKEN",
    "accessKeyId": "AWS_ACCESS_KEY_ID",
    "secretAccessKey": "AWS_SECRET_ACCESS_KEY",
    "sessionToken": "AWS_SESSION_TOKEN",
}
#: The credentials each scheme uses when ``secretRef.keys`` is unset.
SCHEME_CREDENTIALS: dict[str, tuple[str, ...]] = {
    "s3": ("accessKeyId", "secretAccessKey", "sessionToken"),
    "http": ("token",),
    "https": ("token",),
    "pvc": (),
}


def source_credentials(uri: str, ref: SecretReference | None) -> dict[str, tuple[str, bool]]:
    """credential -> (Secret key, optional): explicit keys are required, implicit ones optional."""
    if ref is None:
        return {}
    if ref.keys:
        return {credential: (key, False) for credential, key in ref.keys.items()}
    scheme = urllib.parse.urlparse(uri).scheme
    return {credential: (credential, True) for credential in SCHEME_CREDENTIALS.get(scheme, ())}


def source_env(
    uri: str, ref: SecretReference | None, endpoint: str | None = None, region: str | None = None
) -> list[dict[str, Any]]:
    """The environment of a pod that fetches ``uri``: S3 settings as values, credentials by ``secretKeyRef``."""
    plain = {"LEPTON_S3_ENDPOINT": endpoint, "AWS_REGION": region}
    env: list[dict[str, Any]] = [{"name": key, "value": value} for key, value in plain.items() if value is not None]
    for credential, (key, optional) in sorted(source_credentials(uri, ref).items()):
        variable = CREDENTIAL_ENV.get(credential, "LEPTON_SOURCE_" + credential.upper())
        selector: dict[str, Any] = {"name": ref.name if ref else "", "key": key}
        if optional:
            selector["optional"] = True
        env.append({"name": variable, "valueFrom": {"secretKeyRef": selector}})
    return env


#: The variable that names a source's CA bundle file (``lepton_workloads.source_tls`` reads it).
SOURCE_CA_FILE_ENV = "LEPTON_SOURCE_CA_FILE"
#: A source's CA bundle is mounted at ``<this>/<ConfigMap name>/``, so its path says where it came from.
SOURCE_CA_MOUNT = "/lepton/source-ca"
SOURCE_CA_FILE = "ca.crt"
SOURCE_CA_VOLUME = "source-ca"


@dataclass(frozen=True)
class SourceTrust:
    """What a fetching container needs for a source's CA bundle: its env, the pod's volumes, its mounts."""

    env: list[dict[str, Any]] = field(default_factory=list)
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)


def source_trust(bundle: CABundle | None) -> SourceTrust:
    """The CA bundle of a source, for the pod that fetches it (nothing when ``bundle`` is ``None``).

    The ConfigMap's key is mounted read-only as ``<SOURCE_CA_MOUNT>/<name>/ca.crt``
    (one item, so no other key is exposed, and the file name never depends on the
    key's spelling) and :data:`SOURCE_CA_FILE_ENV` names the file. The mount is a
    whole directory, not a ``subPath``: the kubelet refreshes it when the ConfigMap
    changes (trust-manager and OpenShift rewrite their bundles in place), so a
    retried fetch reads the current bundle.

    The workloads *add* these certificates to the image's system roots
    (``ssl.create_default_context()`` then ``load_verify_locations``); they never
    replace them, unlike ``requests``' ``verify=path`` or ``SSL_CERT_FILE``, which
    trust that file alone. Adding is what a platform team does to a node or an
    image (``update-ca-certificates``), and it makes the ConfigMaps people
    actually have behave the same: trust-manager bundles with or without
    ``useDefaultCAs`` and OpenShift's injected bundle (system roots plus the
    cluster's proxy CA) all work, where replacing would break a source behind a
    public certificate the moment a bundle without public roots is named. The
    field is for trusting a private CA, not for pinning one.
    """
    if bundle is None:
        return SourceTrust()
    ref = bundle.config_map_ref
    directory = f"{SOURCE_CA_MOUNT}/{ref.name}"
    return SourceTrust(
        env=[{"name": SOURCE_CA_FILE_ENV, "value": f"{directory}/{SOURCE_CA_FILE}"}],
        volumes=[{"name": SOURCE_CA_VOLUME,
                  "configMap": {"name": ref.name, "items": [{"key": ref.key, "path": SOURCE_CA_FILE}]}}],
        mounts=[{"name": SOURCE_CA_VOLUME, "mountPath": directory, "readOnly": True}],
    )  # fmt: skip
