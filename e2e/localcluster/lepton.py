"""Lepton on a cluster: install the generated CRDs, run the operator as a local process.

Used by both the demo and the e2e fixtures, so they share one start-up path.
``install_crds`` server-side applies ``crds/`` and waits until every CRD is
Established (objects are refused before). ``start_operator`` starts ``lepton-operator run`` detached from the caller's terminal,
writes its log to a file, and returns once ``/healthz`` answers, so the demo and
the test fixtures share the same start-up path. The pid is kept in a file next
to the log so ``make down`` can stop an operator started by an earlier ``make
demo`` in another shell.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import yaml

from localcluster.kube import Kubectl, wait_until

REPO = Path(__file__).resolve().parents[2]
CRD_LABEL = "app.kubernetes.io/part-of=lepton"


OPERATOR_NAMESPACE = "lepton-system"
OPERATOR_SERVICE_ACCOUNT = "lepton-operator"
RBAC_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


def install_rbac(kubectl: Kubectl, kustomization: str = "manifests/base") -> None:
    """Apply the operator's namespace, ServiceAccount and RBAC from the shipped kustomization."""
    built = yaml.safe_load_all(kubectl("kustomize", str(REPO / kustomization)))
    wanted = [document for document in built if document and document["kind"] in RBAC_KINDS]
    kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=yaml.safe_dump_all(wanted))


def service_account_kubeconfig(kubectl: Kubectl, path: Path, duration: str = "4h") -> Path:
    """A kubeconfig that authenticates as the operator's ServiceAccount (a bound token).

    The e2e operator runs with it, so every e2e test also proves that the shipped
    ClusterRole grants what the operator needs, and nothing relies on admin rights.
    """
    token = kubectl(
        "create", "token", OPERATOR_SERVICE_ACCOUNT, "-n", OPERATOR_NAMESPACE, f"--duration={duration}"
    ).strip()
    admin = json.loads(kubectl("config", "view", "--raw", "--minify", "-o", "json"))
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "lepton", "cluster": cluster}],
        "users": [{"name": OPERATOR_SERVICE_ACCOUNT, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": "lepton", "user": OPERATOR_SERVICE_ACCOUNT}}],
        "current-context": "operator",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def install_crds(kubectl: Kubectl) -> None:
    """Server-side apply ``crds/`` (kustomize) and wait until every CRD is Established."""
    kubectl("apply", "--server-side", "--force-conflicts", "-k", str(REPO / "crds"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "-l", CRD_LABEL)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@dataclass(frozen=True)
class OperatorProcess:
    """A running ``lepton-operator run`` and where to reach it."""

    pid: int
    log_path: Path
    metrics_url: str
    health_url: str

    def alive(self) -> bool:
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        stop_pid(self.pid, timeout)


def stop_pid(pid: int, timeout: float = 20.0) -> None:
    """SIGTERM, wait, then SIGKILL; a pid that is already gone is fine."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return

    def gone() -> bool:
        try:
            finished, _ = os.waitpid(pid, os.WNOHANG)
            if finished == pid:
                return True
        except ChildProcessError:
            pass
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    try:
        wait_until(gone, timeout, f"operator pid {pid} to exit")
    except AssertionError:
        os.kill(pid, signal.SIGKILL)


def start_operator(
    kubeconfig: Path,
    log_path: Path,
    *,
    priority: int | None = None,
    extra_args: tuple[str, ...] = (),
    timeout: float = 60.0,
) -> OperatorProcess:
    """Start the operator on free ports and wait for its liveness endpoint."""
    metrics_port, health_port = free_port(), free_port()
    command = [
        sys.executable, "-m", "lepton_operator.cli", "run",
        "--metrics-port", str(metrics_port),
        "--health-port", str(health_port),
        *(("--priority", str(priority)) if priority is not None else ()),
        *extra_args,
    ]  # fmt: skip
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            start_new_session=True,
        )
    running = OperatorProcess(
        pid=process.pid,
        log_path=log_path,
        metrics_url=f"http://127.0.0.1:{metrics_port}/metrics",
        health_url=f"http://127.0.0.1:{health_port}/healthz",
    )

    def healthy() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the operator exited with {process.returncode}:\n{running.log_tail()}")
        return http_ok(running.health_url)

    try:
        wait_until(healthy, timeout, "the operator's /healthz")
    except AssertionError as error:
        running.stop()
        raise RuntimeError(f"{error}\n{running.log_tail()}") from None
    return running
