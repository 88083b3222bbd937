"""Stage a Triton model repository: the init container of every InferenceService replica.

``python -m lepton_workloads.stage_model --source=... --model-repository=/models --name=m ...``
writes ``/models/<name>/config.pbtxt`` and ``/models/<name>/1/<model file>``.

Where the model comes from (``--source``):

* a directory (a claim mounted read-only; a TrainingJob's export is one) or a
  ``file://`` URI: read in place.
* a remote URI, fetched by :func:`lepton_workloads.sources.fetch`, the same
  fetch path as the dataset preparer's (credentials and endpoint from the same
  environment, see :meth:`sources.S3Options.from_env`; an https or s3-over-https
  source verified against the system roots plus ``LEPTON_SOURCE_CA_FILE``, see
  :mod:`lepton_workloads.source_tls`):

  - ``s3://bucket/prefix/`` or ``http(s)://host/dir/`` (an http directory
    index) - every file below, e.g. an export as the TrainingJob writes it
    (``<name>/config.pbtxt``, ``<name>/1/model.pt``); a URI without the
    trailing ``/`` whose last segment is not a model file is taken as a
    directory too.
  - ``s3://bucket/key/model.pt`` or ``https://host/path/model.pt`` (a name
    ending like the format's model file) - that one object, and the first
    ``config.pbtxt`` found next to it or one level up (no index needed).
  - a tar archive (``.tar``, ``.tar.gz``, ``.tgz``) - unpacked, then read as a
    directory.

  Remote files land under ``<model repository>/.fetch`` (the same volume, so
  the model file is moved, never copied twice) which is removed afterwards.

In the fetched or mounted directory the model file is ``<dir>/<file>`` or the
shallowest match below, and the exported config is the one next to it, one
level up (``<name>/config.pbtxt`` over ``<name>/1/model.pt``), or at the top.
The config is the operator's (``--config``, rendered from the spec) when the
spec names the tensors, otherwise that exported one; either way the spec's
serving settings (name, format, batch size, dynamic batching, instances) are
applied through :mod:`triton_config`, the one generator, so a config Triton
would refuse fails here with a message, not in the server.

A failure exits 1 with one line, ``<Reason>: <message>`` (the reason of
:class:`sources.SourceError`, or ``ModelNotFound``, ``ConfigNotFound``,
``InvalidModelConfig``, ``StagingFailed``), on stderr and in
``--termination-log`` (the pod's ``/dev/termination-log``), so
``kubectl describe pod`` shows why a replica does not start.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
import time
import urllib.parse
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from lepton_workloads import sources, triton_config
from lepton_workloads.source_tls import Trust
from lepton_workloads.sources import SourceError

CONFIG_FILE = "config.pbtxt"
VERSION = "1"
#: Where remote sources are fetched to, inside the model repository (removed after staging).
FETCH_DIR = ".fetch"
REMOTE_SCHEMES = ("http", "https", "s3")
PROGRESS_SECONDS = 5.0
#: The kubelet keeps at most 4096 bytes of a termination message.
MAX_MESSAGE = 4000


@dataclasses.dataclass(frozen=True)
class Located:
    """The model file and the exported config (if any) of a source, as local paths."""

    model: Path
    config: Path | None
    config_problem: str = ""
    """Why no config was found next to a single-object model (the fetch errors)."""


def _find(root: Path, filename: str) -> Path | None:
    """``root/filename``, else the shallowest match below ``root``."""
    direct = root / filename
    if direct.is_file():
        return direct
    found = sorted(root.rglob(filename), key=lambda path: len(path.parts))
    return found[0] if found else None


def _in_directory(root: Path, model_file: str, source: str) -> Located:
    model = _find(root, model_file)
    if model is None:
        raise SourceError("ModelNotFound", f"no {model_file} under {source}")
    exported = [model.parent / CONFIG_FILE, model.parent.parent / CONFIG_FILE, root / CONFIG_FILE]
    return Located(model, next((path for path in exported if path.is_file()), None))


def remote_layout(uri: str, model_file: str) -> tuple[str, tuple[str, ...]]:
    """What to fetch for ``uri`` and, for a single model object, where its exported config may be.

    ``(uri, ())`` for a directory (a ``/`` is appended when the last segment is
    not a file name the stager knows) or an archive. When the last segment ends
    like the model file: ``(uri, configs)``, the ``config.pbtxt`` next to it and
    one level up (an export's ``<name>/config.pbtxt`` over ``<name>/1/model.pt``).
    """
    parsed = urllib.parse.urlparse(uri)
    path = PurePosixPath(urllib.parse.unquote(parsed.path))
    if uri.endswith("/") or parsed.path in ("", "/") or sources.is_archive(path.name):
        return uri, ()
    if not path.name.endswith(PurePosixPath(model_file).suffix):
        return uri + "/", ()
    folders = dict.fromkeys((path.parent, path.parent.parent))  # ordered, without the duplicate at the top
    configs = (
        urllib.parse.urlunparse(parsed._replace(path=urllib.parse.quote(str(folder / CONFIG_FILE)), query="", fragment=""))
        for folder in folders
    )
    return uri, tuple(configs)


def _reporter() -> sources.Progress:
    """Print how far a download got, at most every :data:`PROGRESS_SECONDS`."""
    last = [0.0]

    def report(done: int, total: int | None) -> None:
        now = time.monotonic()
        if now - last[0] >= PROGRESS_SECONDS or (total is not None and done >= total):
            last[0] = now
            print(f"stage_model: fetched {done} of {total if total is not None else '?'} bytes", flush=True)

    return report


def _fetch(uri: str, into: Path) -> Path:
    fetched = sources.fetch(uri, into, source_root=into, token=sources.token_from_env(), progress=_reporter(),
                            s3=sources.S3Options.from_env(), trust=Trust.from_env())  # fmt: skip
    return fetched.root


def locate(source: str, model_file: str, work: Path) -> Located:
    """Find (fetching first when remote, under ``work``) the model file and its exported config."""
    scheme = urllib.parse.urlparse(source).scheme
    if scheme in ("", "file"):
        path = sources.local_path(source, Path("/"))
        assert path is not None  # a plain path or file:// always has one
        return _in_directory(path, model_file, source)
    if scheme not in REMOTE_SCHEMES:
        raise SourceError("UnsupportedSource", f"{source}: the model source must be a directory, http(s):// or s3://")
    uri, configs = remote_layout(source, model_file)
    root = _fetch(uri, work / "source")
    if not configs:
        return _in_directory(root, model_file, source)
    model = root / PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(uri).path)).name
    problems = []
    for index, config in enumerate(configs):
        try:
            return Located(model, _fetch(config, work / f"config-{index}") / CONFIG_FILE)
        except SourceError as error:
            problems.append(f"{error.reason}: {error}")
    return Located(model, None, "; ".join(problems))


def stage(args: argparse.Namespace) -> Path:
    """Write the repository; returns the model's directory."""
    model_file = triton_config.model_file(args.format)
    target = Path(args.model_repository, args.name)
    work = Path(args.model_repository, FETCH_DIR)
    (target / VERSION).mkdir(parents=True, exist_ok=True)
    try:
        found = locate(args.source, model_file, work)
        config_path = Path(args.config) if args.config else found.config
        if config_path is None:
            detail = f" ({found.config_problem})" if found.config_problem else ""
            raise SourceError(
                "ConfigNotFound", f"the spec names no tensors and {args.source} has no config.pbtxt with the model{detail}"
            )
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
        if found.model.is_relative_to(work):  # fetched onto this volume: move, not copy
            found.model.rename(target / VERSION / model_file)
        else:
            shutil.copyfile(found.model, target / VERSION / model_file)
        (target / CONFIG_FILE).write_text(text)
    finally:
        shutil.rmtree(work, ignore_errors=True)
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
    parse.add_argument("--termination-log", default=None, help="also write a failure here (/dev/termination-log)")
    return parse


def failure_line(error: Exception) -> str:
    """``<Reason>: <message>`` on one line."""
    if isinstance(error, SourceError):
        reason = error.reason
    elif isinstance(error, ValueError):
        reason = "InvalidModelConfig"
    else:
        reason = "StagingFailed"
    return f"{reason}: {' '.join(str(error).split())}"[:MAX_MESSAGE]


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        target = stage(args)
    except (SourceError, ValueError, OSError) as error:
        line = failure_line(error)
        print(f"stage_model: {line}", file=sys.stderr, flush=True)
        if args.termination_log:
            try:
                Path(args.termination_log).write_text(line)
            except OSError as unwritable:
                print(f"stage_model: could not write {args.termination_log}: {unwritable}", file=sys.stderr)
        return 1
    print(f"stage_model: staged {args.name} into {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
