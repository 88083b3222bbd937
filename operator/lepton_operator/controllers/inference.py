"""kopf wiring and the reconciler of InferenceService: one loop per object (see ``loop``).

A pass: validate the spec (``reconcile.reconcile``: Validated/Stalled on bad
input); resolve the model source (a referenced TrainingJob must have
Succeeded, its ``status.output.uri`` names the export); server-side apply the
model-config ConfigMap, the Triton Deployment and the Service
(``render.inference``); compute status from the Deployment
(``status.inference``). The loop wakes on the service's own spec, its
Deployments, and the TrainingJobs services wait on.

A uri source with a ``secretRef`` is staged only once its Secret exists with
the required keys (``secrets.secret_problem``, the dataset's check): until
then ``ModelAvailable`` is False with ``SecretNotFound`` or
``SecretKeyMissing``, a Warning event says so once, nothing is applied, and
the Secret is looked up again soon, then less often (``secrets.recheck_seconds``).
A uri's ``caBundle`` ConfigMap is waited for the same way
(``secrets.ca_bundle_problem``: ``ConfigMapNotFound``, ``ConfigMapKeyMissing``).
The Secrets ``spec.auth`` and ``spec.tls`` name (the API key; a
``kubernetes.io/tls`` Secret) are waited for the same way, before the
Deployment that reads them exists (``secrets.check_required_secrets``; one
more reason, ``SecretTypeMismatch``). Their ``resourceVersion``s, read by the
same GET, go into the pod template, and ``secret_versions`` wakes the service
when one moves: a rotated key rolls the replicas without a watch on Secrets.

A service that may scale to zero (``autoscaling.minReplicas: 0``) also gets
its activator Deployment and the ``<name>-triton`` Service behind it
(``render.activator``; see
``lepton_operator.activator``). The public Service turns to the activator pods
only once the activator Deployment has a ready replica (read from the apply's
answer; the loop wakes on its owned Deployments), so a service switched to
``minReplicas: 0`` never points at no endpoints. When a spec edit takes the
activator away, the Service turns back to Triton and the pass that first sees
the new generation deletes the activator's children
(``render.activator.obsolete``); steady passes cost no extra API calls.

The service's NetworkPolicy (``render.network``) is synced by ``network.POLICIES``
before anything else is applied: once per generation, deleted when disabled.

Replicas: without ``spec.autoscaling`` the Deployment gets ``spec.replicas``,
which ``kubectl scale`` and an external HPA/KEDA set through the ``/scale``
subresource. With autoscaling, the built-in autoscaler (``autoscaler``) owns
the count; the reconciler keeps what the Deployment has (within bounds). Both
write replicas under :data:`REPLICAS_LOCK`, so a pass never re-applies a count
the autoscaler has just changed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from lepton_operator import metrics
from lepton_operator.api.inference import InferenceServiceSpec
from lepton_operator.api.meta import API_VERSION, GROUP, INFERENCE_SERVICE, TRAINING_JOB, VERSION
from lepton_operator.controllers import kube, loop, network, reconcile, secrets
from lepton_operator.controllers.autoscaler import AUTOSCALER, REPLICAS_LOCK
from lepton_operator.controllers.config import activator_image, workloads_image
from lepton_operator.controllers.startup import options_of, spawn
from lepton_operator.controllers.reconcile import Logger, Warn
from lepton_operator.controllers.secret_versions import POLL_SECONDS, SECRET_VERSIONS
from lepton_operator.controllers.wakeups import ObjectKey
from lepton_operator.render import activator as render_activator
from lepton_operator.render import common
from lepton_operator.render import inference as render
from lepton_operator.render import inference_security as render_security
from lepton_operator.status import validation
from lepton_operator.status.conditions import SecretProblem
from lepton_operator.status.inference import MODEL_AVAILABLE, Unavailable, service_status

KIND = INFERENCE_SERVICE.kind


class JobWaiters:
    """Which services wait on which TrainingJob, so a job's change wakes exactly them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_job: dict[tuple[str, str], set[ObjectKey]] = {}

    def set(self, service: ObjectKey, job: str | None) -> None:
        with self._lock:
            for waiting in self._by_job.values():
                waiting.discard(service)
            if job is not None:
                self._by_job.setdefault((service.namespace, job), set()).add(service)

    def of(self, job: Mapping[str, Any]) -> list[ObjectKey]:
        metadata = job.get("metadata") or {}
        with self._lock:
            return sorted(self._by_job.get((str(metadata.get("namespace")), str(metadata.get("name"))), ()))


JOB_WAITERS = JobWaiters()


def _model_unavailable(spec: InferenceServiceSpec, job: Mapping[str, Any] | None) -> tuple[render.Source | None, Unavailable | None]:
    try:
        render.config_text(spec)  # Triton's schema checks the spec's model config
        return render.resolve_source(spec, job), None
    except render.SourceUnavailable as missing:
        return None, Unavailable(missing.reason, missing.message, missing.stalled)
    except ValueError as error:
        return None, Unavailable("InvalidModelConfig", f"config.pbtxt: {error}", stalled=True)


@dataclass(frozen=True)
class Stageable:
    """The source to stage and the versions of the Secrets Triton reads, or why there is nothing to stage yet."""

    source: render.Source | None
    unavailable: Unavailable | None = None
    problem: SecretProblem | None = None
    secret_versions: dict[str, str] = field(default_factory=dict)


