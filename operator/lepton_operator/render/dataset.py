"""A LeptonDataset's children, as pure functions: its claim and its prepare Job.

* The PersistentVolumeClaim is named after the dataset (so a TrainingJob finds
  it by the dataset's name alone) and holds the shards and ``manifest.json``.
* The prepare Job runs ``python -m lepton_workloads.prepare`` with the claim
  mounted read-write at :data:`DATA_MOUNT`, a ``pvc://`` source claim mounted
  read-only at :data:`SOURCE_MOUNT`, and the spec passed as environment
  variables (the preparer's documented contract). Source settings and
  credentials come from ``common.source_env``, shared with the model stager:
  the Job spec names the Secret's keys (``secretKeyRef``), never values; a
  ``caBundle`` ConfigMap is mounted read-only by ``common.source_trust``. The
  preparer's result document reaches the operator as the container's
  termination message (``terminationMessagePath``), so the operator needs no
  pod log or exec access. While it runs, the preparer serves its progress on
  the container port ``progress`` (``LEPTON_PROGRESS_PORT``), which the
  operator polls for ``status.progress``.

What defines the *data* (source, modality, format, shards, splits, verify) is
hashed (:func:`data_hash`); the hash is in the Job's name and labels, so a
change that alters the data makes a new Job (a new preparation), while edits to
storage, resources or annotations do not. Job templates are immutable, so the
controller creates the Job of the current hash when it is missing and leaves an
existing one alone. Exit code 3 from the preparer means "no retry can fix this"
(bad data, checksum mismatch) and fails the Job at once via podFailurePolicy.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from typing import Any

from lepton_operator.api.dataset import LeptonDatasetSpec
from lepton_operator.api.meta import LEPTON_DATASET
from lepton_operator.api.quantity import parse_quantity
from lepton_operator.render.common import (
    DEFAULT_WORKLOADS_IMAGE,
    TERMINATION_MESSAGE_PATH,
    child_labels,
    claim_spec_of,
    container_resources,
    harden,
    owner_reference,
    placement,
    progress_endpoint,
    progress_port,
    source_credentials,
    source_env,
    source_trust,
)

PREPARE_ROLE = "prepare"
CONTAINER = "prepare"
DATA_MOUNT = "/data"
SOURCE_MOUNT = "/mnt/source"
SPEC_HASH_LABEL = "lepton.ai/spec-hash"
#: The preparer's exit code for failures a retry cannot fix (see lepton_workloads.prepare).
EXIT_PERMANENT = 3
HASH_LENGTH = 16
MAX_NAME = 63  # Job names become pod label values (job-name), which are at most 63 characters


def data_hash(spec: LeptonDatasetSpec) -> str:
    """A short hash of the fields that define the prepared data (nothing else)."""
    data = spec.model_dump(
        by_alias=True, exclude_none=True, mode="json", include={"source", "modality", "format", "shards", "splits", "verify"}
    )
    text = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LENGTH]


def claim_name(name: str) -> str:
    """The dataset's claim is named after the dataset."""
    return name


def job_name(name: str, spec: LeptonDatasetSpec) -> str:
    """``<dataset>-prepare-<hash>``, the dataset part cut so the whole fits 63 characters."""
    suffix = f"-{PREPARE_ROLE}-{data_hash(spec)}"
    return name[: MAX_NAME - len(suffix)].rstrip("-.") + suffix


def source_claim(uri: str) -> str | None:
    """The claim of a ``pvc://claim/path`` source."""
    parsed = urllib.parse.urlparse(uri)
    return parsed.netloc if parsed.scheme == "pvc" else None


def credentials(spec: LeptonDatasetSpec) -> dict[str, tuple[str, bool]]:
    """credential -> (Secret key, optional) of the dataset's source (see ``common.source_credentials``)."""
    return source_credentials(spec.source.uri, spec.source.secret_ref)


def claim(name: str, namespace: str, uid: str, spec: LeptonDatasetSpec) -> dict[str, Any]:
    """The PersistentVolumeClaim holding the prepared shards."""
    claim_spec = claim_spec_of(str(spec.storage.size), spec.storage.access_modes, spec.storage.storage_class_name)
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {
            "name": claim_name(name),
            "namespace": namespace,
            "labels": child_labels(LEPTON_DATASET.kind, name, "data"),
            "ownerReferences": [owner_reference(LEPTON_DATASET.kind, name, uid)],
        },
        "spec": claim_spec,
    }


