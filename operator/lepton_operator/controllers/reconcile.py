"""The one reconcile every kind shares in this version: parse the spec, write status.

Level-based: the same function runs on create, on a spec change and when the
operator (re)starts (resume), and computes status from the object as it is now,
not from which event arrived. It never raises for bad input: an invalid spec is
a status (``Validated=False``, ``Stalled=True``), see ``status.validation``.
An *unexpected* exception is recorded as a ``ReconcileError`` condition and
re-raised as ``kopf.TemporaryError`` with an exponential, capped delay, so kopf
retries it and the object shows why it is not progressing meanwhile. The API
server's ``422 Invalid`` refusal of a child is not unexpected: it is the spec's
fault, recorded as terminal ``InvalidSpec`` and raised as ``kopf.PermanentError``.

``loop.py`` runs a reconciler per object; importing this module registers
nothing, so a test can call :func:`reconcile` with a plain body and patch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, MutableMapping
from datetime import UTC, datetime
from typing import Any

import kopf
from pydantic import ValidationError

from lepton_operator import metrics
from lepton_operator.controllers.config import retry_delay
from lepton_operator.status import validation

Logger = logging.Logger | logging.LoggerAdapter[Any]
#: Posts a Warning event on the object: (reason, message).
Warn = Callable[[str, str], None]


def reconcile(
    kind: str,
    body: Mapping[str, Any],
    status_patch: MutableMapping[str, Any],
    *,
    retry: int,
    logger: Logger,
    warn: Warn,
    now: datetime | None = None,
) -> metrics.Outcome:
    """Reconcile one object of ``kind``; fill ``status_patch`` (a merge patch of status).

    Returns the outcome (also counted in the metrics); raises only
    ``kopf.TemporaryError`` for unexpected failures.
    """
    started = time.perf_counter()
    moment = now or datetime.now(UTC)
    metadata = body.get("metadata") or {}
    generation = int(metadata.get("generation") or 0)
    existing = validation.to_plain(body.get("status") or {})
    try:
        spec = validation.to_plain(body.get("spec"))
        parsed = validation.parse_spec(kind, spec)
        new = validation.foundation_status(kind, generation, spec, parsed, existing, moment)
        outcome: metrics.Outcome = "invalid" if isinstance(parsed, ValidationError) else "accepted"
        if validation.needs_patch(existing, new):
            status_patch.update(new)
            if isinstance(parsed, ValidationError):
                message = validation.error_message(parsed, spec)
                logger.info(f"invalid spec (generation {generation}): {message}")
                warn(validation.INVALID_SPEC, message)
            else:
                logger.info(f"spec of generation {generation} accepted")
    except Exception as error:
        raise failed_pass(kind, generation, error, existing, status_patch, retry=retry, logger=logger,
                          moment=moment, started=started, warn=warn) from error  # fmt: skip
    metrics.record_reconcile(kind, outcome, time.perf_counter() - started)
    return outcome


def failed_pass(
    kind: str,
    generation: int,
    error: Exception,
    existing: Mapping[str, Any],
    status_patch: MutableMapping[str, Any],
    *,
    retry: int,
    logger: Logger,
    moment: datetime,
    started: float,
    warn: Warn | None = None,
) -> kopf.TemporaryError | kopf.PermanentError:
    """What every reconciler does with an exception from its pass, in one place; returns what to raise.

    The API server's ``422 Invalid`` refusal of a child (``validation.api_refusal``)
    is the spec's fault and would be refused again: it becomes the terminal
    ``InvalidSpec`` status with the server's message and a Warning event, and a
    ``kopf.PermanentError`` (the loop then waits for a spec change). Anything
    else records the ``ReconcileError`` condition in ``status_patch`` (the loop
    still writes it), counts the error, and returns the ``kopf.TemporaryError``
    whose delay grows with ``retry``.
    """
    refusal = validation.api_refusal(error)
    if refusal is not None:
        new = validation.refused_status(kind, generation, refusal, existing, moment)
        if validation.needs_patch(existing, new):  # a resync that is refused the same way writes and says nothing
            status_patch.update(new)
            logger.warning(f"the API server refused a child of generation {generation}: {refusal}")
            if warn is not None:
                warn(validation.INVALID_SPEC, f"the API server refused a child object: {refusal}")
        metrics.record_reconcile(kind, "invalid", time.perf_counter() - started)
        return kopf.PermanentError(f"the API server refused a child: {refusal}")
    delay = retry_delay(retry)
    try:
        status_patch.update(validation.error_status(kind, generation, error, existing, moment, delay))
    except Exception:  # the error status itself failed: still retry, just without it
        logger.exception("could not record the ReconcileError condition")
    metrics.record_reconcile(kind, "error", time.perf_counter() - started)
    return kopf.TemporaryError(f"reconcile failed: {type(error).__name__}: {error}", delay=delay)


def event_poster(body: kopf.Body) -> Warn:
    """A :data:`Warn` that posts a Warning event on ``body`` through kopf."""

    def post(reason: str, message: str) -> None:
        kopf.warn(body, reason=reason, message=message)

    return post



def validating(kind: str) -> Callable[..., float | None]:
    """The reconciler of a kind whose behaviour has not landed yet: validate and report.

    It fits ``loop.Reconciler``; a kind's own reconciler replaces it and calls
    :func:`reconcile` first for the same validation and conditions.
    """

    def reconciler(
        body: Mapping[str, Any], status_patch: MutableMapping[str, Any], *, retry: int, logger: Logger, warn: Warn
    ) -> float | None:
        reconcile(kind, body, status_patch, retry=retry, logger=logger, warn=warn)
        return None

    return reconciler
