"""kopf handlers for LeptonDataset: one level-based reconcile on create, spec change and resume.

In this version the reconcile validates the spec and reports it in status (see
``reconcile.reconcile``); the dataset behaviour itself arrives with its own issue
and belongs in ``render``/``status``, leaving this module as thin as it is now.
"""

from __future__ import annotations

from typing import Any

import kopf

from lepton_operator.api.meta import GROUP, VERSION, LEPTON_DATASET as INFO
from lepton_operator.controllers.reconcile import event_poster, reconcile

HANDLER_ID = "reconcile"


@kopf.on.resume(GROUP, VERSION, INFO.plural, id=HANDLER_ID)
@kopf.on.create(GROUP, VERSION, INFO.plural, id=HANDLER_ID)
@kopf.on.update(GROUP, VERSION, INFO.plural, id=HANDLER_ID, field="spec")
async def reconcile_dataset(body: kopf.Body, patch: kopf.Patch, logger: kopf.Logger, retry: int, **_: Any) -> None:
    """Reconcile one LeptonDataset."""
    reconcile(INFO.kind, body, patch.status, retry=retry, logger=logger, warn=event_poster(body))
