"""Whether a Secret or ConfigMap can be used, checked before a pod needs it: a source's credentials
and CA bundle, an API key, TLS.

The dataset preparer and the model stager get their credentials by
``secretKeyRef`` (``render.common.source_env``), Triton its API key by
``secretKeyRef`` and its gRPC TLS files from a Secret volume
(``render.inference_security``); a pod whose Secret or required key is missing
would sit in ``CreateContainerConfigError`` or ``ContainerCreating`` with the
reason in its own events only. The controllers check first, and report the
reason on their object instead. Only the Secret's type, its key names and
whether a value is empty are read into anything; its values never leave these
functions (nothing here logs or returns them).

A source's ``caBundle`` ConfigMap is checked the same way and reported the same
way (:func:`ca_bundle_problem`: ``ConfigMapNotFound``, ``ConfigMapKeyMissing``),
since the pod would otherwise sit in ``ContainerCreating`` waiting for its
volume; only its key names and whether the value is empty are read.

A missing Secret (or ConfigMap) is polled, not watched: watching would need cluster-wide
list/watch on Secrets, which an operator should not ask for. The poll starts
fast and slows down (:func:`recheck_seconds`): a user who creates the Secret
right after the object (the common case: one ``kubectl apply`` of both, in any
order) is served within a second or two, and an object that waits for hours
costs one GET every :data:`RECHECK_SECONDS`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lepton_operator.api.common import CABundle, SecretReference
from lepton_operator.controllers import kube
from lepton_operator.render.common import source_credentials
from lepton_operator.render.inference_security import RequiredSecret
from lepton_operator.status.conditions import SecretProblem

#: A Secret missing for a while is looked up again this often.
RECHECK_SECONDS = 15.0
#: A Secret that has just been found missing is looked up again this soon.
FIRST_RECHECK_SECONDS = 1.0
#: The delay grows as a fraction of the time waited so far (one lookup per ~4 s waited, then capped).
RECHECK_FRACTION = 0.25


def _not_found(namespace: str, name: str, context: str = "") -> SecretProblem:
    return SecretProblem("SecretNotFound", f"{context}Secret {name} not found in namespace {namespace}")


def secret_problem(namespace: str, uri: str, ref: SecretReference | None) -> SecretProblem | None:
    """Why the Secret of ``uri``'s credentials cannot be used, or ``None`` (also when there is none)."""
    if ref is None:
        return None
    secret = kube.get("v1", "Secret", namespace, ref.name)
    if secret is None:
        return _not_found(namespace, ref.name)
    present = set(secret.get("data") or {}) | set(secret.get("stringData") or {})
    required = source_credentials(uri, ref).values()
    missing = sorted(key for key, optional in required if not optional and key not in present)
    if missing:
        return SecretProblem("SecretKeyMissing", f"Secret {ref.name} has no key {', '.join(missing)}")
    return None


def ca_bundle_problem(namespace: str, bundle: CABundle | None) -> SecretProblem | None:
    """Why a source's CA bundle ConfigMap cannot be mounted, or ``None`` (also when there is none).

    The key must hold something (``data`` or ``binaryData``): an empty bundle
    would only fail later, in the pod, as an unreadable CA file.
    """
    if bundle is None:
        return None
    ref = bundle.config_map_ref
    config_map = kube.get("v1", "ConfigMap", namespace, ref.name)
    if config_map is None:
        return SecretProblem("ConfigMapNotFound", f"caBundle: ConfigMap {ref.name} not found in namespace {namespace}")
    filled = {key for part in ("data", "binaryData") for key, value in (config_map.get(part) or {}).items() if value}
    if ref.key not in filled:
        return SecretProblem("ConfigMapKeyMissing", f"caBundle: ConfigMap {ref.name} has no non-empty key {ref.key}")
    return None


@dataclass(frozen=True)
class RequiredSecretsCheck:
    """What :func:`check_required_secrets` found: the first problem, and the versions of the Secrets read."""

    problem: SecretProblem | None
    versions: dict[str, str]
    """``name -> metadata.resourceVersion`` of each Secret that can be used (the pod template carries them)."""


def _required_problem(namespace: str, required: RequiredSecret, secret: Mapping[str, Any] | None) -> SecretProblem | None:
    """Why ``secret`` (read just now, ``None`` if missing) cannot serve as ``required``, or ``None``.

    Stricter than a source's check, because Triton fails at start on what it
    cannot use: a key must be non-empty (Triton refuses an empty restricted-API
    value), and a TLS Secret must be of type ``kubernetes.io/tls``. Messages name
    the spec field (``required.field``); only key names and the type are read.
    """
    context = f"{required.field}: "
    if secret is None:
        return _not_found(namespace, required.name, context)
    actual = secret.get("type") or "Opaque"
    if required.type is not None and actual != required.type:
        return SecretProblem("SecretTypeMismatch", f"{context}Secret {required.name} is of type {actual}, not {required.type}")
    filled = {key for key, value in (secret.get("data") or {}).items() if value}
    missing = [key for key in required.keys if key not in filled]
    if missing:
        return SecretProblem("SecretKeyMissing", f"{context}Secret {required.name} has no non-empty key {', '.join(missing)}")
    return None


def check_required_secrets(namespace: str, required: list[RequiredSecret]) -> RequiredSecretsCheck:
    """The first of ``required`` that cannot be used (in spec order), and the versions of those before it.

    One GET per Secret; the versions come from the same read, so tracking rotation
    (``secret_versions``) costs the pass nothing more.
    """
    versions: dict[str, str] = {}
    for need in required:
        secret = kube.get("v1", "Secret", namespace, need.name)
        problem = _required_problem(namespace, need, secret)
        if problem is not None:
            return RequiredSecretsCheck(problem, versions)
        versions[need.name] = str(((secret or {}).get("metadata") or {}).get("resourceVersion", ""))
    return RequiredSecretsCheck(None, versions)


def recheck_seconds(status: Mapping[str, Any], condition: str, now: datetime) -> float:
    """Seconds until a missing Secret is looked up again, given the status that reports it.

    The wait started at the ``lastTransitionTime`` of ``condition`` (the one
    that reports the problem: it moves only when the condition's status
    changes, so SecretNotFound -> SecretKeyMissing keeps the start of the wait);
    unknown or unparsable counts as "just now". Pure: the caller passes ``now``.
    """
    since = next((c.get("lastTransitionTime") for c in status.get("conditions") or [] if c.get("type") == condition), None)
    try:
        waited = max((now - datetime.fromisoformat(str(since).replace("Z", "+00:00"))).total_seconds(), 0.0)
    except (ValueError, TypeError):  # unparsable, or without a zone
        waited = 0.0
    return min(RECHECK_SECONDS, max(FIRST_RECHECK_SECONDS, waited * RECHECK_FRACTION))
