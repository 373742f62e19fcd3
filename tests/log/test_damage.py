"""Damaged files: what the log reads is checked, recovery quarantines instead of deleting, bad input is one line."""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import threading
import time
from pathlib import Path

import pytest

from millpond.errors import ConfigError, CorruptRecordError, LogLockedError, MillpondError
from millpond.log import LogStore, Partition
from millpond.log.batch import Row
from millpond.log.index import AbortedTxn
from millpond.log.partition import CHECKPOINT, QUARANTINE, REASON
from millpond.progress import Progress

from .conftest import read_all, rows


def values(records: list) -> list[int]:  # type: ignore[type-arg]
    return [int(r.value[:12]) for r in records]


def filled(directory: Path, segments: int = 4) -> LogStore:
    """A store with topic t, one partition of ``segments`` sealed segments of 20 records plus an active one."""
    store = LogStore(directory)
    partition = store.create_topic("t", 1, {"segment.bytes": 1 << 20}).partitions[0]
    for s in range(segments):
        for b in range(4):
            partition.append(rows(5, s * 20 + b * 5))
        partition.roll()
    partition.append(rows(5, segments * 20))
    return store


def crash(store: LogStore) -> None:
    """Abandon a writable store as a killed process would: no clean-shutdown marker, and a
    recovery point (never checkpointed here) before the damage the test then does."""
    os.close(store._lock_fd)
    store._lock_fd = -1


def reopen_closed(store: LogStore) -> Partition:
    store.close()
    return LogStore(store.directory).partition("t", 0)


# -- indexes --


@pytest.mark.parametrize("entry", [(-8, -1), (0, 1 << 30), (3, 40)], ids=["negative", "past-end", "mid-batch"])
def test_an_index_entry_that_disagrees_with_its_segment_is_rebuilt(
    tmp_path: Path, entry: tuple[int, int], caplog: pytest.LogCaptureFixture
) -> None:
    store = filled(tmp_path)
    sealed = store.partition("t", 0).segments[1]
    store.close()
    with open(sealed.index_path, "ab") as f:  # a second entry, after the (0, 0) one
        f.write(struct.pack(">ii", *entry))
    with caplog.at_level(logging.WARNING):
        partition = LogStore(tmp_path).partition("t", 0)
        assert values(read_all(partition, 33)) == list(range(33, 85))
    assert any(sealed.index_path.name in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    # written back: the rebuilt index has no such entry
    data = sealed.index_path.read_bytes()
    assert struct.pack(">ii", *entry) not in [data[i : i + 8] for i in range(0, len(data), 8)]


def test_a_torn_or_disordered_time_index_is_rebuilt(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = filled(tmp_path)
    sealed = store.partition("t", 0).segments[2]
    store.close()
    data = sealed.time_index_path.read_bytes()
    sealed.time_index_path.write_bytes(data[12:24] + data[:12] + b"\x01\x02\x03")
    with caplog.at_level(logging.WARNING):
        partition = LogStore(tmp_path, writable=False).partition("t", 0)
        assert partition.offset_for_time(1_700_000_000_000 + 45) == 45
    assert any(sealed.time_index_path.name in r.getMessage() for r in caplog.records)


# -- the checkpoint and the aborted index --


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"\xff\xfe", b"[]", b'{"recovery_point": "12"}', b'{"recovery_point": 100000}',
     b'{"recovery_point": 85, "log_start_offset": 0, "ongoing": {"7": 3}, "index_format": 2}'],
    ids=["syntax", "bytes", "array", "type", "past-the-data", "ongoing-not-in-data"],
)
@pytest.mark.parametrize("writable", [True, False], ids=["writer", "reader"])
def test_a_damaged_checkpoint_recovers_from_the_segments(
    tmp_path: Path, body: bytes, writable: bool, caplog: pytest.LogCaptureFixture
) -> None:
    store = filled(tmp_path)
    store.close()
    (tmp_path / "topics" / "t" / "0" / CHECKPOINT).write_bytes(body)
    with caplog.at_level(logging.WARNING):
        partition = LogStore(tmp_path, writable=writable).partition("t", 0)
        _ = partition.log_end_offset  # a writer opens it at first use
    assert any(CHECKPOINT in r.getMessage() for r in caplog.records)
    if b"100000" in body and not writable:
        # a reader cannot recover: the claim is damage, said, and reading to the end raises
        assert partition.problems and "claims" in partition.problems[0]
        with pytest.raises(CorruptRecordError):
            read_all(partition)
        return
    assert partition.log_end_offset == 85
    assert values(read_all(partition, read_committed=True)) == list(range(85))
    assert partition.last_stable_offset == 85


