from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from millpond.log import LogStore
from millpond.log.batch import Row


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LogStore]:
    s = LogStore(tmp_path / "log")
    yield s
    if s._lock_fd >= 0:
        s.close()


def rows(n: int, start: int = 0, *, ts: int = 1_700_000_000_000, value_size: int = 100) -> list[Row]:
    """``n`` records whose value starts with their sequence number."""
    pad = os.urandom(max(0, value_size - 12))
    return [Row(b"key-%08d" % i, b"%012d" % i + pad, ts + i, []) for i in range(start, start + n)]


def read_all(partition, start: int | None = None, *, read_committed: bool = False) -> list:  # type: ignore[no-untyped-def]
    offset = partition.log_start_offset if start is None else start
    out = []
    while True:
        result = partition.read(offset, 1 << 20, read_committed=read_committed)
        for batch in result.batches:
            out.extend(batch.records(offset))
        if result.next_offset == offset:
            return out
        offset = result.next_offset
