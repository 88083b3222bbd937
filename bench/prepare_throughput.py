"""Preparer and shard-reader throughput against a plain sequential read of the same bytes on the same disk.

    PYTHONPATH=workloads python bench/prepare_throughput.py [--files 400] [--size 262144] [--repeat 5]
        [--cache warm,cold] [--dir /tmp] [--out bench/results/prepare_throughput.json]

Generates ``--files`` image files of ``--size`` bytes (random bytes behind a PNG
signature, so they do not compress and pass the preparer's signature check)
with a ``labels.csv``, then, in the same run and on the same directory, per
repetition:

1. ``read``: a plain sequential read of every source file (1 MiB reads), the
   reference the target in TARGETS.md is measured against;
2. ``hashed_read``: the same read with sha256 over every byte, what any
   verified copy costs on one core (shown beside, not the target's reference);
3. ``prepare``: ``lepton_workloads.prepare.main`` from the directory as a
   mounted source (``pvc://`` path) into webdataset shards (every shard hashed
   while written), the whole command as a prepare Job runs it;
4. ``shard_read`` and ``reader``: a plain sequential read of the shard files,
   and the trainer's shard reader (``shards.iter_samples``, every sample of
   every shard) over the same files.

Each cache mode runs every step the same way:

* ``warm``: everything is in the page cache (the files were just written or
  read), so a plain read runs at memory bandwidth, and any step that hashes
  (sha256 at 1-2 GB/s on one core) or writes cannot come near it.
* ``cold``: before every timed step its input files are written back and
  dropped from the page cache (``fsync`` + ``posix_fadvise(DONTNEED)``, per
  file, no privileges needed), so reference and subject both read from the
  disk. The preparer syncs its shards as it writes them (the manifest names
  only bytes on the disk), so its time includes their write-back; what is
  left to write back just after (``flush``: the directory entries, little
  else) is measured and shown as a second ratio.

Prints one JSON line per repetition, then the medians (with each ratio's range
over the repetitions), and writes them to ``--out``. On a machine shared with
other work the cold figures move a lot from run to run (the disk is shared too):
compare runs, not single figures.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lepton_workloads import durable, prepare, shards

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHUNK = 1 << 20
RESULTS = Path(__file__).resolve().parent / "results" / "prepare_throughput.json"


def generate(root: Path, files: int, size: int) -> int:
    (root / "img").mkdir(parents=True)
    lines = ["file,label"]
    for index in range(files):
        (root / "img" / f"{index:06d}.png").write_bytes(PNG_SIGNATURE + os.urandom(size - len(PNG_SIGNATURE)))
        lines.append(f"img/{index:06d}.png,{index % 10}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return files * size


def files_under(root: Path) -> list[Path]:
    return sorted(path for path in root.rglob("*") if path.is_file())


def sequential_read(root: Path) -> int:
    total = 0
    for path in files_under(root):
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                total += len(chunk)
    return total


def hashed_read(root: Path) -> int:
    """The same read with sha256 over every byte: the floor of any verified copy on one core."""
    total = 0
    for path in files_under(root):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
                total += len(chunk)
    return total


def flush(root: Path) -> None:
    """Write every file under ``root`` back to the disk."""
    for path in files_under(root):
        durable.sync_file(path)


def evict(root: Path) -> None:
    """Write back, then drop every file under ``root`` from the page cache, so the next read is from disk."""
    for path in files_under(root):
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def repetition(work: Path, source: Path, index: int, cold: bool) -> tuple[dict[str, float], int]:
    """One pass of every step: seconds per step, and the bytes of the shards written.

    Odd repetitions run the reference after the subject instead of before, so neither
    side always meets the disk (or the page cache of the machine under it) first.
    """
    seconds: dict[str, float] = {}
    output = work / f"out-{index}"
    shard_dir = output / shards.SHARD_DIR
    argv = ["--source", "pvc://claim/images", "--source-root", str(work / "claim"), "--modality", "image",
            "--output", str(output), "--result", str(work / "result.json"), "--shard-target-bytes", str(64 << 20)]  # fmt: skip

    def run(name: str, step: Callable[[], Any], inputs: Path) -> Any:
        if cold:
            evict(inputs)
        started = time.perf_counter()
        value = step()
        seconds[name] = time.perf_counter() - started
        return value

    def prepared() -> None:
        if run("prepare", lambda: prepare.main(argv), source) != 0:
            raise RuntimeError((work / "result.json").read_text())
        started = time.perf_counter()
        flush(output)
        seconds["flush"] = time.perf_counter() - started

    def in_order(steps: list[Callable[[], Any]]) -> None:
        for step in steps if index % 2 == 0 else steps[::-1]:
            step()

    in_order([lambda: run("read", lambda: sequential_read(source), source),
              lambda: run("hashed_read", lambda: hashed_read(source), source), prepared])  # fmt: skip
    manifest, _ = shards.read_manifest(output)
    samples: list[int] = []
    in_order([lambda: run("shard_read", lambda: sequential_read(shard_dir), shard_dir),
              lambda: samples.append(run("reader", lambda: sum(1 for _ in shards.iter_samples(output, manifest.shards)), shard_dir))])  # fmt: skip
    assert samples == [manifest.records]
    shutil.rmtree(output)
    return seconds, manifest.bytes


def figures(seconds: dict[str, float], source_bytes: int, shard_bytes: int) -> dict[str, float]:
    """MB/s per step and the ratios the target is about (reference time over subject time)."""
    return {
        "read_MBps": round(source_bytes / seconds["read"] / 1e6, 1),
        "hashed_read_MBps": round(source_bytes / seconds["hashed_read"] / 1e6, 1),
        "prepare_MBps": round(source_bytes / seconds["prepare"] / 1e6, 1),
        "shard_read_MBps": round(shard_bytes / seconds["shard_read"] / 1e6, 1),
        "reader_MBps": round(shard_bytes / seconds["reader"] / 1e6, 1),
        "prepare_ratio": round(seconds["read"] / seconds["prepare"], 3),
        "prepare_ratio_with_flush": round(seconds["read"] / (seconds["prepare"] + seconds["flush"]), 3),
        "prepare_ratio_to_hashed_read": round(seconds["hashed_read"] / seconds["prepare"], 3),
        "reader_ratio": round(seconds["shard_read"] / seconds["reader"], 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--size", type=int, default=256 * 1024)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--cache", default="warm,cold", help="comma-separated: warm, cold")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    modes = [mode.strip() for mode in args.cache.split(",") if mode.strip()]
    os.environ.setdefault("LEPTON_PROGRESS_PORT", "0")  # any free port: runs never collide on 9400
    load_at_start = [round(load, 2) for load in os.getloadavg()]
    work = Path(tempfile.mkdtemp(prefix="lepton-bench-prepare-", dir=args.dir))
    summary: dict[str, Any] = {}
    try:
        source = work / "claim" / "images"
        generate(source, args.files, args.size)
        source_bytes = sum(path.stat().st_size for path in files_under(source))
        for mode in modes:
            if mode == "cold":  # one untimed pass, so the first timed read does not pay alone for a first touch
                repetition(work, source, -1, cold=True)
            runs: list[dict[str, float]] = []
            for index in range(args.repeat):
                seconds, shard_bytes = repetition(work, source, index, cold=mode == "cold")
                row = figures(seconds, source_bytes, shard_bytes)
                runs.append(row)
                print(json.dumps({"cache": mode, "repetition": index, **row, "seconds": {k: round(v, 4) for k, v in seconds.items()}}), flush=True)
            summary[mode] = {key: round(statistics.median(run[key] for run in runs), 3) for key in runs[0]}
            summary[mode]["ratio_ranges"] = {key: [min(run[key] for run in runs), max(run[key] for run in runs)]
                                             for key in runs[0] if "ratio" in key}  # fmt: skip
            print(json.dumps({"cache": mode, "medians": summary[mode]}), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    document = {
        "shape": f"{args.files} image files x {args.size} bytes ({source_bytes / 1e6:.0f} MB) from a mounted directory "
        f"into 64 MiB webdataset shards (train/validation 0.9/0.1); {args.repeat} repetitions per cache mode, medians; "
        f"{os.cpu_count()} cores shared with whatever else runs",
        "reference": "plain sequential read (1 MiB reads) of the same bytes on the same disk, timed in the same repetition",
        "target": 0.8,
        "load_average_at_start": load_at_start,
        **summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(document), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
