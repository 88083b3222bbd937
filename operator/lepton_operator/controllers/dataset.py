"""kopf wiring for LeptonDataset: one reconcile loop per object (see ``loop``).

In this version the reconciler validates the spec and reports it in status
(``reconcile.validating``); the LeptonDataset behaviour arrives with its own issue,
as pure ``render``/``status`` functions called from a reconciler here.
"""

from lepton_operator.api.meta import LEPTON_DATASET
from lepton_operator.controllers import loop
from lepton_operator.controllers.reconcile import validating

loop.register(LEPTON_DATASET, validating(LEPTON_DATASET.kind))
