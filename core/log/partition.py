"""A partition: an ordered list of segments and the offsets that describe it.

Offsets of a partition (Kafka's names)::

    log_start_offset    first offset still retained
    recovery_point      everything before it is fsynced and was checked
    last_stable_offset  first offset of the oldest open transaction (or the high watermark)
    high_watermark      offsets below it are visible to readers (= log_end_offset here)
    log_end_offset      the next offset to be assigned

Files in the partition folder besides the segments::

    partition.checkpoint   JSON {recovery_point, log_start_offset, ongoing}: the
                           durable claims, rewritten atomically after an fsync
    aborted.txnindex       one line per aborted transaction: producer_id first last

Only segments past the recovery point are re-validated after an unclean stop,
so opening a partition costs the same for ten records or ten million.
"""

from __future__ import annotations

import bisect
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OffsetOutOfRangeError
from . import batch as batch_format
from . import fsio
from .batch import BatchHeader, Encodable
from .segment import LogSegment
from .settings import TopicSettings

CHECKPOINT = "partition.checkpoint"
ABORTED_INDEX = "aborted.txnindex"


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


@dataclass(slots=True)
class _ProducerState:
    """Open transactions and the ranges of aborted ones, rebuilt from batch headers."""

    ongoing: dict[int, int] = field(default_factory=dict)  # producer_id -> first offset
    aborted: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # pid -> [(first, last)]

    def is_aborted(self, producer_id: int, offset: int) -> bool:
        for first, last in self.aborted.get(producer_id, ()):
            if first <= offset <= last:
                return True
        return False


