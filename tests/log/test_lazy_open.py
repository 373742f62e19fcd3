"""After a clean close a writable store opens a partition at its first use (issue 17: 5,000 partitions
open in < 0.5 s): what a lazily opened partition shows must be what an eager open shows, a partition with
an open transaction is opened at once (the coordinator aborts it at start), and a clean close of a store
whose partitions were never used leaves the next open as fast and as correct."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from millpond.log import LogStore, Partition
from millpond.log.store import CLEAN_SHUTDOWN

from .conftest import read_all, rows

PARTITIONS = 6


def fill(directory: Path) -> dict[str, list[int]]:
    """A topic of PARTITIONS partitions, partition p holding 10 * (p + 1) records; returns each one's values."""
    store = LogStore(directory)
    expected = {}
    for partition in store.create_topic("t", PARTITIONS, {"segment.bytes": 2048}).partitions:
        n = 10 * (partition.partition + 1)
        partition.append(rows(n))
        expected[partition.name] = list(range(n))
    store.close()
    return expected


def values(partition: Partition) -> list[int]:
    return [int(r.value[:12]) for r in read_all(partition)]


def pending(store: LogStore) -> list[str]:
    return [p.name for p in store.partitions() if p._pending]


def test_a_clean_open_reads_a_partition_at_first_use_and_shows_what_an_eager_open_shows(tmp_path: Path) -> None:
    expected = fill(tmp_path)
    store = LogStore(tmp_path)
    assert len(pending(store)) == PARTITIONS  # nothing read
    first = store.partition("t", 2)
    assert first.log_end_offset == 30  # opened now
    assert pending(store) == [f"t-{p}" for p in range(PARTITIONS) if p != 2]
    first.append(rows(5, 30))
    for partition in store.partitions():
        assert values(partition) == expected[partition.name] + (list(range(30, 35)) if partition is first else [])
        assert partition.log_start_offset == 0 and partition.recovery_point == partition.log_end_offset - (
            5 if partition is first else 0)
    store.close()
    # never used between two clean closes: still opened correctly, and the appended ones kept
    store = LogStore(tmp_path)
    store.close()
    store = LogStore(tmp_path)
    assert [p.log_end_offset for p in store.partitions()] == [10, 20, 35, 40, 50, 60]
    store.close()


def test_a_partition_with_an_open_transaction_is_opened_at_once(tmp_path: Path) -> None:
    fill(tmp_path)
    store = LogStore(tmp_path)
    store.partition("t", 4).append(rows(2, 50), producer_id=7, producer_epoch=0, transactional=True)
    store.close()
    store = LogStore(tmp_path)
    assert "t-4" not in pending(store) and len(pending(store)) == PARTITIONS - 1
    # what the transaction coordinator asks of every partition at its start, answered without opening any other
    assert {p.name: p.ongoing_producers() for p in store.partitions() if p.ongoing_producers()} == {"t-4": [7]}
    assert len(pending(store)) == PARTITIONS - 1
    store.partition("t", 4).append_control(7, 0, commit=False)
    store.close()
    store = LogStore(tmp_path)
    assert len(pending(store)) == PARTITIONS  # no transaction open any more
    assert store.partition("t", 4).last_stable_offset == 53
    store.close()


@pytest.mark.parametrize("marker", [b"", b'{"ongoing": {"t": [4]', b"[]", b'{"ongoing": {"t": ["4"]}}'])
def test_a_marker_that_does_not_say_opens_every_partition_at_once(tmp_path: Path, marker: bytes) -> None:
    """An older millpond's marker is empty; one cut short by a power cut (it is written without an fsync)
    does not parse: neither can say which partitions had an open transaction."""
    fill(tmp_path)
    (tmp_path / CLEAN_SHUTDOWN).write_bytes(marker)
    store = LogStore(tmp_path)
    assert pending(store) == []
    assert [p.log_end_offset for p in store.partitions()] == [10 * (p + 1) for p in range(PARTITIONS)]
    store.close()


def test_a_failed_open_at_first_use_makes_the_close_unclean(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fill(tmp_path)
    store = LogStore(tmp_path)

    def failing(self: Partition, clean_shutdown: bool) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(Partition, "_load", failing)
        with pytest.raises(OSError, match="No space"):
            store.partition("t", 1).append(rows(1, 20))
    assert "t-1" in pending(store)  # tried again at its next use
    store.close()
    assert not (tmp_path / CLEAN_SHUTDOWN).exists()  # its recovery may have stopped half-way
    store = LogStore(tmp_path)
    assert pending(store) == []
    assert values(store.partition("t", 1)) == list(range(20))
    store.close()


def test_two_threads_using_a_partition_first_both_see_it_opened(tmp_path: Path) -> None:
    """The compaction thread and the event loop may both be the first to touch a partition."""
    fill(tmp_path)
    for _ in range(5):
        store = LogStore(tmp_path)
        partition = store.partition("t", 5)
        start = threading.Barrier(4)
        seen: list[tuple[int, int]] = []

        def use() -> None:
            start.wait()
            seen.append((partition.log_end_offset, len(partition.segments)))

        threads = [threading.Thread(target=use) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert len(set(seen)) == 1 and seen[0][0] == 60, seen
        store.close()
