"""What a TrainingJob's trainer reports of its progress, from its two channels, as pure functions.

A trainer reports ``{"schema": "lepton.ai/training-progress/v1", "step",
"epoch", "loss", "resumedFrom"}`` as JSON twice (``resumedFrom``: the
checkpoint step the group started from, so a restart shows where it resumed):
live, on ``GET /progress`` of its rank 0 while it trains (the controller polls
worker 0, ``controllers.progress``, and passes the last answer in
``status.training.Observed.live``), and at the end in its termination message
(``/dev/termination-log``). Both go through :func:`parse_progress`; among the
reports of the current group's workers the highest step wins
(:func:`progress_of`). No pod needs RBAC for any of it.

What the status keeps of it (the last report when nothing new arrives,
``updateTime`` moving only with the values) is the pass's business, in
``status.training``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from lepton_operator.status.training_pods import meta, terminated_state

PROGRESS_SCHEMA = "lepton.ai/training-progress/v1"


def parse_progress(report: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``{step, epoch, loss, resumedFrom}`` of one trainer report, or ``None`` when it is not one.

    ``report`` is a termination message (its last line is the JSON document;
    a message that falls back to the logs may have more lines before it) or the
    document ``/progress`` answered. A document of another schema, or without
    a ``step``, is not a report; one without ``schema`` (older trainers) is.
    """
    document: Any = report
    if isinstance(report, str):
        try:
            document = json.loads(report.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return None
    if not isinstance(document, Mapping) or document.get("schema", PROGRESS_SCHEMA) != PROGRESS_SCHEMA:
        return None
    fields = {k: document[k] for k in ("step", "epoch", "loss", "resumedFrom")
              if isinstance(document.get(k), int | float) and not isinstance(document.get(k), bool)}  # fmt: skip
    for k in ("step", "epoch", "resumedFrom"):
        if k in fields:
            fields[k] = int(fields[k])
    return fields if fields.get("step", -1) >= 0 else None


def progress_of(
    pods: Sequence[Mapping[str, Any]], live: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, Any] | None:
    """The trainer's progress among ``pods``: termination messages and ``live`` reports (pod uid -> document).

    The highest step wins (on a tie the live report, the newer one). A live
    report of a pod that is not in ``pods`` (an old group's) is ignored.
    """
    best: dict[str, Any] | None = None
    for pod in pods:
        uid = str(meta(pod).get("uid") or "")
        reports = [(terminated_state(pod) or {}).get("message"), (live or {}).get(uid) if uid else None]
        for fields in (parse_progress(report) for report in reports if report):
            if fields is not None and (best is None or fields["step"] >= best["step"]):
                best = fields
    return best
