"""Whether a source's Secret can be used, checked before a pod needs it.

The dataset preparer and the model stager get their credentials by
``secretKeyRef`` (``render.common.source_env``); a pod whose Secret or required
key is missing would sit in ``CreateContainerConfigError`` with the reason in
its own events only. The controllers check first, and report the reason on
their object instead. Only the Secret's key names are read into anything;
its values never leave this function (nothing here logs or returns them).
"""

from __future__ import annotations

from lepton_operator.api.common import SecretReference
from lepton_operator.controllers import kube
from lepton_operator.render.common import source_credentials
from lepton_operator.status.conditions import SecretProblem

#: A missing Secret is looked up again this often (watching every Secret would need
#: cluster-wide list/watch on Secrets, which an operator should not ask for).
RECHECK_SECONDS = 15.0


def secret_problem(namespace: str, uri: str, ref: SecretReference | None) -> SecretProblem | None:
    """Why the Secret of ``uri``'s credentials cannot be used, or ``None`` (also when there is none)."""
    if ref is None:
        return None
    secret = kube.get("v1", "Secret", namespace, ref.name)
    if secret is None:
        return SecretProblem("SecretNotFound", f"Secret {ref.name} not found in namespace {namespace}")
    present = set(secret.get("data") or {}) | set(secret.get("stringData") or {})
    required = source_credentials(uri, ref).values()
    missing = sorted(key for key, optional in required if not optional and key not in present)
    if missing:
        return SecretProblem("SecretKeyMissing", f"Secret {ref.name} has no key {', '.join(missing)}")
    return None
