"""kstatus condition bookkeeping: replace by type, keep lastTransitionTime unless the status flips."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lepton_operator.api.common import Condition
from lepton_operator.status import conditions as cond

TYPES = ("Ready", "Reconciling", "Stalled", "Validated", "Prepared")
T0 = "2026-01-01T00:00:00Z"
T1 = "2026-01-01T00:05:00Z"

times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
).map(cond.format_time)
conditions = st.builds(
    Condition,
    type=st.sampled_from(TYPES),
    status=st.sampled_from(["True", "False", "Unknown"]),
    reason=st.sampled_from(["", "Pending", "InvalidSpec", "Valid"]),
    message=st.text(max_size=40),
    observed_generation=st.integers(min_value=0, max_value=10**6),
    last_transition_time=st.none() | times,
)
condition_lists = st.lists(conditions, max_size=6, unique_by=lambda c: c.type)


@given(condition_lists, conditions, times)
def test_set_condition_replaces_by_type_and_keeps_the_rest(
    existing: list[Condition], new: Condition, now: str
) -> None:
    result = cond.set_condition(existing, new, now)
    assert [c.type for c in result if c.type == new.type] == [new.type]
    others_before = [c for c in existing if c.type != new.type]
    others_after = [c for c in result if c.type != new.type]
    assert others_after == others_before
    expected_order = [c.type for c in existing] + ([] if cond.find(existing, new.type) else [new.type])
    assert [c.type for c in result] == expected_order


@given(condition_lists, conditions, times)
def test_transition_time_moves_only_when_status_changes(existing: list[Condition], new: Condition, now: str) -> None:
    old = cond.find(existing, new.type)
    placed = cond.find(cond.set_condition(existing, new, now), new.type)
    assert placed is not None
    if old is not None and old.status == new.status and old.last_transition_time:
        assert placed.last_transition_time == old.last_transition_time
    else:
        assert placed.last_transition_time == now
    assert placed.model_copy(update={"last_transition_time": None}) == new.model_copy(
        update={"last_transition_time": None}
    )


@given(condition_lists, condition_lists, times, times)
def test_setting_the_same_conditions_again_changes_nothing(
    existing: list[Condition], new: list[Condition], first: str, later: str
) -> None:
    once = cond.set_conditions(existing, new, first)
    assert cond.set_conditions(once, new, later) == once


def test_set_condition_does_not_modify_its_input() -> None:
    existing = [cond.ready(False, "Pending", "waiting", 1).model_copy(update={"last_transition_time": T0})]
    snapshot = [c.model_copy() for c in existing]
    cond.set_condition(existing, cond.ready(True, "Ready", "done", 2), T1)
    assert existing == snapshot


def test_reason_and_message_change_without_a_transition() -> None:
    first = cond.set_condition([], cond.stalled(True, "InvalidSpec", "spec.a: bad", 1), T0)
    second = cond.set_condition(first, cond.stalled(True, "InvalidSpec", "spec.b: bad", 2), T1)
    (stalled,) = second
    assert (stalled.message, stalled.observed_generation, stalled.last_transition_time) == ("spec.b: bad", 2, T0)
    flipped = cond.set_condition(second, cond.stalled(False, "Valid", "ok", 3), T1)
    assert flipped[0].last_transition_time == T1


def test_helpers_make_the_kstatus_types() -> None:
    assert cond.ready(True, "R", "m", 4).type == "Ready"
    assert cond.reconciling(True, "R", "m", 4).type == "Reconciling"
    assert cond.stalled(False, "R", "m", 4).status == "False"
    made = cond.make("Validated", True, "Valid", "ok", 7)
    assert (made.status, made.observed_generation, made.last_transition_time) == ("True", 7, None)


def test_format_time_is_rfc3339_utc_seconds() -> None:
    moment = datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=timezone(timedelta(hours=2)))
    assert cond.format_time(moment) == "2026-03-04T03:06:07Z"
    with pytest.raises(ValueError, match="aware"):
        cond.format_time(datetime(2026, 3, 4))  # noqa: DTZ001 - the point of the test


@given(st.text(max_size=300), st.integers(min_value=20, max_value=200))
def test_truncate_respects_the_limit(message: str, limit: int) -> None:
    cut = cond.truncate(message, limit)
    assert len(cut) <= limit
    if len(message) <= limit:
        assert cut == message
    else:
        assert cut.endswith("(truncated)")


def test_made_conditions_have_bounded_messages() -> None:
    assert len(cond.ready(False, "X", "m" * 100_000, 1).message) <= cond.MAX_MESSAGE_LENGTH


def test_parse_conditions_drops_what_does_not_parse() -> None:
    raw = [
        {"type": "Ready", "status": "True", "reason": "Done", "observedGeneration": 2},
        {"type": "Broken", "status": "maybe"},
        "not a mapping",
        {"type": "Stalled", "status": "False", "unknownField": 1},
    ]
    assert [c.type for c in cond.parse_conditions(raw)] == ["Ready"]
    assert cond.parse_conditions(None) == []
    assert cond.parse_conditions("Ready") == []
    assert cond.parse_conditions({"type": "Ready"}) == []


def test_to_wire_is_camel_case_without_unset_fields() -> None:
    (wire,) = cond.to_wire([cond.ready(False, "Pending", "waiting", 3)])
    assert wire == {"type": "Ready", "status": "False", "reason": "Pending", "message": "waiting", "observedGeneration": 3}
