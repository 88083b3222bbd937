"""Session fixtures that put Lepton on the e2e cluster: the CRDs, and the operator as a process.

* ``lepton_crds`` (session): server-side applies ``crds/`` once and waits until every CRD is
  Established (``localcluster.lepton.install_crds``, the same path as ``make demo``).
* ``operator_kubeconfig`` (session): applies the shipped RBAC (``manifests/base``) and returns a
  kubeconfig with a token of the operator's own ServiceAccount.
* ``lepton_operator`` (session): ``lepton-operator run`` as a subprocess authenticated as that
  ServiceAccount (not as admin), on free ports, started through ``localcluster.lepton.start_operator`` and returned
  once ``/healthz`` answers. It yields a :class:`RunningOperator` (metrics and health URLs, log
  path, peering name, served namespaces). On teardown the operator is stopped, its peering
  object deleted, and if any test failed meanwhile the tail of its log is printed.

The cluster may be shared with other pytest sessions and with ``make demo``, so the operator
is isolated twice over: it peers under a name unique to this session (so it neither pauses
nor is paused by another session's operator), and it serves only the namespaces of the tests
that asked for it (kopf glob patterns derived from their names, see
:func:`namespace_patterns`), never the demo's or another session's.

Loaded with ``pytest_plugins = ["operator_fixtures"]`` in ``conftest.py``.
"""

from __future__ import annotations

import re
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import localcluster
from localcluster.kube import Kubectl
from localcluster.lepton import (
    OperatorProcess,
    install_crds,
    install_rbac,
    service_account_kubeconfig,
    start_operator,
)

#: Priority of the session's operator; a test that starts a second one picks a lower value.
SESSION_PRIORITY = 100
LOG_TAIL_LINES = 80


def namespace_base(test_name: str) -> str:
    """The name part ``conftest.namespace`` derives from a test name (before its random suffix)."""
    return re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-") or "t"


def namespace_patterns(items: Sequence[pytest.Item], fixture: str = "lepton_operator") -> list[str]:
    """kopf namespace globs matching the per-test namespaces of the tests that use ``fixture``."""
    patterns = {
        f"{namespace_base(item.name)}-*"
        for item in items
        if fixture in getattr(item, "fixturenames", ()) and "namespace" in getattr(item, "fixturenames", ())
    }
    return sorted(patterns)


def metric_samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of metric ``name`` (a sample name such as ``lepton_reconcile_seconds_count``) by labels."""
    samples: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                samples[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def http_get(url: str, timeout: float = 5.0) -> tuple[int, str]:
    """Status and body of a GET (raises ``OSError`` when nothing answers)."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return int(response.status), response.read().decode()


@dataclass(frozen=True)
class RunningOperator:
    """An operator process under test and how it was started."""

    process: OperatorProcess
    peering_name: str
    namespaces: tuple[str, ...]
    kubeconfig: Path

    @property
    def metrics_url(self) -> str:
        return self.process.metrics_url

    @property
    def health_url(self) -> str:
        return self.process.health_url

    @property
    def log_path(self) -> Path:
        return self.process.log_path

    def metrics(self) -> str:
        """The text of ``/metrics`` now."""
        return http_get(self.metrics_url)[1]

    def reconcile_counts(self) -> dict[str, float]:
        """``lepton_reconcile_seconds_count`` by kind."""
        return {dict(labels)["kind"]: value
                for labels, value in metric_samples(self.metrics(), "lepton_reconcile_seconds_count").items()}


def run_operator(
    kubeconfig: Path,
    log_path: Path,
    *,
    peering_name: str,
    namespaces: Sequence[str],
    priority: int,
) -> RunningOperator:
    """Start ``lepton-operator run`` and wait for ``/healthz`` (the process is stopped on failure)."""
    extra: list[str] = ["--peering-name", peering_name]
    for pattern in namespaces:
        extra += ["--namespace", pattern]
    process = start_operator(kubeconfig, log_path, priority=priority, extra_args=tuple(extra))
    return RunningOperator(process, peering_name, tuple(namespaces), kubeconfig)


def delete_peering(kubectl: Kubectl, name: str) -> None:
    kubectl.delete("clusterkopfpeering", name)


@pytest.fixture(scope="session")
def lepton_crds(cluster_kubectl: Kubectl) -> None:
    install_crds(cluster_kubectl)


@pytest.fixture(scope="session")
def operator_kubeconfig(cluster_kubectl: Kubectl, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The e2e operator's credentials: its own ServiceAccount token, bound to the shipped RBAC.

    Every e2e test that runs the operator therefore also proves that
    manifests/base grants what the operator needs (no admin rights hide a gap).
    """
    install_rbac(cluster_kubectl)
    return service_account_kubeconfig(cluster_kubectl, tmp_path_factory.mktemp("operator-sa") / "kubeconfig")


#: Peering names of the session operators running now (one at most, see ``lepton_operator``).
_SESSION_OPERATORS: list[str] = []


@pytest.fixture(scope="session")
def lepton_operator(
    request: pytest.FixtureRequest,
    operator_kubeconfig: Path,
    cluster_kubectl: Kubectl,
    lepton_crds: None,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningOperator]:
    if _SESSION_OPERATORS:  # a module that imports this fixture defines a second one, with an operator of its own
        pytest.fail(f"a second session operator would act beside {_SESSION_OPERATORS[0]}: "
                    "take lepton_operator from conftest, do not import it into a test module")  # fmt: skip
    failed_before = request.session.testsfailed
    peering_name = f"lepton-e2e-{uuid.uuid4().hex[:8]}"
    _SESSION_OPERATORS.append(peering_name)
    namespaces = namespace_patterns(request.session.items)
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    running = run_operator(
        operator_kubeconfig, log_path, peering_name=peering_name, namespaces=namespaces, priority=SESSION_PRIORITY
    )
    try:
        yield running
    finally:
        running.process.stop()
        _SESSION_OPERATORS.remove(peering_name)
        delete_peering(cluster_kubectl, peering_name)
        if request.session.testsfailed > failed_before:
            print(f"\n--- lepton-operator log ({log_path}), last {LOG_TAIL_LINES} lines ---")
            print(running.process.log_tail(LOG_TAIL_LINES))
