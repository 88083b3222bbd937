"""Fixtures shared by the workloads' tests: one real S3 server per session (see ``s3_server``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from s3_server import S3Server, versitygw


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A running versitygw over a fresh directory (buckets are the tests' own)."""
    with versitygw(tmp_path_factory.mktemp("s3")) as server:
        yield server
