"""The claim budget: members counted as tar writes them, the record that does not fit refused with the sizes."""

from __future__ import annotations

import errno
import io
import tarfile

import pytest

from lepton_workloads.claim_budget import REASON, Budget, ClaimFull, claim_full, human, member_bytes


def test_a_member_costs_what_tarfile_writes_for_it() -> None:
    for size in (0, 1, 511, 512, 513, 5000):
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            info = tarfile.TarInfo("000000001.txt")
            info.size = size
            tar.addfile(info, io.BytesIO(b"x" * size))
            before_end = tar.offset
        assert member_bytes(size) == before_end, size


def test_records_are_counted_until_one_would_pass_the_size_then_the_message_says_what_is_needed() -> None:
    budget = Budget(capacity=10 * 1024)
    budget.stage(2048)
    sample = {"txt": b"x" * 1000, "cls": b"1"}  # 512 + 1024 and 512 + 512: 2560 bytes
    for done in range(3):
        budget.spend(sample, done, 10)
    assert budget.written == 3 * 2560
    with pytest.raises(ClaimFull) as refused:
        budget.spend(sample, 3, 10)
    assert refused.value.reason == REASON == "InsufficientStorage"
    assert str(refused.value) == (
        "the claim holds 10.0 KiB: the staged source (2.0 KiB) and the shards of 3 of 10 records (7.5 KiB) "
        "filled it; the dataset needs about 27.0 KiB: raise spec.storage.size")  # fmt: skip
    assert budget.written == 3 * 2560  # the refused record was not counted


def test_a_source_larger_than_the_claim_is_refused_once_staged_and_no_capacity_refuses_nothing() -> None:
    with pytest.raises(ClaimFull, match=r"the claim holds 1.0 KiB but the source alone is 3.0 KiB"):
        Budget(capacity=1024).stage(3072)
    unbounded = Budget(capacity=None)
    unbounded.stage(1 << 40)
    unbounded.spend({"bin": b"x" * (1 << 20)}, 0, 1)
    assert unbounded.written == member_bytes(1 << 20)


def test_a_full_volume_is_the_same_failure_and_other_errors_are_not() -> None:
    full = claim_full(OSError(errno.ENOSPC, "No space left on device", "/data/shards/train-000001.tar"))
    assert full is not None and "No space left on device: /data/shards/train-000001.tar" in str(full)
    assert claim_full(OSError(errno.EDQUOT, "Disk quota exceeded")) is not None
    assert claim_full(OSError(errno.EACCES, "Permission denied")) is None


def test_sizes_read_as_people_write_them() -> None:
    assert [human(n) for n in (512, 2048, 5 << 20, 3 << 30, 5 << 40)] == [
        "512 B", "2.0 KiB", "5.0 MiB", "3.0 GiB", "5120.0 GiB"]  # fmt: skip
