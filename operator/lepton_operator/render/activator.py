"""The activator in front of InferenceServices that may scale to zero: its Deployment and the Services' wiring.

Pure, like ``render.inference``, whose names, labels and Service it reuses. Only
services with ``autoscaling.minReplicas: 0`` (:func:`scale_to_zero`) get an
activator (``lepton_operator.activator`` says why this topology)::

    clients -> Service <name>          -> activator pods (Deployment <name>-activator)
            -> Service <name>-triton   -> Triton pods    (Deployment <name>)

Every other service renders without it, the Service ``<name>`` selecting the
Triton pods directly, exactly as before the activator existed; :func:`obsolete`
names what to delete when a service stops scaling to zero. The public Service
turns to the activator only once an activator pod is ready (:func:`services`),
so it never points at no endpoints while the activator starts.

The activator pods run the operator image (``lepton-operator activator``), need
no API access (no service account token), are hardened for Pod Security
``restricted`` by ``common.harden`` like every pod the operator renders (plus a
read-only root filesystem), never go to GPU nodes, and carry Triton's scrape
annotations: their ``lepton_activator_pending_requests`` is on the same metrics
port, and their ``lepton.ai/inferenceservice`` label names the service, as the
Triton pods' does.
"""

from __future__ import annotations

from typing import Any

from lepton_operator.api.common import PodSecurity
from lepton_operator.api.inference import InferenceServiceSpec
from lepton_operator.render import common
from lepton_operator.render.inference import (
    GRPC_PORT,
    HTTP_PORT,
    KIND,
    METRICS_PORT,
    PRESTOP_SECONDS,
    PROBE_PERIOD_SECONDS,
    ROLE,
    SCRAPE_ANNOTATIONS,
    child_metadata,
    names,
    service,
)

ROLE_ACTIVATOR = "activator"
#: The image activator pods run unless the operator is configured with another
#: (``LEPTON_ACTIVATOR_IMAGE``, see ``controllers.config.activator_image``).
DEFAULT_IMAGE = "lepton/operator:0.1.0"
#: The operator image's user (images/operator).
UID = 65532
REPLICAS = 2
#: Longest a request waits for a replica at zero: a cold start (schedule, pull, stage, load).
HOLD_TIMEOUT_SECONDS = 300
MAX_HELD_REQUESTS = 1000
#: Seconds between two readiness probes of the backend while none is ready.
PROBE_INTERVAL_SECONDS = 0.5
#: Seconds between the endpoints dropping a terminating activator and its SIGTERM, then the
#: activator's own shutdown time for in-flight requests (``activator.SHUTDOWN_SECONDS``) and a margin.
GRACE_SECONDS = PRESTOP_SECONDS + 30


def scale_to_zero(spec: InferenceServiceSpec) -> bool:
    """Whether the service may have zero replicas, and so needs the activator in its path."""
    return spec.autoscaling is not None and spec.autoscaling.min_replicas == 0


def selector(name: str) -> dict[str, str]:
    """The labels that select this service's activator pods."""
    return common.selector_labels(KIND, name, ROLE_ACTIVATOR)


def services(name: str, namespace: str, uid: str, spec: InferenceServiceSpec, *, activator_ready: bool) -> list[dict[str, Any]]:
    """The Services: the public one in front of Triton; for a scale-to-zero service also the one behind the activator.

    The public Service selects the activator pods once one is ready (``activator_ready``),
    Triton's until then.
    """
    if not scale_to_zero(spec):
        return [service(name, namespace, uid)]
    public = service(name, namespace, uid, role=ROLE_ACTIVATOR if activator_ready else ROLE)
    return [service(name, namespace, uid, child=names(name)["backend"]), public]


def backend_address(name: str, namespace: str, port: int) -> str:
    """``host:port`` of the Triton pods behind the activator (Service ``<name>-triton``)."""
    return f"{names(name)['backend']}.{namespace}.svc:{port}"


def deployment(name: str, namespace: str, uid: str, image: str = DEFAULT_IMAGE) -> dict[str, Any]:
    """The activator pods of a scale-to-zero service (``lepton-operator activator``)."""
    container: dict[str, Any] = {
        "name": ROLE_ACTIVATOR,
        "image": image,
        "command": ["lepton-operator", "activator"],
        "args": [
            f"--backend=http://{backend_address(name, namespace, HTTP_PORT)}",
            f"--grpc-backend={backend_address(name, namespace, GRPC_PORT)}",
            f"--port={HTTP_PORT}",
            f"--grpc-port={GRPC_PORT}",
            f"--metrics-port={METRICS_PORT}",
            f"--hold-timeout-seconds={HOLD_TIMEOUT_SECONDS}",
            f"--max-held-requests={MAX_HELD_REQUESTS}",
        ],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "metrics"}, "periodSeconds": PROBE_PERIOD_SECONDS},
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": "metrics"},
            "periodSeconds": PROBE_PERIOD_SECONDS,
            "failureThreshold": 6,
        },
        # As Triton's: the endpoints drop the pod before it stops accepting.
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}},
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "512Mi"}},
    }
    pod = common.harden(
        {"automountServiceAccountToken": False, "terminationGracePeriodSeconds": GRACE_SECONDS, "containers": [container]},
        PodSecurity(run_as_user=UID, run_as_group=UID),
    )
    for hardened in pod["containers"]:
        hardened["securityContext"]["readOnlyRootFilesystem"] = True
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": child_metadata(name, namespace, uid, names(name)["activator"], ROLE_ACTIVATOR),
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": selector(name)},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": common.child_labels(KIND, name, ROLE_ACTIVATOR), "annotations": dict(SCRAPE_ANNOTATIONS)},
                "spec": pod,
            },
        },
    }


def obsolete(name: str, spec: InferenceServiceSpec) -> list[tuple[str, str, str]]:
    """``(apiVersion, kind, name)`` of the children this spec no longer has (the activator's, when off)."""
    if scale_to_zero(spec):
        return []
    return [("apps/v1", "Deployment", names(name)["activator"]), ("v1", "Service", names(name)["backend"])]
