"""Checkpoints with real torch saves: durable publishing, retention, and a resume that skips torn ones."""

from __future__ import annotations

import errno
import re
import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from lepton_workloads import checkpoints
from lepton_workloads.checkpoints import Position
from sync_recorder import record_syncs


def model_and_optimizer(seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def save_at(directory: Path, *steps: int) -> dict[int, dict[str, torch.Tensor]]:
    """A checkpoint at each step, each with other weights; the weights saved, by step."""
    saved = {}
    for step in steps:
        model, optimizer = model_and_optimizer(step)
        model(torch.ones(4, 8)).sum().backward()
        optimizer.step()  # momentum buffers: optimizer state worth saving
        checkpoints.save(directory, model, optimizer, Position(step, step // 10, 3))
        saved[step] = {key: value.clone() for key, value in model.state_dict().items()}
    return saved


def same_weights(model: nn.Module, weights: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(value, weights[key]) for key, value in model.state_dict().items())


def test_a_checkpoint_is_synced_renamed_and_synced_before_its_checksum_is(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    (tmp_path / "ckpt").mkdir()
    happened = record_syncs(monkeypatch, tmp_path)
    model, optimizer = model_and_optimizer(0)
    path = checkpoints.save(tmp_path / "ckpt", model, optimizer, Position(10, 0, 5))
    name = checkpoints.name_of(10)
    assert path == tmp_path / "ckpt" / name
    assert happened == [
        ("sync", f"ckpt/.{name}.tmp"), ("rename", name), ("sync", "ckpt"),
        ("sync", f"ckpt/.{name}.sha256.tmp"), ("rename", f"{name}.sha256"), ("sync", "ckpt"),
    ]  # fmt: skip
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert (tmp_path / "ckpt" / f"{name}.sha256").read_text() == f"{digest}  {name}\n"  # sha256sum -c reads it
    state = torch.load(path, weights_only=True)
    assert (state["step"], state["epoch"], state["batch"]) == (10, 0, 5)


def test_the_newest_two_are_kept(tmp_path: Path) -> None:
    save_at(tmp_path, 10, 20, 30)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        checkpoints.name_of(20), f"{checkpoints.name_of(20)}.sha256",
        checkpoints.name_of(30), f"{checkpoints.name_of(30)}.sha256",
    ]  # fmt: skip


def test_resume_loads_the_newest(tmp_path: Path) -> None:
    saved = save_at(tmp_path, 10, 20)
    model, optimizer = model_and_optimizer(99)
    resumed = checkpoints.resume(tmp_path, model, optimizer)
    assert resumed == checkpoints.Resume(Position(20, 2, 3), checkpoints.name_of(20), ())
    assert same_weights(model, saved[20]) and resumed.message() is None
    assert len(optimizer.state_dict()["state"]) == 4, "the optimizer's momentum buffers came back too"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def flip_a_byte(path: Path) -> None:
    """Loads fine in torch (it does not check the zip's CRCs), with one weight changed: only the checksum tells."""
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def lose_the_sidecar(path: Path) -> None:
    checkpoints.sidecar_of(path).unlink()


@pytest.mark.parametrize(
    ("tear", "problem"),
    [
        (truncate, "sha256 .* of its \\d+ bytes is not"),
        (empty, "of its 0 bytes"),
        (flip_a_byte, "sha256"),
        (lose_the_sidecar, "the save did not finish"),
    ],
)
def test_a_torn_checkpoint_is_skipped_for_the_one_before(tmp_path: Path, tear: Callable[[Path], None],
                                                         problem: str) -> None:  # fmt: skip
    saved = save_at(tmp_path, 10, 20)
    tear(tmp_path / checkpoints.name_of(20))
    model, optimizer = model_and_optimizer(99)
    resumed = checkpoints.resume(tmp_path, model, optimizer)
    assert resumed.position == Position(10, 1, 3) and resumed.loaded == checkpoints.name_of(10)
    assert [t.name for t in resumed.torn] == [checkpoints.name_of(20)]
    assert re.search(problem, resumed.torn[0].problem), resumed.torn[0].problem
    assert same_weights(model, saved[10])
    message = resumed.message()
    assert message is not None and message.startswith(f"{checkpoints.name_of(20)} is torn (")
    assert message.endswith(f"; resumed from {checkpoints.name_of(10)} (step 10)")


def test_a_checkpoint_that_does_not_load_is_torn_even_with_a_matching_checksum(tmp_path: Path) -> None:
    save_at(tmp_path, 10, 20)
    path = tmp_path / checkpoints.name_of(20)
    path.write_bytes(b"not a zip at all")
    checkpoints.sidecar_of(path).write_text(f"{hashlib.sha256(b'not a zip at all').hexdigest()}  {path.name}\n")
    resumed = checkpoints.resume(tmp_path, *model_and_optimizer(99))
    assert resumed.position.step == 10
    assert resumed.torn[0].problem.startswith("does not load: ")


def test_with_every_checkpoint_torn_training_starts_over_and_says_so(tmp_path: Path) -> None:
    save_at(tmp_path, 10, 20)
    for step in (10, 20):
        truncate(tmp_path / checkpoints.name_of(step))
    model, optimizer = model_and_optimizer(99)
    untouched = {key: value.clone() for key, value in model.state_dict().items()}
    resumed = checkpoints.resume(tmp_path, model, optimizer)
    assert resumed.position == Position() and resumed.loaded is None
    assert [t.name for t in resumed.torn] == [checkpoints.name_of(20), checkpoints.name_of(10)]
    assert same_weights(model, untouched)
    assert (resumed.message() or "").endswith("no good checkpoint is left, training starts from step 0")


def test_no_directory_or_an_empty_one_is_a_fresh_start(tmp_path: Path) -> None:
    assert checkpoints.resume(None, *model_and_optimizer(0)) == checkpoints.Resume()
    assert checkpoints.resume(tmp_path / "missing", *model_and_optimizer(0)) == checkpoints.Resume()


def test_a_checkpoint_of_another_model_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    save_at(tmp_path, 10, 20)
    other = nn.Linear(8, 3)
    with pytest.raises(RuntimeError, match=r"Error\(s\) in loading state_dict"):
        checkpoints.resume(tmp_path, other, torch.optim.SGD(other.parameters(), lr=0.1))


def test_saving_after_a_fallback_removes_the_torn_checkpoint_ahead(tmp_path: Path) -> None:
    save_at(tmp_path, 10, 20)
    truncate(tmp_path / checkpoints.name_of(20))
    assert checkpoints.resume(tmp_path, *model_and_optimizer(99)).position.step == 10
    save_at(tmp_path, 15)
    assert [p.name for p in checkpoints.candidates(tmp_path)] == [checkpoints.name_of(15), checkpoints.name_of(10)]


def test_a_save_failing_midway_keeps_the_checkpoints_there(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    saved = save_at(tmp_path, 10, 20)
    before = sorted(p.name for p in tmp_path.iterdir())

    def full_disk(state: object, handle: object) -> None:
        handle.write(b"PK\x03\x04 the first bytes")  # type: ignore[attr-defined]
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        checkpoints.save(tmp_path, *model_and_optimizer(30), Position(30))
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary, nothing pruned
    model, optimizer = model_and_optimizer(99)
    assert checkpoints.resume(tmp_path, model, optimizer).position.step == 20
    assert same_weights(model, saved[20])


def test_the_legacy_checkpoint_is_resumed_from_and_pruned_once_two_new_ones_exist(tmp_path: Path) -> None:
    model, optimizer = model_and_optimizer(7)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": 5, "epoch": 0, "batch": 5}
    torch.save(state, tmp_path / checkpoints.LEGACY)
    assert checkpoints.resume(tmp_path, *model_and_optimizer(99)).position == Position(5, 0, 5)
    save_at(tmp_path, 10)
    assert (tmp_path / checkpoints.LEGACY).is_file()  # still the one to fall back to
    save_at(tmp_path, 20)
    assert not (tmp_path / checkpoints.LEGACY).exists()


@pytest.mark.parametrize(("error", "torn"), [(OSError(errno.EIO, "Input/output error"), True),
                                             (PermissionError(errno.EACCES, "Permission denied"), False)])  # fmt: skip
def test_a_read_error_makes_a_checkpoint_torn_but_a_permission_error_is_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, torn: bool
) -> None:
    save_at(tmp_path, 10, 20)
    load = torch.load

    def failing_on_the_newest(path: Path, **kwargs: object) -> object:
        if Path(path).name == checkpoints.name_of(20):
            raise error
        return load(path, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(torch, "load", failing_on_the_newest)
    if torn:
        resumed = checkpoints.resume(tmp_path, *model_and_optimizer(99))
        assert resumed.position.step == 10 and "OSError: [Errno 5] Input/output error" in resumed.torn[0].problem
    else:
        with pytest.raises(PermissionError):
            checkpoints.resume(tmp_path, *model_and_optimizer(99))
