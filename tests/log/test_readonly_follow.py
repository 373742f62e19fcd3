"""A read-only view follows the writer's segments without listing the folder on every fetch (issue 17)."""

from __future__ import annotations

import os
import time

import pytest

from millpond.log import LogStore
from millpond.log.partition import _RELIST_MARGIN_NS, Partition

from .conftest import read_all, rows


def settle() -> None:
    """Wait until a listing of the folder as it is now is trusted (past the mtime's clock tick)."""
    time.sleep(_RELIST_MARGIN_NS / 1e9 * 1.5)


def test_reader_sees_rolls_and_retention_as_they_happen(store: LogStore) -> None:
    writer = store.create_topic("t", 1, {"segment.bytes": 2048}).partitions[0]
    reader = LogStore(store.directory, writable=False).partition("t", 0)
    written = 0
    for round_no in range(6):
        writer.append(rows(40, written))
        written += 40
        writer.flush(fsync=False)
        if round_no % 2:
            settle()  # half the rounds look only after the margin: the mtime alone must show the change
        got = read_all(reader, reader.log_start_offset)
        assert [r.offset for r in got] == list(range(reader.log_start_offset, written)), round_no
        assert reader.log_end_offset == writer.log_end_offset
        assert [s.base_offset for s in reader.segments] == [s.base_offset for s in writer.segments]
    writer.delete_oldest_segments(3)
    settle()
    reader.refresh()
    assert reader.log_start_offset == writer.log_start_offset > 0
    assert [s.base_offset for s in reader.segments] == [s.base_offset for s in writer.segments]


def test_reads_of_an_unchanged_folder_do_not_list_it(store: LogStore, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = store.create_topic("t", 1, {"segment.bytes": 2048}).partitions[0]
    for i in range(20):
        writer.append(rows(20, i * 20))
    writer.flush(fsync=False)
    assert len(writer.segments) > 10
    settle()
    listings = 0
    real = Partition._relist

    def counting(self: Partition) -> None:
        nonlocal listings
        listings += 1
        real(self)

    monkeypatch.setattr(Partition, "_relist", counting)
    reader = LogStore(store.directory, writable=False).partition("t", 0)
    for offset in range(0, 400, 7):
        assert reader.read(offset, 100).batches
    assert listings == 0  # the open listed the folder; reads of an unchanged folder list it no more
    # an append to the active segment is seen without a listing; a roll lists once more
    writer.append(rows(1, 400))
    writer.flush(fsync=False)
    assert [r.offset for r in read_all(reader, 400)] == [400]
    writer.roll()
    writer.append(rows(1, 401))
    writer.flush(fsync=False)
    assert [r.offset for r in read_all(reader, 400)] == [400, 401]
    assert reader.segments[-1].base_offset == 401
    assert listings >= 1


def test_a_change_in_the_same_clock_tick_as_the_listing_is_found_without_listing_every_fetch(
    store: LogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing taken right after the folder changed is not trusted until the margin has passed, but
    re-listing the folder on every fetch meanwhile cost O(segments) a fetch: a stat or two find a roll
    or retention that the mtime cannot show (the same clock tick as the listing's), and only then list."""
    writer = store.create_topic("t", 1, {"segment.bytes": 2048}).partitions[0]
    for i in range(20):
        writer.append(rows(20, i * 20))
    writer.flush(fsync=False)
    reader = LogStore(store.directory, writable=False).partition("t", 0)
    listings = 0
    real = Partition._relist

    def counting(self: Partition, afresh: bool = False) -> None:
        nonlocal listings
        listings += 1
        real(self, afresh)

    monkeypatch.setattr(Partition, "_relist", counting)

    def same_tick() -> None:
        """As if the reader's last listing had seen the folder's mtime as it is now, a moment ago."""
        mtime = os.stat(reader.directory).st_mtime_ns
        reader._listing = (mtime, mtime + 1_000_000)

    same_tick()
    for offset in range(0, 400, 7):
        assert reader.read(offset, 100).batches
    assert listings == 0  # nothing moved: no listing, however many fetches in the margin
    writer.roll()
    writer.append(rows(5, 400))
    writer.flush(fsync=False)
    same_tick()
    assert [r.offset for r in read_all(reader, 395)] == list(range(395, 405))
    assert [s.base_offset for s in reader.segments] == [s.base_offset for s in writer.segments]
    assert listings == 1
    writer.delete_oldest_segments(3)
    same_tick()
    reader.refresh()
    assert reader.log_start_offset == writer.log_start_offset > 0
    assert [s.base_offset for s in reader.segments] == [s.base_offset for s in writer.segments]
    assert listings == 2
