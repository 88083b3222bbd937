"""kopf handlers: thin, one module per kind, plus the shared wiring.

Importing this package registers every handler with kopf's default registry
(:data:`REGISTRY`): the operator start (``startup``) and one level-based
reconcile per kind (``dataset``, ``training``, ``inference``), each syncing its
object's NetworkPolicy through ``network``. The handlers read
the object, call the pure ``status`` functions, and patch; the kopf settings
live in ``config`` and the process start in ``runner``.
"""

import kopf

from lepton_operator.controllers import dataset, inference, network, startup, training

REGISTRY = kopf.get_default_registry()

__all__ = ["REGISTRY", "dataset", "inference", "network", "startup", "training"]
