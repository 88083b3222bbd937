"""Fixtures for e2e tests: one cluster per session, one namespace per test.

* ``cluster`` (session): :func:`localcluster.up` — builds the pinned binaries if the cache is
  cold (minutes, with progress), starts or reuses the local kwok cluster (or kind / an existing
  kubeconfig, see ``localcluster.cluster``). A cluster that cannot start is an ERROR, never a
  skip. At session end it is deleted only if this session created it, ``LEPTON_E2E_KEEP`` is
  unset and no other live session registered as a user.
* ``cluster_kubectl`` (session): kubectl for cluster-scoped commands.
* ``namespace`` (function): a fresh namespace, returned once its ``default`` ServiceAccount
  exists (pods are refused before), deleted afterwards without waiting.
* ``kubectl`` (function): kubectl bound to that namespace. ``kubectl("get", "pods")`` -> stdout,
  ``kubectl.json(...)`` -> parsed, failures raise ``KubectlError`` with stderr.

Wait on conditions with ``localcluster.kube.wait_until``; never sleep.
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator

import pytest

import localcluster
from localcluster import cluster as lc
from localcluster.kube import Kubectl, wait_until


@pytest.fixture(scope="session")
def cluster() -> Iterator[localcluster.Cluster]:
    c = localcluster.up()
    lc.register_user()
    try:
        yield c
    finally:
        lc.unregister_user()
        others = lc.other_users()
        if c.created and not os.environ.get("LEPTON_E2E_KEEP") and not others:
            localcluster.down()
        elif c.created and others:
            print(f"\n[localcluster] leaving the cluster up: still used by pids {others}")


@pytest.fixture(scope="session")
def cluster_kubectl(cluster: localcluster.Cluster) -> Kubectl:
    return cluster.kubectl()


def _namespace_name(test_name: str) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"{base or 't'}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def namespace(request: pytest.FixtureRequest, cluster_kubectl: Kubectl) -> Iterator[str]:
    name = _namespace_name(request.node.name)
    cluster_kubectl("create", "namespace", name)
    ns = cluster_kubectl.in_namespace(name)
    wait_until(lambda: ns.get_or_none("serviceaccount", "default"), 30, f"ServiceAccount {name}/default")
    try:
        yield name
    finally:
        cluster_kubectl.delete("namespace", name)


@pytest.fixture
def kubectl(cluster_kubectl: Kubectl, namespace: str) -> Kubectl:
    return cluster_kubectl.in_namespace(namespace)
