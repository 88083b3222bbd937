"""The controllers' synchronous access to the API server (kubernetes client).

Reconcilers run in worker threads (``asyncio.to_thread``), so the plain
synchronous client is the right tool; every call carries the operator's request
timeout. Desired children are written with server-side apply under one field
manager, which makes "create or update to match" a single idempotent request
and leaves fields that other controllers own (e.g. a Deployment's replicas
owned by an HPA) alone when we do not set them. Reads go through label
selectors, the one way children are found.

Every call asks the dynamic client for the raw response (``serialize=False``)
and parses it with ``json.loads`` (:func:`_call`): the client's own
``ResourceInstance`` wraps every nested field in an object and ``to_dict``
walks them all again, which cost more CPU than the request itself when
hundreds of pods are created at once (bench/training_startup.py).
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import kubernetes
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ConflictError, NotFoundError

from lepton_operator.api.meta import GROUP, VERSION, ResourceInfo
from lepton_operator.controllers.config import REQUEST_TIMEOUT

FIELD_MANAGER = "lepton-operator"
#: Connections kept open to the API server. Every thread that may be in a request at
#: once (reconcile passes, a group's pod creators, the autoscaler's steps) should find
#: one: the client's default (5 per core) made a busy operator close connections it
#: had no room to keep and open new ones, a TLS handshake each.
CONNECTIONS = 64
_lock = threading.Lock()
_client: kubernetes.client.ApiClient | None = None
_dynamic: DynamicClient | None = None


def api_client() -> kubernetes.client.ApiClient:
    """The shared client, configured in-cluster or from KUBECONFIG on first use."""
    global _client
    with _lock:
        if _client is None:
            try:
                kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
            except kubernetes.config.ConfigException:
                # KUBECONFIG is read now, not when the kubernetes package was imported.
                kubernetes.config.load_kube_config(config_file=os.environ.get("KUBECONFIG"))  # type: ignore[no-untyped-call]
            configuration = kubernetes.client.Configuration.get_default_copy()
            configuration.connection_pool_maxsize = CONNECTIONS
            _client = kubernetes.client.ApiClient(configuration)
        return _client


def dynamic() -> DynamicClient:
    """A discovery-backed client for any kind (children of every kind go through it)."""
    global _dynamic
    client = api_client()
    with _lock:
        if _dynamic is None:
            _dynamic = DynamicClient(client)  # type: ignore[no-untyped-call]
        return _dynamic


def _resource(api_version: str, kind: str) -> Any:
    return dynamic().resources.get(api_version=api_version, kind=kind)


def _call(api_version: str, kind: str, verb: str, **params: Any) -> dict[str, Any]:
    """One request through the dynamic client, its JSON body parsed (see the module docstring).

    Reading the body also hands the connection back to the pool: a raw
    response left unread would keep it, and the next request would pay for a
    new TLS handshake.
    """
    response = getattr(_resource(api_version, kind), verb)(serialize=False, _request_timeout=REQUEST_TIMEOUT, **params)
    document: dict[str, Any] = json.loads(response.data)
    return document


#: Characters YAML does not allow literally in a stream (C0 and C1 controls but tab, newline and
#: CR; DEL; U+FFFE, U+FFFF) or reads as a line break that folds a quoted string (NEL, U+2028,
#: U+2029). In JSON they only occur inside strings, where a ``\uXXXX`` escape means the same.
_NOT_YAML_PRINTABLE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\ufffe\uffff]")


def apply_body(manifest: Mapping[str, Any]) -> bytes:
    """The body of a server-side apply: JSON that the API server's YAML parser reads as the same object.

    An apply is sent as ``application/apply-patch+yaml``. JSON is YAML, except
    that the parser refuses the surrogate-pair escapes (``\\ud83d\\ude00``)
    ``json.dumps`` writes by default for a character outside the BMP, and a C1
    control character or DEL written literally: an emoji or a stray ``\\x85``
    in an env value or an annotation made every apply of that child a 400,
    retried forever (found by spec fuzzing, issue #19). So characters go as
    UTF-8, and those YAML cannot carry literally as BMP ``\\u`` escapes.
    """
    text = json.dumps(dict(manifest), ensure_ascii=False)
    return _NOT_YAML_PRINTABLE.sub(lambda match: f"\\u{ord(match.group()):04x}", text).encode()


def apply(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Server-side apply ``manifest`` (create or update to match); returns the object."""
    metadata = manifest["metadata"]
    return _call(manifest["apiVersion"], manifest["kind"], "server_side_apply", body=apply_body(manifest),
                 name=metadata["name"], namespace=metadata.get("namespace"), field_manager=FIELD_MANAGER,
                 force_conflicts=True)  # fmt: skip


def create(manifest: Mapping[str, Any]) -> bool:
    """Create ``manifest``; ``False`` when an object of that name already exists.

    For children that are never updated once made (a training job's worker
    pods): a plain create costs the API server less than an apply, which has
    to compute field ownership.
    """
    try:
        _call(manifest["apiVersion"], manifest["kind"], "create", body=dict(manifest),
              namespace=manifest["metadata"].get("namespace"), field_manager=FIELD_MANAGER)  # fmt: skip
    except ConflictError:
        return False
    return True


def as_admitted(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """``manifest`` as the API server would store it (a dry-run create): with what admission adds.

    Mutating admission changes what a pod asks for (a LimitRange's default
    requests, a namespace's default tolerations or node selector), so
    decisions about where it fits are made on this, not on the manifest.
    """
    return _call(manifest["apiVersion"], manifest["kind"], "create", body=dict(manifest),
                 namespace=manifest["metadata"].get("namespace"), dry_run="All", field_manager=FIELD_MANAGER)  # fmt: skip


def delete(
    api_version: str,
    kind: str,
    namespace: str | None,
    name: str,
    propagation: str = "Background",
    grace_period_seconds: int | None = None,
) -> bool:
    """Delete one object; ``False`` when it was already gone.

    ``grace_period_seconds=0`` removes a pod at once, without waiting for its
    kubelet to confirm: the way to delete pods of a node that is gone.
    """
    body: dict[str, Any] = {"propagationPolicy": propagation}
    if grace_period_seconds is not None:
        body["gracePeriodSeconds"] = grace_period_seconds
    try:
        _call(api_version, kind, "delete", name=name, namespace=namespace, body=body)
    except NotFoundError:
        return False
    return True


def get(api_version: str, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
    """One object, or ``None`` when it does not exist."""
    try:
        return _call(api_version, kind, "get", name=name, namespace=namespace)
    except NotFoundError:
        return None


def list_labelled(api_version: str, kind: str, namespace: str | None, selector: str) -> list[dict[str, Any]]:
    """Objects of ``kind`` matching a label selector (in ``namespace``, or all when ``None``)."""
    items: list[dict[str, Any]] = _call(api_version, kind, "get", namespace=namespace, label_selector=selector).get("items") or []
    return items


def list_plain(api_version: str, kind: str, field_selector: str = "", page: int = 250) -> Iterator[dict[str, Any]]:
    """Every object of ``kind`` in the cluster as plain JSON, a page at a time.

    Plain dicts, not model objects, and pages of ``page`` objects: a caller that
    folds them into a summary (``status.capacity.Cluster``) never holds
    thousands of pods at once.
    """
    token: str | None = None
    while True:
        document = _call(api_version, kind, "get", field_selector=field_selector or None, limit=page, _continue=token)
        yield from document.get("items") or []
        token = (document.get("metadata") or {}).get("continue")
        if not token:
            return


def remove_scheduling_gates(namespace: str, name: str) -> bool:
    """Let the scheduler place a gated pod (JSON-merge-patch ``spec.schedulingGates`` away); ``False`` if it is gone."""
    try:
        patch("v1", "Pod", namespace, name, {"spec": {"schedulingGates": None}})
    except NotFoundError:
        return False
    return True


class WriteConflict(Exception):
    """A write that required a resourceVersion found the object changed since (HTTP 409)."""


def patch_status(info: ResourceInfo, namespace: str, name: str, status: Mapping[str, Any], *,
                 resource_version: str | None = None) -> None:
    """Merge-patch the status subresource of one Lepton object (a vanished object is fine).

    With ``resource_version``, the write happens only on that version of the
    object; :class:`WriteConflict` says it changed in between.
    """
    api = kubernetes.client.CustomObjectsApi(api_client())
    body: dict[str, Any] = {"status": dict(status)}
    if resource_version is not None:
        body["metadata"] = {"resourceVersion": resource_version}
    try:
        api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, info.plural, name, body, _request_timeout=REQUEST_TIMEOUT
        )
    except kubernetes.client.ApiException as error:
        if error.status == 409:
            raise WriteConflict(f"{info.kind} {namespace}/{name} changed since resourceVersion {resource_version}") from error
        if error.status != 404:
            raise


def patch(
    api_version: str, kind: str, namespace: str, name: str, body: Mapping[str, Any], *, field_manager: str = FIELD_MANAGER
) -> dict[str, Any]:
    """JSON-merge-patch one object (e.g. the autoscaler's ``spec.replicas`` of a Deployment)."""
    return _call(api_version, kind, "patch", body=dict(body), name=name, namespace=namespace,
                 content_type="application/merge-patch+json", field_manager=field_manager)  # fmt: skip


def post_event(involved: Mapping[str, Any], event_type: str, reason: str, message: str, component: str) -> None:
    """Record a core/v1 Event on ``involved`` (an object as read), as ``kubectl describe`` shows it."""
    metadata = involved.get("metadata") or {}
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    event = {
        "metadata": {"generateName": f"{metadata.get('name', 'object')}.", "namespace": metadata.get("namespace")},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "uid": metadata.get("uid"),
        },
        "type": event_type,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": component},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
    kubernetes.client.CoreV1Api(api_client()).create_namespaced_event(
        str(metadata.get("namespace")), event, _request_timeout=REQUEST_TIMEOUT  # type: ignore[arg-type]  # dicts serialise as is
    )