def _stageable(namespace: str, spec: InferenceServiceSpec, job: Mapping[str, Any] | None) -> Stageable:
    """The source to stage, or why there is none yet (a uri's Secret and CA bundle ConfigMap, the API
    key's and the TLS Secret must exist with their keys first)."""
    source, unavailable = _model_unavailable(spec, job)
    if source is None:
        return Stageable(source, unavailable)
    problem = None
    if isinstance(source, render.UriSource):
        problem = secrets.secret_problem(namespace, source.uri, source.secret_ref)
        problem = problem or secrets.ca_bundle_problem(namespace, source.ca_bundle)
    checked = secrets.RequiredSecretsCheck(problem, {})
    if problem is None:
        checked = secrets.check_required_secrets(namespace, render_security.required_secrets(spec))
    if checked.problem is None:
        return Stageable(source, secret_versions=checked.versions)
    return Stageable(None, Unavailable(checked.problem.reason, checked.problem.message), checked.problem)


def converge(
    body: Mapping[str, Any], spec: InferenceServiceSpec, now: datetime
) -> tuple[dict[str, Any], SecretProblem | None]:
    """Apply the children of one valid service; returns the status fields the reconciler owns
    and what is wrong with the source's Secret (then nothing is applied)."""
    metadata = body["metadata"]
    name, namespace, uid = metadata["name"], metadata["namespace"], metadata.get("uid", "")
    generation = int(metadata.get("generation") or 0)
    ref = spec.model.source.training_job_ref
    key = ObjectKey(KIND, namespace, name)
    JOB_WAITERS.set(key, ref.name if ref else None)
    AUTOSCALER.track(key, uid, spec)
    network.POLICIES.sync(key, uid, generation, spec)
    job = kube.get(API_VERSION, TRAINING_JOB.kind, namespace, ref.name) if ref else None
    staged = _stageable(namespace, spec, job)
    source, unavailable, problem = staged.source, staged.unavailable, staged.problem
    with REPLICAS_LOCK:
        deployment = kube.get("apps/v1", "Deployment", namespace, name)
        current = (deployment or {}).get("spec", {}).get("replicas") if deployment else None
        desired = render.replicas(spec, None if current is None else int(current))
        if source is not None:
            kube.apply(render.configmap(name, namespace, uid, spec))
            deployment = kube.apply(
                render.deployment(name, namespace, uid, spec, source, desired, workloads_image(), staged.secret_versions)
            )
            SECRET_VERSIONS.rendered(key, staged.secret_versions)
            activator_ready = False
            if render_activator.scale_to_zero(spec):
                activator = kube.apply(render_activator.deployment(name, namespace, uid, activator_image()))
                activator_ready = int((activator.get("status") or {}).get("readyReplicas") or 0) > 0
            for service in render_activator.services(name, namespace, uid, spec, activator_ready=activator_ready):
                kube.apply(service)
        else:
            SECRET_VERSIONS.forget(key)  # its Secret is missing: the pass's own recheck waits for it
    if generation > 1 and (body.get("status") or {}).get("observedGeneration") != generation:
        for api_version, kind, child in render_activator.obsolete(name, spec):
            kube.delete(api_version, kind, namespace, child)
    status = service_status(
        generation,
        desired=desired,
        deployment=deployment,
        unavailable=unavailable,
        selector=common.label_selector(render.selector(name)),
        url=render.url(name, namespace, spec.model.name),
        existing=body.get("status") or {},
        now=now,
    )
    return status, problem


def reconcile_service(
    body: Mapping[str, Any], status_patch: MutableMapping[str, Any], *, retry: int, logger: Logger, warn: Warn
) -> float | None:
    """One pass over one InferenceService (fits ``loop.Reconciler``).

    An invalid spec goes through the shared ``reconcile.reconcile`` (conditions,
    Warning event, metrics); a valid one is converged here.
    """
    raw_spec = validation.to_plain(body.get("spec"))
    parsed = validation.parse_spec(KIND, raw_spec)
    if not isinstance(parsed, InferenceServiceSpec):
        reconcile.reconcile(KIND, body, status_patch, retry=retry, logger=logger, warn=warn)
        return None
    started, now = time.perf_counter(), datetime.now(UTC)
    existing = validation.to_plain(body.get("status") or {})
    generation = int((body.get("metadata") or {}).get("generation") or 0)
    try:
        new, problem = converge(body, parsed, now)
    except Exception as error:
        raise reconcile.failed_pass(KIND, generation, error, existing, status_patch, retry=retry, logger=logger,
                                    moment=now, started=started, warn=warn) from error  # fmt: skip
    if existing.get("observedGeneration") != generation:
        logger.info(f"spec of generation {generation} accepted")
    if validation.needs_patch(existing, new):
        status_patch.update(new)
        if problem is not None:
            warn(problem.reason, problem.message)
    metrics.record_reconcile(KIND, "accepted", time.perf_counter() - started)
    return None if problem is None else secrets.recheck_seconds(new, MODEL_AVAILABLE, now)


def stopped(key: ObjectKey) -> None:
    """The object's loop ended (deleted, or this replica paused): forget it everywhere."""
    JOB_WAITERS.set(key, None)
    AUTOSCALER.untrack(key)
    network.POLICIES.forget(key)
    SECRET_VERSIONS.forget(key)


@kopf.on.startup()
async def start_background_loops(memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Start the one autoscaling loop and the Secret version poll (both act only on what the reconcile loops track)."""
    options = options_of(memo)
    AUTOSCALER.prometheus_url = options.prometheus_url
    spawn(AUTOSCALER.run(options.autoscale_interval, logger), "autoscaler")
    spawn(SECRET_VERSIONS.run(POLL_SECONDS, logger), "secret-versions")


loop.register(INFERENCE_SERVICE, reconcile_service, on_stop=stopped)
loop.wake_owner_on(INFERENCE_SERVICE, "apps", "v1", "deployments")
loop.wake_on(GROUP, VERSION, TRAINING_JOB.plural, JOB_WAITERS.of, handler_id="wake-inferenceservice-on-trainingjob")
