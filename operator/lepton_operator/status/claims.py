"""PersistentVolumeClaims that keep pods from starting, said in one sentence for any kind's status.

A pod whose claim is not bound never gets a node and never gets a scheduler condition either
(it waits for volume binding), so without this a dataset or a job would only say "starting"
for ever. The provisioner's own reason is in the claim's events; the message points there and
names what usually decides it: the access modes and the storage class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

CLAIM_PENDING = "ClaimPending"


def unbound(claim: Mapping[str, Any] | None) -> str | None:
    """Why ``claim`` holds its pods back (``None``: it is bound, or there is no claim)."""
    if claim is None:
        return None
    phase = (claim.get("status") or {}).get("phase")
    if phase == "Bound":
        return None
    name = (claim.get("metadata") or {}).get("name", "")
    spec = claim.get("spec") or {}
    storage_class = spec.get("storageClassName") or "the default class"
    modes = ", ".join(spec.get("accessModes") or []) or "no access mode"
    return (f"claim {name} is {phase or 'Pending'}: no volume of {storage_class} ({modes}) bound yet "
            f"(kubectl describe pvc {name} shows the provisioner's reason)")  # fmt: skip