def _environment(spec: LeptonDatasetSpec, digest: str) -> list[dict[str, Any]]:
    plain: dict[str, str | None] = {
        "LEPTON_SOURCE_URI": spec.source.uri,
        "LEPTON_SOURCE_ROOT": SOURCE_MOUNT,
        "LEPTON_MODALITY": spec.modality,
        "LEPTON_OUTPUT_DIR": DATA_MOUNT,
        "LEPTON_SHARD_TARGET_BYTES": _text(spec.shards.target_size_bytes),
        "LEPTON_SHARD_COUNT": _text(spec.shards.count),
        "LEPTON_SPLIT_TRAIN": str(spec.splits.train),
        "LEPTON_SPLIT_VALIDATION": _text(spec.splits.validation),
        "LEPTON_SPLIT_SEED": str(spec.splits.seed),
        "LEPTON_VERIFY_SHA256": spec.verify.sha256 if spec.verify else None,
        "LEPTON_SPEC_HASH": digest,
        "LEPTON_CLAIM_BYTES": str(int(parse_quantity(spec.storage.size))),
        "LEPTON_RESULT_PATH": TERMINATION_MESSAGE_PATH,
    }
    env: list[dict[str, Any]] = [{"name": key, "value": value} for key, value in plain.items() if value is not None]
    env.append(progress_endpoint(progress_port())[0])
    source = spec.source
    return env + source_env(source.uri, source.secret_ref, source.endpoint, source.region) + source_trust(source.ca_bundle).env


def _text(value: float | int | None) -> str | None:
    return None if value is None else str(value)


def prepare_job(name: str, namespace: str, uid: str, spec: LeptonDatasetSpec, *, image: str = DEFAULT_WORKLOADS_IMAGE) -> dict[str, Any]:
    """The Job that prepares the data of ``spec`` into the dataset's claim."""
    digest = data_hash(spec)
    labels = {**child_labels(LEPTON_DATASET.kind, name, PREPARE_ROLE), SPEC_HASH_LABEL: digest}
    prepare = spec.prepare
    mounts: list[dict[str, Any]] = [{"name": "data", "mountPath": DATA_MOUNT}]
    volumes: list[dict[str, Any]] = [{"name": "data", "persistentVolumeClaim": {"claimName": claim_name(name)}}]
    source = source_claim(spec.source.uri)
    if source is not None:
        mounts.append({"name": "source", "mountPath": SOURCE_MOUNT, "readOnly": True})
        volumes.append({"name": "source", "persistentVolumeClaim": {"claimName": source, "readOnly": True}})
    trust = source_trust(spec.source.ca_bundle)
    mounts += trust.mounts
    volumes += trust.volumes
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": prepare.image or image,
        "command": ["python", "-m", "lepton_workloads.prepare"],
        "env": _environment(spec, digest),
        "ports": [progress_endpoint(progress_port())[1]],
        "volumeMounts": mounts,
        "terminationMessagePath": TERMINATION_MESSAGE_PATH,
        "terminationMessagePolicy": "File",
    }
    resources = container_resources(prepare.resources, None)
    if resources:
        container["resources"] = resources
    pod_spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container], "volumes": volumes}
    pod_spec.update(placement(prepare.node_selector, prepare.tolerations, None))
    template_metadata: dict[str, Any] = {"labels": labels}
    if prepare.pod_annotations:
        template_metadata["annotations"] = dict(prepare.pod_annotations)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name, spec),
            "namespace": namespace,
            "labels": labels,
            "annotations": {SPEC_HASH_LABEL: digest},
            "ownerReferences": [owner_reference(LEPTON_DATASET.kind, name, uid)],
        },
        "spec": {
            "backoffLimit": prepare.backoff_limit,
            "activeDeadlineSeconds": prepare.timeout_seconds,
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {"containerName": CONTAINER, "operator": "In", "values": [EXIT_PERMANENT]},
                    }
                ]
            },
            "template": {"metadata": template_metadata, "spec": harden(pod_spec, prepare.security_context)},
        },
    }
