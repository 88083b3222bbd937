"""The DDP trainer: ``torchrun ... -m lepton_workloads.train`` inside a TrainingJob's workers.

Contract with the operator (environment, see ``render/training.py``): torchrun's
``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` per process; ``LEPTON_DATASET_DIR`` (a
prepared dataset: ``manifest.json`` + webdataset shards, read with
:mod:`lepton_workloads.shards`), ``LEPTON_CHECKPOINT_DIR`` and
``LEPTON_CHECKPOINT_EVERY_STEPS``, ``LEPTON_OUTPUT_DIR``. Command-line flags
override the environment.

Samples (:class:`Decoder`): the input is ``npy`` (a float array: a feature
vector for the MLP, ``C x H x W`` for the CNN) or an image field (``png``,
``jpg``...; what the preparer shards from an image or multimodal dataset),
decoded with Pillow into ``C x H x W`` floats in [0, 1] in the first sample's
colour mode and size (``--image-size`` resizes). ``cls`` is the label: an index
into the manifest's ``extra.labels`` (the preparer records the distinct labels
there, so ``cat``/``dog`` work) or, without that list, the class index as ASCII.
The number of classes and the input shape come from the manifest's ``extra``
(``classes``, ``shape``, ``labels``) or, failing that, from flags and the first
sample.

* Distribution: ``DistributedDataParallel`` over gloo on CPU, NCCL on GPU with
  automatic mixed precision (bfloat16 autocast). Each rank reads its own shards
  (``shards_for_rank``); with fewer shards than ranks, ranks stride over samples
  instead. Uneven inputs are handled by DDP's ``Join``, so no rank hangs.
* Checkpoints (:mod:`lepton_workloads.checkpoints`): every N steps rank 0
  writes model, optimizer and position (epoch, batch) durably (written, synced,
  renamed, the rename synced) with a sha256 sidecar, keeping the newest
  ``--keep-checkpoints`` (2). On start every rank loads the newest good one
  and continues at the same step (a restarted group resumes, not restarts); a
  torn one (empty, truncated, failing its checksum) is skipped for the one
  before it, and rank 0 says so on stdout and in its progress document
  (``tornCheckpoints``), from which the operator posts a Warning event. The
  ranks check that they all resumed from the same step (:func:`check_same_step`).
* Progress: rank 0 prints one JSON line per log interval, keeps
  ``progress.json`` in the checkpoint directory (durably, like the checkpoints), serves its latest step on
  ``GET /progress`` while it trains (:mod:`lepton_workloads.progress_server`,
  port ``LEPTON_PROGRESS_PORT``; the operator polls it), and writes the last
  report to the container's termination message (``/dev/termination-log``).
  The endpoint and the termination message carry the same document
  (:func:`progress_document`, schema ``lepton.ai/training-progress/v1``), which
  the operator shows as ``status.progress`` without the pod needing any RBAC.
* Export: rank 0 writes a Triton model repository entry under the output
  directory, in the job's ``spec.output.format`` (``LEPTON_OUTPUT_FORMAT``,
  ``--output-format``): ``<name>/1/model.pt`` (TorchScript) or
  ``<name>/1/model.onnx`` (ONNX), and ``<name>/config.pbtxt``
  (:mod:`lepton_workloads.export`), while the other ranks wait at a barrier.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch import nn
from torch.distributed.algorithms.join import Join
from torch.nn.parallel import DistributedDataParallel

from lepton_workloads import checkpoints, durable, export, progress_server, shards
from lepton_workloads.checkpoints import Position

PROGRESS = "progress.json"
TERMINATION_LOG = "/dev/termination-log"
PROGRESS_SCHEMA = "lepton.ai/training-progress/v1"
#: What the operator reads of a progress report (the rest stays in the logs and progress.json).
REPORTED_FIELDS = ("step", "epoch", "loss", "resumedFrom", "tornCheckpoints")
#: Torn checkpoint names a report carries at most: the termination message holds 4 KiB (the log has them all).
MAX_REPORTED_TORN = 8


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(prog="python -m lepton_workloads.train", description=__doc__.split("\n")[0])
    parser.add_argument("--dataset-dir", default=env("LEPTON_DATASET_DIR", "/data"))
    parser.add_argument("--checkpoint-dir", default=env("LEPTON_CHECKPOINT_DIR"))
    parser.add_argument("--output-dir", default=env("LEPTON_OUTPUT_DIR"))
    parser.add_argument("--checkpoint-every", type=int, default=int(env("LEPTON_CHECKPOINT_EVERY_STEPS", "100")))
    parser.add_argument("--keep-checkpoints", type=int, default=checkpoints.KEEP,
                        help="newest checkpoints kept (at least 2: a torn one falls back to the one before)")  # fmt: skip
    parser.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    parser.add_argument("--model-name", default=env("LEPTON_JOB_NAME", "model"))
    parser.add_argument("--classes", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None, help="resize images to N x N (default: the first's size)")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--split", default="train")
    parser.add_argument("--output-format", choices=sorted(export.FORMATS), default=env("LEPTON_OUTPUT_FORMAT", "torchscript"))
    parser.add_argument("--max-batch-size", type=int, default=8, help="max_batch_size in the Triton config")
    parser.add_argument("--crash-at-step", type=int, default=None,
                        help="fault injection: rank 1 (else 0) exits with 137 at this step, in a run that did not"
                             " resume from a checkpoint (so a restarted group goes on)")  # fmt: skip
    args = parser.parse_args(argv)
    if args.keep_checkpoints < 2:
        parser.error(f"--keep-checkpoints {args.keep_checkpoints}: keep at least 2,"
                     " or a torn checkpoint has nothing to fall back to")  # fmt: skip
    if args.output_format not in export.FORMATS:  # argparse checks choices of given flags, not of defaults
        parser.error(f"LEPTON_OUTPUT_FORMAT {args.output_format!r} is not one of {sorted(export.FORMATS)}")
    return args


# ---------------------------------------------------------------------------
# models


def mlp(features: int, hidden: int, classes: int) -> nn.Module:
    """For tabular features and text embeddings."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, classes)
    )


