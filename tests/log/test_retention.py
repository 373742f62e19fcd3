"""Retention: by record timestamps, by size, never the active segment, log start offset, readers."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from millpond.errors import OffsetOutOfRangeError
from millpond.log import LogStore, Partition
from millpond.log.batch import iter_records
from millpond.log.retention import enforce_retention

from .conftest import read_all, rows

DAY = 24 * 60 * 60 * 1000
NOW = 1_800_000_000_000


def filled(store: LogStore, config: dict[str, object], stamps: list[int], per_segment: int = 10) -> Partition:
    """One sealed segment per timestamp in ``stamps`` (records carry that CreateTime), then an active one."""
    partition = store.create_topic("t", 1, config).partitions[0]
    for i, ts in enumerate(stamps):
        partition.append(rows(per_segment, i * per_segment, ts=ts))
        partition.roll()
    return partition


def test_time_retention_uses_record_timestamps_not_file_times(store: LogStore) -> None:
    old, recent = NOW - 10 * DAY, NOW - DAY
    partition = filled(store, {"retention.ms": 7 * DAY}, [old, old, recent, old])
    partition.append(rows(5, 40, ts=old))  # the active segment: old records, never deleted
    # File times say the opposite of the record timestamps: the first two look brand new.
    for segment in partition.segments:
        stamp = (NOW if segment.base_offset < 20 else NOW - 30 * DAY) / 1000
        os.utime(segment.log_path, (stamp, stamp))
    result = enforce_retention(partition, NOW)
    assert (result.segments_deleted, result.new_log_start_offset) == (2, 20)
    assert result.bytes_deleted > 0
    # the third segment is recent, so the scan stops there even though the fourth is old (a prefix only)
    assert [s.base_offset for s in partition.segments] == [20, 30, 40]
    assert partition.log_start_offset == 20
    assert not (partition.directory / "00000000000000000000.log").exists()
    assert not (partition.directory / "00000000000000000010.index").exists()
    with pytest.raises(OffsetOutOfRangeError):
        partition.read(19)
    assert [int(r.value[:12]) for r in read_all(partition)] == list(range(20, 45))


def test_retention_ms_minus_one_keeps_forever(store: LogStore) -> None:
    partition = filled(store, {"retention.ms": -1}, [1, 2, 3])
    assert enforce_retention(partition, NOW).segments_deleted == 0
    assert len(partition.segments) == 4


def test_never_the_active_segment(store: LogStore) -> None:
    partition = store.create_topic("t", 1, {"retention.ms": DAY, "retention.bytes": 0}).partitions[0]
    partition.append(rows(10, ts=1))
    assert enforce_retention(partition, NOW).segments_deleted == 0
    assert len(read_all(partition)) == 10
    partition.roll()
    partition.append(rows(10, 10, ts=2))
    result = enforce_retention(partition, NOW)
    assert result.segments_deleted == 1 and result.new_log_start_offset == 10
    assert [s.base_offset for s in partition.segments] == [10]
    assert len(read_all(partition)) == 10


def test_size_retention_keeps_the_newest_retention_bytes(store: LogStore) -> None:
    probe = store.create_topic("probe", 1).partitions[0]
    probe.append(rows(10, ts=NOW))
    size = probe.size_bytes  # every segment below holds the same ten records
    # Room for 3.5 segments: Kafka's rule keeps the newest 4 (deleting a 4th would go below the limit).
    partition = filled(store, {"retention.ms": -1, "retention.bytes": int(3.5 * size)}, [NOW] * 6)
    partition.append(rows(10, 60, ts=NOW))
    assert [s.size for s in partition.segments] == [size] * 7
    result = enforce_retention(partition, NOW)
    assert result.segments_deleted == 3 and result.bytes_deleted == 3 * size
    assert partition.size_bytes == 4 * size >= 3.5 * size
    assert result.new_log_start_offset == partition.log_start_offset == 30
    assert enforce_retention(partition, NOW).segments_deleted == 0


def test_compact_only_topic_is_not_touched(store: LogStore) -> None:
    partition = filled(store, {"cleanup.policy": "compact", "retention.ms": 1}, [1, 2])
    assert enforce_retention(partition, NOW).segments_deleted == 0
    assert len(read_all(partition)) == 20


def test_log_start_offset_survives_reopen(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    partition = filled(store, {"retention.ms": DAY}, [1, 1, NOW])
    assert enforce_retention(partition, NOW).new_log_start_offset == 20
    store.close()
    store = LogStore(tmp_path)
    partition = store.partition("t", 0)
    assert partition.log_start_offset == 20
    assert [int(r.value[:12]) for r in read_all(partition)] == list(range(20, 30))
    store.close()


def test_crash_between_checkpoint_and_unlink(tmp_path: Path) -> None:
    """The log start is checkpointed first; segment files left behind are below it and go next time."""
    store = LogStore(tmp_path)
    partition = filled(store, {"retention.ms": DAY}, [1, NOW, NOW])
    saved = tmp_path / "saved"
    saved.mkdir()
    for path in partition.directory.glob("00000000000000000000.*"):
        shutil.copy(path, saved / path.name)
    assert enforce_retention(partition, NOW).segments_deleted == 1
    store.close()
    for path in saved.iterdir():  # as if the unlink never happened
        shutil.copy(path, partition.directory / path.name)
    store = LogStore(tmp_path)
    partition = store.partition("t", 0)
    assert partition.log_start_offset == 10
    with pytest.raises(OffsetOutOfRangeError):
        partition.read(0)
    # the leftover is below the log start offset: deleted whatever its timestamps say
    result = enforce_retention(partition, 0)
    assert result.segments_deleted == 1 and result.new_log_start_offset == 10
    assert not (partition.directory / "00000000000000000000.log").exists()
    store.close()


def test_reader_holding_a_deleted_segment_keeps_reading(store: LogStore) -> None:
    partition = store.create_topic("t", 1, {"retention.ms": DAY}).partitions[0]
    for s in range(3):  # three sealed segments of 20 small batches each
        for b in range(20):
            partition.append(rows(5, s * 100 + b * 5, ts=1))
        partition.roll()
    partition.append(rows(5, 300, ts=NOW))
    held = list(partition.segments)  # what a reader took before retention ran
    walker = held[0].walk(0)  # a read in progress
    first_position, first_header = next(walker)
    fetched = partition.read(0, 1)  # a fetch in progress, continued from next_offset
    assert enforce_retention(partition, NOW).segments_deleted == 3
    assert not held[0].log_path.exists() and held[0].deleted
    seen = [first_header.base_offset] + [header.base_offset for _, header in walker]
    assert seen == [b * 5 for b in range(20)]
    values = []
    for segment in held[:3]:
        for position, header in segment.walk(0):
            values += [int(r.value[:12]) for r in iter_records(segment.read_bytes(position, header.size))]
    assert values == [s * 100 + i for s in range(3) for i in range(100)]
    # a new fetch at the reader's next offset is refused cleanly (it is below the log start now)
    with pytest.raises(OffsetOutOfRangeError):
        partition.read(fetched.next_offset)
    assert held[1].position_of(150) is not None  # index lookups on a deleted segment still work


def test_aborted_transactions_before_log_start_are_pruned(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    partition = store.create_topic("t", 1, {"retention.ms": DAY}).partitions[0]
    partition.append(rows(3, ts=1), producer_id=7, producer_epoch=0, transactional=True)
    partition.append_control(7, 0, commit=False)
    partition.roll()
    partition.append(rows(3, 10, ts=NOW), producer_id=8, producer_epoch=0, transactional=True)
    partition.append_control(8, 0, commit=False)
    partition.roll()
    assert set(partition._state.aborted) == {7, 8}
    enforce_retention(partition, NOW)
    assert partition.log_start_offset == 4
    assert set(partition._state.aborted) == {8}
    store.close()
    store = LogStore(tmp_path)
    assert set(store.partition("t", 0)._state.aborted) == {8}
    store.close()
