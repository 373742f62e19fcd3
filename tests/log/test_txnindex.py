"""Aborted transactions in Kafka's per-segment ``.txnindex``, and the upgrade of older logs (issue 16).

The expected entries come from the test's own bookkeeping of what it appended (an
independent model of Kafka's rule: an entry in the segment holding the ABORT marker,
with the last stable offset once the marker is written), and the files are decoded
here with Kafka's layout, not with millpond's reader.
"""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import crc32c
import pytest

from millpond.log import LogStore, Partition, fsio
from millpond.log.batch import Row
from millpond.log.cleaner import compact
from millpond.log.partition import ABORTED_INDEX, CHECKPOINT
from millpond.log.store import CLEAN_SHUTDOWN

from .conftest import read_all

KAFKA_ABORTED_TXN = struct.Struct(">hqqqq")  # version, producer_id, first, last, last_stable_offset


def decode(path: Path) -> list[tuple[int, int, int, int]]:
    data = path.read_bytes()
    assert len(data) % 34 == 0, f"{path.name}: {len(data)} bytes is not whole 34-byte entries"
    out = []
    for version, pid, first, last, lso in KAFKA_ABORTED_TXN.iter_unpack(data):
        assert version == 0
        out.append((pid, first, last, lso))
    return out


def value(i: int) -> bytes:
    return b"v%07d" % i


class Model:
    """Appends interleaved transactions and plain records; keeps what Kafka's files must say."""

    def __init__(self, partition: Partition, rng: random.Random) -> None:
        self.partition = partition
        self.rng = rng
        self.open: dict[int, int] = {}  # producer -> first offset of its open transaction
        self.open_values: dict[int, list[int]] = {}
        self.aborted: list[tuple[int, int, int, int]] = []  # (pid, first, marker, lso)
        self.committed: list[int] = []  # values visible to read_committed, in offset order
        self.n = 0

    def _rows(self, count: int) -> tuple[list[Row], list[int]]:
        numbers = list(range(self.n, self.n + count))
        self.n += count
        return [Row(b"k%d" % (i % 13), value(i), 1_700_000_000_000 + i, []) for i in numbers], numbers

    def step(self) -> None:
        rng = self.rng
        pid = rng.choice((7, 8, 9))
        roll = rng.random()
        if pid in self.open and roll < 0.3:
            first = self.open.pop(pid)
            numbers = self.open_values.pop(pid)
            commit = rng.random() < 0.5
            marker = self.partition.append_control(pid, 0, commit=commit)
            if commit:
                self.committed.extend(numbers)
            else:
                lso = min([marker + 1, *self.open.values()])
                self.aborted.append((pid, first, marker, lso))
        elif roll < 0.5:
            rows, numbers = self._rows(rng.randint(1, 4))
            self.partition.append(rows)
            self.committed.extend(numbers)
        else:
            rows, numbers = self._rows(rng.randint(1, 4))
            base = self.partition.append(rows, producer_id=pid, producer_epoch=0, transactional=True)
            self.open.setdefault(pid, base)
            self.open_values.setdefault(pid, []).extend(numbers)

    def finish(self) -> None:
        for pid in list(self.open):
            marker = self.partition.append_control(pid, 0, commit=False)
            first = self.open.pop(pid)
            self.open_values.pop(pid)
            self.aborted.append((pid, first, marker, min([marker + 1, *self.open.values()])))


def written(tmp_path: Path, steps: int = 300, seed: int = 16) -> tuple[LogStore, Model]:
    store = LogStore(tmp_path)
    partition = store.create_topic("t", 1, {"segment.bytes": 2048}).partitions[0]
    model = Model(partition, random.Random(seed))
    for _ in range(steps):
        model.step()
    model.finish()
    return store, model


