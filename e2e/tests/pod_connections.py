"""Can this pod open a TCP connection to that address? The check every NetworkPolicy e2e test makes.

A NetworkPolicy is proven only on real pods: a client pod runs ``nc`` through
``kubectl exec`` (busybox's ``nc -w N IP PORT -e true``: connect, run ``true``,
exit 0; exit 1 with the kernel's error otherwise), so each check is exactly one
connection attempt from inside the client's network namespace. kube-router, the
local cluster's enforcer, *rejects* a denied connection: the client sees
"connection refused" at once, and a timeout only bounds a dropped SYN.

A change of policy (created, deleted, disabled) is awaited with
:func:`localcluster.kube.wait_until` up to :data:`ENFORCEMENT_BOUND_S`, never
slept on: kube-router syncs on the policy's event (its rules are in place well
under a second after the create) and every ``kuberouter.IPTABLES_SYNC_PERIOD``
(15 s) besides, which bounds a missed event.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from localcluster.kube import Kubectl, condition_true, wait_until

#: A policy change must be enforced (or lifted) within this.
ENFORCEMENT_BOUND_S = 30.0
#: One connection attempt's timeout (a dropped SYN would take this long; a reject is immediate).
CONNECT_TIMEOUT_S = 2


def listen_script(ports: Sequence[int]) -> str:
    """A shell line that accepts every connection on each of ``ports`` (busybox ``nc -ll``) until killed."""
    return " & ".join(f"nc -ll -p {port} -e true" for port in ports) + " & wait"


def client_pod(name: str, image: str, labels: dict[str, str] | None = None, listen: Sequence[int] = ()) -> dict[str, Any]:
    """A busybox pod for ``kubectl exec`` to connect from (non-root, as Pod Security asks); with
    ``listen``, it also accepts connections on those ports (a server to connect to)."""
    script = listen_script(listen) if listen else "exec sleep 3600"
    container = {"name": "main", "image": image, "imagePullPolicy": "IfNotPresent", "command": ["sh", "-c", script],
                 "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}  # fmt: skip
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"containers": [container], "restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 65532,
                                         "seccompProfile": {"type": "RuntimeDefault"}}}}  # fmt: skip


def start_client(kubectl: Kubectl, name: str, image: str, timeout: float = 120.0, *,
                 labels: dict[str, str] | None = None, listen: Sequence[int] = ()) -> str:
    """:func:`client_pod` ``name`` in ``kubectl``'s namespace; its IP once Ready (pods are refused
    until the namespace's ``default`` ServiceAccount exists, so that is awaited first)."""
    wait_until(lambda: kubectl.get_or_none("serviceaccount", "default"), 30, f"{kubectl.namespace}/default")
    kubectl.create(client_pod(name, image, labels, listen))
    pod = wait_until(lambda: _ready(kubectl, name), timeout, f"{kubectl.namespace}/{name} Ready")
    return str(pod["status"]["podIP"])


def _ready(kubectl: Kubectl, name: str) -> dict[str, Any] | None:
    pod: dict[str, Any] = kubectl.get("pod", name)
    return pod if condition_true(pod, "Ready") else None


def connect_argv(ip: str, port: int) -> list[str]:
    """busybox ``nc`` connecting once to ``ip:port``."""
    return ["nc", "-w", str(CONNECT_TIMEOUT_S), ip, str(port), "-e", "true"]


def connect(kubectl: Kubectl, client: str, ip: str, port: int) -> str:
    """One TCP connection from pod ``client`` (in ``kubectl``'s namespace) to ``ip:port``:
    "" when it was accepted, else what the client saw (its error)."""
    proc = kubectl.run("exec", client, "--", *connect_argv(ip, port), check=False, timeout=30)
    return "" if proc.returncode == 0 else (proc.stderr.strip() or f"exit {proc.returncode}")


def connects(kubectl: Kubectl, client: str, ip: str, port: int) -> bool:
    return connect(kubectl, client, ip, port) == ""


def refused(kubectl: Kubectl, client: str, ip: str, port: int) -> str:
    """What the client saw when ``ip:port`` refused it; fails the test if the connection was accepted."""
    error = connect(kubectl, client, ip, port)
    assert error, f"{client} in {kubectl.namespace} connected to {ip}:{port}; the policy should deny it"
    return error
