"""The dataset claim's size as a budget the preparer spends, so that a claim too small fails with a reason.

A claim's size is a promise only some volumes keep. Volumes with a quota
(most cloud disks) fail a write past it with ``ENOSPC`` midway; volumes without
one (hostPath, local-path: kind's and the local cluster's) take the bytes and
fill the node's disk instead. Either way a dataset whose shards do not fit must
fail with the sizes in its reason, publish no manifest, and leave no partial
shards behind.

So the preparer is told the claim's requested size (``LEPTON_CLAIM_BYTES``, the
operator renders it from ``spec.storage.size``) and counts what it puts there:

- the staged source, when the source is fetched into the claim's staging
  directory (s3 and http(s); a ``pvc://`` source is read where it is);
- each shard member as ``tarfile`` writes it: a 512-byte header, then the data
  padded to 512 bytes.

:meth:`Budget.spend` refuses the member that would pass the size, before it is
written, with :class:`ClaimFull`; its message gives the claim's size, what was
spent, and an estimate of what the whole dataset needs (the spend so far,
extrapolated over the records left), so the user knows what to ask for. An
``ENOSPC`` anywhere is the same failure (:func:`claim_full`). Both are
permanent for the Job (exit 3): the same claim will not grow by retrying.

A shard's closing blocks (end-of-archive and record padding, at most 10 KiB a
shard) are not counted: the budget is a floor of what is needed, never a
reason to refuse data that fits.
"""

from __future__ import annotations

import errno
from collections.abc import Mapping
from dataclasses import dataclass

REASON = "InsufficientStorage"
BLOCK = 512


class ClaimFull(Exception):
    """The claim cannot hold the dataset; ``reason`` is :data:`REASON` (the result document's)."""

    reason = REASON


def member_bytes(size: int) -> int:
    """Bytes a tar member of ``size`` data bytes takes: its header and its data padded to the block."""
    return BLOCK + -(-size // BLOCK) * BLOCK


def human(size: float) -> str:
    """``123456789`` -> ``"117.7 MiB"`` (binary units, as ``spec.storage.size`` is usually written)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


@dataclass
class Budget:
    """What the claim holds (``None``: unknown, nothing is refused) and what this run has put there."""

    capacity: int | None
    staged: int = 0
    written: int = 0

    def stage(self, size: int) -> None:
        """Count a source fetched into the claim; refuse it if it alone passes the size."""
        self.staged = size
        if self.capacity is not None and size > self.capacity:
            raise ClaimFull(f"the claim holds {human(self.capacity)} but the source alone is {human(size)} "
                            f"(staged in the claim before sharding): raise spec.storage.size above "
                            f"{human(2 * size)}, about the source plus its shards")  # fmt: skip

    def spend(self, sample: Mapping[str, bytes], done: int, total: int) -> None:
        """Count record ``done`` (0-based) of ``total`` before it is written; refuse it if it does not fit."""
        cost = sum(member_bytes(len(value)) for value in sample.values())
        if self.capacity is not None and self.staged + self.written + cost > self.capacity:
            needed = self.staged + (self.written + cost) * total / (done + 1)
            raise ClaimFull(f"the claim holds {human(self.capacity)}: the staged source ({human(self.staged)}) and "
                            f"the shards of {done} of {total} records ({human(self.written)}) filled it; the dataset "
                            f"needs about {human(needed)}: raise spec.storage.size")  # fmt: skip
        self.written += cost


def claim_full(error: OSError) -> ClaimFull | None:
    """The :class:`ClaimFull` an ``OSError`` means (the volume's own quota: ``ENOSPC``, ``EDQUOT``), else ``None``."""
    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
        return None
    return ClaimFull(f"the claim's volume is full ({error.strerror}: {error.filename or 'a shard'}): "
                     "raise spec.storage.size")  # fmt: skip
