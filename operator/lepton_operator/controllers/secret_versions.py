"""Roll an InferenceService's replicas when a Secret they read at start changes (key rotation).

Triton reads its API key (``LEPTON_API_KEY``, a ``secretKeyRef``) and its gRPC TLS files once,
at start: a new value in the Secret is served only by new pods. So the pod template carries the
``resourceVersion`` of each Secret it reads (``render.inference.SECRET_VERSIONS_ANNOTATION``): a
version, never the value nor a hash of it (an unsalted hash of a short key could be tested
against guesses). A changed Secret makes a new template and the Deployment rolls, never below the
serving count (``maxUnavailable: 0``). Any write to the Secret moves its version, so a label
edit rolls the replicas too: harmless, and rare.

How the operator notices without watching Secrets: a watch (even label-selected) needs
cluster-wide ``list``/``watch`` on every Secret, which an operator should not hold; its RBAC has
``get`` only. Instead every pass records the versions it rendered (:meth:`SecretVersions.rendered`,
read by the same GET that checks the Secret, ``secrets.check_required_secrets``), and one loop
(:meth:`SecretVersions.run`) GETs each recorded Secret every :data:`POLL_SECONDS` and wakes the
objects whose Secret moved or went. That is one GET per referenced Secret per interval, and a
full pass only on a change: a rotation reaches the replicas within a poll plus a rollout. A
Secret that goes missing wakes its object once: the pass reports ``SecretNotFound`` and forgets
it (:meth:`SecretVersions.forget`), its own recheck (``secrets.recheck_seconds``) takes over.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping

from lepton_operator.controllers import kube
from lepton_operator.controllers.reconcile import Logger
from lepton_operator.controllers.wakeups import WAKEUPS, ObjectKey

#: How often the recorded Secrets are read again: the longest a rotation waits before it rolls.
POLL_SECONDS = 10.0


class SecretVersions:
    """The Secrets' versions each object's pods were rendered with (thread-safe: passes run in threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rendered: dict[ObjectKey, dict[str, str]] = {}

    def rendered(self, key: ObjectKey, versions: Mapping[str, str]) -> None:
        """A pass applied a template with ``versions`` (``{}``: it reads no Secret, nothing to poll)."""
        with self._lock:
            if versions:
                self._rendered[key] = dict(versions)
            else:
                self._rendered.pop(key, None)

    def forget(self, key: ObjectKey) -> None:
        with self._lock:
            self._rendered.pop(key, None)

    def moved(self) -> list[ObjectKey]:
        """The objects one of whose Secrets has another version now, or is gone (one GET per Secret)."""
        with self._lock:
            tracked = {key: dict(versions) for key, versions in self._rendered.items()}
        current: dict[tuple[str, str], str | None] = {}
        for key, versions in tracked.items():
            for name in versions:
                if (key.namespace, name) not in current:
                    secret = kube.get("v1", "Secret", key.namespace, name)
                    current[(key.namespace, name)] = None if secret is None else str(secret["metadata"].get("resourceVersion"))
        return sorted(key for key, versions in tracked.items()
                      if any(current[(key.namespace, name)] != version for name, version in versions.items()))  # fmt: skip

    async def run(self, interval: float, logger: Logger) -> None:
        """Every ``interval`` seconds, wake the objects whose Secrets moved (a failed round is logged, retried)."""
        while True:
            await asyncio.sleep(interval)
            try:
                moved = await asyncio.to_thread(self.moved)
            except Exception as error:  # noqa: BLE001 - the API server may be briefly away; the next round retries
                logger.warning(f"secret version poll failed: {type(error).__name__}: {error}")
                continue
            for key in moved:
                logger.info(f"a Secret of {key.kind} {key.namespace}/{key.name} changed: rolling its replicas")
                WAKEUPS.wake(key)


SECRET_VERSIONS = SecretVersions()
