"""Preparer and shard-reader throughput against a plain sequential read of the same bytes on the same disk.

    PYTHONPATH=workloads python bench/prepare_throughput.py [--files 400] [--size 262144] [--dir /tmp]

Generates ``--files`` image files of ``--size`` bytes (random bytes behind a PNG
signature, so they do not compress and pass the preparer's signature check)
with a ``labels.csv``, then, in the same run and on the same directory:

1. ``read``: a plain sequential read of every source file (1 MiB reads), the
   reference the target in TARGETS.md is measured against;
2. ``hashed_read``: the same read with sha256 over every byte, the floor of
   any verified copy on one core;
3. ``prepare``: ``lepton_workloads.prepare`` from the directory as a mounted
   source (``pvc://`` path) into webdataset shards, including hashing every
   shard while writing (shards are not read back; their sizes are checked).

4. ``reader``: the trainer's shard reader (``shards.iter_samples``, every
   sample of every shard) against a plain sequential read of the shard files.

All runs read from the page cache (the files were just written, and the
reference runs first); the figure is the ratio. Prints one JSON line per
repetition and a summary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from lepton_workloads import prepare, shards

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHUNK = 1 << 20


def generate(root: Path, files: int, size: int) -> int:
    (root / "img").mkdir(parents=True)
    lines = ["file,label"]
    for index in range(files):
        (root / "img" / f"{index:06d}.png").write_bytes(PNG_SIGNATURE + os.urandom(size - len(PNG_SIGNATURE)))
        lines.append(f"img/{index:06d}.png,{index % 10}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return files * size


def sequential_read(root: Path) -> int:
    total = 0
    for path in sorted(root.rglob("*")):
        if path.is_file():
            with path.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    total += len(chunk)
    return total


def hashed_read(root: Path) -> int:
    """The same read with sha256 over every byte: the floor of any verified copy on one core."""
    total = 0
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    digest.update(chunk)
                    total += len(chunk)
    return total


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=int, default=400)
    parser.add_argument("--size", type=int, default=256 * 1024)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="lepton-bench-prepare-", dir=args.dir))
    try:
        source = work / "claim" / "images"
        total = generate(source, args.files, args.size)
        ratios: list[float] = []
        hashed_ratios: list[float] = []
        reader_ratios: list[float] = []
        for repetition in range(args.repeat):
            started = time.perf_counter()
            read = sequential_read(source)
            read_seconds = time.perf_counter() - started
            started = time.perf_counter()
            hashed_read(source)
            hashed_seconds = time.perf_counter() - started
            output = work / f"out-{repetition}"
            started = time.perf_counter()
            code = prepare.main([
                "--source", "pvc://claim/images", "--source-root", str(work / "claim"), "--modality", "image",
                "--output", str(output), "--result", str(work / "result.json"), "--shard-target-bytes", str(64 << 20),
            ])  # fmt: skip
            prepare_seconds = time.perf_counter() - started
            if code != 0:
                print((work / "result.json").read_text(), file=sys.stderr)
                return 1
            result = json.loads((work / "result.json").read_text())
            manifest, _ = shards.read_manifest(output)
            started = time.perf_counter()
            shard_bytes = sequential_read(output / shards.SHARD_DIR)
            shard_read_seconds = time.perf_counter() - started
            started = time.perf_counter()
            samples = sum(1 for _ in shards.iter_samples(output, manifest.shards))
            reader_seconds = time.perf_counter() - started
            reader_ratios.append(shard_read_seconds / reader_seconds)
            shutil.rmtree(output)
            ratio = read_seconds / prepare_seconds
            ratios.append(ratio)
            hashed_ratios.append(hashed_seconds / prepare_seconds)
            print(json.dumps({
                "repetition": repetition, "files": args.files, "bytes": total, "read_bytes": read,
                "read_MBps": round(read / read_seconds / 1e6, 1), "prepare_MBps": round(total / prepare_seconds / 1e6, 1),
                "prepare_records_per_s": round(result["records"] / prepare_seconds, 1), "ratio": round(ratio, 3),
                "hashed_read_MBps": round(read / hashed_seconds / 1e6, 1),
                "ratio_to_hashed_read": round(hashed_seconds / prepare_seconds, 3),
                "reader_samples": samples, "reader_MBps": round(shard_bytes / reader_seconds / 1e6, 1),
                "shard_read_MBps": round(shard_bytes / shard_read_seconds / 1e6, 1),
                "reader_ratio": round(shard_read_seconds / reader_seconds, 3),
            }))  # fmt: skip
        ratios.sort()
        hashed_ratios.sort()
        reader_ratios.sort()
        print(json.dumps({"summary": "prepare throughput / sequential read", "median_ratio": round(ratios[len(ratios) // 2], 3),
                          "median_ratio_to_hashed_read": round(hashed_ratios[len(hashed_ratios) // 2], 3),
                          "median_reader_ratio": round(reader_ratios[len(reader_ratios) // 2], 3),
                          "target": 0.8}))  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
