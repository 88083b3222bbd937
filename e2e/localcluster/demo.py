"""``make demo``: the platform on the built-in local cluster, from nothing to `kubectl get lepton`.

Steps, each idempotent so the command can be run again: bring the cluster up
(building the pinned binaries on first use), server-side apply the generated
CRDs and wait until they are Established, start the operator as a local process
(its pid and log under the state directory), apply ``manifests/examples/`` into
the ``lepton-demo`` namespace, wait until the operator has written a Ready
condition on every example, and print ``kubectl get lepton``. ``down`` stops
the operator and deletes the cluster.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import localcluster
from localcluster import config
from localcluster.kube import condition, wait_until
from localcluster.lepton import REPO, OperatorProcess, install_crds, start_operator, stop_pid

NAMESPACE = "lepton-demo"


def _pid_file() -> Path:
    return localcluster.state_dir() / "operator.pid"


def _stop_previous_operator() -> None:
    pid_file = _pid_file()
    if pid_file.exists():
        stop_pid(int(pid_file.read_text().strip()))
        pid_file.unlink()


def up() -> int:
    started = time.monotonic()
    cluster = localcluster.up()
    kubectl = cluster.kubectl()
    install_crds(kubectl)
    _stop_previous_operator()
    operator: OperatorProcess = start_operator(cluster.kubeconfig, localcluster.state_dir() / "operator.log")
    _pid_file().write_text(str(operator.pid))
    if kubectl.get_or_none("namespace", NAMESPACE) is None:
        kubectl.create(config.kwok_namespace(NAMESPACE))  # the examples' pods go to kwok nodes
    demo = kubectl.in_namespace(NAMESPACE)
    wait_until(lambda: demo.get_or_none("serviceaccount", "default"), 30, "the demo namespace's ServiceAccount")
    demo("apply", "--server-side", "-k", str(REPO / "manifests" / "examples"))
    for kind in ("leptondatasets", "trainingjobs", "inferenceservices"):
        for item in demo.get(kind):
            name = item["metadata"]["name"]
            wait_until(lambda: condition(demo.get(kind, name), "Ready"), 60, f"{kind}/{name} status")
    print(demo("get", "lepton"))
    print(
        f"Lepton is running ({time.monotonic() - started:.0f} s).\n"
        f"  export KUBECONFIG={cluster.kubeconfig}\n"
        f"  kubectl get lepton -n {NAMESPACE}        (kubectl: {cluster.kubectl_binary})\n"
        f"  operator log: {operator.log_path}   metrics: {operator.metrics_url}\n"
        "  stop everything: make down"
    )
    return 0


def down() -> int:
    _stop_previous_operator()
    existed = localcluster.down()
    print("local cluster deleted" if existed else "no local cluster was running")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcluster.demo", description=__doc__)
    parser.add_argument("action", choices=("up", "down"))
    args = parser.parse_args(argv)
    return up() if args.action == "up" else down()


if __name__ == "__main__":
    sys.exit(main())
