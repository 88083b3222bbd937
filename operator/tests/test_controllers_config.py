"""The kopf settings the operator sets on purpose, and the start-up wiring."""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Any

import kopf
import pytest
from kopf._core.engines import peering as kopf_peering

from lepton_operator.controllers import config, startup
from lepton_operator.controllers.config import OperatorOptions, configure, retry_delay
from lepton_operator.render.network import NetworkContext


def configured(**options: object) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    configure(settings, OperatorOptions(**options))  # type: ignore[arg-type]
    return settings


def test_timeouts_and_backoffs_are_bounded() -> None:
    settings = configured(priority=7)
    assert settings.networking.request_timeout == 20
    assert settings.networking.connect_timeout == 5
    assert settings.networking.error_backoffs == (1, 2, 4, 8)
    assert settings.watching.inactivity_timeout == 70
    assert settings.watching.server_timeout is not None and settings.watching.client_timeout is not None
    assert settings.watching.server_timeout < settings.watching.client_timeout
    assert isinstance(settings.watching.server_timeout, int)  # sent as timeoutSeconds=300, "300.0" is a 400
    assert max(settings.queueing.error_delays) == 60
    assert settings.process.ultimate_exiting_timeout == 60


def test_replicas_rank_by_start_time_so_the_oldest_acts_and_no_two_tie() -> None:
    started = 1_800_000_000.0
    older, newer = config.start_priority(started), config.start_priority(started + 0.001)
    assert older > newer > 0  # a replacement pod never outranks the replica that acts now
    assert config.start_priority(started + 0.001) < config.start_priority(started)  # whatever the random tail
    same_moment = {config.start_priority(started) for _ in range(50)}
    assert len(same_moment) > 1  # started in one millisecond, still told apart
    assert max(same_moment) < config.AUTO_PRIORITY_MAX and config.start_priority() < config.AUTO_PRIORITY_MAX
    assert abs(OperatorOptions().priority - config.start_priority()) < 2_000_000  # drawn at start (within 2 s)


def test_only_warnings_and_errors_become_events() -> None:
    settings = configured(priority=7)
    assert settings.posting.enabled and settings.posting.loggers
    assert settings.posting.level == logging.WARNING
    assert settings.posting.reporting_component == "lepton-operator"


def test_progress_and_diffbase_live_in_small_lepton_annotations() -> None:
    settings = configured(priority=7)
    progress = settings.persistence.progress_storage
    diffbase = settings.persistence.diffbase_storage
    assert isinstance(progress, kopf.AnnotationsProgressStorage)
    assert isinstance(diffbase, kopf.AnnotationsDiffBaseStorage)
    body = kopf.Body(
        {
            "apiVersion": "lepton.ai/v1alpha1",
            "kind": "TrainingJob",
            "metadata": {
                "name": "j",
                "namespace": "n",
                "labels": {"team": "a"},
                "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "x" * 10_000, "note": "y"},
            },
            "spec": {"image": "trainer:1"},
            "status": {"phase": "Pending"},
        }
    )
    essence = diffbase.build(body=body)
    assert essence == {"spec": {"image": "trainer:1"}}  # metadata and status are not part of it
    patch = kopf.Patch()
    diffbase.store(body=body, patch=patch, essence=essence)
    progress.store(key=kopf.HandlerId("reconcile"), record={"started": "2026-01-01T00:00:00"}, body=body, patch=patch)
    assert "status" not in patch
    keys = set(patch["metadata"]["annotations"])
    assert keys and all(key.startswith("lepton.ai/") for key in keys)
    assert patch["metadata"]["annotations"]["lepton.ai/last-handled-configuration"] == '{"spec":{"image":"trainer:1"}}\n'
    assert settings.persistence.finalizer.startswith("lepton.ai/")


def test_peering_is_mandatory_clusterwide_and_named() -> None:
    settings = configured(priority=42, peering_name="lepton-a", namespaces=("team-*",))
    peering = settings.peering
    assert (peering.name, peering.priority, peering.mandatory, peering.standalone) == ("lepton-a", 42, True, False)
    assert peering.clusterwide  # one ClusterKopfPeering even for a namespaced operator