def expected_files(directory: Path, aborted: list[tuple[int, int, int, int]]) -> dict[str, list[tuple[int, ...]]]:
    bases = sorted(int(p.name[:-4]) for p in directory.glob("*.log"))
    files: dict[str, list[tuple[int, ...]]] = {}
    for entry in aborted:
        base = max(b for b in bases if b <= entry[2])  # the segment holding the ABORT marker
        files.setdefault(f"{base:020d}.txnindex", []).append(entry)
    return files


def actual_files(directory: Path) -> dict[str, list[tuple[int, ...]]]:
    return {p.name: list(decode(p)) for p in sorted(directory.glob("*.txnindex"))}


def committed_values(partition: Partition) -> list[int]:
    return [int(r.value[1:]) for r in read_all(partition, read_committed=True)]


def in_offset_order(values: list[int]) -> list[int]:
    """Values are numbered in the order they were appended, which is offset order."""
    return sorted(values)


def test_each_segment_keeps_its_aborted_transactions_in_kafkas_layout(tmp_path: Path) -> None:
    store, model = written(tmp_path)
    directory = store.partition("t", 0).directory
    assert len(list(directory.glob("*.log"))) > 3 and len(model.aborted) > 10
    expected = expected_files(directory, model.aborted)
    assert len(expected) > 1  # several segments hold markers
    assert actual_files(directory) == expected
    assert committed_values(store.partition("t", 0)) == in_offset_order(model.committed)
    store.close()
    for writable in (False, True):
        reopened = LogStore(tmp_path, writable=writable)
        assert committed_values(reopened.partition("t", 0)) == in_offset_order(model.committed)
        reopened.close()
    assert actual_files(directory) == expected
    assert not (directory / ABORTED_INDEX).exists()


