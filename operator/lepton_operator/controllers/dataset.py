"""kopf handlers for LeptonDataset: one level-based reconcile on create, spec change and resume.

In this version the reconcile validates the spec and reports it in status
(``reconcile.reconcile``); the LeptonDataset behaviour arrives with its own issue and
belongs in the pure ``render``/``status`` layers, keeping this module thin.
"""

from lepton_operator.api.meta import LEPTON_DATASET
from lepton_operator.controllers.reconcile import register

reconcile_dataset = register(LEPTON_DATASET)
