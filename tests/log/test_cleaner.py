"""Compaction: a reference dict model over random workloads, tombstones, LSO, swaps and crashes."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from millpond.log import LogStore, Partition
from millpond.log import cleaner as cleaner_module
from millpond.log import swap as swap_module
from millpond.log.batch import CODECS, Row, iter_records
from millpond.log.cleaner import compact, read_checkpoint
from millpond.log.segment import LogSegment

from .conftest import read_all

DAY = 24 * 60 * 60 * 1000
COMPACT = {"cleanup.policy": "compact", "segment.bytes": 1024, "delete.retention.ms": DAY}


def physical(partition: Partition) -> list[Any]:
    """Every record on disk from the log start, aborted ones included (control batches are never returned)."""
    return read_all(partition)


def latest_per_key(records: list[Any]) -> dict[bytes, Any]:
    latest: dict[bytes, Any] = {}
    for record in records:
        if record.key is not None:
            latest[record.key] = record
    return latest


def segment_files(segment: LogSegment) -> bytes:
    return segment.log_path.read_bytes()


def put(partition: Partition, pairs: list[tuple[bytes | None, bytes | None]], ts: int, **kwargs: Any) -> int:
    return partition.append([Row(k, v, ts, [("src", b"t")]) for k, v in pairs], **kwargs)


# -- offsets, batches, metadata --


def test_offsets_kept_with_gaps_and_reads_by_offset(store: LogStore) -> None:
    partition = store.create_topic("t", 1, COMPACT).partitions[0]
    for i in range(60):
        put(partition, [(b"a", b"%d" % i), (b"k%d" % i, b"only"), (b"b", b"%d" % i)], 1000 + i)
    before = {r.offset: r for r in physical(partition)}
    result = compact(partition, 10_000, force=True)
    assert result and result.records_removed > 0
    after = physical(partition)
    offsets = [r.offset for r in after]
    assert offsets == sorted(set(offsets)) and len(offsets) < len(before)
    for record in after:  # every survivor is the very record that was written at that offset
        original = before[record.offset]
        assert (record.key, record.value, record.timestamp, record.headers) == (
            original.key,
            original.value,
            original.timestamp,
            original.headers,
        )
    cleanable_end = read_checkpoint(partition)[0]
    kept_below = [r for r in after if r.offset < cleanable_end]
    assert [r.key for r in kept_below if r.key in (b"a", b"b")] == []  # superseded by the active segment
    assert {r.key for r in kept_below} == {b"k%d" % i for i in range(60)} & {r.key for r in kept_below}
    # a read at any offset, removed or not, starts at the first survivor at or after it
    survivors = offsets
    for offset in range(partition.log_start_offset, partition.log_end_offset):
        fetched = partition.read(offset, 1)
        first = next(iter(fetched.batches[0].records(offset))).offset
        assert first == min(o for o in survivors if o >= offset)


def test_rebuilt_batches_keep_producer_and_compression(store: LogStore) -> None:
    for codec in ("none", "gzip", "lz4", "zstd"):
        partition = store.create_topic(f"t-{codec}", 1, {**COMPACT, "compression.type": codec}).partitions[0]
        partition.append(
            [Row(b"a", b"1", 5, [("h", b"1")]), Row(b"b", b"1", 7, []), Row(b"a", b"2", 6, [("h", b"2"), ("i", None)])],
            producer_id=42,
            producer_epoch=3,
            transactional=True,
        )
        partition.append_control(42, 3, commit=True)
        partition.roll()
        partition.append([Row(b"z", b"z", 9, [])])
        compact(partition, 100, force=True)
        segment = partition.segments[0]
        headers = [h for _, h in segment.walk(0)]
        data = headers[0]
        assert data.base_offset == 1 and data.last_offset_delta == 1  # offset 0 ("a" -> "1") removed
        assert (data.producer_id, data.producer_epoch, data.is_transactional) == (42, 3, True)
        assert data.attributes & 0x07 == CODECS[codec]
        assert headers[1].is_control  # the COMMIT marker stays
        records = list(iter_records(segment.read_bytes(0, data.size)))
        assert [(r.offset, r.key, r.value, r.timestamp, r.headers) for r in records] == [
            (1, b"b", b"1", 7, []),
            (2, b"a", b"2", 6, [("h", b"2"), ("i", None)]),
        ]
        assert data.max_timestamp == 7 and data.first_timestamp == 7
        assert [r.value for r in read_all(partition, read_committed=True)] == [b"1", b"2", b"z"]


def test_log_append_time_batches_keep_their_timestamp(store: LogStore) -> None:
    partition = store.create_topic("t", 1, {**COMPACT, "message.timestamp.type": "LogAppendTime"}).partitions[0]
    partition.append([Row(b"a", b"1", 1, []), Row(b"b", b"1", 2, [])])
    stamp = read_all(partition)[0].timestamp
    partition.append([Row(b"a", b"2", 3, [])])
    partition.roll()
    partition.append([Row(b"z", b"z", 9, [])])
    compact(partition, stamp + 1, force=True)
    records = read_all(partition)
    assert [(r.offset, r.key, r.value) for r in records[:2]] == [(1, b"b", b"1"), (2, b"a", b"2")]
    assert records[0].timestamp == stamp
    header = next(h for _, h in partition.segments[0].walk(0))
    assert header.attributes & 0x08 and header.max_timestamp == stamp


def test_null_keys_are_kept(store: LogStore) -> None:
    partition = store.create_topic("t", 1, COMPACT).partitions[0]
    for i in range(40):
        put(partition, [(None, b"n%d" % i), (b"k", b"%d" % i), (None, None)], i)
    partition.roll()
    compact(partition, 1000, force=True)
    records = physical(partition)
    assert [r.value for r in records if r.key is None] == [v for i in range(40) for v in (b"n%d" % i, None)]
    assert [r.value for r in records if r.key is not None] == [b"39"]


# -- when and what a pass cleans --


def test_tombstone_kept_for_delete_retention_ms_after_cleaning(store: LogStore) -> None:
    partition = store.create_topic("t", 1, {**COMPACT, "delete.retention.ms": 5000}).partitions[0]
    put(partition, [(b"gone", b"v1"), (b"stay", b"s")], 1)
    put(partition, [(b"gone", None)], 2)
    partition.roll()
    put(partition, [(b"other", b"o")], 3)

    def keys() -> list[tuple[bytes, bytes | None]]:
        return [(r.key, r.value) for r in physical(partition)]

    t0 = 10_000
    result = compact(partition, t0, force=True)
    assert result.tombstones_removed == 0 and result.records_removed == 1
    assert keys() == [(b"stay", b"s"), (b"gone", None), (b"other", b"o")]
    assert read_checkpoint(partition) == (3, [(3, t0)])
    assert not compact(partition, t0 + 4999)  # not due: nothing dirty, no tombstone old enough
    assert compact(partition, t0 + 4999, force=True).tombstones_removed == 0
    assert keys() == [(b"stay", b"s"), (b"gone", None), (b"other", b"o")]
    result = compact(partition, t0 + 5000)  # due: the tombstone's time is up
    assert result and result.tombstones_removed == 1
    assert keys() == [(b"stay", b"s"), (b"other", b"o")]
    assert read_checkpoint(partition) == (3, [])


def test_dirty_ratio_and_checkpoint(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    partition = store.create_topic("t", 1, {**COMPACT, "min.cleanable.dirty.ratio": 0.5}).partitions[0]
    for i in range(100):
        put(partition, [(b"k%d" % (i % 10), b"x" * 50)], i)
    partition.roll()
    put(partition, [(b"z", b"z")], 100)
    assert compact(partition, 1000)  # all dirty: ratio 1.0
    first_dirty = read_checkpoint(partition)[0]
    assert first_dirty == partition.segments[-1].base_offset
    assert (partition.directory / cleaner_module.CLEANER_CHECKPOINT).exists()
    clean_bytes = sum(s.size for s in partition.segments[:-1])
    # a little dirty data: below the ratio, nothing happens
    put(partition, [(b"k1", b"y")], 101)
    partition.roll()
    put(partition, [(b"z", b"z")], 102)
    skipped = compact(partition, 1000)
    assert not skipped and 0 < skipped.dirty_ratio < 0.5
    assert read_checkpoint(partition)[0] == first_dirty
    store.close()
    store = LogStore(tmp_path)  # the checkpoint survives a reopen
    partition = store.partition("t", 0)
    assert read_checkpoint(partition)[0] == first_dirty
    assert sum(s.size for s in partition.segments[:-2]) == clean_bytes
    assert compact(partition, 1000, force=True)
    assert [r.value for r in physical(partition) if r.key == b"k1"] == [b"y"]
    store.close()


def test_min_compaction_lag(store: LogStore) -> None:
    partition = store.create_topic("t", 1, {**COMPACT, "min.compaction.lag.ms": 1000}).partitions[0]
    put(partition, [(b"a", b"1"), (b"a", b"2")], 100)
    partition.roll()
    put(partition, [(b"a", b"3"), (b"a", b"4")], 5000)
    partition.roll()
    put(partition, [(b"a", b"5")], 5001)
    compact(partition, 5500, force=True)  # the second segment is younger than the lag
    assert [r.value for r in physical(partition)] == [b"3", b"4", b"5"]
    compact(partition, 6000, force=True)
    assert [r.value for r in physical(partition)] == [b"5"]


def test_active_segment_untouched(store: LogStore) -> None:
    partition = store.create_topic("t", 1, {**COMPACT, "segment.bytes": 1 << 20}).partitions[0]
    for i in range(30):
        put(partition, [(b"a", b"%d" % i), (None, b"n")], i)
    active = partition.active_segment
    before = segment_files(active)
    compact(partition, 1000, force=True)
    assert partition.active_segment is active and segment_files(active) == before
    assert len(partition.segments) == 1 and len(physical(partition)) == 60
    partition.roll()
    compact(partition, 1000, force=True)
    assert [r.value for r in physical(partition)] == [b"n"] * 29 + [b"29", b"n"]


def test_nothing_past_the_last_stable_offset(store: LogStore) -> None:
    partition = store.create_topic("t", 1, COMPACT).partitions[0]
    put(partition, [(b"k", b"v1"), (b"x", b"x1")], 1)
    partition.roll()
    put(partition, [(b"y", b"y0")], 2)  # the transaction starts in the middle of a segment
    put(partition, [(b"k", b"v2")], 2, producer_id=9, producer_epoch=0, transactional=True)  # stays open
    put(partition, [(b"x", b"x2"), (b"k", b"v3")], 3)
    partition.roll()
    put(partition, [(b"x", b"x3")], 4)
    partition.roll()
    put(partition, [(b"y", b"y")], 5)
    assert partition.last_stable_offset == 3
    frozen = {s.base_offset: segment_files(s) for s in partition.segments[1:]}
    compact(partition, 1000, force=True)
    # k=v1 and x=x1 stay: what supersedes them is past the LSO (the open transaction may still abort)
    assert [(r.offset, r.value) for r in physical(partition)][:3] == [(0, b"v1"), (1, b"x1"), (2, b"y0")]
    assert {s.base_offset: segment_files(s) for s in partition.segments[1:]} == frozen
    partition.append_control(9, 0, commit=False)
    put(partition, [(b"y", b"y2")], 6)
    compact(partition, 1000, force=True)
    records = [(r.offset, r.key, r.value) for r in physical(partition)]
    # the aborted k=v2 is gone, v3 (stable now) superseded v1, x3 superseded x1 and x2; the active segment stays
    assert records == [(5, b"k", b"v3"), (6, b"x", b"x3"), (7, b"y", b"y"), (9, b"y", b"y2")]
    assert partition.offset_for_time(0) == 5


def test_aborted_transaction_does_not_supersede(store: LogStore) -> None:
    partition = store.create_topic("t", 1, COMPACT).partitions[0]
    put(partition, [(b"k", b"good")], 1)
    put(partition, [(b"k", b"bad")], 2, producer_id=3, producer_epoch=0, transactional=True)
    partition.append_control(3, 0, commit=False)
    partition.roll()
    put(partition, [(b"other", b"o")], 3)
    compact(partition, 1000, force=True)
    assert [(r.offset, r.value) for r in physical(partition)] == [(0, b"good"), (3, b"o")]
    markers = [h for _, h in partition.segments[0].walk(0) if h.is_control]
    assert len(markers) == 1  # control batches are kept


def test_small_segments_grouped_up_to_segment_bytes(store: LogStore) -> None:
    partition = store.create_topic("t", 1, {**COMPACT, "segment.bytes": 8192}).partitions[0]
    for i in range(40):
        put(partition, [(b"k%d" % i, b"v" * 20)], i)
        partition.roll()
    put(partition, [(b"z", b"z")], 99)
    assert len(partition.segments) == 41
    result = compact(partition, 1000, force=True)
    assert result.segments_before == 40 and result.segments_after < 10
    assert all(s.size <= 8192 for s in partition.segments)
    assert [r.key for r in physical(partition)] == [b"k%d" % i for i in range(40)] + [b"z"]
    sealed = partition.segments[:-1]
    assert [s.base_offset for s in sealed] == sorted(s.base_offset for s in sealed)
    assert sorted(p.name for p in partition.directory.glob("*.log")) == sorted(
        s.log_path.name for s in partition.segments
    )


# -- indexes of a cleaned segment --


def test_cleaned_indexes_equal_rebuilt_ones_and_time_reads_work(store: LogStore, tmp_path: Path) -> None:
    partition = store.create_topic("t", 1, {**COMPACT, "segment.bytes": 1 << 20}).partitions[0]
    for i in range(2000):  # many batches so the sparse indexes have many entries
        put(partition, [(b"k%d" % (i % 300), b"v%05d" % i + b"." * 60), (b"u%d" % i, b"once")], 10_000 + i * 10)
    partition.roll()
    put(partition, [(b"z", b"z")], 99_999)
    compact(partition, 100_000, force=True)
    cleaned = partition.segments[0]
    assert len(cleaned.index) > 10 and len(cleaned.time_index) > 10
    # Recovery rebuilds both indexes from the bytes alone; the cleaner's must be the same.
    copy = tmp_path / "copy"
    copy.mkdir()
    for suffix in (".log", ".index", ".timeindex"):
        shutil.copy(cleaned.log_path.with_suffix(suffix), copy / cleaned.log_path.with_suffix(suffix).name)
    written = {suffix: (copy / f"{cleaned.log_path.stem}{suffix}").read_bytes() for suffix in (".index", ".timeindex")}
    rebuilt = LogSegment(copy, cleaned.base_offset, writable=True)
    rebuilt.recover()
    for suffix, data in written.items():
        assert (copy / f"{cleaned.log_path.stem}{suffix}").read_bytes() == data, suffix
    records = physical(partition)
    for target in range(9_990, 30_100, 37):
        expected = min((r.offset for r in records if r.timestamp >= target), default=None)
        assert partition.offset_for_time(target) == expected, target
    for record in records[::53]:
        assert next(iter(partition.read(record.offset, 1).batches[0].records(record.offset))).offset == record.offset


# -- readers and crashes during a swap --


def test_reader_holding_old_segments_keeps_reading(store: LogStore) -> None:
    partition = store.create_topic("t", 1, {**COMPACT, "segment.bytes": 4096}).partitions[0]
    for i in range(200):
        put(partition, [(b"k%d" % (i % 5), b"%05d" % i + b"." * 40)], i)
    partition.roll()
    put(partition, [(b"z", b"z")], 999)
    everything = [(r.offset, r.value) for r in physical(partition)]
    held = list(partition.segments)
    walker = held[0].walk(0)
    next(walker)  # a read in progress on the first segment
    started = partition.read(0, 1)
    assert compact(partition, 10_000, force=True).records_removed > 150
    assert held[0] not in partition.segments and held[0].deleted
    seen: list[tuple[int, bytes]] = []
    for segment in held:
        for position, header in segment.walk(0):  # index lookups too
            assert segment.position_of(header.base_offset) == position
            seen += [(r.offset, r.value) for r in iter_records(segment.read_bytes(position, header.size))]
    assert seen == everything
    assert len(list(walker)) > 0
    rest = read_all(partition, started.next_offset)  # a reader continuing at its next offset
    assert [r.key for r in rest][-6:] == [b"k0", b"k1", b"k2", b"k3", b"k4", b"z"][-6:]


def _workload(partition: Partition) -> None:
    for i in range(120):
        put(partition, [(b"k%d" % (i % 7), b"%d" % i), (b"t%d" % (i % 3), None if i % 4 == 0 else b"v")], i)
        if i % 30 == 29:
            partition.roll()
    put(partition, [(b"z", b"z")], 500)


class _Crash(Exception):
    pass


@pytest.mark.parametrize("crash_after", range(8))
def test_crash_mid_swap_recovers_a_consistent_log(tmp_path: Path, crash_after: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kill the swap after N renames, reopen: the log is all-old or all-cleaned, never a mix."""
    reference_dir = tmp_path / "reference"
    store = LogStore(reference_dir)
    partition = store.create_topic("t", 1, {**COMPACT, "segment.bytes": 1 << 20}).partitions[0]
    _workload(partition)
    original = [(r.offset, r.key, r.value) for r in physical(partition)]
    compact(partition, 1000, force=True)
    cleaned = [(r.offset, r.key, r.value) for r in physical(partition)]
    store.close()
    assert len(cleaned) < len(original)

    store = LogStore(tmp_path / "crashed")
    partition = store.create_topic("t", 1, {**COMPACT, "segment.bytes": 1 << 20}).partitions[0]
    _workload(partition)
    partition.flush()
    renames = 0
    real_rename = swap_module._rename

    def crashing_rename(source: Path, target: Path) -> None:
        nonlocal renames
        if renames == crash_after:
            raise _Crash
        renames += 1
        real_rename(source, target)

    monkeypatch.setattr(swap_module, "_rename", crashing_rename)
    try:
        compact(partition, 1000, force=True)
        crashed = False
    except _Crash:
        crashed = True
    monkeypatch.setattr(swap_module, "_rename", real_rename)
    directory = partition.directory
    store._lock_fd, lock_fd = -1, store._lock_fd  # abandon the store as a killed process would
    import os

    os.close(lock_fd)
    if crashed:
        leftovers = sorted(p.name for p in directory.iterdir() if p.suffix in (".cleaned", ".swap"))
        assert leftovers  # the crash really left a swap half done
    reopened = LogStore(tmp_path / "crashed")
    partition = reopened.partition("t", 0)
    state = [(r.offset, r.key, r.value) for r in physical(partition)]
    committed = renames >= 4  # three .cleaned -> .swap renames, then the log's: the commit point
    assert state == (cleaned if committed else original)
    names = sorted(p.name for p in directory.iterdir())
    assert not [n for n in names if n.endswith((".cleaned", ".swap"))]
    assert sorted(n for n in names if n.endswith(".log")) == sorted(s.log_path.name for s in partition.segments)
    for segment in partition.segments:  # every index on disk matches its segment's bytes
        for position, header in segment.walk(0):
            assert segment.position_of(header.base_offset) == position
    assert partition.offset_for_time(60) == min(o for o, *_ in state if o >= 120)
    # and the log keeps working: another pass, more appends
    put(partition, [(b"k1", b"after")], 600)
    partition.roll()
    compact(partition, 2000, force=True)
    assert latest_per_key(physical(partition))[b"k1"].value == b"after"
    reopened.close()


