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


def test_torn_checkpoints_are_kept_as_a_bounded_list_of_names() -> None:
    names = [f"checkpoint-{step:010d}.pt" for step in range(20, 0, -1)]
    parsed = p.parse_progress({"schema": p.PROGRESS_SCHEMA, "step": 7, "resumedFrom": 5, p.TORN: names})
    assert parsed == {"step": 7, "resumedFrom": 5, p.TORN: names[: p.MAX_TORN]}
    assert p.parse_progress({"step": 7, p.TORN: ["x" * 1000]}) == {"step": 7, p.TORN: ["x" * p.MAX_NAME]}
    for bad in ([], "checkpoint-1.pt", [1, 2], [None], {"a": 1}):
        assert p.parse_progress({"step": 7, p.TORN: bad}) == {"step": 7}


def test_a_report_naming_torn_checkpoints_warns_once_and_says_where_it_resumed() -> None:
    torn = ["checkpoint-0000000200.pt"]
    reported = {"step": 101, "resumedFrom": 100, p.TORN: torn}
    message = p.torn_checkpoint_message(None, reported)
    assert message == ("checkpoint checkpoint-0000000200.pt was torn (empty, truncated or failing its checksum)"
                       " and skipped; the group resumed from the checkpoint of step 100 (the trainer's log says"
                       " what was wrong)")  # fmt: skip
    shown = {**reported, "step": 150, "updateTime": "2026-01-02T03:04:05Z"}
    assert p.torn_checkpoint_message(shown, {**reported, "step": 160}) is None  # this group's, already shown
    # A later group that skipped the same names to land elsewhere is news again.
    assert p.torn_checkpoint_message(shown, {**reported, "resumedFrom": 0}) == (
        "checkpoint checkpoint-0000000200.pt was torn (empty, truncated or failing its checksum) and skipped;"
        " no good checkpoint was left: the group started over from step 0 (the trainer's log says what was wrong)"
    )
    assert p.torn_checkpoint_message(shown, {"step": 3, "resumedFrom": 0}) is None
    assert p.torn_checkpoint_message(None, None) is None


def test_a_report_without_torn_checkpoints_clears_the_shown_ones() -> None:
    shown = {"step": 150, "resumedFrom": 100, p.TORN: ["checkpoint-0000000200.pt"]}
    assert p.cleared({"step": 210, "resumedFrom": 200}, shown) == {"step": 210, "resumedFrom": 200, p.TORN: []}
    assert p.cleared({"step": 3}, {"step": 2}) == {"step": 3}
    assert p.cleared({"step": 3}, None) == {"step": 3}
    assert p.cleared(shown, {"step": 1, p.TORN: []}) == shown
