"""From fetched files to records: the multimodal layouts the preparer understands.

A record is one training sample: a key-less mapping of webdataset field
extensions to bytes (``{"png": ..., "cls": b"3"}``), loaded lazily so a large
image or audio set never sits in memory at once. Layouts, by modality:

* ``image`` - image files (png, jpg, jpeg, webp, gif, bmp) with labels from a
  ``labels.csv`` / ``labels.tsv`` (``file,label`` rows; a header row is
  skipped) or, ImageFolder style, the name of the directory holding each image.
  Fields: ``<ext>`` (the image bytes) and ``cls`` (the label). The PNG/JPEG
  signature is checked so a corrupted file fails the preparation.
* ``audio`` - ``.wav`` files (header checked with ``wave``) with transcripts
  from ``transcripts.csv`` / ``transcripts.tsv`` (``file,text``) or a sidecar
  ``<stem>.txt``. Fields: ``wav`` and ``txt``.
* ``text`` - ``.jsonl`` files, one JSON object per line (field ``json``), and
  plain ``.txt`` files, one record each (field ``txt``).
* ``tabular`` - ``.csv`` files with a header row and ``.parquet`` files; each row
  becomes a JSON object (field ``json``) keyed by the header / column names. CSV
  values stay strings (CSV has no types); Parquet keeps its types (numbers, bools,
  nulls; timestamps, decimals and binaries as strings). Parquet is read one
  record batch at a time, so a large table never sits in memory at once.
* ``multimodal`` - files grouped by their path without extension: ``0001.png``
  + ``0001.txt`` + ``0001.json`` is one record with three fields.

Records come out in a stable order (sorted paths, then line order), so a seed
gives the same split on every run. Bad data raises :class:`LayoutError` with a
reason and the file at fault.

The preparer loads records in the shuffled order of its splits through
:func:`read_ahead`, which asks the kernel for the files of the next records
before they are needed, so the source disk has several reads in flight instead
of one synchronous read at a time.
"""

from __future__ import annotations

import csv
import io
import json
import wave
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

Record = Callable[[], dict[str, bytes]]
IMAGE_EXTENSIONS = {"png", "jpg", "jpeg", "webp", "gif", "bmp"}
IMAGE_SIGNATURES = {"png": (b"\x89PNG\r\n\x1a\n",), "jpg": (b"\xff\xd8\xff",), "jpeg": (b"\xff\xd8\xff",),
                    "gif": (b"GIF87a", b"GIF89a"), "bmp": (b"BM",)}  # fmt: skip
LABEL_FILES = ("labels.csv", "labels.tsv")
PARQUET_BATCH_ROWS = 4096
TRANSCRIPT_FILES = ("transcripts.csv", "transcripts.tsv")
READ_AHEAD_RECORDS = 16


