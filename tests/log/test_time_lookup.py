"""Lookups by time read one segment, whatever the number of segments (issue 17), and stay right
when the ``max-timestamps`` file is missing, damaged or behind the log."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from millpond.log import LogStore
from millpond.log.batch import Row
from millpond.log.cleaner import compact
from millpond.log.store import CLEAN_SHUTDOWN
from millpond.log.timestamps import FILE

from .conftest import read_all


def build(directory: Path, stamps: list[int], segment_bytes: int = 2048) -> None:
    store = LogStore(directory)
    partition = store.create_topic("t", 1, {"segment.bytes": segment_bytes, "cleanup.policy": "compact,delete",
                                            "retention.ms": -1}).partitions[0]
    for i in range(0, len(stamps), 4):
        partition.append([Row(b"k%d" % (j % 50), b"v" * 60, stamps[j], []) for j in range(i, min(i + 4, len(stamps)))])
    store.close()


def check_all(partition, stamps: list[int]) -> None:  # type: ignore[no-untyped-def]
    """Against the model: the first record, in offset order, whose timestamp reaches the one asked for."""
    records = [(r.offset, r.timestamp) for r in read_all(partition)]
    for timestamp in sorted(set(stamps))[::7] + [min(stamps) - 1, max(stamps), max(stamps) + 1]:
        expected = next((offset for offset, stamp in records if stamp >= timestamp), None)
        assert partition.offset_for_time(timestamp) == expected, timestamp


def wandering(count: int, seed: int) -> list[int]:
    """Timestamps that mostly grow but often go back (CreateTime from many clients)."""
    rng = random.Random(seed)
    return [1_000_000 + i * 10 + rng.randint(-400, 400) for i in range(count)]


@pytest.mark.parametrize("writable", [True, False])
def test_time_lookup_matches_a_scan_of_every_record(tmp_path: Path, writable: bool) -> None:
    stamps = wandering(2_000, 1)
    build(tmp_path / "log", stamps)
    store = LogStore(tmp_path / "log", writable=writable)
    partition = store.partition("t", 0)
    assert len(partition.segments) > 50
    check_all(partition, stamps)
    store.close()


def test_time_lookup_reads_one_segments_indexes(tmp_path: Path) -> None:
    stamps = list(range(1_000_000, 1_004_000))
    build(tmp_path / "log", stamps)
    store = LogStore(tmp_path / "log", writable=False)
    partition = store.partition("t", 0)
    assert len(partition.segments) > 100
    target = stamps[len(stamps) // 2]
    assert partition.offset_for_time(target) == target - 1_000_000
    loaded = [s for s in partition.segments if s._time_index is not None]
    assert len(loaded) <= 2, f"{len(loaded)} segments' indexes were read"
    store.close()


def test_a_missing_damaged_or_stale_file_only_costs_time(tmp_path: Path) -> None:
    stamps = wandering(1_500, 2)
    build(tmp_path / "log", stamps)
    folder = tmp_path / "log" / "topics" / "t" / "0"
    whole = (folder / FILE).read_bytes()
    assert len(whole) % 24 == 0 and len(whole) > 24 * 20

    (folder / FILE).unlink()  # a log written before the file: every segment walked, then rebuilt at a roll
    store = LogStore(tmp_path / "log", writable=False)
    check_all(store.partition("t", 0), stamps)
    store.close()

    # a power cut left zeros in the middle and a torn tail, and the partition was written to after its
    # checkpoint (no "end" claim that matches): the unclean open recovers it and cuts the file there
    damaged = whole[: 24 * 10] + bytes(24) + whole[24 * 11 :] + b"\x01\x02"
    (folder / FILE).write_bytes(damaged)
    (tmp_path / "log" / CLEAN_SHUTDOWN).unlink(missing_ok=True)
    checkpoint = json.loads((folder / "partition.checkpoint").read_bytes())
    del checkpoint["end"]
    (folder / "partition.checkpoint").write_text(json.dumps(checkpoint))
    store = LogStore(tmp_path / "log")
    assert (folder / FILE).read_bytes() == whole[: 24 * 10]
    check_all(store.partition("t", 0), stamps)
    store.close()

    # a file that claims too little (bounds too low) is what the format rules out; too high is safe
    lowered = bytearray(whole)
    for i in range(0, len(lowered), 24):
        end = int.from_bytes(lowered[i : i + 8], "big")
        bound = 1 << 40
        check = end ^ bound ^ 0x6D696C6C706F6E64
        lowered[i + 8 : i + 24] = bound.to_bytes(8, "big") + check.to_bytes(8, "big", signed=True)
    (folder / FILE).write_bytes(bytes(lowered))
    store = LogStore(tmp_path / "log", writable=False)
    check_all(store.partition("t", 0), stamps)
    store.close()


def test_time_lookup_after_retention_and_compaction(tmp_path: Path) -> None:
    stamps = wandering(3_000, 3)
    build(tmp_path / "log", stamps)
    store = LogStore(tmp_path / "log")
    partition = store.partition("t", 0)
    before = len(read_all(partition)), len(partition.segments)
    compact(partition, now_ms=10**13, force=True)
    compact(partition, now_ms=10**13, force=True)
    after = len(read_all(partition)), len(partition.segments)
    assert after[0] < before[0] and after[1] < before[1], (before, after)
    partition.delete_oldest_segments(3)
    check_all(partition, stamps)
    # more rolls after the cleaning: the file goes on from where it was
    for i in range(400):
        partition.append([Row(b"k", b"v" * 60, 2_000_000 + i, [])])
    check_all(partition, stamps + [2_000_000 + i for i in range(400)])
    store.close()
    store = LogStore(tmp_path / "log", writable=False)
    check_all(store.partition("t", 0), stamps + [2_000_000 + i for i in range(400)])
    store.close()