def cnn(channels: int, hidden: int, classes: int) -> nn.Module:
    """A small convolutional net for images (any H x W, thanks to the adaptive pooling)."""
    width = max(8, hidden // 4)
    return nn.Sequential(
        nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width * 2, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(width * 2 * 16, hidden), nn.ReLU(), nn.Linear(hidden, classes),
    )  # fmt: skip


def build_model(kind: str, shape: Sequence[int], hidden: int, classes: int) -> nn.Module:
    if kind == "cnn":
        if len(shape) != 3:
            raise ValueError(f"the cnn wants C x H x W inputs, the dataset has shape {list(shape)}")
        return cnn(shape[0], hidden, classes)
    return mlp(int(np.prod(shape)), hidden, classes)


# ---------------------------------------------------------------------------
# data


IMAGE_FIELDS = ("png", "jpg", "jpeg", "webp", "bmp", "gif")


@dataclass(frozen=True)
class Decoder:
    """Turns one shard sample into (input array, class index); see the module docstring."""

    labels: tuple[str, ...] | None = None
    #: Pillow mode every image is converted to ("L" or "RGB") and (width, height) it is resized to.
    mode: str | None = None
    size: tuple[int, int] | None = None

    def __call__(self, sample: dict[str, bytes]) -> tuple[np.ndarray, int]:
        return self.features(sample), self.label(sample["cls"])

    def features(self, sample: dict[str, bytes]) -> np.ndarray:
        if "npy" in sample:
            array: np.ndarray = np.load(io.BytesIO(sample["npy"]), allow_pickle=False).astype(np.float32)
            return array
        field = next((f for f in IMAGE_FIELDS if f in sample), None)
        if field is None:
            raise ValueError(f"a sample needs npy or an image field ({', '.join(IMAGE_FIELDS)}); it has {sorted(sample)}")
        with Image.open(io.BytesIO(sample[field])) as image:
            converted = image.convert(self.mode or _mode_of(image))
            if self.size is not None and converted.size != self.size:
                converted = converted.resize(self.size, Image.Resampling.BILINEAR)
            pixels = np.asarray(converted, dtype=np.float32) / 255.0
        planes: np.ndarray = pixels[np.newaxis] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        return planes

    def label(self, raw: bytes) -> int:
        text = raw.decode().strip()
        if self.labels is None:
            return int(text)
        try:
            return self.labels.index(text)
        except ValueError:
            raise ValueError(f"label {text!r} is not among the manifest's labels {list(self.labels)}") from None


def _mode_of(image: Image.Image) -> str:
    return "L" if image.mode in ("1", "L", "I", "I;16", "F") else "RGB"


def decoder_for(root: Path, manifest: shards.Manifest, split: str, image_size: int | None = None) -> Decoder:
    """The decoder of this dataset: its label list, and for images the first sample's mode and size."""
    labels = manifest.extra.get("labels")
    first = next(shards.iter_samples(root, manifest.split(split)[:1]))
    field = next((f for f in IMAGE_FIELDS if f in first), None)
    mode, size = None, None
    if field is not None and "npy" not in first:
        with Image.open(io.BytesIO(first[field])) as image:
            mode, size = _mode_of(image), (image_size, image_size) if image_size else image.size
    return Decoder(tuple(str(label) for label in labels) if labels else None, mode, size)


def rank_samples(root: Path, manifest: shards.Manifest, split: str, rank: int, world: int,
                 decode: Decoder) -> Iterator[tuple[np.ndarray, int]]:  # fmt: skip
    """This rank's samples of ``split``: its own shards, or every world-th sample when shards are few."""
    available = manifest.split(split)
    if len(available) >= world:
        for sample in shards.iter_samples(root, shards.shards_for_rank(manifest, split, rank, world)):
            yield decode(sample)
        return
    for index, sample in enumerate(shards.iter_samples(root, available)):
        if index % world == rank:
            yield decode(sample)


def batches(samples: Iterator[tuple[np.ndarray, int]], size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    inputs: list[np.ndarray] = []
    labels: list[int] = []
    for features, label in samples:
        inputs.append(features)
        labels.append(label)
        if len(inputs) == size:
            yield torch.from_numpy(np.stack(inputs)), torch.tensor(labels)
            inputs, labels = [], []
    if inputs:
        yield torch.from_numpy(np.stack(inputs)), torch.tensor(labels)


def dataset_shape(root: Path, manifest: shards.Manifest, split: str, classes: int | None,
                  decode: Decoder | None = None) -> tuple[tuple[int, ...], int]:  # fmt: skip
    """Input shape and number of classes: from the manifest, else the flag and the first sample."""
    extra = dict(manifest.extra)
    shape = tuple(int(d) for d in extra["shape"]) if "shape" in extra else None
    count = classes or (int(extra["classes"]) if "classes" in extra else None) or len(extra.get("labels") or ()) or None
    if shape is None:
        first = (decode or Decoder()).features(next(shards.iter_samples(root, manifest.split(split)[:1])))
        shape = tuple(first.shape)
    if count is None:
        raise ValueError("the number of classes is in neither the manifest (extra.classes or extra.labels) nor --classes")
    return shape, count


# ---------------------------------------------------------------------------
# checkpoints and reports


def report(progress: dict[str, Any], checkpoint_dir: Path | None) -> None:
    """One JSON progress line on stdout, and ``progress.json`` next to the checkpoints."""
    line = json.dumps(progress, sort_keys=True)
    print(line, flush=True)
    if checkpoint_dir is not None:
        durable.make_directories(checkpoint_dir)
        durable.write_text(checkpoint_dir / PROGRESS, line)


def progress_document(progress: dict[str, Any]) -> dict[str, Any]:
    """The report the operator reads, live from ``/progress`` and at the end from the termination message."""
    return {"schema": PROGRESS_SCHEMA, **{key: progress[key] for key in REPORTED_FIELDS if key in progress}}


def write_termination_message(progress: dict[str, Any], path: str = TERMINATION_LOG) -> None:
    """The last progress report as the container's termination message (read by the operator)."""
    target = Path(os.environ.get("LEPTON_TERMINATION_LOG", path))
    if target.parent.is_dir() and os.access(target.parent if not target.exists() else target, os.W_OK):
        target.write_text(json.dumps(progress_document(progress), sort_keys=True))


def check_same_step(step: int, device: torch.device) -> None:
    """Raise on every rank unless all resumed from the same step.

    Each rank picks its checkpoint itself; ranks that saw different bytes (a file system
    that showed one of them an older version) would train with different optimizer states
    and positions while DDP broadcast rank 0's weights, silently. One all-reduce of
    (step, -step) gives every rank the highest and the lowest step.
    """
    bounds = torch.tensor([step, -step], dtype=torch.int64, device=device)
    dist.all_reduce(bounds, op=dist.ReduceOp.MAX)
    highest, lowest = int(bounds[0]), -int(bounds[1])
    if highest != lowest:
        raise RuntimeError(f"ranks resumed from different checkpoints (steps {lowest} to {highest}); this one from {step}")


def serve_progress(rank: int) -> progress_server.ProgressServer | None:
    """The live progress endpoint: global rank 0 serves it, other ranks do not (``None``)."""
    return progress_server.start() if rank == 0 else None


# ---------------------------------------------------------------------------
# the run


def train(args: argparse.Namespace) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    server = serve_progress(rank)
    try:
        return _train(args, rank, world, server)
    finally:
        if server is not None:
            server.close()


def _train(args: argparse.Namespace, rank: int, world: int, server: progress_server.ProgressServer | None) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(args.seed)
    root = Path(args.dataset_dir)
    manifest, _ = shards.read_manifest(root)
    decoder = decoder_for(root, manifest, args.split, args.image_size)
    shape, classes = dataset_shape(root, manifest, args.split, args.classes, decoder)
    model = build_model(args.model, shape, args.hidden, classes).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    checkpoint_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else None
    resumed = checkpoints.resume(checkpoint_dir, model, optimizer)
    position, resumed_from = resumed.position, resumed.position.step
    check_same_step(resumed_from, device)
    if rank == 0 and resumed.torn:
        print(f"rank 0: {resumed.message()}", flush=True)
    #: Fields every report of this run carries: where it resumed, and the torn checkpoints it skipped.
    origin: dict[str, Any] = {"resumedFrom": resumed_from}
    if resumed.torn:
        origin["tornCheckpoints"] = [torn.name for torn in resumed.torn][:MAX_REPORTED_TORN]
    ddp = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    loss_fn = nn.CrossEntropyLoss()
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    crash_rank = 1 if world > 1 else 0
    progress: dict[str, Any] = {"step": position.step, "epoch": position.epoch, **origin}
    if server is not None:
        server.publish(progress_document(progress))
    first_loss: float | None = None
    step, started = position.step, time.monotonic()
    done = args.max_steps is not None and step >= args.max_steps
    for epoch in range(position.epoch, args.epochs):
        if done:
            break
        skip = position.batch if epoch == position.epoch else 0
        with Join([ddp]):
            samples = rank_samples(root, manifest, args.split, rank, world, decoder)
            for index, (inputs, labels) in enumerate(batches(samples, args.batch_size)):
                if index < skip or done:
                    continue
                if args.crash_at_step is not None and step == args.crash_at_step and rank == crash_rank and not resumed_from:
                    print(f"rank {rank}: crashing at step {step} (fault injection)", flush=True)
                    os._exit(137)
                optimizer.zero_grad(set_to_none=True)
                with autocast:
                    loss = loss_fn(ddp(inputs.to(device).reshape(len(inputs), *shape)), labels.to(device))
                loss.backward()
                optimizer.step()
                step += 1
                value = float(loss.detach())
                first_loss = value if first_loss is None else first_loss
                progress = {"step": step, "epoch": epoch, "loss": round(value, 6), **origin}
                if server is not None:
                    server.publish(progress_document(progress))
                if rank == 0 and step % args.log_every == 0:
                    report(progress, checkpoint_dir)
                if rank == 0 and checkpoint_dir is not None and step % args.checkpoint_every == 0:
                    here = Position(step, epoch, index + 1)
                    checkpoints.save(checkpoint_dir, model, optimizer, here, args.keep_checkpoints)
                done = args.max_steps is not None and step >= args.max_steps
    if rank == 0:
        progress = {**progress, "firstLoss": first_loss, "seconds": round(time.monotonic() - started, 3)}
        if checkpoint_dir is not None:
            checkpoints.save(checkpoint_dir, model, optimizer, Position(step, args.epochs, 0), args.keep_checkpoints)
        if args.output_dir:
            export.write(model, shape, Path(args.output_dir), args.model_name, args.max_batch_size, args.output_format)
            progress["output"] = str(Path(args.output_dir) / args.model_name)
        report(progress, checkpoint_dir)
        write_termination_message(progress)
    dist.barrier()
    dist.destroy_process_group()
    return progress


def main(argv: Sequence[str] | None = None) -> int:
    train(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