def test_leftover_cleaned_files_are_dropped_on_open(tmp_path: Path) -> None:
    store = LogStore(tmp_path)
    partition = store.create_topic("t", 1, COMPACT).partitions[0]
    _workload(partition)
    before = [(r.offset, r.value) for r in physical(partition)]
    directory = partition.directory
    store.close()
    for suffix in (".log", ".index", ".timeindex"):
        (directory / f"00000000000000000000{suffix}.cleaned").write_bytes(b"garbage")
    (directory / "00000000000000000000.index.swap").write_bytes(b"garbage")  # an uncommitted swap
    store = LogStore(tmp_path)
    partition = store.partition("t", 0)
    assert [(r.offset, r.value) for r in physical(partition)] == before
    assert not list(directory.glob("*.cleaned")) and not list(directory.glob("*.swap"))
    store.close()


# -- the reference model --


@dataclass
class Model:
    """What the log must say: every record ever written, which were aborted, when ranges were cleaned."""

    written: dict[int, tuple[bytes | None, bytes | None, int]] = field(default_factory=dict)
    aborted: set[int] = field(default_factory=set)
    open_txn: list[int] = field(default_factory=list)
    cleaned_at: dict[int, int] = field(default_factory=dict)  # offset -> time of the pass that cleaned it

    def stable(self) -> dict[int, tuple[bytes | None, bytes | None, int]]:
        hidden = self.aborted | set(self.open_txn)
        return {o: r for o, r in self.written.items() if o not in hidden}

    def latest(self) -> dict[bytes, int]:
        latest: dict[bytes, int] = {}
        for offset, (key, _, _) in sorted(self.stable().items()):
            if key is not None:
                latest[key] = offset
        return latest


