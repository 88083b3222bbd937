"""Keeps each object's NetworkPolicy (``render.network``) in step with its spec, at the cost of one write per change.

Every kind's pass hands :data:`POLICIES` its object's parsed spec.
:meth:`PolicySync.sync` renders and writes only when
this operator process has not yet synced that generation of that object
(same uid): the first pass after the object appears or its spec changes, and
the first pass after this replica starts acting (a restart, a peering
takeover). Then it server-side applies the policy, or deletes it when
``networkPolicy.enabled`` is false (a policy
that is already gone is fine). Steady passes make no request at all, and no
pass ever reads the policy. The cost of that: a policy deleted by hand comes
back on the object's next spec change or the operator's next start, not at once.

A sync that fails raises, so the pass fails before it creates any pod (each
controller syncs first) and is retried with its backoff, a ``ReconcileError``
condition saying why: pods are never created without their isolation.

The operator's configuration (monitoring namespace, operator pods) reaches the
renderers through :attr:`PolicySync.context`, set from the run options when the
operator starts.
"""

from __future__ import annotations

import threading
from typing import Any

import kopf

from lepton_operator.controllers import kube
from lepton_operator.controllers.startup import options_of
from lepton_operator.controllers.wakeups import ObjectKey
from lepton_operator.render import network as render


class PolicySync:
    """Which generation of which object this process has synced its policy for (thread-safe)."""

    def __init__(self, context: render.NetworkContext | None = None) -> None:
        self.context = context or render.NetworkContext()
        self._lock = threading.Lock()
        self._synced: dict[ObjectKey, tuple[str, int]] = {}

    def sync(self, key: ObjectKey, uid: str, generation: int, spec: render.Spec) -> None:
        """Apply the object's policy (delete it when disabled) unless this generation was synced already."""
        with self._lock:
            if self._synced.get(key) == (uid, generation):
                return
        policy = render.object_policy(key.name, key.namespace, uid, spec, self.context)
        if policy is None:
            kube.delete(render.API_VERSION, render.KIND, key.namespace, render.policy_name(key.kind, key.name))
        else:
            kube.apply(policy)
        with self._lock:
            self._synced[key] = (uid, generation)

    def forget(self, key: ObjectKey) -> None:
        """The object's loop ended (deleted, or this replica paused): sync again when it comes back."""
        with self._lock:
            self._synced.pop(key, None)


POLICIES = PolicySync()


@kopf.on.startup()
async def configure_policies(memo: kopf.Memo, **_: Any) -> None:
    """Render policies with the operator's configuration (monitoring namespace, its own pods)."""
    POLICIES.context = options_of(memo).network
