"""The prepared-dataset format: webdataset tar shards plus a checksummed ``manifest.json``.

This is the contract between the dataset preparer (writes) and the trainer
(reads); neither imports the operator, which only reads the manifest's numbers.

Layout under the dataset root (the PVC)::

    manifest.json
    shards/<split>-<index:06d>.tar

A shard is a plain tar in webdataset convention: one sample is the run of
members that share a key (``000042.jpg`` + ``000042.cls``), keys in order. The
manifest (schema version 1) lists every shard with its split, record count,
size and sha256; its own digest (sha256 of the file's bytes, written
canonically) identifies a preparation. Hashes are computed while writing, so
preparing reads each byte once. Ranks read disjoint shards (round-robin by
index), which is what lets each DDP process stream its own part.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SHARD_DIR = "shards"
CHUNK = 1 << 20


@dataclass(frozen=True)
class ShardInfo:
    """One written shard as the manifest records it."""

    name: str
    split: str
    records: int
    bytes: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a preparation produced."""

    modality: str
    source: str
    shards: tuple[ShardInfo, ...]
    format: str = "webdataset"
    schema_version: int = SCHEMA_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def records(self) -> int:
        return sum(shard.records for shard in self.shards)

    @property
    def bytes(self) -> int:
        return sum(shard.bytes for shard in self.shards)

    def split(self, name: str) -> tuple[ShardInfo, ...]:
        return tuple(shard for shard in self.shards if shard.split == name)

    def to_json(self) -> str:
        """Canonical text: sorted keys, no spaces, so the digest is stable."""
        splits: dict[str, dict[str, int]] = {}
        for shard in self.shards:
            entry = splits.setdefault(shard.split, {"records": 0, "shards": 0, "bytes": 0})
            entry["records"] += shard.records
            entry["shards"] += 1
            entry["bytes"] += shard.bytes
        document = {
            "schemaVersion": self.schema_version,
            "format": self.format,
            "modality": self.modality,
            "source": self.source,
            "records": self.records,
            "bytes": self.bytes,
            "splits": splits,
            "shards": [asdict(shard) for shard in self.shards],
            "extra": dict(self.extra),
        }
        return json.dumps(document, sort_keys=True, separators=(",", ":"))


def digest_of(text: str) -> str:
    """``sha256:<hex>`` of a manifest's text."""
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def write_manifest(root: Path, manifest: Manifest) -> str:
    """Write ``manifest.json`` atomically (temp file, then rename); returns its digest."""
    text = manifest.to_json()
    temporary = root / f".{MANIFEST}.tmp"
    temporary.write_text(text)
    os.replace(temporary, root / MANIFEST)
    return digest_of(text)


def read_manifest(root: Path) -> tuple[Manifest, str]:
    """The manifest under ``root`` and its digest; ``ValueError`` when it is not schema version 1."""
    text = (root / MANIFEST).read_text()
    document = json.loads(text)
    if document.get("schemaVersion") != SCHEMA_VERSION:
        raise ValueError(f"{root / MANIFEST}: schemaVersion {document.get('schemaVersion')!r}, want {SCHEMA_VERSION}")
    shards = tuple(ShardInfo(**shard) for shard in document["shards"])
    manifest = Manifest(
        modality=document["modality"], source=document["source"], shards=shards,
        format=document["format"], extra=document.get("extra", {}),
    )  # fmt: skip
    return manifest, digest_of(text)


