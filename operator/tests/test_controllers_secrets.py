"""How soon a missing Secret is looked up again (``secrets.recheck_seconds``): fast at first, then capped."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from lepton_operator.controllers import secrets

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def waiting(seconds: float, ctype: str = "Validated") -> dict[str, object]:
    since = (NOW - timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    other = {"type": "Ready", "status": "False", "lastTransitionTime": "2020-01-01T00:00:00Z"}
    return {"conditions": [other, {"type": ctype, "status": "False", "lastTransitionTime": since}]}


def test_a_wait_that_just_began_is_rechecked_within_a_second() -> None:
    assert secrets.recheck_seconds(waiting(0), "Validated", NOW) == secrets.FIRST_RECHECK_SECONDS == 1.0


def test_the_recheck_slows_with_the_time_waited_and_is_capped() -> None:
    delays = [secrets.recheck_seconds(waiting(s), "Validated", NOW) for s in (0, 4, 8, 20, 40, 60, 3600)]
    assert delays == [1.0, 1.0, 2.0, 5.0, 10.0, 15.0, 15.0]
    assert secrets.RECHECK_SECONDS == 15.0


def test_the_wait_is_read_from_the_named_condition_only() -> None:
    status = waiting(40, "ModelAvailable")
    assert secrets.recheck_seconds(status, "ModelAvailable", NOW) == 10.0
    assert secrets.recheck_seconds(status, "Validated", NOW) == 1.0  # absent: the wait just began


def test_a_clock_behind_or_an_unreadable_time_counts_as_just_now() -> None:
    assert secrets.recheck_seconds(waiting(-30), "Validated", NOW) == 1.0
    garbled = {"conditions": [{"type": "Validated", "lastTransitionTime": "yesterday"}]}
    assert secrets.recheck_seconds(garbled, "Validated", NOW) == 1.0
    assert secrets.recheck_seconds({}, "Validated", NOW) == 1.0
    naive = {"conditions": [{"type": "Validated", "lastTransitionTime": "2026-01-02T03:00:00"}]}
    assert secrets.recheck_seconds(naive, "Validated", NOW) == 1.0
