"""Reading a partition: fetches by offset, lookups by time, and a read-only view following
the writer's folder: the part of ``Partition`` (partition.py) that reads, a mixin over
``PartitionBase`` (partition_base.py).
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import CorruptRecordError, OffsetOutOfRangeError, StorageError
from . import batch as batch_format
from .batch import BatchHeader
from .partition_base import PartitionBase
from .segment import segment_name

CLEANER_CHECKPOINT = "cleaner-offset-checkpoint"  # written by cleaner.py once a partition was compacted
#: a folder listing taken this soon after the folder's mtime may have missed a change in the same clock tick
_RELIST_MARGIN_NS = 100_000_000


@dataclass(slots=True)
class FetchedBatch:
    """One CRC-checked batch as read from disk."""

    header: BatchHeader
    data: bytes

    def records(self, from_offset: int = 0) -> Iterator[Any]:
        """Decoded records with offset >= ``from_offset`` (each has offset, timestamp, key, value, headers)."""
        if from_offset <= self.header.base_offset:
            return batch_format.iter_records(self.data)
        return (r for r in batch_format.iter_records(self.data) if r.offset >= from_offset)


@dataclass(slots=True)
class FetchResult:
    batches: list[FetchedBatch]
    #: where the next read should start (past the last batch returned, or unchanged)
    next_offset: int
    high_watermark: int
    last_stable_offset: int
    log_start_offset: int


log = logging.getLogger(__name__)


def _listed(bases: list[int], base: int) -> bool:
    """``base`` is in the sorted ``bases``."""
    i = bisect.bisect_left(bases, base)
    return i < len(bases) and bases[i] == base


class FetchMixin(PartitionBase):
    """Reads of a partition, and a read-only view following the writer's folder."""

    def segment_for(self, offset: int) -> int:
        return max(0, bisect.bisect_right(self._base_offsets, offset) - 1)

    def read(self, offset: int, max_bytes: int = 1 << 20, *, read_committed: bool = False) -> FetchResult:
        """Whole, CRC-checked batches from ``offset``; at least one batch if any is there.

        read_committed stops at the last stable offset and leaves out aborted
        data; control batches are never returned.
        """
        if self.writable:
            return self._read(offset, max_bytes, read_committed)
        self.refresh()
        try:
            return self._read(offset, max_bytes, read_committed)
        except StorageError:
            # a segment whose descriptor the cache had closed was deleted or replaced by the writer
            # (retention, compaction) since it was listed: list the folder afresh and read again
            self._relist(afresh=True)
            self.refresh()
            return self._read(offset, max_bytes, read_committed)

    def _read(self, offset: int, max_bytes: int, read_committed: bool) -> FetchResult:
        end = self.last_stable_offset if read_committed else self.high_watermark
        if offset < self.log_start_offset or offset > self.log_end_offset:
            raise OffsetOutOfRangeError(
                f"offset {offset} is out of range for {self.name} "
                f"(log start {self.log_start_offset}, log end {self.log_end_offset})"
            )
        # a copy (one slice: it is taken per fetch): a retention/compaction swap cannot pull them away
        segments = self.segments[self.segment_for(offset) :]
        batches: list[FetchedBatch] = []
        total = 0
        next_offset = offset
        for segment in segments:
            if next_offset >= end or (batches and total >= max_bytes):
                break
            if next_offset <= segment.base_offset:  # from its first batch: no index lookup, no scan
                position = 0 if segment.size else None
            else:
                position = segment.position_of(next_offset)
            if position is None:
                # quarantined offsets are never passed over: what comes before them is served, then an error
                hole = self._hole_between(next_offset, segment.next_offset) if self._holes else None
                if hole is not None:
                    if batches:
                        break
                    raise self._quarantined_error(hole)
                continue
            chunk: list[Any] = []
            for pos, header in segment.walk(position, chunk=chunk):
                if header.base_offset >= end or (batches and total + header.size > max_bytes):
                    break
                hole = self._hole_between(next_offset, header.base_offset) if self._holes else None
                if hole is not None:
                    if batches:
                        break
                    raise self._quarantined_error(hole)
                data = segment.batch_bytes(pos, header.size, chunk)
                if len(data) < header.size or not batch_format.crc_ok(data, 0, header):
                    raise segment.corrupt(pos, "CRC-32C mismatch or short batch", self.name)
                if header.magic != batch_format.MAGIC:
                    raise segment.corrupt(pos, f"unknown magic {header.magic}", self.name)
                next_offset = header.next_offset
                total += header.size
                if header.is_control:
                    continue
                if read_committed and header.is_transactional and self._state.is_aborted(
                    header.producer_id, header.base_offset
                ):
                    continue
                batches.append(FetchedBatch(header, data))
            else:
                hole = self._hole_between(next_offset, min(segment.next_offset, end)) if self._holes else None
                if hole is not None:
                    if batches:
                        break
                    raise self._quarantined_error(hole)
                continue
            break
        if self._damage is not None and not batches and next_offset >= self.log_end_offset:
            raise self._damage  # the data the writer wrote goes on past here: not a quiet end
        return FetchResult(batches, next_offset, self.high_watermark, self.last_stable_offset, self.log_start_offset)

    def offset_for_time(self, timestamp: int) -> int | None:
        """First offset whose record timestamp is >= ``timestamp`` (None when none is).

        Kafka's rule: the answer is in the first segment whose largest timestamp reaches
        ``timestamp``; that segment is found by a bisection over the largest timestamps
        below each roll (see timestamps.py), so only its indexes are read, however many there are.
        """
        if not self.writable:
            self.refresh()
        segments = list(self.segments)
        if not segments:
            return None
        start = self.segment_for(self._max_timestamps.start_offset(timestamp))
        for segment in segments[start:]:
            if segment.size == 0 or (segment is not segments[-1] and segment.max_timestamp < timestamp):
                continue
            position = segment.position_for_time(timestamp)
            if position is None:
                continue
            for pos, header in segment.walk(position):
                if header.max_timestamp < timestamp or header.is_control:
                    continue
                data = segment.read_bytes(pos, header.size)
                for record in batch_format.iter_records(data):
                    if record.timestamp >= timestamp:
                        return int(record.offset)
        return None

    def refresh(self) -> None:
        """Read-only view: pick up segments and bytes the writing process has added since.

        Segments come and go (a roll, retention, a swap) only by creating, renaming
        or removing files in the partition's folder, each of which moves the
        folder's mtime; appends to the active segment do not. So the folder is
        listed again only when its mtime changed, not on every fetch: reading a
        partition of 10,000 segments was quadratic in the listing. The mtime has
        the file system's coarse clock, so a change within the same tick as the
        last listing could keep it unchanged: a listing taken less than
        ``_RELIST_MARGIN_NS`` after the mtime it saw is not trusted. Until the
        margin has passed, each fetch looks for what such a change can be with a
        stat or two instead of listing the folder again (which cost a fetch
        O(segments), 3-5 ms at 2,000 segments, for the first 100 ms after every
        change): see ``_ends_moved``.
        """
        if self.writable:
            return
        before = self.log_end_offset
        mtime = os.stat(self.directory).st_mtime_ns
        listed = self._listing
        unsure = False
        if listed is None or listed[0] != mtime:
            self._listing = (mtime, time.time_ns())
            self._relist()
        elif listed[1] - mtime < _RELIST_MARGIN_NS:
            self._listing = (mtime, time.time_ns())
            unsure = True
        if self.segments:
            active = self.segments[-1]
            active.size = active.file_size()
            stop = active.scan_next_offset()
            if unsure and self._ends_moved():
                self._relist()
                active = self.segments[-1]
                active.size = active.file_size()
                stop = active.scan_next_offset()
            if stop is not None and not stop.torn:
                self._damage = active.corrupt(stop.position, stop.why, self.name)
                if str(self._damage) not in self._problems:
                    self._problems.append(str(self._damage))
            self.log_start_offset = max(self.log_start_offset, self.segments[0].base_offset)
        if self.log_end_offset > before:
            try:
                self._replay_headers(before)
            except CorruptRecordError as exc:
                self._damage = exc
                if str(exc) not in self._problems:
                    self._problems.append(str(exc))

    def _ends_moved(self) -> bool:
        """Read-only view, a listing not yet trusted: a roll or retention may have changed the folder
        in the same clock tick as its mtime. A roll names the new segment after the active one's end
        (that end is where the writer rolled, once the active segment is read to its end), and
        retention deletes from the front; both are one stat. A segment compaction replaced, or one
        a deletion took from the middle, fails its open, and the fetch lists afresh (``read``)."""
        active, first = self.segments[-1], self.segments[0]
        if active.next_offset > active.base_offset and os.path.exists(
            os.path.join(self._path, segment_name(active.next_offset) + ".log")
        ):
            return True
        return not os.path.exists(os.path.join(self._path, segment_name(first.base_offset) + ".log"))

    def _max_timestamp_between(self, low: int, high: int) -> int:
        """The largest timestamp of the records in offsets [low, high), from the segments holding them."""
        stamps = [s.max_timestamp for s in self.segments if s.size and s.base_offset < high and s.next_offset > low]
        return max(stamps, default=-1)

    def _list_folder(self) -> tuple[list[int], set[str]]:
        """Base offsets of the segments in the folder, in order, and every name in it (one listing)."""
        try:
            listed = os.listdir(self._path)
        except FileNotFoundError:
            return [], set()
        bases = sorted([int(name[:-4]) for name in listed if name.endswith(".log") and name[:-4].isdigit()])
        return bases, set(listed)

    def _relist(self, afresh: bool = False) -> None:
        """Read-only view: follow the folder's segments (retention removed the oldest, a roll added some;
        ``afresh``: compaction replaced some, so every segment is opened again)."""
        if afresh:
            for segment in self.segments:
                segment.keep_open()  # out of the descriptor cache: closed once nothing holds it
            self.segments = []
            self._listing = None
        bases, names = self._list_folder()
        compacted = CLEANER_CHECKPOINT in names
        # only the ends change (retention at the front, rolls at the back): the work here is theirs,
        # not a pass over every segment, which made a relist cost 3.5 us a segment at 10,000 segments
        while len(self.segments) > 1 and not _listed(bases, self.segments[0].base_offset):
            # deleted by the writer: its descriptor must not keep the file's space until the cache evicts it
            self.segments.pop(0).keep_open()
        last_base = self.segments[-1].base_offset if self.segments else -1
        known = len(self.segments)
        for base in bases[bisect.bisect_right(bases, last_base):]:
            self.segments.append(self._open_segment(base, contiguous=not (compacted or self.settings.compact)))
        if self.segments:
            self.segments[-1].contiguous = True
        self._base_offsets = [s.base_offset for s in self.segments]
        for i in range(max(known - 1, 0), len(self.segments) - 1):  # those before were sealed already
            segment = self.segments[i]
            if not segment.sealed:
                if i < known:  # the active segment until now: its size grew since it was opened
                    segment.size = segment.file_size()
                segment.next_offset = self.segments[i + 1].base_offset
                segment.sealed = True
