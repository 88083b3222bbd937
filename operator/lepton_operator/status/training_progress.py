"""What a TrainingJob's trainer reports of its progress, from its two channels, as pure functions.

A trainer reports ``{"schema": "lepton.ai/training-progress/v1", "step",
"epoch", "loss", "resumedFrom", "tornCheckpoints"}`` as JSON twice
(``resumedFrom``: the checkpoint step the group started from, so a restart
shows where it resumed; ``tornCheckpoints``, only when there were any: the
newer checkpoints it found torn and skipped to get there):
live, on ``GET /progress`` of its rank 0 while it trains (the controller polls
worker 0, ``controllers.progress``, and passes the last answer in
``status.training.Observed.live``), and at the end in its termination message
(``/dev/termination-log``). Both go through :func:`parse_progress`; among the
reports of the current group's workers the highest step wins
(:func:`progress_of`). No pod needs RBAC for any of it.

What the status keeps of it (the last report when nothing new arrives,
``updateTime`` moving only with the values) is the pass's business, in
``status.training``. Two rules of it live here, next to the format:
:func:`torn_checkpoint_message` is the Warning event a pass posts when a
report first names torn checkpoints (once: the status it writes in the same
pass carries them), and :func:`cleared` makes a report without
``tornCheckpoints`` clear the previous group's list (the status is written
as a merge patch, where a missing key keeps the old value).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from lepton_operator.status.training_pods import meta, terminated_state

PROGRESS_SCHEMA = "lepton.ai/training-progress/v1"
TORN_CHECKPOINT = "CheckpointTorn"
"""The reason of the Warning event that says a group skipped torn checkpoints."""
TORN = "tornCheckpoints"
MAX_TORN = 8
"""Torn checkpoint names kept of one report (``status.progress.tornCheckpoints`` holds at most this many)."""
MAX_NAME = 253


def parse_progress(report: str | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``{step, epoch, loss, resumedFrom, tornCheckpoints}`` of one trainer report, or ``None`` when it is not one.

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
    torn = document.get(TORN)
    if isinstance(torn, list) and torn and all(isinstance(name, str) for name in torn):
        fields[TORN] = [name[:MAX_NAME] for name in torn[:MAX_TORN]]
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


def cleared(reported: Mapping[str, Any], shown: Mapping[str, Any] | None) -> dict[str, Any]:
    """``reported`` as the status shows it: with ``tornCheckpoints: []`` when it names none but ``shown`` has some."""
    if TORN in reported or TORN not in (shown or {}):
        return dict(reported)
    return {**reported, TORN: []}


def torn_checkpoint_message(shown: Mapping[str, Any] | None, reported: Mapping[str, Any] | None) -> str | None:
    """The Warning to post when ``reported`` names torn checkpoints that the progress ``shown`` does not yet."""
    torn = (reported or {}).get(TORN)
    if not torn or reported is None:
        return None
    if shown is not None and shown.get(TORN) == torn and shown.get("resumedFrom") == reported.get("resumedFrom"):
        return None
    resumed = reported.get("resumedFrom")
    where = (f"the group resumed from the checkpoint of step {resumed}" if resumed
             else "no good checkpoint was left: the group started over from step 0")  # fmt: skip
    return (f"checkpoint {', '.join(torn)} was torn (empty, truncated or failing its checksum) and skipped;"
            f" {where} (the trainer's log says what was wrong)")
