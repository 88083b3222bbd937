"""A reachable cluster and its health: what ``up()`` of every mode returns, and how it waits.

Kept apart from :mod:`localcluster.cluster` (which picks the mode) so that the mode modules
(:mod:`localcluster.local`, :mod:`localcluster.kind`) can build a :class:`Cluster` without an
import cycle.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from localcluster import nodes
from localcluster.kube import Kubectl, KubectlError, wait_until

MODE_LOCAL, MODE_KIND, MODE_EXISTING = "local", "kind", "existing"


class ClusterError(RuntimeError):
    """The cluster could not be started or reached."""


@dataclass(frozen=True)
class Cluster:
    """A reachable cluster: how to talk to it, and whether this call created it."""

    mode: str
    name: str
    kubeconfig: Path
    kubectl_binary: Path
    created: bool
    #: Whether fake nodes can be added at run time (local kwok cluster only).
    fake_nodes: bool
    #: The local cluster's real node (None on kind / an existing cluster, whose nodes are all real).
    real_node: str | None = None
    #: argv prefix that enters the cluster's network namespace (empty: the host's network).
    network: tuple[str, ...] = ()

    def kubectl(self, namespace: str | None = None) -> Kubectl:
        return Kubectl(self.kubectl_binary, self.kubeconfig, namespace)

    def network_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the cluster's network (pod IPs, Service IPs, the node's ports)."""
        return [*self.network, *argv]

    def run_in_network(self, argv: Sequence[str], timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the cluster's network; stdout and stderr captured as text."""
        return subprocess.run(self.network_argv(argv), capture_output=True, text=True, timeout=timeout)

    @property
    def env(self) -> dict[str, str]:
        """``os.environ`` plus ``KUBECONFIG`` for processes that should act on this cluster."""
        return {**os.environ, "KUBECONFIG": str(self.kubeconfig)}


def api_ready(kubectl: Kubectl) -> bool:
    """``GET /readyz`` answers ok."""
    try:
        return kubectl.run("get", "--raw", "/readyz", timeout=5, check=False).stdout.strip() == "ok"
    except KubectlError:
        return False


def wait_ready(kubectl: Kubectl, timeout: float = 90.0, on_error: str = "") -> None:
    """Wait for /readyz, every node Ready and the ``default`` ServiceAccount in ``default``."""
    try:
        wait_until(lambda: api_ready(kubectl), timeout, "kube-apiserver /readyz")
        nodes.wait_nodes_ready(kubectl, timeout=timeout)
        wait_until(lambda: kubectl.in_namespace("default").get_or_none("serviceaccount", "default"),
                   timeout, "ServiceAccount default/default")
    except AssertionError as exc:
        raise ClusterError(f"{exc}\n{on_error}") from None
