"""The Pod Security ``restricted`` checks that a rendered pod spec can fail, as a test helper.

A reading of https://kubernetes.io/docs/concepts/security/pod-security-standards/ (restricted,
v1.25+), limited to the fields the operator renders. The e2e tests check the real thing: the
API server's PodSecurity admission in a namespace that enforces ``restricted``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}


def violations(pod_spec: Mapping[str, Any]) -> list[str]:
    """Every restricted rule ``pod_spec`` breaks, as readable strings (empty: admitted)."""
    found: list[str] = []
    pod = pod_spec.get("securityContext") or {}
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(flag):
            found.append(f"{flag} is set")
    for volume in pod_spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= ALLOWED_VOLUMES:
            found.append(f"volume {volume['name']} is {sorted(kinds)}")
    if pod.get("runAsUser") == 0:
        found.append("the pod runs as uid 0")
    containers = [*(pod_spec.get("initContainers") or []), *(pod_spec.get("containers") or [])]
    for container in containers:
        name, context = container["name"], container.get("securityContext") or {}
        if context.get("privileged"):
            found.append(f"{name} is privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name} may escalate privileges")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            found.append(f"{name} does not drop ALL capabilities")
        if set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{name} adds capabilities")
        if context.get("runAsNonRoot", pod.get("runAsNonRoot")) is not True:
            found.append(f"{name} may run as root")
        if context.get("runAsUser") == 0:
            found.append(f"{name} runs as uid 0")
        seccomp = (context.get("seccompProfile") or pod.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name} has no RuntimeDefault seccomp profile")
    return found
