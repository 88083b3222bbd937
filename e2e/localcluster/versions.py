"""Pinned versions of every binary the local cluster runs, and where they are cached.

Everything the harness starts is built from the Go module proxy at exactly these versions
(see ``build.py``), so a test run is reproducible and never pulls an image. Bumping a
version here is the only change needed to move the cluster to a new release: the cache is
keyed by ``<name>-<version>``, so old and new binaries live side by side and nothing stale
is ever reused.

Cache layout (outside the repository)::

    <root>/bin/<name>-<version>/<name>

where ``<root>`` is ``$LEPTON_CACHE_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/lepton``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"
#: The staging modules (k8s.io/api, client-go, ...) are published as v0.<minor>.<patch>.
KUBERNETES_STAGING_VERSION = "v0." + KUBERNETES_VERSION.removeprefix("v1.")
ETCD_VERSION = "v3.6.14"
KWOK_VERSION = "v0.8.0"
#: Only used when ``LEPTON_E2E_CLUSTER=kind`` and no ``kind`` is on PATH.
KIND_VERSION = "v0.33.0"
#: A real S3-compatible server (an S3 gateway over a local directory) for the dataset preparer's
#: s3:// tests; its go.mod has no replace directives, so a plain ``go install`` builds it.
VERSITYGW_VERSION = "v1.8.0"
VERSITYGW_MAIN_PACKAGE = "github.com/versity/versitygw/cmd/versitygw"
#: The real node's kubelet and kube-proxy: one minor below the control plane (within skew),
#: because kubelet 1.36 no longer supports Debian's containerd 1.6.
NODE_KUBERNETES_VERSION = "v1.35.4"
NODE_KUBERNETES_STAGING_VERSION = "v0." + NODE_KUBERNETES_VERSION.removeprefix("v1.")
#: Cluster DNS for the real node's pods; a plain ``go install`` builds it.
COREDNS_VERSION = "v1.15.0"
COREDNS_MAIN_PACKAGE = "github.com/coredns/coredns"
#: Dynamic PersistentVolumes on the real node: the provisioner kind ships as its default
#: StorageClass (``standard``), so claims behave as they do on kind. Plain ``go install``.
LOCAL_PATH_VERSION = "v0.0.30"
LOCAL_PATH_MAIN_PACKAGE = "github.com/rancher/local-path-provisioner"
#: The real node's NetworkPolicy enforcer (test harness only, never shipped: security flaws are
#: reported for this release, the only one on the module proxy). No replace directives in its
#: go.mod, so a plain ``go install`` builds it; see ``localcluster.kuberouter``.
KUBE_ROUTER_VERSION = "v2.1.0"
KUBE_ROUTER_MAIN_PACKAGE = "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router"

#: Binaries built from k8s.io/kubernetes, and their main packages.
KUBERNETES_COMMANDS: dict[str, str] = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kube-controller-manager": "k8s.io/kubernetes/cmd/kube-controller-manager",
    "kube-scheduler": "k8s.io/kubernetes/cmd/kube-scheduler",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
}
NODE_COMMANDS: dict[str, str] = {
    "kubelet": "k8s.io/kubernetes/cmd/kubelet",
    "kube-proxy": "k8s.io/kubernetes/cmd/kube-proxy",
}
ETCD_MAIN_PACKAGE = "go.etcd.io/etcd/server/v3"
KWOK_COMMANDS: dict[str, str] = {
    "kwok": "sigs.k8s.io/kwok/cmd/kwok",
    "kwokctl": "sigs.k8s.io/kwok/cmd/kwokctl",
}


@dataclass(frozen=True)
class Binary:
    """One cached executable: its name, the version it was built at, and the group it is built with."""

    name: str
    version: str
    group: str  # "kubernetes" | "etcd" | "kwok" | "node" | "coredns" | "storage" | "netpol" | "kind" | "versitygw"


BINARIES: tuple[Binary, ...] = (
    *(Binary(n, KUBERNETES_VERSION, "kubernetes") for n in KUBERNETES_COMMANDS),
    Binary("etcd", ETCD_VERSION, "etcd"),
    *(Binary(n, KWOK_VERSION, "kwok") for n in KWOK_COMMANDS),
)
#: The real node's binaries (built only where a real node runs, i.e. the local mode).
NODE_BINARIES: tuple[Binary, ...] = (
    *(Binary(n, NODE_KUBERNETES_VERSION, "node") for n in NODE_COMMANDS),
    Binary("coredns", COREDNS_VERSION, "coredns"),
    Binary("local-path-provisioner", LOCAL_PATH_VERSION, "storage"),
    Binary("kube-router", KUBE_ROUTER_VERSION, "netpol"),
)
KIND_BINARY = Binary("kind", KIND_VERSION, "kind")
VERSITYGW_BINARY = Binary("versitygw", VERSITYGW_VERSION, "versitygw")


def cache_root() -> Path:
    """Root of the binary cache: ``$LEPTON_CACHE_DIR`` or ``${XDG_CACHE_HOME:-~/.cache}/lepton``."""
    explicit = os.environ.get("LEPTON_CACHE_DIR")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "lepton"


def binary_dir(binary: Binary) -> Path:
    """The directory that holds exactly one cached binary (renamed into place atomically)."""
    return cache_root() / "bin" / f"{binary.name}-{binary.version}"


def binary_path(binary: Binary) -> Path:
    """Where the cached executable lives (it may not exist yet)."""
    return binary_dir(binary) / binary.name


def by_name(name: str) -> Binary:
    """Look up a pinned binary by its command name."""
    for b in (*BINARIES, *NODE_BINARIES, KIND_BINARY):
        if b.name == name:
            return b
    raise KeyError(f"no pinned binary named {name!r}")


def path_of(name: str) -> Path:
    """Cached path of the pinned binary ``name`` (``kubectl``, ``etcd``, ``kwokctl``, ...)."""
    return binary_path(by_name(name))
