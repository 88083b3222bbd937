"""The operator's run-time options and the kopf settings derived from them.

Every kopf setting the operator depends on is set here, on purpose, with the
reason next to it; nothing is left to a kopf default that might change under us.
:func:`configure` is a plain function of (settings, options) so a unit test can
check the result; the ``on.startup`` handler in ``startup.py`` applies it.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import kopf

from lepton_operator.render.common import DEFAULT_WORKLOADS_IMAGE
from lepton_operator.render import activator as render_activator
from lepton_operator.render import network as render_network

ANNOTATION_PREFIX = "lepton.ai"
DEFAULT_PEERING_NAME = "lepton-operator"
DEFAULT_METRICS_PORT = 8080
DEFAULT_HEALTH_PORT = 8081
HEALTH_PATH = "/healthz"
#: The image of every pod the operator runs its own code in: dataset prepare Jobs and the
#: model-staging init container of Triton replicas. The Deployment sets it (manifests/base),
#: an overlay swaps it together with the operator's image (manifests/overlays/local).
WORKLOADS_IMAGE_ENV = "LEPTON_WORKLOADS_IMAGE"
#: The image of the activator pods in front of scale-to-zero InferenceServices: the operator's
#: own (``lepton-operator activator``). Set by the Deployment next to the workloads image.
ACTIVATOR_IMAGE_ENV = "LEPTON_ACTIVATOR_IMAGE"
#: What the NetworkPolicies take from the operator's configuration (``render.network.NetworkContext``):
#: the namespace whose pods scrape metrics ports (``--monitoring-namespace`` wins over it), the
#: operator's own namespace (the Deployment sets it from the pod's metadata.namespace), and its pods'
#: labels as ``key=value,...`` (``--operator-pod-labels`` wins over it).
MONITORING_NAMESPACE_ENV = "LEPTON_MONITORING_NAMESPACE"
OPERATOR_NAMESPACE_ENV = "POD_NAMESPACE"
OPERATOR_POD_LABELS_ENV = "LEPTON_OPERATOR_POD_LABELS"

#: Without ``--priority`` replicas rank themselves by start time: the oldest acts,
#: a newer one (the Deployment's replacement for a lost pod, a rollout's new pods)
#: stands by. So the work moves only when the acting replica goes, to the oldest
#: one left, and a replacement never takes it from a standby that has just taken
#: over (random priorities did, half the time). The rank is milliseconds before
#: AUTO_PRIORITY_EPOCH_MS, times 1000, plus a random tail: kopf pauses *every*
#: operator when two peers share a priority, and two replicas started in one
#: millisecond must still differ. Every automatic priority is below
#: AUTO_PRIORITY_MAX; an explicit ``--priority`` above it (a developer's operator)
#: takes over from every deployed replica.
AUTO_PRIORITY_EPOCH_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z
AUTO_PRIORITY_MAX = 10**16


def start_priority(now: float | None = None) -> int:
    """The peering priority of a replica starting at ``now`` (epoch seconds): older is higher."""
    started_ms = int((time.time() if now is None else now) * 1000)
    return max(AUTO_PRIORITY_EPOCH_MS - started_ms, 0) * 1000 + random.randrange(1000)  # noqa: S311

# API requests: a short atomic request (GET/PATCH) that takes 20 s is failing;
# give up and let the backoffs below retry it instead of hanging a handler for
# kopf's default of 5 minutes.
REQUEST_TIMEOUT = 20.0
CONNECT_TIMEOUT = 5.0
# Retries of failed API requests: 4 tries more within ~15 s, then the error
# reaches the handler (which is retried by kopf with its own backoff).
API_ERROR_BACKOFFS = (1.0, 2.0, 4.0, 8.0)
# Watches: the server ends each watch after 5 minutes (kopf reconnects from the
# last resourceVersion), the client waits a little longer so the server always
# closes first, and a stream silent for 70 s (Kubernetes sends a bookmark every
# minute and keeps events for 75 s) is presumed dead and reopened. The server
# timeout goes into the URL as ``timeoutSeconds`` and must be an integer.
WATCH_SERVER_TIMEOUT = 300
WATCH_CLIENT_TIMEOUT = 330.0
WATCH_INACTIVITY_TIMEOUT = 70.0
WATCH_RECONNECT_BACKOFF = 0.5
# Unexpected errors in kopf's own per-object processing: back off, bounded at 60 s.
FRAMEWORK_ERROR_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
# Handler retries: exponential from 5 s, capped at 5 minutes (see retry_delay).
HANDLER_BACKOFF_BASE = 5.0
HANDLER_BACKOFF_MAX = 300.0
# Seconds a peer's keep-alive stays valid. A replica that stops gracefully
# removes its record at once; one that is SIGKILLed (OOM, node crash, a forced
# pod deletion) leaves it behind, and the standby waits until it expires:
# kopf keeps a dead peer's record until ``lastseen + lifetime`` and only then
# drops it and resumes. So the lifetime bounds the handover after a crash
# (e2e/tests/test_chaos_operator.py measures it). kopf renews the record every
# ``lifetime - randint(5, 10)`` s, so a live replica has 5-10 s for its
# keep-alive PATCH whatever the lifetime (above 10 s): 15 s keeps that headroom
# and costs one small PATCH per replica every 5-10 s.
PEERING_LIFETIME = 15
# Seconds a stuck graceful shutdown may take before the process exits anyway;
# above a pod's default terminationGracePeriodSeconds (30 s).
EXIT_TIMEOUT = 60.0


@dataclass(frozen=True)
class OperatorOptions:
    """What ``lepton-operator run`` was asked to do."""

    namespaces: Sequence[str] = ()
    """Namespaces (kopf patterns, globs allowed) to serve; empty: all namespaces."""
    metrics_port: int = DEFAULT_METRICS_PORT
    health_port: int = DEFAULT_HEALTH_PORT
    priority: int = field(default_factory=start_priority)
    """Peering priority: among running replicas, the highest acts, the others stand by."""
    standalone: bool = False
    """Skip peering (development on a private cluster)."""
    peering_name: str = DEFAULT_PEERING_NAME
    verbose: bool = False
    prometheus_url: str | None = None
    """Prometheus the autoscaler queries for services that name none in spec.autoscaling."""
    autoscale_interval: float = 2.0
    """Seconds between two rounds of the autoscaler over every autoscaled service."""
    progress_interval: float = 10.0
    """Seconds between two reads of a running workload's live progress (``controllers.progress``)."""
    network: render_network.NetworkContext = field(default_factory=render_network.NetworkContext)
    """Where the monitoring namespace and the operator's pods are, for the NetworkPolicies (see :func:`network_context`)."""

    @property
    def clusterwide(self) -> bool:
        return not self.namespaces

    @property
    def liveness_endpoint(self) -> str:
        return f"http://0.0.0.0:{self.health_port}{HEALTH_PATH}"


