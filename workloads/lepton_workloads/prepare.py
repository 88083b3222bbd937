"""The dataset preparer: ``python -m lepton_workloads.prepare``, the prepare Job's one container.

It fetches the source (``sources``, shared with the model stager), reads it as records of the declared
modality (``prepare_layouts``), assigns records to train/validation with a
seeded shuffle, writes webdataset shards and ``manifest.json`` through
``shards`` (the contract the trainer reads; each shard hashed as it is
written), checks the written sizes, and reports. Every option is a flag whose default comes from an environment
variable, because the operator's Job sets the environment:

==========================  ===================================================
``LEPTON_SOURCE_URI``       the source (see ``sources``)
``LEPTON_SOURCE_ROOT``      where the Job mounts a ``pvc://`` source claim
``LEPTON_SOURCE_TOKEN``     bearer token for http(s) sources (secretKeyRef)
``LEPTON_S3_ENDPOINT``      S3-compatible endpoint URL; ``AWS_REGION``, ``AWS_*`` keys
                            (secretKeyRef) for s3:// sources
``LEPTON_SOURCE_CA_FILE``   CA bundle added to the system roots for the source
                            (``caBundle``, see ``source_tls``)
``LEPTON_MODALITY``         image | audio | text | tabular | multimodal
``LEPTON_OUTPUT_DIR``       the dataset claim's mount (shards + manifest)
``LEPTON_SHARD_TARGET_BYTES`` / ``LEPTON_SHARD_COUNT``  shard size or count
``LEPTON_SPLIT_TRAIN`` / ``LEPTON_SPLIT_VALIDATION`` / ``LEPTON_SPLIT_SEED``
``LEPTON_VERIFY_SHA256``    expected sha256 of a single-object source
``LEPTON_SPEC_HASH``        the operator's hash of the data-defining spec
``LEPTON_CLAIM_BYTES``      the claim's requested size: a dataset that does not fit
                            fails ``InsufficientStorage`` (``claim_budget``)
``LEPTON_RESULT_PATH``      the result document (``/dev/termination-log``)
==========================  ===================================================

The result document (schema ``lepton.ai/prepare-result/v1``, compact JSON well
under the kubelet's 4096-byte termination-message limit) is how the operator
learns the outcome without reading the claim or the pod's logs::

    {"schema": "lepton.ai/prepare-result/v1", "ok": true, "records": 10,
     "bytes": 20480, "shards": 2, "digest": "sha256:...", "splits": {...},
     "sourceBytes": 9000, "sourceSha256": "...", "seconds": 0.4}
    {"schema": "lepton.ai/prepare-result/v1", "ok": false,
     "reason": "ChecksumMismatch", "message": "source sha256 is ab.., want cd.."}

Exit codes: 0 prepared; 1 a failure a retry may fix (source unreachable or cut
off); 3 a failure no retry fixes (bad data, checksum mismatch, empty dataset,
a claim too small for the shards, bad arguments) - the Job's podFailurePolicy fails at once on 3.

Progress (at most once a second) goes to stdout (``progress bytesDone=...
bytesTotal=...``), to ``.progress.json`` in the output directory and to
``GET /progress`` (:mod:`lepton_workloads.progress_server`, port
``LEPTON_PROGRESS_PORT``), which the operator polls while the Job runs to fill
``status.progress``. File and endpoint carry the same document
(:meth:`Reporter.document`)::

    {"schema": "lepton.ai/prepare-progress/v1", "stage": "fetching",
     "bytesDone": 1048576, "bytesTotal": 9000000, "records": 0}

Restarts are clean: a run removes the previous shards before writing and writes
the manifest last (atomically, and only once the shards are synced to the disk:
a node crash cannot leave a manifest over shards the disk never got), so a
half-written preparation is never taken for a finished one; a run that finds a manifest of the same spec hash whose
shards verify reports it again instead of preparing twice.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lepton_workloads import progress_server, shards
from lepton_workloads.claim_budget import Budget, ClaimFull, claim_full
from lepton_workloads.prepare_layouts import LayoutError, Record, read_ahead, records
from lepton_workloads.source_tls import TLS_REASON, Trust
from lepton_workloads.sources import S3Options, SourceError, fetch, token_from_env

RESULT_SCHEMA = "lepton.ai/prepare-result/v1"
PROGRESS_SCHEMA = "lepton.ai/prepare-progress/v1"
DEFAULT_RESULT_PATH = "/dev/termination-log"
DEFAULT_TARGET_SIZE = 256 << 20
STAGING_DIR = ".staging"
PROGRESS_FILE = ".progress.json"
EXIT_RETRYABLE = 1
EXIT_PERMANENT = 3
#: A refused certificate is retried like refused credentials: the CA bundle's ConfigMap (mounted as a
#: directory, refreshed by the kubelet) or the server's certificate may be fixed while the Job backs off.
RETRYABLE_REASONS = frozenset({"SourceUnreachable", "SourceTruncated", "AccessDenied", TLS_REASON})
MAX_RESULT_BYTES = 4096


class PrepareError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name, "").strip()
    return value or default


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m lepton_workloads.prepare", description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=_env("LEPTON_SOURCE_URI"))
    parser.add_argument("--source-root", type=Path, default=Path(_env("LEPTON_SOURCE_ROOT", "/mnt/source") or ""))
    parser.add_argument("--modality", default=_env("LEPTON_MODALITY"))
    parser.add_argument("--output", type=Path, default=Path(_env("LEPTON_OUTPUT_DIR", "/data") or ""))
    parser.add_argument("--shard-target-bytes", type=int, default=_int(_env("LEPTON_SHARD_TARGET_BYTES")))
    parser.add_argument("--shard-count", type=int, default=_int(_env("LEPTON_SHARD_COUNT")))
    parser.add_argument("--train", type=float, default=float(_env("LEPTON_SPLIT_TRAIN", "0.9") or 0.9))
    parser.add_argument("--validation", type=float, default=_float(_env("LEPTON_SPLIT_VALIDATION")))
    parser.add_argument("--seed", type=int, default=int(_env("LEPTON_SPLIT_SEED", "0") or 0))
    parser.add_argument("--sha256", default=_env("LEPTON_VERIFY_SHA256"))
    parser.add_argument("--spec-hash", default=_env("LEPTON_SPEC_HASH", "") or "")
    parser.add_argument("--claim-bytes", type=int, default=_int(_env("LEPTON_CLAIM_BYTES")))
    parser.add_argument("--result", type=Path, default=Path(_env("LEPTON_RESULT_PATH", DEFAULT_RESULT_PATH) or ""))
    return parser.parse_args(argv)


def _int(text: str | None) -> int | None:
    return int(text) if text else None


def _float(text: str | None) -> float | None:
    return float(text) if text else None


def assign_splits(count: int, train: float, validation: float | None, seed: int) -> dict[str, list[int]]:
    """Record indices per split: a ``random.Random(seed)`` shuffle, cut by the fractions.

    ``validation`` unset takes every record not in train; set, records beyond
    ``train + validation`` are left out. Empty splits are dropped.
    """
    order = list(range(count))
    random.Random(seed).shuffle(order)
    n_train = round(train * count)
    n_validation = count - n_train if validation is None else min(round(validation * count), count - n_train)
    splits = {"train": order[:n_train], "validation": order[n_train : n_train + n_validation]}
    return {name: indices for name, indices in splits.items() if indices}


class Reporter:
    """Progress lines on stdout, a small JSON file and the live endpoint, at most once a second."""

    def __init__(self, output: Path, server: progress_server.ProgressServer | None = None) -> None:
        self.path = output / PROGRESS_FILE
        self.server = server
        self.last = 0.0
        self.state: dict[str, Any] = {"stage": "fetching", "bytesDone": 0, "bytesTotal": None, "records": 0}
        if server is not None:
            server.publish(self.document())

    def document(self) -> dict[str, Any]:
        """The progress document of the file and of ``GET /progress``."""
        return {"schema": PROGRESS_SCHEMA, **self.state}

    def update(self, force: bool = False, **fields: Any) -> None:
        self.state.update(fields)
        now = time.monotonic()
        if not force and now - self.last < 1.0:
            return
        self.last = now
        line = " ".join(f"{key}={value}" for key, value in self.state.items())
        print(f"progress {line}", flush=True)
        document = self.document()
        if self.server is not None:
            self.server.publish(document)
        try:
            self.path.write_text(json.dumps(document))
        except OSError:
            pass  # progress is best effort; the result document is what counts

    def bytes(self, done: int, total: int | None) -> None:
        self.update(bytesDone=done, bytesTotal=total)


def _reuse(output: Path, spec_hash: str) -> tuple[shards.Manifest, str] | None:
    """A finished preparation of the same spec hash whose shards still verify."""
    if not spec_hash or not (output / shards.MANIFEST).is_file():
        return None
    try:
        manifest, digest = shards.read_manifest(output)
    except (ValueError, KeyError, TypeError, OSError):
        return None
    if manifest.extra.get("specHash") != spec_hash or shards.verify(output, manifest):
        return None
    return manifest, digest


def _write(
    output: Path, items: list[Record], splits: Mapping[str, list[int]], args: argparse.Namespace, reporter: Reporter,
    budget: Budget,
) -> tuple[list[shards.ShardInfo], list[str]]:
    """Write every split's shards; returns them and the distinct ``cls`` labels seen (see :func:`label_list`)."""
    records_per_shard = math.ceil(len(items) / args.shard_count) if args.shard_count else None
    target = None if records_per_shard else (args.shard_target_bytes or DEFAULT_TARGET_SIZE)
    written: list[shards.ShardInfo] = []
    labels: set[str] = set()
    done = 0
    total = sum(len(indices) for indices in splits.values())
    for split, indices in splits.items():
        with shards.ShardWriter(output, split, target_size_bytes=target, records_per_shard=records_per_shard) as writer:
            for index, sample in zip(indices, read_ahead(items[index] for index in indices), strict=True):
                if "cls" in sample:
                    labels.add(sample["cls"].decode("utf-8", "replace").strip())
                budget.spend(sample, done, total)
                writer.add(f"{index:09d}", sample)
                done += 1
                reporter.update(stage="sharding", records=done)
        written.extend(writer.written)
    return written, label_list(labels)


