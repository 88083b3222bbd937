"""Training checkpoints: durable, checksummed, the last few kept, and a resume that skips torn ones.

Layout in the checkpoint directory (``LEPTON_CHECKPOINT_DIR``, the job's claim)::

    checkpoint-0000000100.pt          torch.save of {model, optimizer, step, epoch, batch}
    checkpoint-0000000100.pt.sha256   "<sha256>  checkpoint-0000000100.pt" (``sha256sum -c`` reads it)
    checkpoint-0000000200.pt
    checkpoint-0000000200.pt.sha256

Saving (:func:`save`, rank 0 only): the checkpoint is published with
:func:`lepton_workloads.durable.replace` (temporary file, fsync, rename, fsync of
the directory) while its sha256 is computed from the bytes on their way to the
file; then the sidecar is published the same way, so a sidecar only ever names a
checkpoint that is on the disk whole. Then :func:`prune` keeps the newest
``keep`` checkpoints (at least two: the previous good one is what a resume falls
back to) and removes any with a higher step than the one just saved: those can
only be torn ones that the run resumed past.

Resuming (:func:`resume`, every rank): the checkpoints are tried newest first.
One is *torn* (:class:`Torn`) when its sidecar is missing (the save never
finished), its bytes do not hash to the sidecar's sha256 (a truncated or
corrupted file: ``torch.load`` does not check the zip's CRCs, and a flipped byte
in a tensor loads silently), it does not load, or it is not a checkpoint of this
format. Torn ones are skipped and reported in :class:`Resume` (the trainer
prints that and puts it in its progress document, which the operator turns
into a Warning event); the first good one is loaded. None good: the run starts
from step 0. A checkpoint that loads but does not fit the model (another
architecture) is not torn: that error is raised, since an older checkpoint would
not fit either.

The ``checkpoint.pt`` of trainers before this layout is read as the oldest
candidate, without a checksum, so a job upgraded mid-run resumes; the first
prune after ``keep`` new checkpoints removes it.
"""

from __future__ import annotations

import hashlib
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, cast

import torch
from torch import nn

from lepton_workloads import durable

PREFIX, SUFFIX, SIDECAR = "checkpoint-", ".pt", ".sha256"
LEGACY = "checkpoint.pt"
#: How many checkpoints are kept by default; fewer than two leaves nothing to fall back to.
KEEP = 2
_NAME = re.compile(rf"{PREFIX}(\d+){re.escape(SUFFIX)}")
_KEYS = ("model", "optimizer", "step", "epoch", "batch")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Position:
    """Where training stands: optimizer steps done, and where in which epoch."""

    step: int = 0
    epoch: int = 0
    batch: int = 0


@dataclass(frozen=True)
class Torn:
    """A checkpoint that could not be resumed from, and why."""

    name: str
    problem: str


@dataclass(frozen=True)
class Resume:
    """What :func:`resume` did: the position loaded, from which file, and the torn ones skipped."""

    position: Position = Position()
    loaded: str | None = None
    torn: tuple[Torn, ...] = ()

    def message(self) -> str | None:
        """One line for the log when a torn checkpoint was skipped, else ``None``."""
        if not self.torn:
            return None
        skipped = "; ".join(f"{t.name} is torn ({t.problem})" for t in self.torn)
        if self.loaded is None:
            return f"{skipped}; no good checkpoint is left, training starts from step 0"
        return f"{skipped}; resumed from {self.loaded} (step {self.position.step})"


class TornCheckpointError(Exception):
    """A checkpoint file that is not a whole checkpoint (see :class:`Torn`)."""


def name_of(step: int) -> str:
    return f"{PREFIX}{step:010d}{SUFFIX}"


def sidecar_of(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR)


def step_of(path: Path) -> int | None:
    """The step in a checkpoint's file name; ``None`` for any other file (the legacy one included)."""
    found = _NAME.fullmatch(path.name)
    return int(found.group(1)) if found else None


def candidates(directory: Path) -> list[Path]:
    """The checkpoints to resume from, newest (highest step) first; the legacy one last."""
    if not directory.is_dir():
        return []
    found = [(step, path) for path in directory.iterdir() if (step := step_of(path)) is not None]
    stepped = [path for _, path in sorted(found, reverse=True)]
    legacy = directory / LEGACY
    return stepped + ([legacy] if legacy.is_file() else [])


