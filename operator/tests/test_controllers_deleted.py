"""Deleted uids: a record after the deletion is dropped, one for a re-created object (new uid) lands."""

from __future__ import annotations

import functools

from lepton_operator.controllers.deleted import Deleted


def test_a_record_for_a_deleted_uid_is_dropped_and_a_new_uid_records() -> None:
    deleted = Deleted(size=2)
    series: dict[str, int] = {}
    deleted.record("u1", lambda: series.update(job=1))
    deleted.forget("u1", lambda: series.pop("job"))
    assert series == {}
    deleted.record("u1", lambda: series.update(job=2))  # the pass that was in flight ends now
    assert series == {}
    deleted.record("u2", lambda: series.update(job=3))  # made again under the same name
    assert series == {"job": 3}
    deleted.forget("", lambda: series.clear())  # no uid: the series goes, nothing is noted
    deleted.record("", lambda: series.update(job=4))
    assert series == {"job": 4}


def test_only_the_newest_uids_are_remembered() -> None:
    deleted = Deleted(size=2)
    for uid in ("a", "b", "c"):
        deleted.forget(uid, lambda: None)
    written: list[str] = []
    for uid in ("a", "b", "c"):
        deleted.record(uid, functools.partial(written.append, uid))
    assert written == ["a"]