KEYS = [b"a", b"b", b"c", b"d", b"e", b"f", None]
pairs = st.lists(
    st.tuples(st.sampled_from(KEYS), st.one_of(st.none(), st.binary(min_size=0, max_size=40))),
    min_size=1,
    max_size=12,
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), pairs),
        st.tuples(st.just("append"), pairs),
        st.tuples(st.just("append"), pairs),
        st.tuples(st.just("txn"), pairs),
        st.tuples(st.just("end"), st.booleans()),
        st.tuples(st.just("roll"), st.none()),
        st.tuples(st.just("roll"), st.none()),
        st.tuples(st.just("compact"), st.integers(0, 4)),
        st.tuples(st.just("force"), st.integers(0, 4)),
        st.tuples(st.just("reopen"), st.none()),
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=operations,
    segment_bytes=st.sampled_from([1024, 1500, 3000, 20_000]),
    ratio=st.sampled_from([0.0, 0.3, 0.7]),
    map_keys=st.sampled_from([1, 3, 1_000_000]),
)
def test_compaction_matches_a_dict_model(
    ops: list[tuple[str, Any]], segment_bytes: int, ratio: float, map_keys: int
) -> None:
    retention = 1000
    config = {
        "cleanup.policy": "compact",
        "segment.bytes": segment_bytes,
        "delete.retention.ms": retention,
        "min.cleanable.dirty.ratio": ratio,
    }
    with tempfile.TemporaryDirectory() as directory:
        store = LogStore(directory)
        partition = store.create_topic("t", 1, config).partitions[0]
        model = Model()
        now = 1
        try:
            # Always end with the open transaction committed and two forced passes a retention apart,
            # so that every example compacts something and lets tombstones expire.
            for op, arg in [*ops, ("end", True), ("roll", None), ("force", 3), ("force", 3)]:
                if op in ("append", "txn"):
                    txn = {"producer_id": 5, "producer_epoch": 0, "transactional": True} if op == "txn" else {}
                    base = put(partition, arg, now, **txn)
                    for i, (key, value) in enumerate(arg):
                        model.written[base + i] = (key, value, now)
                        if op == "txn":
                            model.open_txn.append(base + i)
                elif op == "end" and model.open_txn:
                    partition.append_control(5, 0, commit=arg)
                    if not arg:
                        model.aborted.update(model.open_txn)
                    model.open_txn = []
                elif op == "roll":
                    partition.roll()
                elif op == "reopen":
                    store.close()
                    store = LogStore(directory)
                    partition = store.partition("t", 0)
                elif op in ("compact", "force"):
                    now += arg * 400
                    first_dirty_before = read_checkpoint(partition)[0]
                    lso = partition.last_stable_offset
                    result = compact(partition, now, force=op == "force", max_map_keys=map_keys)
                    event(f"pass removed records: {result.records_removed > 0}")
                    event(f"pass removed tombstones: {result.tombstones_removed > 0}")
                    event(f"pass with an open transaction: {bool(model.open_txn)}")
                    first_dirty = read_checkpoint(partition)[0]
                    if result:
                        for offset in model.written:
                            if first_dirty_before <= offset < first_dirty:
                                model.cleaned_at.setdefault(offset, now)
                    check(partition, model, now, retention, lso, first_dirty if result else None, map_keys > 100)
                now += 1
            check(partition, model, now, retention, partition.last_stable_offset, None, False)
        finally:
            store.close()


