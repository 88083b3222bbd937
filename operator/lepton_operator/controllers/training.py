"""kopf handlers for TrainingJob: one level-based reconcile on create, spec change and resume.

In this version the reconcile validates the spec and reports it in status
(``reconcile.reconcile``); the TrainingJob behaviour arrives with its own issue and
belongs in the pure ``render``/``status`` layers, keeping this module thin.
"""

from lepton_operator.api.meta import TRAINING_JOB
from lepton_operator.controllers.reconcile import register

reconcile_training = register(TRAINING_JOB)