def workloads_image(environ: Mapping[str, str] = os.environ) -> str:
    """The Lepton workloads image from the operator's environment, else the released one."""
    return environ.get(WORKLOADS_IMAGE_ENV) or DEFAULT_WORKLOADS_IMAGE


def activator_image(environ: Mapping[str, str] = os.environ) -> str:
    """The activator's image (the operator image) from the operator's environment, else the released one."""
    return environ.get(ACTIVATOR_IMAGE_ENV) or render_activator.DEFAULT_IMAGE


def network_context(
    monitoring_namespace: str | None = None,
    operator_pod_labels: Mapping[str, str] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> render_network.NetworkContext:
    """The policies' view of the operator: a flag's value, else the environment's, else the default.

    ``ValueError`` when the environment's pod labels are malformed.
    """
    labels = operator_pod_labels
    if labels is None and environ.get(OPERATOR_POD_LABELS_ENV):
        labels = render_network.parse_labels(environ[OPERATOR_POD_LABELS_ENV])
    return render_network.NetworkContext(
        monitoring_namespace=monitoring_namespace
        or environ.get(MONITORING_NAMESPACE_ENV)
        or render_network.DEFAULT_MONITORING_NAMESPACE,
        operator_namespace=environ.get(OPERATOR_NAMESPACE_ENV) or render_network.DEFAULT_OPERATOR_NAMESPACE,
        operator_pod_labels=dict(labels or render_network.DEFAULT_OPERATOR_POD_LABELS),
    )


def configure(settings: kopf.OperatorSettings, options: OperatorOptions) -> None:
    """Set every kopf setting the operator relies on."""
    net = settings.networking
    net.request_timeout = REQUEST_TIMEOUT
    net.connect_timeout = CONNECT_TIMEOUT
    net.error_backoffs = API_ERROR_BACKOFFS

    watch = settings.watching
    watch.server_timeout = WATCH_SERVER_TIMEOUT
    watch.client_timeout = WATCH_CLIENT_TIMEOUT
    watch.connect_timeout = CONNECT_TIMEOUT
    watch.inactivity_timeout = WATCH_INACTIVITY_TIMEOUT
    watch.reconnect_backoff = WATCH_RECONNECT_BACKOFF

    settings.queueing.error_delays = FRAMEWORK_ERROR_DELAYS
    settings.execution.default_backoff = HANDLER_BACKOFF_BASE * 6

    # Events: only what needs a person (warnings, errors), including kopf's own
    # per-object messages such as a handler failing; INFO chatter stays in logs.
    settings.posting.enabled = True
    settings.posting.loggers = True
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "lepton-operator"
    settings.posting.event_name_prefix = "lepton-"

    # Handler progress and the diff-base live in annotations: the CRDs' status
    # schemas are structural and prune kopf's default ``status.kopf``. The
    # diff-base keeps only the spec (metadata is ignored), which keeps the
    # annotation small (kopf #1087: 256 KiB limit on all annotations together)
    # and means label/annotation edits do not trigger a reconcile.
    persistence = settings.persistence
    persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=ANNOTATION_PREFIX)
    persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration", ignored_fields=["metadata"]
    )
    persistence.finalizer = f"{ANNOTATION_PREFIX}/finalizer"

    # Peering: replicas with one peering name see each other; only the one with
    # the highest priority acts. Cluster-wide peering even for a namespaced
    # operator, so operators serving different namespace sets still see each
    # other through one object. Mandatory unless standalone: without the peering
    # object an operator must not act (it might be the second one).
    peering = settings.peering
    peering.name = options.peering_name
    peering.priority = options.priority
    peering.standalone = options.standalone
    peering.mandatory = not options.standalone
    peering.clusterwide = True
    peering.lifetime = PEERING_LIFETIME
    peering.stealth = True

    settings.process.ultimate_exiting_timeout = EXIT_TIMEOUT


def retry_delay(retry: int) -> float:
    """Seconds before retry number ``retry + 1`` of a failed reconcile: 5, 10, 20, ... up to 300."""
    return min(HANDLER_BACKOFF_MAX, HANDLER_BACKOFF_BASE * 2.0 ** max(0, min(retry, 16)))
