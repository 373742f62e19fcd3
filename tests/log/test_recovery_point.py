"""Opening after a stop and closing touch only what changed (issue 17): an unclean open recovers only
partitions written past their checkpoint, and a clean close fsyncs only partitions written to."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from millpond.errors import CorruptRecordError
from millpond.log import LogStore, fsio
from millpond.log.partition import Partition
from millpond.log.store import CLEAN_SHUTDOWN

from .conftest import read_all, rows

PARTITIONS = 30


def fill(directory: Path) -> None:
    store = LogStore(directory)
    for partition in store.create_topic("t", PARTITIONS, {"segment.bytes": 4096}).partitions:
        for i in range(5):
            partition.append(rows(10, i * 10))
    store.close()


def test_an_unclean_open_recovers_only_partitions_written_past_their_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fill(tmp_path)
    store = LogStore(tmp_path)
    touched = store.topic("t").partitions[:3]
    for partition in touched:
        partition.append(rows(7, 50))  # not flushed: past the recovery point
    store.topic("t").partitions[3].append(rows(2, 50))
    store.topic("t").partitions[3].flush()  # flushed: its checkpoint names its new end
    store._unlock()  # the process dies: no clean close, no clean-shutdown marker
    assert not (tmp_path / CLEAN_SHUTDOWN).exists()

    recovered: list[str] = []
    real = Partition._recover

    def counting(self: Partition, trusted: bool) -> None:
        recovered.append(self.name)
        real(self, trusted)

    monkeypatch.setattr(Partition, "_recover", counting)
    store = LogStore(tmp_path)
    assert sorted(recovered) == sorted(p.name for p in touched)
    ends = [p.log_end_offset for p in store.topic("t").partitions]
    assert ends == [57, 57, 57, 52] + [50] * (PARTITIONS - 4)
    for partition in store.topic("t").partitions:
        assert [r.offset for r in read_all(partition)] == list(range(partition.log_end_offset))
    store.close()


def test_damage_in_an_untouched_partition_is_still_noticed(tmp_path: Path) -> None:
    """Its data was fsynced before its checkpoint, so it is not re-read at open (Kafka's recovery point);
    bytes that rotted since fail their CRC when read, and a header that went bad fails the open's check."""
    fill(tmp_path)
    folder = tmp_path / "topics" / "t" / "0"
    last = sorted(folder.glob("*.log"))[-1]
    data = last.read_bytes()
    last.write_bytes(data[:-20] + bytes(20))  # the records of the last batch, same size
    (tmp_path / CLEAN_SHUTDOWN).unlink()
    store = LogStore(tmp_path)
    partition = store.partition("t", 0)
    with pytest.raises(CorruptRecordError, match=last.name):
        read_all(partition)
    store.close()

    other = sorted((tmp_path / "topics" / "t" / "1").glob("*.log"))[-1]
    data = other.read_bytes()
    other.write_bytes(data[:-4])  # shorter than its checkpoint says: recovered at open, the torn batch set aside
    (tmp_path / CLEAN_SHUTDOWN).unlink()
    store = LogStore(tmp_path)
    partition = store.partition("t", 1)
    assert any("quarantined" in problem for problem in partition.problems), partition.problems
    with pytest.raises(CorruptRecordError, match="offsets 40..49 are quarantined"):
        read_all(partition, 0)
    store.close()


def test_a_clean_close_fsyncs_only_partitions_written_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fill(tmp_path)
    store = LogStore(tmp_path)
    for partition in store.topic("t").partitions[:4]:
        partition.append(rows(3, 50))
    fsyncs: Counter[str] = Counter()
    real = fsio.fsync

    def counting(fd: int, *, why: str = "") -> None:
        fsyncs[why] += 1
        real(fd, why=why)

    monkeypatch.setattr(fsio, "fsync", counting)
    store.close()
    assert fsyncs["segment"] == 4, fsyncs
    assert fsyncs["checkpoint"] == 4, fsyncs
