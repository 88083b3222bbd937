"""Keeps each object's NetworkPolicy (``render.network``) in step with its spec, at the cost of one write per change.

Every kind's pass hands :data:`POLICIES` its object's parsed spec.
:meth:`PolicySync.sync` renders and writes only when
this operator process has not yet synced that generation of that object
(same uid): the first pass after the object appears or its spec changes, and
the first pass after this replica starts acting (a restart, a peering
takeover). Then it server-side applies the policy, or deletes it when
``networkPolicy.enabled`` is false (a policy
that is already gone is fine). Steady passes make no request at all, and no
pass ever reads the policy. A policy deleted by anyone else (by hand, by a
GitOps prune) is put back at once: a watch on the operator's policies
(:func:`restore_deleted_policy`) sees the deletion, forgets that the object
was synced and wakes its loop, whose next pass applies the policy again. Only
deletions matter to that watch; an edit by hand is undone on the object's next
spec change or the operator's next start (server-side apply takes back the
fields it owns).

A sync that fails raises, so the pass fails before it creates any pod (each
controller syncs first) and is retried with its backoff, a ``ReconcileError``
condition saying why: pods are never created without their isolation.

The operator's configuration (monitoring namespace, operator pods) reaches the
renderers through :attr:`PolicySync.context`, set from the run options when the
operator starts.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

import kopf

from lepton_operator.controllers import kube
from lepton_operator.controllers.startup import options_of
from lepton_operator.controllers.wakeups import WAKEUPS, ObjectKey, owner_key
from lepton_operator.render import common
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

    def forget(self, key: ObjectKey) -> bool:
        """Sync ``key`` again on its next pass (its loop ended, or its policy went); ``True`` if it was synced."""
        with self._lock:
            return self._synced.pop(key, None) is not None


POLICIES = PolicySync()


def owners_of(policy: Mapping[str, Any]) -> list[ObjectKey]:
    """The object a policy belongs to, from its owner label (``lepton.ai/<kind>``)."""
    keys = (owner_key(kind, common.owner_label(kind), policy) for kind in render.NAME_SUFFIXES)
    return [key for key in keys if key is not None]


@kopf.on.event(render.API_GROUP, render.VERSION, render.PLURAL, labels={common.ROLE_LABEL: render.ROLE},
               id="restore-deleted-networkpolicy")  # fmt: skip
async def restore_deleted_policy(body: kopf.Body, type: str | None, **_: Any) -> None:
    """A policy of ours was deleted while its object lives: its next pass applies it again.

    Objects this replica does not reconcile (deleted ones, whose policy goes
    with them; or while it stands by) were never synced here, and are not woken.
    """
    if type != "DELETED":
        return
    for key in owners_of(body):
        if POLICIES.forget(key):
            WAKEUPS.wake(key)


@kopf.on.startup()
async def configure_policies(memo: kopf.Memo, **_: Any) -> None:
    """Render policies with the operator's configuration (monitoring namespace, its own pods)."""
    POLICIES.context = options_of(memo).network
