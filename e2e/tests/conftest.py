"""Fixtures for e2e tests: one cluster per session, one namespace per test.

* ``cluster`` (session): :func:`localcluster.up` — builds the pinned binaries if the cache is
  cold (minutes, with progress), starts or reuses the local kwok cluster (or kind / an existing
  kubeconfig, see ``localcluster.cluster``). A cluster that cannot start is an ERROR, never a
  skip. A cluster a test session created is deleted when the last session using it ends
  (unless ``LEPTON_E2E_KEEP`` is set); one started by hand (``python -m localcluster up``,
  ``make demo``) is left running.
* ``cluster_kubectl`` (session): kubectl for cluster-scoped commands.
* ``namespace`` (function): a fresh namespace whose pods go to kwok nodes (``config.kwok_namespace``:
  a default toleration of the kwok taint and the node selector ``type=kwok``), returned once its
  ``default`` ServiceAccount exists (pods are refused before), deleted afterwards without waiting.
* ``real_namespace`` (function): the same without the kwok annotations: its pods run on the local
  cluster's real node (on kind, on any worker).
* ``other_real_namespace`` (function): a second namespace like ``real_namespace``, for a client
  outside the namespace under test (NetworkPolicies that admit only the same namespace).
* ``incluster_namespace`` (function): a kwok namespace served only by the in-cluster operator.
* ``built_images``, ``incluster_operator`` (session): from ``incluster_fixtures``: the shipped
  images built here and loaded into the cluster, and the operator installed from
  ``manifests/overlays/local``.
* ``kubectl`` (function): kubectl bound to that namespace. ``kubectl("get", "pods")`` -> stdout,
  ``kubectl.json(...)`` -> parsed, failures raise ``KubectlError`` with stderr.
* ``lepton_crds``, ``lepton_operator`` (session): from ``operator_fixtures`` (imported here rather
  than via ``pytest_plugins``, which pytest refuses in a conftest that is not top-level).
* ``repository``, ``prometheus`` (function): from ``serving_fixtures``: a doubling model's Triton
  repository and a real Prometheus, for the autoscaling tests.

Wait on conditions with ``localcluster.kube.wait_until``; never sleep.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import localcluster
from localcluster import config, sharing
from localcluster.kube import Kubectl, wait_until
from incluster_fixtures import NAMESPACE_PREFIX as INCLUSTER_PREFIX
from incluster_fixtures import built_images, incluster_operator  # noqa: F401 - fixtures
from operator_fixtures import lepton_crds, lepton_operator, namespace_base, operator_kubeconfig  # noqa: F401 - fixtures
from serving_fixtures import prometheus, repository  # noqa: F401 - fixtures


@pytest.fixture(scope="session")
def cluster() -> Iterator[localcluster.Cluster]:
    sharing.register_user()  # before up(): a session ending meanwhile must see us and keep the cluster
    try:
        c = localcluster.up(ephemeral=True)
    except BaseException:
        sharing.unregister_user()
        raise
    try:
        yield c
    finally:
        sharing.unregister_user()
        others = sharing.other_users()
        if os.environ.get("LEPTON_E2E_KEEP") or not (c.created or sharing.is_ephemeral()):
            pass
        elif others:
            print(f"\n[localcluster] leaving the cluster to the last of pids {others}")
        else:
            localcluster.down()


@pytest.fixture(scope="session")
def cluster_kubectl(cluster: localcluster.Cluster) -> Kubectl:
    return cluster.kubectl()


def _namespace_name(test_name: str) -> str:
    # operator_fixtures.namespace_patterns relies on this shape: "<namespace_base>-<6 hex>".
    return f"{namespace_base(test_name)}-{uuid.uuid4().hex[:6]}"


def _fresh_namespace(cluster_kubectl: Kubectl, manifest: dict[str, Any]) -> Iterator[str]:
    name = str(manifest["metadata"]["name"])
    cluster_kubectl.create(manifest)
    ns = cluster_kubectl.in_namespace(name)
    wait_until(lambda: ns.get_or_none("serviceaccount", "default"), 30, f"ServiceAccount {name}/default")
    try:
        yield name
    finally:
        cluster_kubectl.delete("namespace", name)


@pytest.fixture
def namespace(request: pytest.FixtureRequest, cluster_kubectl: Kubectl) -> Iterator[str]:
    yield from _fresh_namespace(cluster_kubectl, config.kwok_namespace(_namespace_name(request.node.name)))


@pytest.fixture
def real_namespace(request: pytest.FixtureRequest, cluster_kubectl: Kubectl) -> Iterator[str]:
    name = _namespace_name(request.node.name)
    yield from _fresh_namespace(cluster_kubectl, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


@pytest.fixture
def other_real_namespace(request: pytest.FixtureRequest, cluster_kubectl: Kubectl) -> Iterator[str]:
    name = _namespace_name("other-" + request.node.name)
    yield from _fresh_namespace(cluster_kubectl, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})


@pytest.fixture
def incluster_namespace(request: pytest.FixtureRequest, cluster_kubectl: Kubectl) -> Iterator[str]:
    """A kwok namespace that only the in-cluster operator serves (never a host operator's glob)."""
    name = INCLUSTER_PREFIX + _namespace_name(request.node.name)
    yield from _fresh_namespace(cluster_kubectl, config.kwok_namespace(name))


@pytest.fixture
def kubectl(cluster_kubectl: Kubectl, namespace: str) -> Kubectl:
    return cluster_kubectl.in_namespace(namespace)