def test_the_aborted_index_is_rebuilt_from_the_markers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = LogStore(tmp_path)
    partition = store.create_topic("t", 1).partitions[0]
    partition.append(rows(3))
    partition.append(rows(2, 100), producer_id=9, producer_epoch=0, transactional=True)
    partition.append_control(9, 0, commit=False)
    partition.append(rows(2, 200))
    store.close()
    index = tmp_path / "topics" / "t" / "0" / "00000000000000000000.txnindex"
    good = AbortedTxn(9, 3, 5, 6).encode()
    assert index.read_bytes() == good
    past = AbortedTxn(9, 100, 200, 201).encode()
    # the last: an entry past the recovery point the checkpoint claims is left out (replay
    # past the recovery point finds such entries again after a crash), and cut off by the writer
    for damaged in (b"", b"\x00\x07" + good[2:], good[:20], good + good, good + past):
        index.write_bytes(damaged)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            for writable in (False, True):
                reopened = LogStore(tmp_path, writable=writable)
                assert values(read_all(reopened.partition("t", 0), read_committed=True)) == [0, 1, 2, 200, 201]
                reopened.close()
        assert any(index.name in r.getMessage() or "txnindex" in r.getMessage() for r in caplog.records) \
            or damaged == good + past
        assert index.read_bytes() == good  # the writer wrote it back


# -- batches --


def test_a_torn_batch_in_a_sealed_segment_is_an_error_not_an_end(tmp_path: Path) -> None:
    store = filled(tmp_path)
    partition = store.partition("t", 0)
    sealed = partition.segments[1]
    with open(sealed.log_path, "r+b") as f:
        f.truncate(sealed.size - 30)
    sealed.size -= 30  # as a fresh open would see it
    with pytest.raises(CorruptRecordError) as err:
        read_all(partition, 0)
    assert all(s in str(err.value) for s in ("t-0", sealed.log_path.name, "position"))
    store.close()


def test_a_zeroed_header_is_an_error_and_describe_says_so(tmp_path: Path) -> None:
    import asyncio

    from millpond.backends.embedded import EmbeddedBackend

    store = filled(tmp_path)
    sealed = store.partition("t", 0).segments[2]
    position = next(pos for pos, _ in sealed.walk(0) if pos > 0)
    store.close()
    with open(sealed.log_path, "r+b") as f:
        f.seek(position)
        f.write(bytes(61))

    async def describe() -> tuple[str, ...]:
        backend = EmbeddedBackend(tmp_path, readonly=True)
        await backend.open()
        (info,) = await backend.describe_topic("t")
        await backend.close()
        return info.problems

    problems = asyncio.run(describe())
    assert problems and sealed.log_path.name in problems[0], problems
    reader = LogStore(tmp_path, writable=False).partition("t", 0)
    with pytest.raises(CorruptRecordError, match=f"{sealed.log_path.name} at position {position}"):
        read_all(reader)


def test_a_damaged_base_offset_is_caught(tmp_path: Path) -> None:
    """The base offset is outside the CRC: a flipped bit there must not renumber records."""
    store = filled(tmp_path)
    sealed = store.partition("t", 0).segments[1]
    position = next(pos for pos, _ in sealed.walk(0) if pos > 0)
    store.close()
    with open(sealed.log_path, "r+b") as f:
        f.seek(position + 7)
        byte = f.read(1)
        f.seek(position + 7)
        f.write(bytes([byte[0] ^ 0x02]))
    for writable in (False, True):
        partition = LogStore(tmp_path, writable=writable, lock_timeout=0).partition("t", 0)
        with pytest.raises(CorruptRecordError, match="batch offsets"):
            read_all(partition, 20)
        if writable:
            partition.close()


# -- recovery never deletes --


