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
import json
import tarfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from lepton_workloads import durable
from lepton_workloads.hashing_writer import HashingWriter

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
    """Write ``manifest.json`` atomically and durably; returns its digest.

    The shards' bytes are on the disk already (their writers are durable); here
    their directory entries are synced, then the manifest is published with
    :func:`lepton_workloads.durable.replace` (written, synced, renamed, the
    rename synced): after a crash there is either no manifest or one whose every
    shard is whole.
    """
    text = manifest.to_json()
    if (root / SHARD_DIR).is_dir():
        durable.sync_directory(root / SHARD_DIR)
    durable.write_text(root / MANIFEST, text)
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


_USTAR_FIXED = b"0000444\0" + b"0000000\0" * 2  # mode, uid, gid
_USTAR_TAIL = b"00000000000\0"  # mtime
_USTAR_AFTER_CHECKSUM = tarfile.REGTYPE + bytes(100) + tarfile.POSIX_MAGIC + bytes(32 + 32 + 8 + 8 + 155 + 12)
_USTAR_CONSTANT_SUM = sum(_USTAR_AFTER_CHECKSUM) + 8 * ord(" ")  # the checksum field counts as spaces


def member_header(name: str, size: int) -> bytes:
    """The ustar header of a shard member: what :meth:`tarfile.TarInfo.tobuf` gives for a file
    ``name`` of ``size`` bytes, mode 0o444, owner 0 and mtime 0.

    Built from constant parts here for the names a shard has (up to 100 bytes), because tobuf's
    general path costs more than hashing a 64 KiB member; longer names go through tobuf.
    """
    encoded = name.encode(tarfile.ENCODING, "surrogateescape")
    if len(encoded) > tarfile.LENGTH_NAME or size >= 8**11:
        member = tarfile.TarInfo(name)
        member.size = size
        member.mode = 0o444
        return member.tobuf(tarfile.USTAR_FORMAT, tarfile.ENCODING, "surrogateescape")
    head = encoded.ljust(tarfile.LENGTH_NAME, b"\0") + _USTAR_FIXED + b"%011o\0" % size + _USTAR_TAIL
    checksum = sum(head) + _USTAR_CONSTANT_SUM
    return head + b"%06o\0 " % checksum + _USTAR_AFTER_CHECKSUM


