"""Log compaction: keep the latest record per key, with Kafka's log cleaner rules.

What a pass cleans (``compact``)::

    log start                    first dirty          cleanable end       LSO        LEO
    |--------- clean ------------|------- dirty -------|------ head --------|--------|
    |<-------- cleanable: sealed segments, below the LSO, old enough ------>|
                                 |<----------- mapped into the offset map ----------->|(to LSO)

- Only whole sealed segments are cleaned, never the active one, never a
  segment reaching past the last stable offset, and none from the first
  segment younger than ``min.compaction.lag.ms`` (by its largest record
  timestamp) on.
- The offset map (key -> latest offset) covers the dirty part of the
  cleanable range and the head up to the last stable offset: a record may be
  removed because a later *stable* record supersedes it, wherever that record
  is. Records of aborted transactions and control batches never enter the map.
  The map is bounded (``max_map_keys``); when it fills up, the pass ends at
  that segment boundary and the next pass goes on from there.
- A pass runs when dirty bytes / cleanable bytes >= ``min.cleanable.dirty.ratio``,
  when tombstones are due for removal, or when forced. The first dirty offset
  (Kafka's cleaner-offset-checkpoint) lives in ``cleaner-offset-checkpoint``
  in the partition folder.
- Records keep their offsets: a batch whose records all survive is copied
  byte for byte; a batch that loses some is rebuilt by the C codec with the
  first kept offset as its base and offset deltas that keep the gaps, with the
  original timestamps (and timestamp type), headers, producer id/epoch,
  transactional flag and compression. Batches of aborted transactions are
  dropped whole.

Rules millpond chose where Kafka leaves room:

- Null keys: kept as they are (Kafka refuses them on compacted topics; here a
  record without a key supersedes nothing and is never superseded).
- Tombstones (null value): kept while the pass that first cleans them runs and
  for ``delete.retention.ms`` after it (the checkpoint remembers, per cleaned
  range, when it was cleaned); the first pass after that removes them. So a
  consumer that reads from the start within ``delete.retention.ms`` of the
  cleaning still sees every delete.
- Control batches (transaction markers) follow Kafka's rule: a marker stays
  while any data batch of its transaction does (replaying producer state after
  a crash needs it), and once its transaction's data is gone it is removed like
  a tombstone: kept by the pass that first cleans it and for
  ``delete.retention.ms`` after, removed by the first pass after that. So a
  compacted topic written in small transactions (``__source_offsets``: a record
  and a marker per commit) shrinks to its live keys instead of 78 bytes a
  transaction forever.

Cleaned segments are swapped in by ``Partition.replace_segments``, crash-safe
(the protocol is in swap.py).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiokafka.record._crecords import DefaultRecordBatchBuilder  # batch.py checked it is the C one

from ..progress import Progress
from . import batch as batch_format
from . import fsio
from .batch import BatchHeader
from .index import OffsetIndex, TimeIndex
from .segment import INDEX_INTERVAL_BYTES, LogSegment
from .swap import cleaned_path

if TYPE_CHECKING:
    from .partition import Partition

CLEANER_CHECKPOINT = "cleaner-offset-checkpoint"
#: about 150 MB of Python dict at 16-byte keys
MAX_MAP_KEYS = 1_000_000
#: a pass that takes longer than this logs its progress (bytes of the cleanable range), then every PROGRESS_EVERY_S
PROGRESS_FIRST_S = 2.0
PROGRESS_EVERY_S = 10.0

log = logging.getLogger(__name__)
_MAX_RELATIVE_OFFSET = (1 << 31) - 1
_LEADER_EPOCH_POSITION = 12


@dataclass(slots=True)
class CleanResult:
    """What one ``compact`` call did; false when no pass ran."""

    cleaned: bool = False
    #: dirty bytes / cleanable bytes when the call started
    dirty_ratio: float = 0.0
    #: the first dirty offset after the call (the cleaner checkpoint)
    first_dirty_offset: int = 0
    segments_before: int = 0
    segments_after: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    records_removed: int = 0
    tombstones_removed: int = 0
    #: transaction markers removed (their transaction's data was gone for delete.retention.ms)
    markers_removed: int = 0

    def __bool__(self) -> bool:
        return self.cleaned


@dataclass(slots=True)
class _Checkpoint:
    """The cleaner's durable state for one partition.

    ``tombstone_ranges`` holds (end_offset, cleaned_at_ms) for each pass that
    kept tombstones in the range it moved from dirty to clean; ranges are in
    offset order and cleaned in that order, so the expired ones are a prefix.
    """

    first_dirty_offset: int = 0
    tombstone_ranges: list[tuple[int, int]] = field(default_factory=list)

    @classmethod
    def read(cls, directory: Path) -> _Checkpoint:
        try:
            data = json.loads((directory / CLEANER_CHECKPOINT).read_text())
        except FileNotFoundError:
            return cls()
        except ValueError:  # unreadable: everything counts as dirty again, tombstones get a fresh time
            return cls()
        try:
            ranges = [(int(end), int(at)) for end, at in data.get("tombstone_ranges", [])]
            return cls(int(data.get("first_dirty_offset", 0)), ranges)
        except (ValueError, TypeError, AttributeError):  # damaged the same way, in its shape
            return cls()

    def write(self, directory: Path) -> None:
        body = {"first_dirty_offset": self.first_dirty_offset, "tombstone_ranges": self.tombstone_ranges}
        fsio.replace_file(directory / CLEANER_CHECKPOINT, json.dumps(body).encode())


def read_checkpoint(partition: Partition) -> tuple[int, list[tuple[int, int]]]:
    """(first dirty offset, tombstone ranges) as last checkpointed; for tools and tests."""
    checkpoint = _Checkpoint.read(partition.directory)
    return checkpoint.first_dirty_offset, list(checkpoint.tombstone_ranges)


# -- the pass --


def compact(
    partition: Partition, now_ms: int, *, force: bool = False, max_map_keys: int = MAX_MAP_KEYS
) -> CleanResult:
    """Run one cleaning pass over ``partition`` if it is due (or ``force``).

    The offset map holds at most about ``max_map_keys`` keys (it stops at the
    first segment boundary past that, as Kafka's dedupe buffer does): a pass
    then cleans only up to where the map reached, and the next pass goes on
    from there.
    """
    if max_map_keys < 1:
        raise ValueError(f"max_map_keys must be at least 1, not {max_map_keys}")
    settings = partition.settings
    if not settings.compact or not partition.writable:
        return CleanResult(first_dirty_offset=_Checkpoint.read(partition.directory).first_dirty_offset)
    segments = list(partition.segments)
    lso = partition.last_stable_offset
    cleanable = _cleanable_segments(segments, lso, now_ms, settings.min_compaction_lag_ms)
    checkpoint = _Checkpoint.read(partition.directory)
    log_start = partition.log_start_offset
    first_dirty = checkpoint.first_dirty_offset
    if first_dirty > partition.log_end_offset:  # the log was truncated below it: start over
        first_dirty, checkpoint.tombstone_ranges = log_start, []
    first_dirty = max(first_dirty, log_start)
    if not cleanable:
        return CleanResult(first_dirty_offset=first_dirty)
    cleanable_end = cleanable[-1].next_offset
    total = sum(s.size for s in cleanable)
    dirty = sum(s.size for s in cleanable if s.next_offset > first_dirty)
    ratio = dirty / total if total else 0.0
    horizon = _tombstone_horizon(checkpoint.tombstone_ranges, now_ms, settings.delete_retention_ms)
    tombstones_due = horizon > log_start
    due = (dirty > 0 and ratio >= settings.min_cleanable_dirty_ratio) or tombstones_due
    if not (force or due):
        return CleanResult(dirty_ratio=ratio, first_dirty_offset=first_dirty)
    if partition.recovery_point < lso:
        # A record may only supersede another once it is durable: else a power cut could take the
        # new record and leave the old one cleaned away.
        partition.flush()

    offset_map, mapped_end = _build_offset_map(
        partition, segments, min(first_dirty, cleanable_end), lso, max_map_keys
    )
    if mapped_end < cleanable_end:  # the map is full: records past it were not deduplicated
        cleanable = [s for s in cleanable if s.next_offset <= mapped_end]
        if not cleanable:
            return CleanResult(dirty_ratio=ratio, first_dirty_offset=first_dirty)
        cleanable_end = cleanable[-1].next_offset
        total = sum(s.size for s in cleanable)
    cleaner = _BatchFilter(offset_map, partition, horizon, first_dirty)
    result = CleanResult(cleaned=True, dirty_ratio=ratio, segments_before=len(cleanable), bytes_before=total)
    progress = Progress(f"compaction of {partition.name}", unit="bytes", total=total, logger=log,
                        first=PROGRESS_FIRST_S, interval=PROGRESS_EVERY_S)
    for group in _group_segments(cleanable, settings.segment_bytes):
        written = _clean_group(group, cleaner, partition.name)
        progress.add(sum(seg.size for seg in group))
        if written is None:  # nothing to drop and nothing to merge: leave the segment as it is
            result.segments_after += 1
            result.bytes_after += group[0].size
            continue
        new = partition.replace_segments(group)
        result.segments_after += 1
        result.bytes_after += new.size
    progress.close()
    result.records_removed = cleaner.records_removed
    result.tombstones_removed = cleaner.tombstones_removed
    result.markers_removed = cleaner.markers_removed

    ranges = [r for r in checkpoint.tombstone_ranges if r[0] > horizon or r[0] > cleanable_end]
    if cleaner.kept_dirty_tombstones and cleanable_end > first_dirty:
        ranges.append((cleanable_end, now_ms))
    checkpoint.first_dirty_offset = max(first_dirty, cleanable_end)
    checkpoint.tombstone_ranges = ranges
    checkpoint.write(partition.directory)
    result.first_dirty_offset = checkpoint.first_dirty_offset
    return result


def _cleanable_segments(
    segments: Sequence[LogSegment], lso: int, now_ms: int, min_lag_ms: int
) -> list[LogSegment]:
    """The sealed prefix of the log below the LSO and older than the compaction lag."""
    cleanable: list[LogSegment] = []
    for segment in segments[:-1]:  # never the active segment
        if segment.next_offset > lso:
            break
        if min_lag_ms > 0 and segment.max_timestamp > now_ms - min_lag_ms:
            break
        cleanable.append(segment)
    return cleanable


def _tombstone_horizon(ranges: Sequence[tuple[int, int]], now_ms: int, delete_retention_ms: int) -> int:
    """Tombstones below the returned offset have been clean for delete.retention.ms."""
    horizon = -1
    for end, cleaned_at in ranges:
        if cleaned_at + delete_retention_ms <= now_ms:
            horizon = max(horizon, end)
    return horizon


def _group_segments(segments: Sequence[LogSegment], max_bytes: int) -> Iterator[list[LogSegment]]:
    """Consecutive segments whose sizes add up to at most segment.bytes (relative offsets fit 32 bits)."""
    group: list[LogSegment] = []
    size = 0
    for segment in segments:
        if group and (
            size + segment.size > max_bytes
            or segment.next_offset - 1 - group[0].base_offset > _MAX_RELATIVE_OFFSET
        ):
            yield group
            group, size = [], 0
        group.append(segment)
        size += segment.size
    if group:
        yield group


def _checked_batches(
    segment: LogSegment, start: int, name: str
) -> Iterator[tuple[int, BatchHeader, bytes]]:
    """(position, header, bytes) of each batch from ``start``, CRC-checked: corruption is never copied."""
    for position, header in segment.walk(start):
        data = segment.read_bytes(position, header.size)
        if len(data) < header.size or not batch_format.crc_ok(data, 0, header):
            raise segment.corrupt(position, "CRC-32C mismatch or short batch (found by the log cleaner)", name)
        yield position, header, data


def _build_offset_map(
    partition: Partition, segments: Sequence[LogSegment], from_offset: int, lso: int, max_keys: int
) -> tuple[dict[bytes, int], int]:
    """key -> latest stable offset over [from_offset, lso), and where the map stops.

    The map stops at the end of the first segment that brings it to
    ``max_keys`` keys (always after at least one segment with data); it is
    complete up to the offset returned.
    """
    is_aborted = partition._state.is_aborted  # the partition's transaction state (read only)
    offset_map: dict[bytes | None, int] = {}
    update = offset_map.update
    mapped_end = from_offset
    for segment in segments:
        if segment.next_offset <= from_offset:
            continue
        if segment.base_offset >= lso or len(offset_map) >= max_keys:
            break
        start = segment.position_of(from_offset) if from_offset > segment.base_offset else 0
        batches = _checked_batches(segment, start, partition.name) if start is not None else iter(())
        for _, header, data in batches:
            if header.base_offset >= lso:
                break
            if header.is_control or header.last_offset < from_offset:
                continue
            if header.is_transactional and is_aborted(header.producer_id, header.base_offset):
                continue
            update(zip(map(_KEY, batch_format.iter_records(data)), _offsets(header, data)))
        mapped_end = min(segment.next_offset, lso)
    offset_map.pop(None, None)  # null keys supersede nothing
    return offset_map, mapped_end  # type: ignore[return-value]  # the None key is gone


class _BatchFilter:
    """Decides, batch by batch, which records survive; rebuilds batches that lose some."""

    def __init__(
        self, offset_map: dict[bytes, int], partition: Partition, horizon: int, first_dirty: int
    ) -> None:
        self.offset_map = offset_map
        self.is_aborted: Callable[[int, int], bool] = partition._state.is_aborted
        self.horizon = horizon
        self.first_dirty = first_dirty
        self.records_removed = 0
        self.tombstones_removed = 0
        self.markers_removed = 0
        #: a tombstone or a marker of a transaction without data was kept in the dirty range: the range
        #: is remembered with the time of this pass, and they go once delete.retention.ms has passed
        self.kept_dirty_tombstones = False
        #: producer id -> whether a data batch of its transaction since its last marker survives
        self._txn_has_data: dict[int, bool] = {}

    def __call__(self, header: BatchHeader, data: bytes) -> bytes | bytearray | None:
        """``data`` itself when every record survives, a rebuilt batch, or None when none does.

        Reading an attribute of a decoded record costs about as much as
        decoding it, so offsets come from the header when the batch has no
        gaps and a value is read only from a record that is not superseded.
        """
        if header.is_control:
            return self._marker(header, data)
        if header.is_transactional and self.is_aborted(header.producer_id, header.base_offset):
            self.records_removed += header.records_count
            self._txn_has_data.setdefault(header.producer_id, False)
            return None
        kept_batch = self._records(header, data)
        if header.is_transactional:
            has_data = self._txn_has_data
            has_data[header.producer_id] = has_data.get(header.producer_id, False) or kept_batch is not None
        return kept_batch

    def _marker(self, header: BatchHeader, data: bytes) -> bytes | None:
        """A COMMIT or ABORT marker: removed once no data of its transaction is left and it has been
        clean for delete.retention.ms (Kafka's rule), else kept."""
        if self._txn_has_data.pop(header.producer_id, False):
            return data
        if header.last_offset < self.horizon:
            self.markers_removed += 1
            return None
        # wherever it is: its data may have gone only now (superseded in this pass), so the range
        # it is in must get a cleaning time of its own
        self.kept_dirty_tombstones = True
        return data

    def _records(self, header: BatchHeader, data: bytes) -> bytes | bytearray | None:
        latest = self.offset_map.get
        horizon = self.horizon
        first_dirty = self.first_dirty
        kept: list[Any] = []
        keep = kept.append
        for record, offset in zip(batch_format.iter_records(data), _offsets(header, data)):
            key = record.key
            if key is not None:
                newest = latest(key)  # None: a key only the clean part of the log holds
                if newest is not None and newest > offset:
                    continue
                if record.value is None:
                    if offset < horizon:
                        self.tombstones_removed += 1
                        continue
                    if offset >= first_dirty:
                        self.kept_dirty_tombstones = True
            keep(record)
        self.records_removed += header.records_count - len(kept)
        if len(kept) == header.records_count:
            return data
        if not kept:
            return None
        return rebuild_batch(header, kept)


_KEY = attrgetter("key")
_OFFSET = attrgetter("offset")


def _offsets(header: BatchHeader, data: bytes) -> Sequence[int]:
    """The records' offsets; computed from the header when the batch has no gaps."""
    if header.last_offset_delta + 1 == header.records_count:
        return range(header.base_offset, header.next_offset)
    return list(map(_OFFSET, batch_format.iter_records(data)))


def rebuild_batch(header: BatchHeader, records: Sequence[Any]) -> bytearray:
    """One batch of ``records`` (decoded from the batch ``header`` describes), offsets kept.

    The base offset is the first record's offset and each offset delta is
    relative to it, so the gaps left by removed records stay gaps.
    """
    first = int(records[0].offset)
    sequence = header.base_sequence
    if sequence >= 0:
        sequence = (sequence + first - header.base_offset) & 0x7FFFFFFF
    builder = DefaultRecordBatchBuilder(
        batch_format.MAGIC,
        header.attributes & batch_format.COMPRESSION_MASK,
        int(header.is_transactional),
        header.producer_id,
        header.producer_epoch,
        sequence,
        1 << 30,
    )
    append = builder.append
    for record in records:
        append(record.offset - first, record.timestamp, record.key, record.value, record.headers)
    buf: bytearray = builder.build()
    batch_format.set_base_offset(buf, first)
    buf[_LEADER_EPOCH_POSITION : _LEADER_EPOCH_POSITION + 4] = header.partition_leader_epoch.to_bytes(
        4, "big", signed=True
    )  # outside the CRC
    if header.attributes & batch_format.TIMESTAMP_TYPE_MASK:
        attributes = int.from_bytes(buf[21:23], "big") | batch_format.TIMESTAMP_TYPE_MASK
        batch_format._set_attributes(buf, attributes, header.max_timestamp)
    return buf


# -- writing a cleaned segment --


class _CleanedSegmentWriter:
    """Writes ``<base>.log.cleaned`` and both indexes, with the same index rules as a live segment."""

    def __init__(self, directory: Path, base_offset: int) -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.log_path = cleaned_path(directory, base_offset, ".log", "cleaned")
        index_path = cleaned_path(directory, base_offset, ".index", "cleaned")
        time_index_path = cleaned_path(directory, base_offset, ".timeindex", "cleaned")
        for path in (self.log_path, index_path, time_index_path):
            fsio.unlink(path, missing_ok=True)
        # Both index files exist even when empty: a committed swap must never leave the old ones in place.
        fsio.write_file(index_path, b"", sync=False)
        fsio.write_file(time_index_path, b"", sync=False)
        self.index = OffsetIndex(index_path, base_offset)
        self.time_index = TimeIndex(time_index_path, base_offset)
        self._file = fsio.FileWriter(self.log_path)
        self.position = 0
        self._since_index = 0
        self._max_timestamp = -1

    def write(self, header: BatchHeader, data: bytes | bytearray) -> None:
        if self.position == 0 or self._since_index >= INDEX_INTERVAL_BYTES:
            self.index.append(header.last_offset, self.position)
            self._since_index = 0
        if header.max_timestamp > self._max_timestamp:
            self._max_timestamp = header.max_timestamp
            self.time_index.maybe_append(header.max_timestamp, header.last_offset)
        self._file.write(data)
        self._since_index += header.size
        self.position += header.size

    def finish(self) -> None:
        """Flush and fsync the three files (the swap must only ever claim durable bytes)."""
        self._file.sync(why="cleaned")
        self._file.close()
        self.index.flush()
        self.time_index.flush()
        for path in (self.index.path, self.time_index.path):
            fsio.sync_file(path)

    def abandon(self) -> None:
        self._file.close()
        for path in (self.log_path, self.index.path, self.time_index.path):
            fsio.unlink(path, missing_ok=True)


def _clean_group(group: Sequence[LogSegment], keep: _BatchFilter, name: str) -> _CleanedSegmentWriter | None:
    """Write the cleaned form of ``group``; None when it is one segment that would not change.

    For a lone segment nothing is written until the first batch that changes;
    then the unchanged prefix is copied and writing goes on from there.
    """
    directory = group[0].directory
    base = group[0].base_offset
    writer = _CleanedSegmentWriter(directory, base) if len(group) > 1 else None
    try:
        for segment in group:
            for position, header, data in _checked_batches(segment, 0, name):
                kept = keep(header, data)
                if kept is data:
                    if writer is not None:
                        writer.write(header, data)
                    continue
                if writer is None:
                    writer = _CleanedSegmentWriter(directory, base)
                    for _, prefix_header, prefix in _checked_batches(segment, 0, name):
                        if prefix_header.base_offset >= header.base_offset:
                            break
                        writer.write(prefix_header, prefix)
                if kept is not None:
                    writer.write(batch_format.read_header(kept), kept)
        if writer is not None:
            writer.finish()
        return writer
    except BaseException:
        if writer is not None:
            writer.abandon()
        raise
