"""The embedded append of a long block of columns: the head batch is built from the caller's own
lists with their last record taken off for the while, and hashed beside it in a thread."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from millpond.audit import chain as chain_module
from millpond.audit import embedded
from millpond.audit.chain import GENESIS, Columns, Link, block_hash, block_hash_then, link_of
from millpond.audit.verify import verify_topic
from millpond.log import batch as batch_format
from millpond.log.partition import Partition
from millpond.log.store import LogStore
from millpond.records import JsonRecords


def _columns(rng: random.Random, n: int) -> JsonRecords:
    keys: list[bytes | None] = [None if rng.random() < 0.2 else b"k%d" % rng.randrange(50) for _ in range(n)]
    values: list[bytes | None] = [None if rng.random() < 0.1 else rng.randbytes(rng.randrange(0, 400))
                                  for _ in range(n)]
    return JsonRecords("t", keys, values, [1_700_000_000_000 + rng.randrange(10**9) for _ in range(n)])


@pytest.mark.parametrize("sha256_in_c", [True, False], ids=["C", "hashlib"])
def test_block_hash_then_is_the_hash_of_the_block_with_one_more_record(sha256_in_c: bool,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    if not sha256_in_c:
        monkeypatch.setattr(chain_module, "_SHA256_IN_C", False)
    rng = random.Random(3)
    for n in (0, 1, 2, 63, 500):
        rows = _columns(rng, n + 1)
        head = Columns(rows.timestamps[:n], rows.keys[:n], rows.values[:n])
        last = (rows.timestamps[n], rows.keys[n], rows.values[n])
        whole = Columns(rows.timestamps, rows.keys, rows.values)
        assert block_hash_then(GENESIS, head, last) == block_hash(GENESIS, whole)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LogStore]:
    monkeypatch.setattr(embedded, "PARALLEL_RECORDS", 10)  # the threaded path from blocks of 11 records
    store = LogStore(tmp_path, writable=True)
    store.create_topic("t", 1, {"audit.chain": "sha256", "compression.type": "zstd"})
    yield store
    store.close()


@pytest.mark.parametrize("sha256_in_c", [True, False], ids=["C", "hashlib"])
def test_long_blocks_of_columns_chain_and_leave_the_callers_lists_as_they_were(
        store: LogStore, sha256_in_c: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block's header links to the last and hashes the block's records (and verify agrees);
    the caller's columns are the same lists, unchanged, after each append."""
    if not sha256_in_c:
        monkeypatch.setattr(chain_module, "_SHA256_IN_C", False)
    partition = store.partition("t", 0)
    rng = random.Random(9)
    chains = embedded.Chains()
    prev, seq = GENESIS, 0
    for n in (11, 50, 12, 300):
        rows = _columns(rng, n)
        lists = [rows.keys, rows.values, rows.timestamps]
        before = [list(column) for column in lists]
        chains.append(partition, rows)
        assert [rows.keys, rows.values, rows.timestamps] == before
        assert all(now is then for now, then in zip([rows.keys, rows.values, rows.timestamps], lists))
        link = Link.decode(link_of(_last_headers(partition)))
        assert link.prev == prev and link.seq == seq + n
        assert link.hash == block_hash(prev, Columns(rows.timestamps, rows.keys, rows.values))
        prev, seq = link.hash, link.seq
    assert partition.log_end_offset == seq
    report = verify_topic(store, "t")
    assert report.ok and report.counts()["records"] == seq, report.summary()


def _last_headers(partition: Partition) -> list[tuple[str, bytes | None]]:
    segment = partition.segments[-1]
    pos, header = list(segment.walk())[-1]
    *_, last = batch_format.iter_records(segment.read_bytes(pos, header.size))
    return last.headers


def test_a_failed_build_puts_the_last_record_back(store: LogStore, monkeypatch: pytest.MonkeyPatch) -> None:
    partition = store.partition("t", 0)
    rows = _columns(random.Random(4), 20)
    before = [list(rows.keys), list(rows.values), list(rows.timestamps)]

    def fail(*args: object, **kwargs: object) -> bytearray:
        raise OSError("no space left on device")

    monkeypatch.setattr(batch_format, "build_batch", fail)
    with pytest.raises(OSError, match="no space"):
        embedded.Chains().append(partition, rows)
    assert [rows.keys, rows.values, rows.timestamps] == before
    assert partition.log_end_offset == 0