def check(
    partition: Partition,
    model: Model,
    now: int,
    retention: int,
    lso: int,
    cleaned_up_to: int | None,
    whole_map: bool,
) -> None:
    on_disk = physical(partition)
    offsets = [r.offset for r in on_disk]
    assert offsets == sorted(set(offsets)), "offsets must stay increasing"
    for record in on_disk:  # every record is the one written at its offset, untouched
        assert (record.key, record.value, record.timestamp) == model.written[record.offset]
        assert record.headers == [("src", b"t")]
    present = set(offsets)
    assert {o for o in model.written if o >= lso} <= present, "nothing at or past the LSO is touched"
    assert {o for o, (k, _, _) in model.stable().items() if k is None} <= present, "null keys are kept"
    visible = [r for r in on_disk if r.offset not in model.aborted and r.offset not in model.open_txn]
    latest = model.latest()
    seen = latest_per_key(visible)
    for key, offset in latest.items():
        value = model.written[offset][1]
        if key in seen:
            assert seen[key].offset == offset, f"latest record of {key!r}"
        else:  # only a tombstone may disappear, and only delete.retention.ms after it was cleaned
            assert value is None, f"{key!r} lost its latest value"
            assert model.cleaned_at[offset] + retention <= now
    assert set(seen) <= set(latest)
    if cleaned_up_to is not None:  # right after a pass: the cleaned range holds only latest records
        below_lso: dict[bytes, int] = {}  # what the pass could know: stable records below the LSO
        for offset, (key, _, _) in sorted(model.stable().items()):
            if key is not None and offset < lso:
                below_lso[key] = offset
        clean_keys: set[bytes] = set()
        for record in on_disk:
            if record.offset >= cleaned_up_to:
                break
            assert record.offset not in model.aborted, "aborted records are dropped"
            if record.key is not None:
                assert record.key not in clean_keys, f"two records of {record.key!r} in the clean part"
                clean_keys.add(record.key)
                if whole_map:  # the map reached the LSO: nothing stable supersedes a clean record
                    assert below_lso[record.key] == record.offset, f"superseded record at {record.offset} survived"
                if record.value is None:
                    assert model.cleaned_at[record.offset] + retention > now, "expired tombstone survived"
    active = partition.active_segment
    assert {o for o in model.written if o >= active.base_offset} <= present, "the active segment is untouched"
    for offset in range(partition.log_start_offset, partition.log_end_offset, 3):  # reads by offset, gaps too
        later = [o for o in offsets if o >= offset]
        fetched = partition.read(offset, 1).batches
        if later:
            assert next(iter(fetched[0].records(offset))).offset == later[0]
    stamps = sorted({r.timestamp for r in visible})
    for target in stamps[:: max(1, len(stamps) // 5)]:
        expected = min(r.offset for r in on_disk if r.timestamp >= target)
        assert partition.offset_for_time(target) == expected


def test_delete_only_topic_is_not_compacted_and_both_policies_work(store: LogStore) -> None:
    plain = store.create_topic("plain", 1, {"segment.bytes": 1024}).partitions[0]
    put(plain, [(b"a", b"1"), (b"a", b"2")], 1)
    plain.roll()
    assert not compact(plain, 1000, force=True)
    assert len(physical(plain)) == 2

    from millpond.log.retention import enforce_retention

    both = store.create_topic("both", 1, {**COMPACT, "cleanup.policy": "compact,delete", "retention.ms": 500}).partitions[0]
    put(both, [(b"a", b"1"), (b"b", b"1")], 100)
    both.roll()
    put(both, [(b"a", b"2")], 900)
    both.roll()
    put(both, [(b"c", b"1")], 1000)
    compact(both, 1000, force=True)
    assert [(r.key, r.value) for r in physical(both)] == [(b"b", b"1"), (b"a", b"2"), (b"c", b"1")]
    assert len(both.segments) == 2  # the two sealed segments were merged into one; its newest record is at 900
    assert enforce_retention(both, 1399).segments_deleted == 0
    result = enforce_retention(both, 1401)
    assert result.segments_deleted == 1 and result.new_log_start_offset == 3
    assert [(r.key, r.value) for r in physical(both)] == [(b"c", b"1")]
    assert not compact(both, 1401, force=True)  # nothing sealed is left to clean


def test_a_small_offset_map_cleans_in_several_passes(store: LogStore) -> None:
    config = {**COMPACT, "segment.bytes": 1 << 20}
    small = store.create_topic("small", 1, config).partitions[0]
    whole = store.create_topic("whole", 1, config).partitions[0]
    for partition in (small, whole):
        for i in range(8):  # eight segments, each with its own 5 keys plus the shared "s"
            put(partition, [(b"k%d-%d" % (i, j), b"%d" % i) for j in range(5)] + [(b"s", b"%d" % i)], i)
            put(partition, [(b"k%d-0" % i, None)], i)
            partition.roll()
        put(partition, [(b"z", b"z")], 99)
    compact(whole, 1000, force=True)
    first = compact(small, 1000, force=True, max_map_keys=10)
    assert first.segments_before < 8  # the map filled up: only a prefix was cleaned
    assert read_checkpoint(small)[0] < read_checkpoint(whole)[0]
    for _ in range(8):
        compact(small, 1000, force=True, max_map_keys=10)
    assert read_checkpoint(small)[0] == read_checkpoint(whole)[0]
    assert [(r.offset, r.key, r.value) for r in physical(small)] == [(r.offset, r.key, r.value) for r in physical(whole)]