def test_recovery_quarantines_a_corrupt_middle_segment_and_what_follows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = filled(tmp_path)
    partition = store.partition("t", 0)
    corrupt, later = partition.segments[1], partition.segments[2:]
    original = corrupt.log_path.read_bytes()
    later_bytes = {s.log_path.name: s.log_path.read_bytes() for s in later}
    position = next(pos for pos, _ in corrupt.walk(0) if pos > 0)  # the second batch: offsets 25..29
    crash(store)
    with open(corrupt.log_path, "r+b") as f:
        f.seek(position + 70)
        byte = f.read(1)
        f.seek(position + 70)
        f.write(bytes([byte[0] ^ 0x10]))
    with caplog.at_level(logging.WARNING):
        reopened = LogStore(tmp_path)
    partition = reopened.partition("t", 0)
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and "offsets 25..84" in errors[0].getMessage() and corrupt.log_path.name in errors[0].getMessage()
    assert partition.log_end_offset == 85  # offsets are never reused: appends go on after the quarantined ones
    served = partition.read(0)  # what comes before is served; reading into the quarantined offsets fails
    assert values([r for b in served.batches for r in b.records()]) == list(range(25))
    with pytest.raises(CorruptRecordError, match="offsets 25..84 are quarantined"):
        read_all(partition)
    (folder,) = (partition.directory / QUARANTINE).iterdir()
    reason = json.loads((folder / REASON).read_text())
    assert (reason["first_offset"], reason["end_offset"], reason["position"]) == (25, 85, position)
    assert "CRC" in reason["reason"]
    # nothing is lost: the corrupt segment as it was, and the later ones, byte for byte
    assert (folder / corrupt.log_path.name).read_bytes()[:position + 70] == original[:position + 70]
    for name, data in later_bytes.items():
        assert (folder / name).read_bytes() == data
    assert partition.problems and "offsets 25..84" in partition.problems[0]
    # a person fixes the byte; restore puts everything back and recovers again
    fixed = bytearray((folder / corrupt.log_path.name).read_bytes())
    fixed[position + 70] = original[position + 70]
    (folder / corrupt.log_path.name).write_bytes(bytes(fixed))
    partition.append(rows(3, 85))  # written meanwhile, after the quarantined offsets
    checked = Progress("checking", unit="bytes", stream=io.StringIO())
    quarantined_bytes = sum(p.stat().st_size for p in folder.glob("*.log"))
    done = reopened.repair("t", 0, "restore", checked)
    assert done and "restored" in done[0]
    assert checked.count == checked.total == quarantined_bytes  # the check's progress: every byte, once
    partition = reopened.partition("t", 0)
    assert values(read_all(partition)) == list(range(88))
    assert not partition.problems and not (partition.directory / QUARANTINE).exists()
    reopened.close()


def test_restore_refuses_files_still_damaged_and_discard_passes_over_them(tmp_path: Path) -> None:
    store = filled(tmp_path)
    corrupt = store.partition("t", 0).segments[3]
    crash(store)
    with open(corrupt.log_path, "r+b") as f:
        f.seek(100)
        f.write(b"\x00" * 8)
    reopened = LogStore(tmp_path)
    partition = reopened.partition("t", 0)
    assert partition.problems and partition.log_end_offset == 85
    partition.append(rows(1, 1000))
    with pytest.raises(MillpondError, match="still damaged at position"):
        reopened.repair("t", 0, "restore")
    assert partition.problems  # nothing changed
    assert reopened.repair("t", None, "discard")
    assert not (partition.directory / QUARANTINE).exists() and not partition.problems
    assert values(read_all(partition)) == list(range(60)) + [1000]
    reopened.close()
    reader = LogStore(tmp_path, writable=False).partition("t", 0)  # the discarded offsets stay absent
    assert values(read_all(reader)) == list(range(60)) + [1000] and not reader.check_tails()