def test_retention_takes_the_entries_with_their_segment(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store, model = written(tmp_path)
    partition = store.partition("t", 0)
    directory = partition.directory
    expected = expected_files(directory, model.aborted)
    count = next(i for i, s in enumerate(partition.segments) if s.txn_index_path.name in expected) + 1
    gone = partition.segments[:count]
    partition.delete_oldest_segments(count)
    for segment in gone:
        expected.pop(segment.txn_index_path.name, None)
        assert not segment.txn_index_path.exists()
    assert actual_files(directory) == expected
    store.close()
    with caplog.at_level("WARNING"):
        reopened = LogStore(tmp_path)
        reopened.partition("t", 0)
        reopened.close()
    assert not caplog.records  # what the checkpoint claims of the .txnindex files still holds
    assert actual_files(directory) == expected


def test_compaction_carries_the_txnindex_into_the_cleaned_segment(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    partition = store.create_topic("c", 1, {"segment.bytes": 1024, "cleanup.policy": "compact"}).partitions[0]
    model = Model(partition, random.Random(5))
    for _ in range(200):
        model.step()
    model.finish()
    partition.roll()
    directory = partition.directory
    before = [e for entries in actual_files(directory).values() for e in entries]
    assert sorted(before) == sorted(model.aborted)
    compact(partition, 1 << 62, force=True)
    after = actual_files(directory)
    # every entry stays, in the segment that now holds its marker's offset, in marker order
    assert sorted(e for entries in after.values() for e in entries) == sorted(before)
    assert after == expected_files(directory, sorted(before, key=lambda e: e[2]))
    store.close()
    reopened = LogStore(tmp_path)
    records = read_all(reopened.partition("c", 0), read_committed=True)
    assert records and {int(r.value[1:]) for r in records} <= set(model.committed)
    reopened.close()


# -- the upgrade of a log written by an older millpond --


def make_old(directory: Path, aborted: list[tuple[int, int, int, int]]) -> None:
    """Turn a partition folder into what an older millpond left: first-offset index entries,
    one text aborted.txnindex, a checkpoint without index_format."""
    from millpond.log import batch as batch_format

    for log_path in directory.glob("*.log"):
        base = int(log_path.name[:-4])
        data = log_path.read_bytes()
        index = bytearray()
        time_index = bytearray()
        max_ts = -1
        for position, header in batch_format.walk(data, 0, len(data)):
            index += struct.pack(">ii", header.base_offset - base, position)
            if header.max_timestamp > max_ts:
                max_ts = header.max_timestamp
                time_index += struct.pack(">qi", max_ts, header.base_offset - base)
        log_path.with_suffix(".index").write_bytes(bytes(index))
        log_path.with_suffix(".timeindex").write_bytes(bytes(time_index))
    for path in directory.glob("*.txnindex"):
        path.unlink()
    text = "".join(f"{pid} {first} {last}\n" for pid, first, last, _ in aborted).encode()
    (directory / ABORTED_INDEX).write_bytes(text)
    checkpoint = json.loads((directory / CHECKPOINT).read_bytes())
    for key in ("index_format", "txn_index_entries", "txn_index_crc32c"):
        checkpoint.pop(key)
    checkpoint["aborted_index_bytes"] = len(text)
    checkpoint["aborted_index_crc32c"] = crc32c.crc32c(text)
    (directory / CHECKPOINT).write_text(json.dumps(checkpoint))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_an_older_log_is_upgraded_in_place_at_open(tmp_path: Path) -> None:
    store, model = written(tmp_path)
    directory = store.partition("t", 0).directory
    store.close()
    new_layout = {k: v for k, v in snapshot(directory).items() if k != CHECKPOINT}
    make_old(directory, model.aborted)
    old = snapshot(directory)
    assert old.keys() != new_layout.keys()

    reader = LogStore(tmp_path, writable=False)  # a reader upgrades in memory only
    assert committed_values(reader.partition("t", 0)) == in_offset_order(model.committed)
    reader.close()
    assert snapshot(directory) == old

    upgraded = LogStore(tmp_path)
    assert committed_values(upgraded.partition("t", 0)) == in_offset_order(model.committed)
    upgraded.close()
    after = snapshot(directory)
    assert ABORTED_INDEX not in after
    assert json.loads(after.pop(CHECKPOINT))["index_format"] == 2
    assert after == new_layout  # indexes and .txnindex files exactly as this millpond writes them


@pytest.mark.parametrize("stop", ["before-checkpoint", "before-removal"])
def test_an_upgrade_cut_short_is_finished_at_the_next_open(
    tmp_path: Path, stop: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, model = written(tmp_path)
    directory = store.partition("t", 0).directory
    store.close()
    new_layout = {k: v for k, v in snapshot(directory).items() if k != CHECKPOINT}
    make_old(directory, model.aborted)

    class Cut(Exception):
        pass

    if stop == "before-checkpoint":
        real_replace = fsio.replace_file

        def replace_file(path: Path, data: bytes, **kwargs: object) -> None:
            if path.name == CHECKPOINT:
                raise Cut(path)
            real_replace(path, data, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(fsio, "replace_file", replace_file)
    else:
        real_unlink = fsio.unlink

        def unlink(path: Path, **kwargs: object) -> None:
            if Path(path).name == ABORTED_INDEX:
                raise Cut(path)
            real_unlink(path, **kwargs)  # type: ignore[arg-type]

        monkeypatch.setattr(fsio, "unlink", unlink)
    store = LogStore(tmp_path)
    with pytest.raises(Cut):
        _ = store.partition("t", 0).log_end_offset  # opened (and upgraded) at first use
    monkeypatch.undo()
    store.close()  # not a clean close: the partition's open failed
    assert not (tmp_path / CLEAN_SHUTDOWN).exists()
    assert (directory / ABORTED_INDEX).exists()
    format_written = "index_format" in json.loads((directory / CHECKPOINT).read_bytes())
    assert format_written == (stop == "before-removal")
    for writable in (False, True):
        reopened = LogStore(tmp_path, writable=writable)
        assert committed_values(reopened.partition("t", 0)) == in_offset_order(model.committed)
        reopened.close()
    after = snapshot(directory)
    assert ABORTED_INDEX not in after
    after.pop(CHECKPOINT)
    assert after == new_layout
