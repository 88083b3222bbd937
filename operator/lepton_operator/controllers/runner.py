"""Start the operator: logging, the ``/metrics`` server, then kopf.

Importing :mod:`lepton_operator.controllers` registers every handler with
kopf's default registry; this module only starts things. The kopf settings are
applied by the ``on.startup`` handler (``startup.py``) from the options passed
through kopf's memo.
"""

from __future__ import annotations

import kopf

from lepton_operator import controllers, metrics
from lepton_operator.controllers.config import OperatorOptions


def run(options: OperatorOptions) -> int:
    """Run until SIGTERM/SIGINT; returns the process exit status."""
    kopf.configure(verbose=options.verbose)
    metrics.serve(options.metrics_port)
    kopf.run(
        clusterwide=options.clusterwide,
        namespaces=list(options.namespaces),
        liveness_endpoint=options.liveness_endpoint,
        memo=kopf.Memo(options=options),
        registry=controllers.REGISTRY,
    )
    return 0