def test_peering_lifetime_bounds_a_crash_handover_and_leaves_live_replicas_headroom(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """kopf drops a dead peer's record after its lifetime; a live one renews 5-10 s before that."""
    settings = configured(priority=3)
    assert settings.peering.lifetime == config.PEERING_LIFETIME <= 30  # what a crash can cost
    now = datetime.datetime.now(datetime.UTC)
    lifetime = config.PEERING_LIFETIME

    def record(age: float) -> kopf_peering.Peer:
        lastseen = (now - datetime.timedelta(seconds=age)).isoformat()
        return kopf_peering.Peer(identity=kopf_peering.Identity("p"), priority=1, lifetime=lifetime, lastseen=lastseen)

    assert record(lifetime + 0.5).is_dead and not record(lifetime - 1).is_dead

    # kopf's own keep-alive loop with these settings: how long it waits between two renewals.
    waits: list[float] = []

    class Enough(Exception):
        pass

    async def touch(**_: Any) -> None:
        pass

    async def sleep(delay: float) -> None:
        waits.append(delay)
        if len(waits) >= 50:
            raise Enough

    monkeypatch.setattr(kopf_peering, "touch", touch)
    monkeypatch.setattr(kopf_peering.asyncio, "sleep", sleep)
    keepalive = kopf_peering.keepalive(namespace=None, resource=None, identity="p", settings=settings)  # type: ignore[arg-type]
    with pytest.raises(Enough):
        asyncio.run(keepalive)
    assert all(5 <= lifetime - wait <= 10 for wait in waits), waits  # a renewal's PATCH has 5 s at least
    assert not record(max(waits) + 4.9).is_dead  # so a live replica never looks dead to its standby


def test_standalone_skips_peering() -> None:
    peering = configured(priority=1, standalone=True).peering
    assert peering.standalone and not peering.mandatory


def test_options_defaults() -> None:
    options = OperatorOptions()
    assert options.clusterwide and options.namespaces == ()
    assert (options.metrics_port, options.health_port) == (8080, 8081)
    assert 1 <= options.priority <= config.AUTO_PRIORITY_MAX
    assert options.liveness_endpoint == "http://0.0.0.0:8081/healthz"
    assert not OperatorOptions(namespaces=("a",)).clusterwide
    drawn = {OperatorOptions().priority for _ in range(50)}
    assert len(drawn) > 1  # replicas do not tie


@pytest.mark.parametrize(("retry", "delay"), [(0, 5), (1, 10), (2, 20), (5, 160), (6, 300), (50, 300), (10**6, 300)])
def test_retry_delay_is_exponential_and_capped(retry: int, delay: float) -> None:
    assert retry_delay(retry) == delay


def test_startup_options_come_from_the_memo() -> None:
    options = OperatorOptions(priority=3)
    assert startup.options_of(kopf.Memo(options=options)) is options
    assert isinstance(startup.options_of(kopf.Memo()), OperatorOptions)


def test_peering_object_is_a_cluster_kopf_peering() -> None:
    obj = startup.peering_object("lepton-x")
    assert obj["apiVersion"] == "kopf.dev/v1" and obj["kind"] == "ClusterKopfPeering"
    assert obj["metadata"]["name"] == "lepton-x"


def test_startup_applies_settings_without_touching_the_cluster_when_standalone() -> None:
    settings = kopf.OperatorSettings()
    memo = kopf.Memo(options=OperatorOptions(priority=9, standalone=True))
    handler: Any = startup.startup  # kopf types the decorated function as its protocol
    asyncio.run(handler(settings=settings, memo=memo, logger=logging.getLogger("test")))
    assert settings.networking.request_timeout == config.REQUEST_TIMEOUT
    assert settings.peering.standalone


def test_peering_object_creation_is_retried_until_it_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [False, False, True]
    calls: list[str] = []

    def fake_ensure(name: str, logger: Any) -> bool:
        calls.append(name)
        return answers.pop(0)

    monkeypatch.setattr(startup, "ensure_peering", fake_ensure)
    asyncio.run(startup.keep_ensuring_peering("lepton-y", logging.getLogger("test"), delays=(0.0,)))
    assert calls == ["lepton-y"] * 3


def test_network_settings_come_from_flags_then_the_environment_then_defaults() -> None:
    assert config.network_context(environ={}) == NetworkContext() == NetworkContext(
        "monitoring", "lepton-system", {"app.kubernetes.io/name": "lepton-operator"}
    )
    environ = {"LEPTON_MONITORING_NAMESPACE": "prom", "POD_NAMESPACE": "ops", "LEPTON_OPERATOR_POD_LABELS": "app=lepton, tier=ops"}
    assert config.network_context(environ=environ) == NetworkContext("prom", "ops", {"app": "lepton", "tier": "ops"})
    assert config.network_context("obs", {"a": "b"}, environ) == NetworkContext("obs", "ops", {"a": "b"})
    with pytest.raises(ValueError, match="not key=value"):
        config.network_context(environ={"LEPTON_OPERATOR_POD_LABELS": "app"})