def test_a_torn_tail_of_the_active_segment_is_cut_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = filled(tmp_path)
    active = store.partition("t", 0).segments[-1]
    crash(store)
    with open(active.log_path, "ab") as f:
        f.write(b"\x00\x00\x00\x00\x00\x00\x00\x55\x00\x00\x01\x00" + b"half a batch")
    with caplog.at_level(logging.WARNING):
        partition = LogStore(tmp_path).partition("t", 0)
    assert partition.log_end_offset == 85 and not partition.problems
    assert any("torn tail" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


# -- topic.json and bad input --


@pytest.mark.parametrize(
    "body", [b"{", b'{"partitions": 0, "config": {}}', b'{"partitions": "2"}', b'{"partitions": 1, "config": []}',
             b'{"partitions": 1, "config": {"segment.bytes": 1}}'],
    ids=["syntax", "zero", "type", "config-type", "bad-setting"],
)
def test_a_damaged_topic_json_is_one_error_naming_the_file(tmp_path: Path, body: bytes) -> None:
    store = LogStore(tmp_path)
    store.create_topic("t", 1)
    store.close()
    path = tmp_path / "topics" / "t" / "topic.json"
    path.write_bytes(body)
    for writable in (True, False):
        with pytest.raises(MillpondError, match=str(path)):
            LogStore(tmp_path, writable=writable).topic("t")


def test_a_topic_json_with_fewer_partitions_than_folders_is_refused(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    store.create_topic("t", 3)
    store.close()
    path = tmp_path / "topics" / "t" / "topic.json"
    path.write_text(path.read_text().replace('"partitions": 3', '"partitions": 2'))
    with pytest.raises(MillpondError, match="partition folder"):
        LogStore(tmp_path)


def test_zero_partitions_are_refused(store: LogStore) -> None:
    for bad in (0, -1):
        with pytest.raises(ConfigError, match="at least 1"):
            store.create_topic("t", bad)
    assert "t" not in store.topics


def test_a_log_directory_that_is_a_file_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "log"
    path.write_text("not a log")
    for writable in (True, False):
        with pytest.raises(MillpondError, match=f"{path} is a file"):
            LogStore(path, writable=writable)


# -- the lock --


def test_a_writer_waits_for_a_short_holder(tmp_path: Path) -> None:
    first = LogStore(tmp_path)
    threading.Timer(0.3, first.close).start()
    started = time.monotonic()
    second = LogStore(tmp_path, lock_timeout=5)
    assert 0.2 < time.monotonic() - started < 4
    second.close()


def test_the_refusal_names_the_holder_or_the_lock_file(tmp_path: Path) -> None:
    first = LogStore(tmp_path)
    with pytest.raises(LogLockedError, match=f"pid {os.getpid()}"):
        LogStore(tmp_path, lock_timeout=0.1)
    os.ftruncate(first._lock_fd, 0)  # as if the holder had not written its pid yet
    with pytest.raises(LogLockedError) as err:
        LogStore(tmp_path, lock_timeout=0.1)
    assert "unknown" not in str(err.value) and str(tmp_path / ".lock") in str(err.value)
    first.close()


# -- the command line --


def test_describe_shows_and_repair_discards_quarantined_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from millpond.cli import main

    store = filled(tmp_path)
    corrupt = store.partition("t", 0).segments[2]
    crash(store)
    with open(corrupt.log_path, "r+b") as f:
        f.seek(80)
        f.write(b"\xff")
    assert main(["topics", "create", "other", "--log", str(tmp_path)]) == 0  # the next writing command recovers
    capsys.readouterr()
    assert main(["topics", "describe", "t", "--log", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "DAMAGED partition 0: offsets 40..84 quarantined" in out and "topics repair t" in out
    assert main(["topics", "repair", "t", "--discard", "--log", str(tmp_path)]) == 0
    assert "t-0: discarded" in capsys.readouterr().err
    assert main(["topics", "describe", "t", "--log", str(tmp_path)]) == 0
    assert "DAMAGED" not in capsys.readouterr().out
    assert main(["topics", "repair", "t", "--restore", "--log", str(tmp_path)]) == 0
    assert "nothing is quarantined" in capsys.readouterr().err


def test_create_with_zero_partitions_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from millpond.cli import main

    assert main(["topics", "create", "t", "-p", "0", "--log", str(tmp_path)]) == 2  # argparse's usage error
    err = capsys.readouterr().err.strip().splitlines()
    assert "must be at least 1, not 0" in err[-1]
    assert not (tmp_path / "topics" / "t").exists()
    (tmp_path / "file").write_text("x")
    assert main(["topics", "list", "--log", str(tmp_path / "file")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a file" in err[0]


# -- found by the fuzzer --


def _flip_base_offset(segment_path: Path, position: int, bit: int) -> None:
    with open(segment_path, "r+b") as f:
        f.seek(position)
        base = struct.unpack(">q", f.read(8))[0]
        f.seek(position)
        f.write(struct.pack(">q", base ^ (1 << bit)))


@pytest.mark.parametrize("bit", [0, 22, 40])
def test_the_first_batch_of_the_active_segment_of_a_compacted_topic_keeps_its_offset(tmp_path: Path, bit: int) -> None:
    store = LogStore(tmp_path)
    partition = store.create_topic("c", 1, {"cleanup.policy": "compact", "segment.bytes": 1 << 20}).partitions[0]
    partition.append(rows(5))
    partition.roll()
    partition.append(rows(5, 5))
    active = partition.segments[-1]
    store.close()
    _flip_base_offset(active.log_path, 0, bit)
    reader = LogStore(tmp_path, writable=False).partition("c", 0)
    assert reader.problems and "batch offsets" in reader.problems[0]
    with pytest.raises(CorruptRecordError):
        read_all(reader)
    writer = LogStore(tmp_path).partition("c", 0)  # recovers: the batch is moved aside, never renumbered
    assert [r.offset for b in writer.read(0).batches for r in b.records()] == list(range(5)) and writer.problems


def test_a_compacted_segment_checks_base_offsets_against_its_time_index(tmp_path: Path) -> None:
    from millpond.log.cleaner import compact

    store = LogStore(tmp_path)
    partition = store.create_topic("c", 1, {"cleanup.policy": "compact", "segment.bytes": 1 << 20}).partitions[0]
    for i in range(12):  # keys repeat: compaction leaves gaps
        partition.append([Row(b"k%d" % (i % 4), b"v%d" % i, 1_700_000_000_000 + i, [])])
    partition.roll()
    partition.append([Row(b"z", b"z", 1_700_000_001_000, [])])
    compact(partition, 1_800_000_000_000, force=True)
    sealed = partition.segments[0]
    kept = [(pos, h.base_offset) for pos, h in sealed.walk(0)]
    assert kept[0][1] > 0 and len(kept) >= 2  # a gap before the first kept batch
    store.close()
    _flip_base_offset(sealed.log_path, kept[0][0], 0)  # 8 -> 9 (or 9 -> 8): inside the gap, order kept
    reader = LogStore(tmp_path, writable=False).partition("c", 0)
    with pytest.raises(CorruptRecordError, match="time"):
        read_all(reader)


def test_fsynced_data_that_is_gone_is_noted(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = filled(tmp_path)
    active = store.partition("t", 0).segments[-1]
    store.close()
    with open(active.log_path, "r+b") as f:
        f.truncate(0)  # at a batch boundary: nothing torn to find, but the checkpoint claims 80..84
    with caplog.at_level(logging.ERROR):
        partition = LogStore(tmp_path).partition("t", 0)
    assert partition.log_end_offset == 80  # (the claim itself may be what is damaged: offsets go on from the data)
    assert any("offsets up to 84" in r.getMessage() for r in caplog.records)
    assert partition.problems and "offsets 80..84" in partition.problems[0]
    partition.append(rows(1, 80))
    assert values(read_all(partition)) == list(range(81))


def test_compaction_never_hides_quarantined_offsets(tmp_path: Path) -> None:
    from millpond.log.cleaner import compact

    store = LogStore(tmp_path)
    partition = store.create_topic("c", 1, {"cleanup.policy": "compact", "segment.bytes": 1 << 20}).partitions[0]
    for i in range(3):
        partition.append([Row(b"k", b"old%d" % i, 1_700_000_000_000 + i, [])])
        partition.roll()
    partition.append([Row(b"k%d" % i, b"new", 1_700_000_001_000 + i, []) for i in range(3)])
    active = partition.segments[-1]
    store.flush()  # fsynced and claimed: a damaged tail is not a crash's torn write
    crash(store)
    with open(active.log_path, "r+b") as f:
        f.truncate(active.size - 10)
    partition = LogStore(tmp_path).partition("c", 0)
    assert partition.log_end_offset == 6 and partition.problems  # offsets 3..5 quarantined, not reused
    compact(partition, 1_800_000_000_000, force=True)  # may merge the segments around the quarantined offsets
    with pytest.raises(CorruptRecordError, match="offsets 3..5 are quarantined"):
        read_all(partition)
