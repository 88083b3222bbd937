"""Identity of the three Lepton resources: group, version, names, printer columns.

Everything that names a resource (the CRD generator, the kopf handlers, the
tests) reads it from ``RESOURCES`` so a plural or short name is written once.
Printer columns live here too because they are part of the API users see in
``kubectl get``, not an implementation detail of the generator.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

GROUP = "lepton.ai"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
CATEGORY = "lepton"

READY_COLUMN = {
    "name": "Ready",
    "type": "string",
    "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
}
AGE_COLUMN = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


@dataclass(frozen=True)
class ResourceInfo:
    """The names and presentation of one custom resource."""

    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    printer_columns: tuple[dict[str, Any], ...]
    scale: dict[str, str] | None = None
    categories: tuple[str, ...] = field(default=(CATEGORY,))

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


LEPTON_DATASET = ResourceInfo(
    kind="LeptonDataset",
    plural="leptondatasets",
    singular="leptondataset",
    short_names=("lds",),
    printer_columns=(
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        READY_COLUMN,
        {"name": "Records", "type": "integer", "jsonPath": ".status.records"},
        {"name": "Shards", "type": "integer", "jsonPath": ".status.shards"},
        {"name": "Bytes", "type": "integer", "jsonPath": ".status.sizeBytes"},
        {"name": "Modality", "type": "string", "jsonPath": ".spec.modality", "priority": 1},
        {"name": "Source", "type": "string", "jsonPath": ".spec.source.uri", "priority": 1},
        AGE_COLUMN,
    ),
)

TRAINING_JOB = ResourceInfo(
    kind="TrainingJob",
    plural="trainingjobs",
    singular="trainingjob",
    short_names=("tj",),
    printer_columns=(
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        READY_COLUMN,
        {"name": "Workers", "type": "integer", "jsonPath": ".status.workers.desired"},
        {"name": "Active", "type": "integer", "jsonPath": ".status.workers.active"},
        {"name": "Restarts", "type": "integer", "jsonPath": ".status.restarts.total"},
        {"name": "Step", "type": "integer", "jsonPath": ".status.progress.step"},
        {"name": "Dataset", "type": "string", "jsonPath": ".spec.dataset.name", "priority": 1},
        AGE_COLUMN,
    ),
)

INFERENCE_SERVICE = ResourceInfo(
    kind="InferenceService",
    plural="inferenceservices",
    singular="inferenceservice",
    short_names=("lis",),
    printer_columns=(
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        READY_COLUMN,
        {"name": "Replicas", "type": "integer", "jsonPath": ".status.replicas"},
        {"name": "Available", "type": "integer", "jsonPath": ".status.readyReplicas"},
        {"name": "Desired", "type": "integer", "jsonPath": ".status.desiredReplicas"},
        {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
        {"name": "URL", "type": "string", "jsonPath": ".status.url", "priority": 1},
        AGE_COLUMN,
    ),
    scale={
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    },
)

RESOURCES: tuple[ResourceInfo, ...] = (LEPTON_DATASET, TRAINING_JOB, INFERENCE_SERVICE)