def label_list(labels: set[str]) -> list[str]:
    """The dataset's classes in a stable order: numerically when every label is an integer, else by name.

    Recorded as the manifest's ``extra.labels`` so a trainer maps ``cls`` text to a class index
    (``cat``/``dog`` work as well as ``0``/``1``) and knows how many classes there are.
    """
    if all(label.lstrip("-").isdigit() for label in labels):
        return sorted(labels, key=int)
    return sorted(labels)


def prepare(args: argparse.Namespace, reporter: Reporter) -> dict[str, Any]:
    """Run one preparation; returns the success result document, raises on failure."""
    started = time.monotonic()
    if not args.source or not args.modality:
        raise PrepareError("BadArguments", "source and modality are required (LEPTON_SOURCE_URI, LEPTON_MODALITY)")
    output: Path = args.output
    output.mkdir(parents=True, exist_ok=True)
    reused = _reuse(output, args.spec_hash)
    if reused is not None:
        manifest, digest = reused
        print(f"reusing the preparation of spec {args.spec_hash}: {digest}", flush=True)
        return _result(manifest, digest, manifest.extra.get("sourceBytes", 0), manifest.extra.get("sourceSha256"),
                       started)  # fmt: skip
    staging = output / STAGING_DIR
    budget = Budget(args.claim_bytes)
    try:
        fetched = fetch(args.source, staging, source_root=args.source_root, token=token_from_env(),
                        progress=reporter.bytes, s3=S3Options.from_env(), sha256=args.sha256 or None,
                        trust=Trust.from_env())  # fmt: skip
        if fetched.root == staging:
            budget.stage(fetched.bytes)
        items = records(args.modality, fetched.root)
        if not items:
            raise PrepareError("EmptyDataset", f"no {args.modality} records found in {args.source}")
        splits = assign_splits(len(items), args.train, args.validation, args.seed)
        if not splits:
            raise PrepareError("EmptyDataset", f"the splits leave none of the {len(items)} records")
        (output / shards.MANIFEST).unlink(missing_ok=True)  # never leave an old manifest over new shards
        shutil.rmtree(output / shards.SHARD_DIR, ignore_errors=True)
        written, labels = _write(output, items, splits, args, reporter, budget)
    except (ClaimFull, OSError) as error:
        full = error if isinstance(error, ClaimFull) else claim_full(error)
        if full is None:
            raise
        # Nothing half-made stays on a claim that is full: the next run (a bigger claim) starts clean.
        shutil.rmtree(output / shards.SHARD_DIR, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
        raise full from (None if full is error else error)
    extra: dict[str, Any] = {"specHash": args.spec_hash, "seed": args.seed, "sourceBytes": fetched.bytes}
    if labels:
        extra["labels"] = labels
    if fetched.sha256:
        extra["sourceSha256"] = fetched.sha256
    manifest = shards.Manifest(modality=args.modality, source=args.source, shards=tuple(written), extra=extra)
    # Each shard's sha256 was computed from the bytes as they were written; reading them
    # back to hash again would double the CPU cost (sha256 is the preparer's bottleneck),
    # so the check here is that every file on the claim has the size that was hashed.
    problems = [s.name for s in written if (output / s.name).stat().st_size != s.bytes]
    if problems:
        raise PrepareError("VerifyFailed", f"shards with the wrong size on the claim: {', '.join(problems[:5])}")
    digest = shards.write_manifest(output, manifest)
    if fetched.root == staging:
        shutil.rmtree(staging, ignore_errors=True)
    reporter.update(force=True, stage="done", records=manifest.records)
    return _result(manifest, digest, fetched.bytes, fetched.sha256, started)


def _result(
    manifest: shards.Manifest, digest: str, source_bytes: int, source_sha: str | None, started: float
) -> dict[str, Any]:
    splits: dict[str, dict[str, int]] = json.loads(manifest.to_json())["splits"]
    result = {
        "schema": RESULT_SCHEMA, "ok": True, "records": manifest.records, "bytes": manifest.bytes,
        "shards": len(manifest.shards), "digest": digest, "splits": splits, "sourceBytes": source_bytes,
        "seconds": round(time.monotonic() - started, 3),
    }  # fmt: skip
    if source_sha:
        result["sourceSha256"] = source_sha
    return result


def failure(reason: str, message: str) -> dict[str, Any]:
    """The result document of a failed preparation (the message cut to fit the 4 KiB limit)."""
    return {"schema": RESULT_SCHEMA, "ok": False, "reason": reason, "message": message[:3000]}


def write_result(path: Path, result: Mapping[str, Any]) -> None:
    text = json.dumps(result, separators=(",", ":"), sort_keys=True)
    assert len(text.encode()) <= MAX_RESULT_BYTES, "result document over the termination-message limit"
    try:
        path.write_text(text)
    except OSError as error:  # no termination log outside a pod: stdout still has it
        print(f"could not write the result to {path}: {error}", file=sys.stderr)
    print(f"result {text}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    server = progress_server.start()
    try:
        return _run(args, Reporter(args.output, server))
    finally:
        if server is not None:
            server.close()


def _run(args: argparse.Namespace, reporter: Reporter) -> int:
    try:
        result = prepare(args, reporter)
    except (PrepareError, SourceError, LayoutError, ClaimFull) as error:
        write_result(args.result, failure(error.reason, str(error)))
        return EXIT_RETRYABLE if error.reason in RETRYABLE_REASONS else EXIT_PERMANENT
    except Exception as error:  # noqa: BLE001 - anything else still gets a reason
        write_result(args.result, failure("InternalError", f"{type(error).__name__}: {error}"))
        return EXIT_RETRYABLE
    write_result(args.result, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
