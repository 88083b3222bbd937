"""The Lepton API (group ``lepton.ai``, version ``v1alpha1``) as pydantic models.

These models are the one source of truth: ``crdgen`` turns them into the CRD
schemas the API server enforces (types, defaults, enums, bounds and CEL rules),
and the operator parses every object it reconciles with the very same models, so
the rules the server enforces at admission and the rules the operator relies on
cannot drift apart. Cross-field rules are written twice on purpose, once as CEL
(for admission) and once as a pydantic validator (for the operator and for
offline checks); ``operator/tests/data/invalid_objects.yaml`` holds one object
per rule and is run against both.
"""

from lepton_operator.api.common import Condition, ConditionStatus
from lepton_operator.api.dataset import LeptonDataset, LeptonDatasetSpec, LeptonDatasetStatus
from lepton_operator.api.inference import (
    InferenceService,
    InferenceServiceSpec,
    InferenceServiceStatus,
)
from lepton_operator.api.meta import API_VERSION, GROUP, RESOURCES, VERSION, ResourceInfo
from lepton_operator.api.training import TrainingJob, TrainingJobSpec, TrainingJobStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "RESOURCES",
    "VERSION",
    "Condition",
    "ConditionStatus",
    "InferenceService",
    "InferenceServiceSpec",
    "InferenceServiceStatus",
    "LeptonDataset",
    "LeptonDatasetSpec",
    "LeptonDatasetStatus",
    "ResourceInfo",
    "TrainingJob",
    "TrainingJobSpec",
    "TrainingJobStatus",
]
