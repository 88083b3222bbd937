"""The trainer's progress: one parser for the termination message and the live report, and the highest step wins."""

from __future__ import annotations

import json

from lepton_operator.status import training_progress as p
from worker_pods import live_pod


def test_termination_message_and_live_report_go_through_one_parser_and_the_highest_step_wins() -> None:
    document = {"schema": p.PROGRESS_SCHEMA, "step": 7, "epoch": 0, "loss": 1.5, "resumedFrom": 0}
    parsed = {"step": 7, "epoch": 0, "loss": 1.5, "resumedFrom": 0}
    assert p.parse_progress(document) == p.parse_progress(json.dumps(document)) == parsed
    assert p.parse_progress("torch warnings...\n" + json.dumps(document)) == parsed  # FallbackToLogsOnError
    assert p.parse_progress({"step": 7.0}) == {"step": 7}  # an older trainer: no schema
    for other in ({"schema": "lepton.ai/prepare-progress/v1", "step": 7}, {"epoch": 1}, {"step": True}, "[1]", None):
        assert p.parse_progress(other) is None
    ended = live_pod(0, "u0", phase="Succeeded", terminated={"exitCode": 0, "message": json.dumps({**document, "step": 9})})
    assert p.progress_of([ended], {"u0": document}) == {"step": 9, "epoch": 0, "loss": 1.5, "resumedFrom": 0}
    assert p.progress_of([live_pod(0, "u0")], {"u0": {**document, "step": 12}})["step"] == 12
