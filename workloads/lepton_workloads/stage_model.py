"""Stage a Triton model repository: the init container of every InferenceService replica.

``python -m lepton_workloads.stage_model --source=... --model-repository=/models --name=m ...``
writes ``/models/<name>/config.pbtxt`` and ``/models/<name>/1/<model file>``.

The source is a directory (a claim mounted read-only; a TrainingJob's export
is one) or an http(s) URI of the model file or of its directory. The config
is the operator's (``--config``, rendered from the spec) when the spec names
the tensors, otherwise the ``config.pbtxt`` exported next to the model; either
way the spec's serving settings (name, format, batch size, dynamic batching,
instances) are applied through :mod:`triton_config`, the one generator, so a
config Triton would refuse fails here with a message, not in the server.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from lepton_workloads import triton_config

CONFIG_FILE = "config.pbtxt"
VERSION = "1"


def _find(root: Path, filename: str) -> Path | None:
    """``root/filename``, else the shallowest match below ``root``."""
    direct = root / filename
    if direct.is_file():
        return direct
    found = sorted(root.rglob(filename), key=lambda path: len(path.parts))
    return found[0] if found else None


def _download(url: str, target: Path) -> Path:
    with urllib.request.urlopen(url, timeout=60) as response, target.open("wb") as out:  # noqa: S310 - http(s) only
        shutil.copyfileobj(response, out)
    return target


def fetch(source: str, model_file: str, work: Path) -> tuple[Path, Path | None]:
    """The model file and the exported config (if any) of ``source``, as local paths."""
    if source.startswith(("http://", "https://")):
        base = source if not source.endswith(model_file) else source[: -len(model_file)]
        base = base if base.endswith("/") else base + "/"
        model = _download(base + model_file, work / model_file)
        try:
            config: Path | None = _download(base + CONFIG_FILE, work / CONFIG_FILE)
        except OSError:
            config = None
        return model, config
    if "://" in source:
        raise ValueError(f"cannot stage from {source!r}: only a mounted directory or an http(s) URI is supported")
    root = Path(source)
    model_path = _find(root, model_file)
    if model_path is None:
        raise ValueError(f"no {model_file} under {root}")
    exported = [model_path.parent / CONFIG_FILE, model_path.parent.parent / CONFIG_FILE, root / CONFIG_FILE]
    return model_path, next((path for path in exported if path.is_file()), None)


def stage(args: argparse.Namespace) -> Path:
    """Write the repository; returns the model's directory."""
    model_file = triton_config.model_file(args.format)
    target = Path(args.model_repository, args.name)
    (target / VERSION).mkdir(parents=True, exist_ok=True)
    model, exported = fetch(args.source, model_file, target)
    config_path = Path(args.config) if args.config else exported
    if config_path is None:
        raise ValueError("the spec names no tensors and the source has no config.pbtxt next to the model")
    base = triton_config.from_protobuf(triton_config.parse(config_path.read_text()))
    config = dataclasses.replace(
        base,
        name=args.name,
        format=args.format,
        max_batch_size=args.max_batch_size,
        instance_count=args.instance_count,
        instance_kind=args.instance_kind,
        dynamic_batching=args.dynamic_batching,
        preferred_batch_sizes=tuple(int(size) for size in args.preferred_batch_sizes.split(",") if size),
        max_queue_delay_microseconds=args.max_queue_delay_microseconds,
    )
    text = triton_config.render(config)
    if model.parent == target:  # downloaded into the repository: move into the version directory
        model.rename(target / VERSION / model_file)
    else:
        shutil.copyfile(model, target / VERSION / model_file)
    (target / CONFIG_FILE).write_text(text)
    return target


def parser() -> argparse.ArgumentParser:
    parse = argparse.ArgumentParser(prog="stage_model", description=__doc__.split("\n")[0])
    parse.add_argument("--source", required=True)
    parse.add_argument("--model-repository", required=True)
    parse.add_argument("--name", required=True)
    parse.add_argument("--format", required=True, choices=sorted(triton_config.FORMATS))
    parse.add_argument("--max-batch-size", type=int, default=0)
    parse.add_argument("--instance-count", type=int, default=1)
    parse.add_argument("--instance-kind", default="KIND_AUTO", choices=triton_config.INSTANCE_KINDS)
    parse.add_argument("--dynamic-batching", action="store_true")
    parse.add_argument("--preferred-batch-sizes", default="")
    parse.add_argument("--max-queue-delay-microseconds", type=int, default=0)
    parse.add_argument("--config", default=None, help="a complete config.pbtxt to start from")
    return parse


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        target = stage(args)
    except (ValueError, OSError) as error:
        print(f"stage_model: {error}", file=sys.stderr)
        return 1
    print(f"stage_model: staged {args.name} into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
