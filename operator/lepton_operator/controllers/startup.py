"""Operator start: apply the kopf settings and make sure the peering object exists.

kopf's mandatory peering keeps an operator paused until it has seen the peering
object and found no peer with a higher priority; if the object does not exist,
the operator would wait forever. So the start creates the
``ClusterKopfPeering`` (the CRD comes with ``crds/``) when it is missing. Where
RBAC forbids that, the operator logs how to create it and stays paused, which
is the safe side: two replicas must never both act.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Coroutine, Sequence
from typing import Any

import kopf
import kubernetes

from lepton_operator.controllers import kube
from lepton_operator.controllers.config import OperatorOptions, configure
from lepton_operator.controllers.reconcile import Logger

PEERING_GROUP = "kopf.dev"
PEERING_VERSION = "v1"
PEERING_PLURAL = "clusterkopfpeerings"
PEERING_KIND = "ClusterKopfPeering"
PEERING_TIMEOUT = 20.0
PEERING_RETRY_DELAYS = (2.0, 5.0, 10.0, 30.0)


def options_of(memo: Any) -> OperatorOptions:
    """The options the runner put in kopf's memo (defaults when run some other way)."""
    options = getattr(memo, "options", None)
    return options if isinstance(options, OperatorOptions) else OperatorOptions()


def peering_object(name: str) -> dict[str, Any]:
    """The ``ClusterKopfPeering`` the replicas share."""
    return {
        "apiVersion": f"{PEERING_GROUP}/{PEERING_VERSION}",
        "kind": PEERING_KIND,
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "lepton"}},
    }


def ensure_peering(name: str, logger: Logger) -> bool:
    """Create the peering object unless it exists; ``False`` when that was impossible."""
    try:
        api = kubernetes.client.CustomObjectsApi(kube.api_client())
        api.create_cluster_custom_object(
            PEERING_GROUP, PEERING_VERSION, PEERING_PLURAL, peering_object(name), _request_timeout=PEERING_TIMEOUT
        )
        logger.info(f"created {PEERING_KIND} {name!r}")
    except kubernetes.client.ApiException as error:
        if error.status == 409:
            return True
        if error.status == 404:
            logger.error(f"the {PEERING_PLURAL}.{PEERING_GROUP} CRD is missing (apply crds/); the operator stays paused")
        else:
            manifest = json.dumps(peering_object(name))
            logger.error(
                f"cannot create {PEERING_KIND} {name!r} (HTTP {error.status}); the operator stays paused"
                f" until it exists: echo '{manifest}' | kubectl create -f -"
            )
        return False
    except Exception as error:  # unreachable API, no credentials: kopf's own login reports those too
        logger.error(f"cannot ensure {PEERING_KIND} {name!r}: {error}; the operator stays paused until it exists")
        return False
    return True


async def keep_ensuring_peering(name: str, logger: Logger, delays: Sequence[float] = PEERING_RETRY_DELAYS) -> None:
    """Retry :func:`ensure_peering` (the CRD may be applied, or RBAC fixed, later) until it succeeds."""
    attempt = 0
    while not await asyncio.to_thread(ensure_peering, name, logger):
        await asyncio.sleep(delays[min(attempt, len(delays) - 1)])
        attempt += 1


_background: set[asyncio.Task[None]] = set()


def spawn(work: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
    """Run ``work`` as a background task of the operator (kopf cancels the operator's tasks at exit).

    asyncio keeps only weak references to tasks; the set keeps this one alive until it ends.
    """
    task = asyncio.create_task(work, name=name)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, logger: kopf.Logger, **_: Any) -> None:
    """Apply the settings; with peering, ensure the peering object exists (retrying in the background)."""
    options = options_of(memo)
    configure(settings, options)
    if options.standalone:
        logger.warning("running standalone: no peering, so a second operator would act too")
        return
    logger.info(f"peering as {options.peering_name!r} with priority {options.priority}")
    if not await asyncio.to_thread(ensure_peering, options.peering_name, logger):
        spawn(keep_ensuring_peering(options.peering_name, logger), "ensure peering")