class ShardWriter:
    """Writes the samples of one split into shards, rolling over by size or by record count.

    Members are written as tarfile would write them in ``USTAR_FORMAT`` (the
    header from :meth:`tarfile.TarInfo.tobuf`, the data, zero padding to 512
    bytes; two zero blocks and padding to a 10240-byte record at the end), but
    handed whole to a :class:`~lepton_workloads.hashing_writer.HashingWriter`
    instead of going through tarfile's 16 KiB copy loop: the bytes are identical
    (a test compares them), the hashing sees each byte once, and hashing and
    writing run on their own threads while the caller loads the next record.
    Use it in a ``with`` block (or call :meth:`close`): leaving the block on an
    error stops the open shard's threads.
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
        self._out: HashingWriter | None = None
        self._records = 0
        (root / SHARD_DIR).mkdir(parents=True, exist_ok=True)

    def _open(self) -> HashingWriter:
        self._name = f"{SHARD_DIR}/{self.split}-{len(self.written):06d}.tar"
        self._out = HashingWriter(self.root / self._name, durable=True)
        self._records = 0
        return self._out

    def _close(self) -> None:
        out, self._out = self._out, None
        if out is None:
            return
        with out:
            out.write(bytes(2 * tarfile.BLOCKSIZE))
            remainder = out.size % tarfile.RECORDSIZE
            if remainder:
                out.write(bytes(tarfile.RECORDSIZE - remainder))
            size, sha256 = out.close()
        self.written.append(ShardInfo(self._name, self.split, self._records, size, sha256))

    def add(self, key: str, fields: Mapping[str, bytes]) -> None:
        """Add one sample: ``fields`` maps an extension (``jpg``, ``cls``, ``wav``...) to bytes."""
        out = self._out or self._open()
        for extension, data in sorted(fields.items()):
            out.write(member_header(f"{key}.{extension}", len(data)))
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

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        """Finish the last shard; on an error, stop its threads and leave it unfinished (and unlisted)."""
        if kind is None:
            self._close()
        elif self._out is not None:
            out, self._out = self._out, None
            out.__exit__(kind, error, traceback)


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
SMALL_MEMBER = 64 << 10
"""Members smaller than this are read together with the next header (copying them once more is cheaper than a read)."""
_REGULAR = (b"0", b"\0")
_PLAIN_KINDS = (*_REGULAR, b"5")  # regular files and directories


ADLER_MODULUS = 65521


def _byte_sum(data: bytes) -> int:
    """The sum of ``data``'s bytes modulo 65521, in C: Adler-32's low half is one plus exactly that.

    A 512-byte header sums to at most 130560, so a checksum check modulo 65521 misses only
    changes of exactly 65521, which take hundreds of changed bytes; ``sum`` over the header
    in Python cost most of the reader's time per member.
    """
    return (zlib.adler32(data) & 0xFFFF) - 1


def _plain_header(header: bytes) -> tuple[str, int, bool] | None:
    """(name, size, is a regular file) of a plain ustar header; ``None`` for any other kind.

    A member kind the fast path does not handle (pax or GNU long names, links...)
    or a bad header checksum gives ``None``, and the caller reads the rest of the
    shard with :mod:`tarfile` instead.
    """
    kind = header[156:157]
    if header[257:263] != b"ustar\0" or kind not in _PLAIN_KINDS:
        return None
    checksum_field = header[148:156]
    try:
        checksum = int(checksum_field.strip(b" \0") or b"0", 8)
        size = int(header[124:136].strip(b" \0") or b"0", 8)
    except ValueError:
        return None
    # The checksum is every byte summed, its own field counted as spaces.
    if (checksum - _byte_sum(header) + sum(checksum_field) - 8 * ord(" ")) % ADLER_MODULUS:
        return None
    name = header[:100].split(b"\0", 1)[0].decode()
    if header[345]:  # a ustar prefix: the directory part of a long name
        name = header[345:500].split(b"\0", 1)[0].decode() + "/" + name
    return name, size, kind in _REGULAR


def _read_exactly(handle: IO[bytes], size: int) -> bytes:
    data = handle.read(size)
    while len(data) < size and (more := handle.read(size - len(data))):
        data += more
    return data


def _members(path: Path) -> Iterator[tuple[str, bytes]]:
    """(name, bytes) of every regular file of one shard, in order, in one sequential pass.

    Plain ustar members (what :class:`ShardWriter` writes) are parsed here, with
    no seeks and at most two reads per member: a large member's data straight
    from the file into its bytes, then its padding with the next header; a small
    member's data, padding and the next header at once. From the first
    header this fast path does not handle, the rest of the shard is read with
    :mod:`tarfile`, starting at that header.
    """
    with path.open("rb", buffering=0) as handle:
        offset = 0
        header = _read_exactly(handle, BLOCK)
        while len(header) == BLOCK and header != bytes(BLOCK):
            plain = _plain_header(header)
            if plain is None:
                handle.seek(offset)
                yield from _tarfile_members(handle)
                return
            name, size, regular = plain
            padding = -size % BLOCK
            if size < SMALL_MEMBER:  # data, padding and the next header in one read
                chunk = _read_exactly(handle, size + padding + BLOCK)
                data, header = chunk[:size], chunk[size + padding :]
            else:
                data = _read_exactly(handle, size)
                header = _read_exactly(handle, padding + BLOCK)[padding:]
            if len(data) < size:
                raise tarfile.ReadError(f"{path.name}: {name} ends early")
            if regular:
                yield name, data
            offset += BLOCK + size + padding


def _tarfile_members(handle: IO[bytes]) -> Iterator[tuple[str, bytes]]:
    with tarfile.open(fileobj=handle, mode="r|") as tar:
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