class _HashingFile:
    """A binary file that hashes what is written to it (``torch.save`` needs ``write`` and ``flush``)."""

    def __init__(self, handle: IO[bytes], update: Callable[[bytes], object]) -> None:
        self.handle, self.update = handle, update

    def write(self, data: bytes) -> int:
        self.update(data)
        return self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()


def save(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer, position: Position,
         keep: int = KEEP) -> Path:  # fmt: skip
    """Publish a checkpoint at ``position``, then its sidecar, then prune; returns its path."""
    durable.make_directories(directory)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": position.step,
             "epoch": position.epoch, "batch": position.batch}  # fmt: skip
    path = directory / name_of(position.step)
    digest = hashlib.sha256()

    def write(temporary: Path) -> None:
        with temporary.open("wb") as handle:
            torch.save(state, cast(IO[bytes], _HashingFile(handle, digest.update)))

    durable.replace(path, write)
    durable.write_text(sidecar_of(path), f"{digest.hexdigest()}  {path.name}\n")
    prune(directory, position.step, keep)
    return path


def prune(directory: Path, saved: int, keep: int = KEEP) -> list[str]:
    """Remove the checkpoints past the newest ``keep`` at or below step ``saved``, and any above it; returns their names."""
    stepped = [p for p in candidates(directory) if p.name != LEGACY]
    below = [p for p in stepped if (step_of(p) or 0) <= saved]
    doomed = [p for p in stepped if (step_of(p) or 0) > saved] + below[keep:]
    if len(below) >= keep and (directory / LEGACY).is_file():
        doomed.append(directory / LEGACY)
    for path in doomed:
        path.unlink(missing_ok=True)  # the checkpoint first: a sidecar alone is never a candidate
        sidecar_of(path).unlink(missing_ok=True)
    return [p.name for p in doomed]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read(path: Path) -> dict[str, Any]:
    """The state saved in ``path``, checked against its sidecar; :class:`TornCheckpointError` when it is torn.

    A read error (``EIO`` from a bad block, ``EINVAL`` from torch on a short zip) makes it torn too;
    only ``PermissionError`` is raised as it is: every checkpoint would fail the same way.
    """
    try:
        if path.name != LEGACY:
            _verify(path)
        state = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise
    except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError) as error:  # what bad bytes raise
        raise TornCheckpointError(f"does not load: {type(error).__name__}: {error}".strip()[:300]) from error
    if not isinstance(state, Mapping) or any(key not in state for key in _KEYS):
        raise TornCheckpointError(f"not a checkpoint: it has no {', '.join(_KEYS)}")
    step = step_of(path)
    if step is not None and int(state["step"]) != step:
        raise TornCheckpointError(f"holds step {state['step']}, not the {step} of its name")
    return dict(state)


def _verify(path: Path) -> None:
    """Raise :class:`TornCheckpointError` unless ``path`` hashes to the sha256 its sidecar states."""
    sidecar = sidecar_of(path)
    if not sidecar.is_file():
        raise TornCheckpointError(f"no {sidecar.name}: the save did not finish")
    expected = (sidecar.read_text().split() or [""])[0]
    actual = _sha256(path)
    if actual != expected:
        size = path.stat().st_size
        raise TornCheckpointError(f"sha256 {actual[:12]}... of its {size} bytes is not {expected[:12]}... in {sidecar.name}")


def resume(directory: Path | None, model: nn.Module, optimizer: torch.optim.Optimizer) -> Resume:
    """Load the newest good checkpoint under ``directory`` into ``model`` and ``optimizer`` (module docstring)."""
    torn: list[Torn] = []
    for path in candidates(directory) if directory is not None else []:
        try:
            state = read(path)
        except TornCheckpointError as error:
            torn.append(Torn(path.name, str(error)))
            continue
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        position = Position(int(state["step"]), int(state["epoch"]), int(state["batch"]))
        return Resume(position, path.name, tuple(torn))
    return Resume(torn=tuple(torn))