class _HashingFile(io.RawIOBase):
    """A write-only file that hashes and counts what passes through it."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)
        self.hash.update(view)
        self.target.write(view)
        self.size += len(view)
        return len(view)

    def tell(self) -> int:
        return self.size


class ShardWriter:
    """Writes the samples of one split into shards, rolling over by size or by record count.

    Members are written as tarfile would write them in ``USTAR_FORMAT`` (the
    header from :meth:`tarfile.TarInfo.tobuf`, the data, zero padding to 512
    bytes; two zero blocks and padding to a 10240-byte record at the end), but
    with one write per piece instead of tarfile's 16 KiB copy loop: the bytes
    are identical (a test compares them) and the hashing sees each byte once.
    """

    def __init__(
        self, root: Path, split: str, *, target_size_bytes: int | None = None, records_per_shard: int | None = None
    ) -> None:
        if (target_size_bytes is None) == (records_per_shard is None):
            raise ValueError("give exactly one of target_size_bytes and records_per_shard")
        self.root = root
        self.split = split
        self.target_size_bytes = target_size_bytes
        self.records_per_shard = records_per_shard
        self.written: list[ShardInfo] = []
        self._file: IO[bytes] | None = None
        self._hashing: _HashingFile | None = None
        self._records = 0
        (root / SHARD_DIR).mkdir(parents=True, exist_ok=True)

    def _open(self) -> _HashingFile:
        name = f"{SHARD_DIR}/{self.split}-{len(self.written):06d}.tar"
        self._file = open(self.root / name, "wb")  # noqa: SIM115 - closed in _close
        self._hashing = _HashingFile(self._file)
        self._records = 0
        self._name = name
        return self._hashing

    def _close(self) -> None:
        if self._file is None or self._hashing is None:
            return
        self._hashing.write(bytes(2 * tarfile.BLOCKSIZE))
        remainder = self._hashing.size % tarfile.RECORDSIZE
        if remainder:
            self._hashing.write(bytes(tarfile.RECORDSIZE - remainder))
        self._file.close()
        self.written.append(
            ShardInfo(self._name, self.split, self._records, self._hashing.size, self._hashing.hash.hexdigest())
        )
        self._file = self._hashing = None

    def add(self, key: str, fields: Mapping[str, bytes]) -> None:
        """Add one sample: ``fields`` maps an extension (``jpg``, ``cls``, ``wav``...) to bytes."""
        out = self._hashing or self._open()
        for extension, data in sorted(fields.items()):
            member = tarfile.TarInfo(f"{key}.{extension}")
            member.size = len(data)
            member.mode = 0o444
            out.write(member.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape"))
            out.write(data)
            padding = -len(data) % tarfile.BLOCKSIZE
            if padding:
                out.write(bytes(padding))
        self._records += 1
        full = (
            out.size >= self.target_size_bytes
            if self.target_size_bytes is not None
            else self._records >= (self.records_per_shard or 0)
        )
        if full:
            self._close()

    def close(self) -> list[ShardInfo]:
        """Finish the last shard; returns every shard written."""
        self._close()
        return self.written


def verify(root: Path, manifest: Manifest) -> list[str]:
    """Shards whose size or sha256 differ from the manifest (empty when all match)."""
    problems = []
    for shard in manifest.shards:
        path = root / shard.name
        if not path.is_file():
            problems.append(f"{shard.name}: missing")
            continue
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(CHUNK):
                digest.update(chunk)
        if path.stat().st_size != shard.bytes or digest.hexdigest() != shard.sha256:
            problems.append(f"{shard.name}: checksum mismatch")
    return problems


def shards_for_rank(manifest: Manifest, split: str, rank: int, world_size: int) -> tuple[ShardInfo, ...]:
    """The shards of ``split`` that ``rank`` of ``world_size`` reads (round-robin, disjoint)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world size {world_size}")
    return manifest.split(split)[rank::world_size]


BLOCK = 512
_REGULAR = (b"0", b"\0")
_DIRECTORY = b"5"


def _plain_members(path: Path) -> list[tuple[str, int, int]] | None:
    """(name, data offset, size) of every file in a plain ustar shard; ``None`` for anything else.

    Walks the headers only (one 512-byte read per member, data skipped by
    seeking). A member kind this fast path does not handle (pax or GNU long
    names, links...) or a bad header checksum returns ``None``, and the caller
    reads the shard with :mod:`tarfile` instead.
    """
    members: list[tuple[str, int, int]] = []
    offset = 0
    with path.open("rb") as handle:
        while True:
            handle.seek(offset)
            header = handle.read(BLOCK)
            if len(header) < BLOCK or header == bytes(BLOCK):
                return members
            try:
                checksum = int(header[148:156].strip(b" \0") or b"0", 8)
                size = int(header[124:136].strip(b" \0") or b"0", 8)
            except ValueError:
                return None
            if checksum != sum(header[:148]) + 8 * 32 + sum(header[156:]):
                return None
            kind = header[156:157]
            if header[257:263] != b"ustar\0" or kind not in (*_REGULAR, _DIRECTORY):
                return None
            name = header[:100].split(b"\0", 1)[0].decode()
            prefix = header[345:500].split(b"\0", 1)[0].decode()
            if kind in _REGULAR:
                members.append((f"{prefix}/{name}" if prefix else name, offset + BLOCK, size))
            offset += BLOCK + -(-size // BLOCK) * BLOCK


def _members(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every regular file of one shard, in order."""
    plain = _plain_members(path)
    if plain is not None:  # the fast path: one read per member, no tarfile bookkeeping
        with path.open("rb") as handle:
            for name, offset, size in plain:
                handle.seek(offset)
                yield name, handle.read(size)
        return
    with tarfile.open(path, mode="r|") as tar:
        for member in tar:
            if member.isfile():
                extracted = tar.extractfile(member)
                yield member.name, extracted.read() if extracted else b""


def iter_samples(root: Path, shards: tuple[ShardInfo, ...] | list[ShardInfo]) -> Iterator[dict[str, bytes]]:
    """Samples of ``shards`` in order: ``{"__key__": key, ext: data, ...}`` (key as bytes)."""
    for shard in shards:
        sample: dict[str, bytes] = {}
        current: str | None = None
        for name, data in _members(root / shard.name):
            key, _, extension = name.partition(".")
            if key != current and sample:
                yield sample
                sample = {}
            current = key
            sample["__key__"] = key.encode()
            sample[extension] = data
        if sample:
            yield sample