class Partition:
    def __init__(
        self,
        directory: Path,
        topic: str,
        partition: int,
        settings: TopicSettings,
        *,
        writable: bool = True,
        clean_shutdown: bool = True,
    ) -> None:
        self.directory = directory
        self.topic = topic
        self.partition = partition
        self.settings = settings
        self.writable = writable
        self.name = f"{topic}-{partition}"
        if writable:
            fsio.mkdir(directory, parents=True, exist_ok=True)
        self._state = _ProducerState()
        self.recovery_point = 0
        self.log_start_offset = 0
        self._unflushed_messages = 0
        self._last_flush = time.monotonic()
        self.segments: list[LogSegment] = []
        self._base_offsets: list[int] = []
        self._load(clean_shutdown)

    # -- opening and recovery --

    def _load(self, clean_shutdown: bool) -> None:
        checkpoint = self._read_checkpoint()
        self.recovery_point = int(checkpoint.get("recovery_point", 0))
        self.log_start_offset = int(checkpoint.get("log_start_offset", 0))
        self._state.ongoing = {int(k): int(v) for k, v in checkpoint.get("ongoing", {}).items()}
        self._load_aborted_index()
        if self.writable:
            self._finish_interrupted_swaps()
        bases = sorted(
            int(p.name[:-4]) for p in self.directory.glob("*.log") if p.name[:-4].isdigit()
        )
        for base in bases:
            self.segments.append(self._open_segment(base))
        if not self.segments:
            if not self.writable:
                self._base_offsets = []
                return
            self.segments.append(self._open_segment(max(self.log_start_offset, self.recovery_point)))
            fsio.fsync_dir(self.directory, why="roll.dir")
        self._base_offsets = [s.base_offset for s in self.segments]
        for segment, following in zip(self.segments, self.segments[1:]):
            segment.next_offset = following.base_offset
            segment.sealed = True
        active = self.segments[-1]
        if clean_shutdown or not self.writable:
            active.scan_next_offset()
            self._replay_headers(self.recovery_point)
        else:
            self._recover()
        self.log_start_offset = max(self.log_start_offset, self.segments[0].base_offset)

    def _open_segment(self, base_offset: int) -> LogSegment:
        return LogSegment(self.directory, base_offset, writable=self.writable, label=self.name)

    def _recover(self) -> None:
        """Re-validate segments from the one holding the recovery point; cut a torn tail."""
        start = max(0, bisect.bisect_right(self._base_offsets, self.recovery_point) - 1)
        for i in range(start, len(self.segments)):
            segment = self.segments[i]
            valid_end_before = segment.size
            for position, header in segment.recover():
                if header.base_offset >= self.recovery_point:
                    self._track(segment, header, position)
            if segment.size < valid_end_before and i + 1 < len(self.segments):
                # Data after a corrupt point cannot be trusted: drop later segments (Kafka does too).
                for later in self.segments[i + 1 :]:
                    later.delete()
                del self.segments[i + 1 :]
                break
        self._base_offsets = [s.base_offset for s in self.segments]
        for segment in self.segments[:-1]:
            segment.seal()
        self.flush()

    def _replay_headers(self, from_offset: int) -> None:
        """Rebuild open-transaction state from headers past ``from_offset`` (no CRC, headers only)."""
        start = max(0, bisect.bisect_right(self._base_offsets, from_offset) - 1)
        for segment in self.segments[start:]:
            first = segment.position_of(from_offset) if segment.base_offset < from_offset else 0
            if first is None:
                continue
            for position, header in segment.walk(first):
                if header.base_offset >= from_offset:
                    self._track(segment, header, position)

    def _track(self, segment: LogSegment, header: BatchHeader, position: int) -> None:
        if not header.is_transactional:
            return
        pid = header.producer_id
        if header.is_control:
            first = self._state.ongoing.pop(pid, None)
            if first is None:
                return
            if batch_format.control_type(segment.read_bytes(position, header.size)) == batch_format.CONTROL_ABORT:
                self._record_abort(pid, first, header.base_offset)
        elif pid not in self._state.ongoing:
            self._state.ongoing[pid] = header.base_offset

    def _read_checkpoint(self) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads((self.directory / CHECKPOINT).read_text())
            return data
        except FileNotFoundError:
            return {}

    def _write_checkpoint(self) -> None:
        body = {
            "recovery_point": self.recovery_point,
            "log_start_offset": self.log_start_offset,
            "ongoing": {str(k): v for k, v in self._state.ongoing.items()},
        }
        fsio.replace_file(self.directory / CHECKPOINT, json.dumps(body).encode(), why="checkpoint")

    def _load_aborted_index(self) -> None:
        try:
            lines = (self.directory / ABORTED_INDEX).read_text().splitlines()
        except FileNotFoundError:
            return
        for line in lines:
            parts = line.split()
            if len(parts) == 3:
                pid, first, last = (int(p) for p in parts)
                ranges = self._state.aborted.setdefault(pid, [])
                if (first, last) not in ranges:
                    ranges.append((first, last))

    def _record_abort(self, producer_id: int, first: int, last: int) -> None:
        ranges = self._state.aborted.setdefault(producer_id, [])
        if (first, last) in ranges:
            return
        ranges.append((first, last))
        if self.writable:
            path = self.directory / ABORTED_INDEX
            new = not path.exists()
            # durable before a checkpoint can claim the ABORT marker: past the recovery point nothing re-reads it
            fsio.append_file(path, f"{producer_id} {first} {last}\n".encode(), sync=True)
            if new:
                fsio.fsync_dir(self.directory)

    def _finish_interrupted_swaps(self) -> None:
        """A compaction swap interrupted by a crash: complete it if committed, else drop the leftovers.

        The protocol (and which old segment files a completed swap deletes) is in cleaner.py.
        """
        from .cleaner import finish_interrupted_swaps

        finish_interrupted_swaps(self.directory)

    # -- offsets --

    @property
    def active_segment(self) -> LogSegment:
        return self.segments[-1]

    @property
    def log_end_offset(self) -> int:
        return self.segments[-1].next_offset if self.segments else self.log_start_offset

    @property
    def high_watermark(self) -> int:
        return self.log_end_offset

    @property
    def last_stable_offset(self) -> int:
        if self._state.ongoing:
            return min(self._state.ongoing.values())
        return self.high_watermark

    @property
    def size_bytes(self) -> int:
        return sum(s.size for s in self.segments)

    # -- writing --

    def append(
        self,
        rows: Sequence[Encodable],
        *,
        producer_id: int = batch_format.NO_PRODUCER_ID,
        producer_epoch: int = -1,
        transactional: bool = False,
    ) -> int:
        """Encode ``rows`` as one batch and append it; returns its base offset."""
        settings = self.settings
        log_append_time = (
            int(time.time() * 1000) if settings.message_timestamp_type == "LogAppendTime" else None
        )
        codec = batch_format.CODECS.get(settings.compression_type, 0)
        buf = batch_format.build_batch(
            rows,
            compression=codec,
            producer_id=producer_id,
            producer_epoch=producer_epoch,
            transactional=transactional,
            log_append_time=log_append_time,
        )
        return self.append_batches([buf])

    def append_batches(self, buffers: Sequence[bytearray]) -> int:
        """Append pre-built batches, assigning offsets; returns the first base offset."""
        assert self.writable, f"{self.name} is open read-only"
        next_offset = self.log_end_offset
        first = next_offset
        headers: list[BatchHeader] = []
        for buf in buffers:
            batch_format.set_base_offset(buf, next_offset)
            header = batch_format.read_header(buf)
            headers.append(header)
            next_offset = header.next_offset
        self._maybe_roll(sum(h.size for h in headers))
        segment = self.active_segment
        position = segment.size
        segment.append(b"".join(buffers) if len(buffers) > 1 else buffers[0], headers)
        for header in headers:
            if header.is_transactional:
                self._track(segment, header, position)
            position += header.size
        self._unflushed_messages += sum(h.last_offset_delta + 1 for h in headers)
        self._maybe_flush()
        return first

    def append_control(self, producer_id: int, producer_epoch: int, *, commit: bool) -> int:
        """Write a COMMIT or ABORT marker for the producer's open transaction."""
        return self.append_batches([batch_format.build_control_batch(producer_id, producer_epoch, commit)])

    def ongoing_producers(self) -> list[int]:
        return list(self._state.ongoing)

    def _maybe_roll(self, incoming: int) -> None:
        active = self.active_segment
        if active.size == 0:
            return
        age = time.time() * 1000 - active.created_ms
        if active.size + incoming > self.settings.segment_bytes or age >= self.settings.segment_ms:
            self.roll()

    def roll(self) -> LogSegment:
        """Seal the active segment and start a new one at the log end offset."""
        active = self.active_segment
        if active.size == 0:
            return active
        active.seal()
        segment = self._open_segment(active.next_offset)
        fsio.fsync_dir(self.directory, why="roll.dir")  # else a power cut may drop the file a checkpoint claims
        segment.next_offset = active.next_offset
        self.segments.append(segment)
        self._base_offsets.append(segment.base_offset)
        return segment

    def _maybe_flush(self) -> None:
        settings = self.settings
        due = settings.flush_messages is not None and self._unflushed_messages >= settings.flush_messages
        if settings.flush_ms is not None:
            due = due or (time.monotonic() - self._last_flush) * 1000 >= settings.flush_ms
        if due:
            self.flush()

    def flush(self, fsync: bool = True) -> None:
        """fsync the data, then move the recovery point that claims it."""
        if not self.writable:
            return
        start = max(0, bisect.bisect_right(self._base_offsets, self.recovery_point) - 1)
        for segment in self.segments[start:]:
            segment.flush(fsync=fsync)
        self.recovery_point = self.log_end_offset
        self._unflushed_messages = 0
        self._last_flush = time.monotonic()
        self._write_checkpoint()

    # -- reading --

    def segment_for(self, offset: int) -> int:
        return max(0, bisect.bisect_right(self._base_offsets, offset) - 1)

    def read(self, offset: int, max_bytes: int = 1 << 20, *, read_committed: bool = False) -> FetchResult:
        """Whole, CRC-checked batches from ``offset``; at least one batch if any is there.

        read_committed stops at the last stable offset and leaves out aborted
        data; control batches are never returned.
        """
        if not self.writable:
            self.refresh()
        end = self.last_stable_offset if read_committed else self.high_watermark
        if offset < self.log_start_offset or offset > self.log_end_offset:
            raise OffsetOutOfRangeError(
                f"offset {offset} is out of range for {self.name} "
                f"(log start {self.log_start_offset}, log end {self.log_end_offset})"
            )
        segments = list(self.segments)  # a retention/compaction swap cannot pull them away
        batches: list[FetchedBatch] = []
        total = 0
        next_offset = offset
        for segment in segments[self.segment_for(offset) :]:
            if next_offset >= end or (batches and total >= max_bytes):
                break
            position = segment.position_of(next_offset)
            if position is None:
                continue
            for pos, header in segment.walk(position):
                if header.base_offset >= end or (batches and total + header.size > max_bytes):
                    break
                data = segment.read_bytes(pos, header.size)
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
                continue
            break
        return FetchResult(batches, next_offset, self.high_watermark, self.last_stable_offset, self.log_start_offset)

    def offset_for_time(self, timestamp: int) -> int | None:
        """First offset whose record timestamp is >= ``timestamp`` (None when none is)."""
        for segment in list(self.segments):
            if segment.size == 0 or segment.max_timestamp < timestamp:
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
        """Read-only view: pick up segments and bytes the writing process has added since."""
        if self.writable:
            return
        before = self.log_end_offset
        while len(self.segments) > 1 and not self.segments[0].log_path.exists():  # retention ran
            self.segments.pop(0)
        last_base = self.segments[-1].base_offset if self.segments else -1
        for path in sorted(self.directory.glob("*.log")):
            stem = path.name[:-4]
            if stem.isdigit() and int(stem) > last_base:
                self.segments.append(self._open_segment(int(stem)))
        self._base_offsets = [s.base_offset for s in self.segments]
        for segment, following in zip(self.segments, self.segments[1:]):
            if not segment.sealed:
                segment.size = os.fstat(segment._fd).st_size
                segment.next_offset = following.base_offset
                segment.sealed = True
        if self.segments:
            active = self.segments[-1]
            active.size = os.fstat(active._fd).st_size
            active.scan_next_offset()
            self.log_start_offset = max(self.log_start_offset, self.segments[0].base_offset)
        if self.log_end_offset > before:
            self._replay_headers(before)

    # -- retention and compaction hooks --

    def delete_oldest_segments(self, count: int) -> list[LogSegment]:
        """Drop the ``count`` oldest segments (never the active one); advance the log start offset."""
        count = min(count, len(self.segments) - 1)
        if count <= 0:
            return []
        gone = self.segments[:count]
        self.segments = self.segments[count:]
        self._base_offsets = self._base_offsets[count:]
        self.log_start_offset = max(self.log_start_offset, self.segments[0].base_offset)
        self._write_checkpoint()
        for segment in gone:
            segment.delete()
        return gone

    def replace_segments(self, old: Sequence[LogSegment]) -> LogSegment:
        """Swap ``old`` (consecutive, sealed) for the cleaned segment written beside them.

        The cleaner has written ``<base>.{log,index,timeindex}.cleaned`` with
        base = ``old[0].base_offset``; the rename of the log to ``.swap`` is the
        commit point (see cleaner.py). Readers holding ``old`` keep reading the
        old bytes: their descriptors stay open and their indexes are loaded
        before the files under those names change.
        """
        from .cleaner import commit_swap, complete_swap

        i = self.segments.index(old[0])
        n = len(old)
        if self.segments[i : i + n] != list(old) or i + n >= len(self.segments):
            raise ValueError(f"{self.name}: segments to replace must be consecutive and sealed")
        for segment in old:
            segment.index, segment.time_index, segment.max_timestamp  # load before the files change
        base = old[0].base_offset
        commit_swap(self.directory, base, [s.base_offset for s in old], old[-1].next_offset)
        complete_swap(self.directory, base)
        for segment in old:
            segment.deleted = True
        new = self._open_segment(base)
        new.next_offset = old[-1].next_offset
        new.sealed = True
        self.segments[i : i + n] = [new]  # in place: a reader's copy of the list keeps the old ones
        self._base_offsets[i : i + n] = [base]
        return new

    def close(self) -> None:
        if self.writable:
            self.flush()
        for segment in self.segments:
            segment.close()
