"""A small multimodal dataset made on the spot, and an HTTP server for it: the quickstart's data.

The demo and the full-path test need data a ``LeptonDataset`` can fetch over HTTP, and nothing may
be downloaded from outside, so the workloads image carries this generator:
``python -m lepton_workloads.demo_data --dir /tmp/data --records 120 --serve 8080`` writes the
records under ``records/`` and serves the directory as index pages of links, which is what the
preparer's ``http://.../records/`` source walks (the same as nginx ``autoindex`` or ``python -m
http.server``). ``archives/`` holds the same records as one tar, ``quickstart.tar`` (its sha256
is printed and served next to it as ``quickstart.tar.sha256``), and a copy with a few bytes
flipped, ``quickstart-corrupted.tar``: a download that arrives whole but wrong, for trying a
dataset's ``verify.sha256``.

Each record is a group of files sharing a stem (the preparer's ``multimodal`` layout):
``<stem>.png`` (a 16 x 16 greyscale image whose brightness depends on its class, with noise),
``<stem>.cls`` (the label: ``bird``, ``cat`` or ``dog``), ``<stem>.wav`` (a short tone whose
pitch depends on the class) and ``<stem>.txt`` (a transcript naming the class). A small CNN
learns the classes from the images in a few epochs. Everything is a pure function of the seed,
so a test knows what the prepared manifest must say; the tar is deterministic too (sorted
members, no times or owners). PNG and WAV are written with ``zlib`` +
``struct`` and ``wave`` from the standard library (real files: signatures, CRCs, headers).
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import http.server
import io
import random
import struct
import sys
import tarfile
import wave
import zlib
from collections.abc import Sequence
from pathlib import Path

CLASSES = ("cat", "dog", "bird")
SIZE = 16
RECORDS, ARCHIVES = "records", "archives"
ARCHIVE, CORRUPTED = "quickstart.tar", "quickstart-corrupted.tar"


def png(width: int, height: int, shade: int, noise: Sequence[int] = ()) -> bytes:
    """A greyscale 8-bit PNG: every pixel ``shade`` plus ``noise[i]`` (cycled), clipped to 0..255."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    jitter = list(noise) or [0]
    pixels = [max(0, min(255, shade + jitter[i % len(jitter)])) for i in range(width * height)]
    rows = b"".join(b"\x00" + bytes(pixels[y * width : (y + 1) * width]) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


def wav(frames: int, tone: int, rate: int = 8000) -> bytes:
    """A mono 16-bit WAV of a sawtooth whose period depends on ``tone``."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as writer:
        writer.setnchannels(1)
        writer.setsampwidth(2)
        writer.setframerate(rate)
        writer.writeframes(b"".join(struct.pack("<h", (i * tone) % 2000 - 1000) for i in range(frames)))
    return buffer.getvalue()


def write_records(root: Path, count: int, seed: int = 0) -> list[str]:
    """Write ``count`` records into ``root``; returns their labels in stem order."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    labels = []
    for index in range(count):
        label = CLASSES[index % len(CLASSES)]
        klass = CLASSES.index(label)
        stem = root / f"{index:05d}"
        noise = [rng.randint(-20, 20) for _ in range(SIZE * SIZE)]
        stem.with_suffix(".png").write_bytes(png(SIZE, SIZE, 50 + 75 * klass, noise))
        stem.with_suffix(".cls").write_text(label)
        stem.with_suffix(".wav").write_bytes(wav(800, 3 + 4 * klass))
        stem.with_suffix(".txt").write_text(f"record {index}: a {label}\n")
        labels.append(label)
    return labels


def write_archive(records: Path, target: Path) -> str:
    """Every file of ``records`` in one tar, the same bytes for the same records; its sha256."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for path in sorted(records.iterdir()):
            member = tarfile.TarInfo(path.name)
            data = path.read_bytes()
            member.size, member.mode = len(data), 0o644
            tar.addfile(member, io.BytesIO(data))
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(buffer.getvalue())
    return hashlib.sha256(buffer.getvalue()).hexdigest()


def corrupted(data: bytes) -> bytes:
    """``data`` with a few bytes in the middle flipped: the same length, another checksum."""
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 16]) + data[middle + 16 :]


def write_dataset(root: Path, count: int, seed: int = 0) -> tuple[list[str], str]:
    """Records under ``root/records``, the archive and its corrupted copy under ``root/archives``.

    Returns the labels and the archive's sha256.
    """
    labels = write_records(root / RECORDS, count, seed)
    archive = root / ARCHIVES / ARCHIVE
    digest = write_archive(root / RECORDS, archive)
    (root / ARCHIVES / f"{ARCHIVE}.sha256").write_text(f"{digest}  {ARCHIVE}\n")
    (root / ARCHIVES / CORRUPTED).write_bytes(corrupted(archive.read_bytes()))
    return labels, digest


def server(root: Path, port: int, bind: str = "") -> http.server.ThreadingHTTPServer:
    """An HTTP server of ``root`` as a directory index (not started; call ``serve_forever``)."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    return http.server.ThreadingHTTPServer((bind, port), handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lepton_workloads.demo_data", description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, required=True, help="where to write the records")
    parser.add_argument("--records", type=int, default=120)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--serve", type=int, default=None, metavar="PORT", help="then serve the directory over HTTP")
    parser.add_argument("--bind", default="", help="address to serve on (default: all)")
    args = parser.parse_args(argv)
    labels, digest = write_dataset(args.dir, args.records, args.seed)
    print(f"wrote {len(labels)} records ({', '.join(f'{c}: {labels.count(c)}' for c in CLASSES)}) to "
          f"{args.dir / RECORDS}, and {ARCHIVES}/{ARCHIVE} (sha256 {digest})", flush=True)  # fmt: skip
    if args.serve is not None:
        httpd = server(args.dir, args.serve, args.bind)
        print(f"serving {args.dir} on port {httpd.server_address[1]}", flush=True)
        httpd.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
