"""Partitions: appends, reads by offset and time, rolling, reopening, corruption."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from millpond.errors import CorruptRecordError, InvalidTopicError, LogLockedError, OffsetOutOfRangeError
from millpond.log import LogStore

from .conftest import read_all, rows


def values(records) -> list[int]:  # type: ignore[no-untyped-def]
    return [int(r.value[:12]) for r in records]


def test_append_read_across_rolled_segments(store: LogStore) -> None:
    partition = store.create_topic("t", 1, {"segment.bytes": 4096}).partitions[0]
    for i in range(50):
        assert partition.append(rows(10, i * 10)) == i * 10
    assert partition.log_end_offset == 500
    assert len(partition.segments) > 10
    assert values(read_all(partition)) == list(range(500))
    assert values(read_all(partition, 237))[:3] == [237, 238, 239]
    # max_bytes bounds the answer but never below one batch
    result = partition.read(0, 1)
    assert len(result.batches) == 1 and result.next_offset == 10
    with pytest.raises(OffsetOutOfRangeError):
        partition.read(501)


def test_offset_for_time(store: LogStore) -> None:
    partition = store.create_topic("t", 1, {"segment.bytes": 4096}).partitions[0]
    for i in range(30):
        partition.append(rows(10, i * 10, ts=1_000_000 + i * 1000))
    # record i has timestamp 1_000_000 + (i // 10) * 1000 + i
    assert partition.offset_for_time(0) == 0
    assert partition.offset_for_time(1_005_000) == 50
    assert partition.offset_for_time(1_005_055) == 55
    assert partition.offset_for_time(1_005_060) == 60
    assert partition.offset_for_time(9_999_999) is None


def test_log_append_time(store: LogStore) -> None:
    partition = store.create_topic("t", 1, {"message.timestamp.type": "LogAppendTime"}).partitions[0]
    partition.append(rows(3, ts=5))
    stamps = {r.timestamp for r in read_all(partition)}
    assert len(stamps) == 1 and stamps.pop() > 1_600_000_000_000


def test_clean_reopen_keeps_everything(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    partition = store.create_topic("t", 2, {"segment.bytes": 8192}).partitions[1]
    for i in range(20):
        partition.append(rows(10, i * 10))
    store.close()
    store = LogStore(tmp_path)
    assert store.clean_shutdown
    partition = store.partition("t", 1)
    assert partition.log_end_offset == 200
    partition.append(rows(5, 200))
    assert values(read_all(partition)) == list(range(205))
    store.close()


def test_unclean_reopen_truncates_garbage_tail(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    partition = store.create_topic("t", 1).partitions[0]
    partition.append(rows(10))
    partition.flush()
    partition.append(rows(10, 10))
    with open(partition.active_segment.log_path, "ab") as f:
        f.write(os.urandom(500))
    os.close(store._lock_fd)  # the process "dies": no clean-shutdown marker
    store._lock_fd = -1
    store = LogStore(tmp_path)
    assert not store.clean_shutdown
    partition = store.partition("t", 0)
    assert partition.log_end_offset == 20
    assert values(read_all(partition)) == list(range(20))
    partition.append(rows(1, 20))
    assert values(read_all(partition))[-1] == 20
    store.close()


def test_unclean_reopen_cuts_a_torn_batch(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    partition = store.create_topic("t", 1).partitions[0]
    partition.append(rows(10))
    partition.append(rows(10, 10))
    segment = partition.active_segment
    os.truncate(segment.log_path, segment.size - 7)
    os.close(store._lock_fd)
    store._lock_fd = -1
    partition = LogStore(tmp_path).partition("t", 0)
    assert partition.log_end_offset == 10
    assert values(read_all(partition)) == list(range(10))


def test_corrupt_byte_is_detected_and_never_served(store: LogStore) -> None:
    partition = store.create_topic("t", 1, {"segment.bytes": 4096}).partitions[0]
    for i in range(10):
        partition.append(rows(10, i * 10))
    sealed = partition.segments[1]
    position = 200
    with open(sealed.log_path, "r+b") as f:
        f.seek(position)
        byte = f.read(1)
        f.seek(position)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CorruptRecordError) as err:
        read_all(partition)
    message = str(err.value)
    assert "t-0" in message and sealed.log_path.name in message and "position" in message
    # reading past the bad segment still works
    assert values(read_all(partition, partition.segments[2].base_offset))[0] == partition.segments[2].base_offset


def test_topic_names_are_validated(store: LogStore) -> None:
    for bad in ("", ".", "..", "../etc", "a/b", "x" * 250, "spaces here", "ü"):
        with pytest.raises(InvalidTopicError):
            store.create_topic(bad)
    store.create_topic("ok.name_with-dash")
    assert not (store.directory.parent / "etc").exists()


def test_one_writer_per_directory(tmp_path: Path) -> None:
    first = LogStore(tmp_path)
    with pytest.raises(LogLockedError, match=str(os.getpid())):
        LogStore(tmp_path, lock_timeout=0.2)
    reader = LogStore(tmp_path, writable=False)  # readers are always welcome
    assert reader.topics == {}
    first.close()


def test_read_only_store_follows_the_writer(tmp_path: Path) -> None:
    writer = LogStore(tmp_path)
    partition = writer.create_topic("t", 1, {"segment.bytes": 4096}).partitions[0]
    partition.append(rows(10))
    reader = LogStore(tmp_path, writable=False).partition("t", 0)
    assert values(read_all(reader)) == list(range(10))
    for i in range(1, 20):
        partition.append(rows(10, i * 10))
    assert values(read_all(reader)) == list(range(200))
    writer.close()


def test_open_time_does_not_read_every_segment(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    partition = store.create_topic("t", 1, {"segment.bytes": 4096}).partitions[0]
    for i in range(100):
        partition.append(rows(10, i * 10))
    store.close()
    store = LogStore(tmp_path)
    partition = store.partition("t", 0)
    sealed = partition.segments[:-1]
    assert all(s._index is None for s in sealed)  # indexes untouched until a read needs them
    assert partition.log_end_offset == 1000
    store.close()
