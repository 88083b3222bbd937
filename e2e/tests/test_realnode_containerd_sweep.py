"""The real node's containerd data of a checkout that is gone is removed; nothing else is.

Pure file-system checks (no cluster): ``realnode.claim_containerd_root`` and
``realnode.orphaned_containerd_roots`` over a cache laid out in a temporary directory.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from localcluster import netns, realnode, versions


def test_only_the_roots_of_checkouts_that_are_gone_and_not_running_are_orphans(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(versions, "cache_root", lambda: tmp_path)
    cache, run_root = tmp_path / "containerd", tmp_path / "run"
    roots: dict[str, Path] = {}
    for ident in ("live", "gone", "running"):
        state = tmp_path / "checkouts" / ident / ".lepton"
        state.mkdir(parents=True)
        roots[ident] = realnode.claim_containerd_root(netns.Instance(ident, run_root / ident, state))
    unowned = cache / "unowned"  # made before owners were recorded: never touched
    unowned.mkdir()
    for ident in ("gone", "running"):
        (tmp_path / "checkouts" / ident / ".lepton").rmdir()
    (run_root / "running").mkdir(parents=True)  # that instance still runs

    assert (roots["live"] / realnode.CONTAINERD_OWNER).read_text() == str(tmp_path / "checkouts" / "live" / ".lepton")
    assert realnode.orphaned_containerd_roots(cache, run_root) == [roots["gone"]]
