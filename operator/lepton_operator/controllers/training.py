"""kopf wiring for TrainingJob: one reconcile loop per object (see ``loop``).

In this version the reconciler validates the spec and reports it in status
(``reconcile.validating``); the TrainingJob behaviour arrives with its own issue,
as pure ``render``/``status`` functions called from a reconciler here.
"""

from lepton_operator.api.meta import TRAINING_JOB
from lepton_operator.controllers import loop
from lepton_operator.controllers.reconcile import validating

loop.register(TRAINING_JOB, validating(TRAINING_JOB.kind))