class LayoutError(Exception):
    """The fetched data does not fit the declared modality."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _files(root: Path) -> tuple[Path, list[Path]]:
    """The base directory and every regular file under ``root`` (or ``root`` itself), sorted."""
    if root.is_file():
        return root.parent, [root]
    return root, sorted(path for path in root.rglob("*") if path.is_file() and not path.name.startswith("."))


def _extension(path: Path) -> str:
    return path.suffix.lower().lstrip(".")


def _table(path: Path) -> dict[str, str]:
    """``file -> value`` from a two-column csv/tsv (a header row naming ``file`` is skipped)."""
    delimiter = "\t" if path.suffix == ".tsv" else ","
    table = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter=delimiter), 1):
            if not row or (number == 1 and row[0].strip().lower() in ("file", "filename", "path", "name")):
                continue
            if len(row) < 2:
                raise LayoutError("InvalidData", f"{path.name} line {number}: want 'file{delimiter}value'")
            table[row[0].strip()] = delimiter.join(row[1:]).strip()
    return table


def _lookup(table: dict[str, str], base: Path, path: Path) -> str | None:
    relative = path.relative_to(base).as_posix()
    return table.get(relative, table.get(path.name))


def _first_table(base: Path, names: tuple[str, ...]) -> dict[str, str] | None:
    for name in names:
        if (base / name).is_file():
            return _table(base / name)
    return None


class OnDisk:
    """A record that ``load`` reads from ``paths``: :func:`read_ahead` asks the kernel for them early."""

    __slots__ = ("load", "paths")

    def __init__(self, paths: tuple[Path, ...], load: Callable[[], dict[str, bytes]]) -> None:
        self.paths = paths
        self.load = load

    def __call__(self) -> dict[str, bytes]:
        return self.load()


def _image(path: Path, label: str) -> Record:
    def load() -> dict[str, bytes]:
        data = path.read_bytes()
        extension = _extension(path)
        signatures = IMAGE_SIGNATURES.get(extension)
        if signatures and not data.startswith(signatures):
            raise LayoutError("InvalidData", f"{path.name}: not a valid {extension} file")
        return {extension: data, "cls": label.encode()}

    return OnDisk((path,), load)


def image_records(root: Path) -> Iterator[Record]:
    base, files = _files(root)
    labels = _first_table(base, LABEL_FILES)
    for path in files:
        if _extension(path) not in IMAGE_EXTENSIONS:
            continue
        label = _lookup(labels, base, path) if labels is not None else (
            path.parent.name if path.parent != base else None
        )  # fmt: skip
        if label is None:
            raise LayoutError("MissingLabel", f"{path.relative_to(base)}: no label (labels.csv or a class directory)")
        yield _image(path, label)


def _audio(path: Path, transcript: str) -> Record:
    def load() -> dict[str, bytes]:
        data = path.read_bytes()
        try:
            with wave.open(io.BytesIO(data)) as reader:
                reader.getnframes()
        except (wave.Error, EOFError) as error:
            raise LayoutError("InvalidData", f"{path.name}: not a valid wav file: {error}") from error
        return {"wav": data, "txt": transcript.encode()}

    return OnDisk((path,), load)


def audio_records(root: Path) -> Iterator[Record]:
    base, files = _files(root)
    transcripts = _first_table(base, TRANSCRIPT_FILES)
    for path in files:
        if _extension(path) != "wav":
            continue
        transcript = _lookup(transcripts, base, path) if transcripts is not None else None
        sidecar = path.with_suffix(".txt")
        if transcript is None and sidecar.is_file():
            transcript = sidecar.read_text(encoding="utf-8").strip()
        if transcript is None:
            raise LayoutError("MissingTranscript", f"{path.relative_to(base)}: no transcript")
        yield _audio(path, transcript)


def _constant(fields: dict[str, bytes]) -> Record:
    return lambda: fields


def text_records(root: Path) -> Iterator[Record]:
    _, files = _files(root)
    for path in files:
        extension = _extension(path)
        if extension == "jsonl":
            with path.open("rb") as handle:
                for number, line in enumerate(handle, 1):
                    if not line.strip():
                        continue
                    try:
                        if not isinstance(json.loads(line), dict):
                            raise ValueError("not a JSON object")
                    except ValueError as error:
                        raise LayoutError("InvalidData", f"{path.name} line {number}: {error}") from error
                    yield _constant({"json": line.rstrip(b"\r\n")})
        elif extension == "txt":
            yield _constant({"txt": path.read_bytes()})


def _json_record(row: Mapping[str, Any]) -> Record:
    return _constant({"json": json.dumps(row, separators=(",", ":"), default=str).encode()})


def _csv_rows(path: Path) -> Iterator[Record]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        for number, row in enumerate(reader, 2):
            if None in row or None in row.values():
                raise LayoutError("InvalidData", f"{path.name} line {number}: column count differs from the header")
            yield _json_record(row)


def _parquet_rows(path: Path) -> Iterator[Record]:
    import pyarrow as pa  # the preparer's image has it; imported here so other layouts never pay for it
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(path)
        for batch in table.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for row in batch.to_pylist():
                yield _json_record(row)
    except (pa.ArrowException, OSError, ValueError) as error:  # a corrupt footer, page or schema (pyarrow raises all three)
        raise LayoutError("InvalidData", f"{path.name}: not a readable Parquet file: {error}") from error


def tabular_records(root: Path) -> Iterator[Record]:
    _, files = _files(root)
    for path in files:
        extension = _extension(path)
        if extension == "csv":
            yield from _csv_rows(path)
        elif extension == "parquet":
            yield from _parquet_rows(path)


def _group(paths: list[Path]) -> Record:
    def load() -> dict[str, bytes]:
        return {_extension(path) or "bin": path.read_bytes() for path in paths}

    return OnDisk(tuple(paths), load)


def multimodal_records(root: Path) -> Iterator[Record]:
    base, files = _files(root)
    groups: dict[str, list[Path]] = {}
    for path in files:
        groups.setdefault(path.relative_to(base).with_suffix("").as_posix(), []).append(path)
    for stem in sorted(groups):
        yield _group(groups[stem])


LAYOUTS: dict[str, Callable[[Path], Iterator[Record]]] = {
    "image": image_records,
    "audio": audio_records,
    "text": text_records,
    "tabular": tabular_records,
    "multimodal": multimodal_records,
}


def records(modality: str, root: Path) -> list[Record]:
    """Every record of ``root`` read as ``modality``; :class:`LayoutError` on bad data."""
    layout = LAYOUTS.get(modality)
    if layout is None:
        raise LayoutError("UnsupportedModality", f"modality {modality!r}: want one of {', '.join(LAYOUTS)}")
    try:
        return list(layout(root))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise LayoutError("InvalidData", f"reading {modality} data: {error}") from error


def read_ahead(items: Iterable[Record], *, records: int = READ_AHEAD_RECORDS) -> Iterator[dict[str, bytes]]:
    """The fields of every record of ``items``, in order, the files of the next ``records`` asked for ahead.

    Before a record is loaded, the files of the records up to ``records`` after it
    (:class:`OnDisk` ones) are handed to the kernel with ``posix_fadvise(WILLNEED)``,
    which starts reading them in the background, so several reads are in flight on
    the source disk while this thread hashes and writes, and the record's own read
    finds its pages cached. The cost is an open, an advice and a close per file, no
    thread; what is read ahead sits in the page cache (reclaimable), not in the
    process's memory. Without an effect where the kernel or filesystem ignores the advice.
    """
    upcoming: deque[Record] = deque()
    queued = iter(items)
    while True:
        while len(upcoming) <= records and (item := next(queued, None)) is not None:
            if isinstance(item, OnDisk):
                _will_need(item.paths)
            upcoming.append(item)
        if not upcoming:
            return
        yield upcoming.popleft()()


def _will_need(paths: Iterable[Path]) -> None:
    for path in paths:
        try:
            descriptor = os.open(path, os.O_RDONLY)
        except OSError:
            continue  # loading the record reports it
        try:
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass  # advice only
        finally:
            os.close(descriptor)
