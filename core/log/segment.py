"""One segment of a partition: a ``.log`` file of whole batches and its indexes.

Files, named by the segment's ``base_offset`` (the first offset it may hold)::

    00000000000000000000.log        batches, back to back (see batch.py)
    00000000000000000000.index      sparse offset -> position (see index.py)
    00000000000000000000.timeindex  sparse max timestamp -> offset

Batches are written with ``os.pwrite`` at the segment's known size and read
with ``os.pread``. Not mmap: a long sequential read through a mapping leaves
every page it passed resident (fault-around maps 64 KiB per touch), which
breaks the bounded-memory promise for a reader of a 1 GB log. A deleted segment's file
descriptor stays open until the object is collected, so a reader that holds
the segment keeps reading it after the files are unlinked or swapped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import CorruptRecordError
from . import batch as batch_format
from . import fsio
from .batch import HEADER_SIZE, LOG_OVERHEAD, MAGIC, BatchHeader
from .index import OffsetIndex, TimeIndex

INDEX_INTERVAL_BYTES = 4096
_SCAN_CHUNK = 1 << 16


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}"


class LogSegment:
    def __init__(self, directory: Path, base_offset: int, *, writable: bool, label: str = "") -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.label = label or str(directory)
        name = segment_name(base_offset)
        self.log_path = directory / f"{name}.log"
        self.index_path = directory / f"{name}.index"
        self.time_index_path = directory / f"{name}.timeindex"
        flags = os.O_RDWR | os.O_CREAT if writable else os.O_RDONLY
        self._fd = fsio.open(self.log_path, flags, 0o644)
        self.writable = writable
        stat = os.fstat(self._fd)
        self.size = stat.st_size
        self.created_ms = int(stat.st_mtime * 1000) if self.size else int(time.time() * 1000)
        #: the offset after the last batch; set by the partition after it opens the segment
        self.next_offset = base_offset
        self._index: OffsetIndex | None = None
        self._time_index: TimeIndex | None = None
        self._max_timestamp: int | None = None
        self._bytes_since_index = 0
        self.sealed = False
        self.deleted = False

    # -- indexes (loaded on first use, so opening a partition reads no index) --

    @property
    def index(self) -> OffsetIndex:
        if self._index is None:
            self._index = OffsetIndex(self.index_path, self.base_offset)
        return self._index

    @property
    def time_index(self) -> TimeIndex:
        if self._time_index is None:
            self._time_index = TimeIndex(self.time_index_path, self.base_offset)
        return self._time_index

    @property
    def max_timestamp(self) -> int:
        """Largest record timestamp in the segment (-1 when empty)."""
        if self._max_timestamp is None:
            indexed = self.time_index.max_timestamp
            last = self.index.last()
            start = last[1] if last else 0
            best = -1 if indexed is None else indexed
            for _, header in self.walk(start):
                best = max(best, header.max_timestamp)
            self._max_timestamp = best
        return self._max_timestamp

    # -- writing --

    def append(self, data: bytes | bytearray | memoryview, headers: list[BatchHeader]) -> None:
        """Append whole batches (already carrying their offsets)."""
        position = self.size
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += fsio.pwrite(self._fd, view[written:], position + written)
        index = self.index
        time_index = self.time_index
        max_ts = self.max_timestamp if self.size else -1
        for header in headers:
            if self._bytes_since_index >= INDEX_INTERVAL_BYTES or position == 0:
                index.append(header.base_offset, position)
                self._bytes_since_index = 0
            if header.max_timestamp > max_ts:
                max_ts = header.max_timestamp
                time_index.maybe_append(max_ts, header.base_offset)
            self._bytes_since_index += header.size
            position += header.size
        self._max_timestamp = max_ts
        self.size = position
        self.next_offset = headers[-1].next_offset

    def flush(self, fsync: bool = True) -> None:
        if self._index is not None:
            self._index.flush()
        if self._time_index is not None:
            self._time_index.flush()
        if fsync and self.writable:
            fsio.fsync(self._fd, why="segment")

    def seal(self) -> None:
        """No more appends: flush the indexes."""
        self.flush(fsync=self.writable)
        self.sealed = True

    # -- reading --

    def read_bytes(self, position: int, length: int) -> bytes:
        length = max(0, min(length, self.size - position))
        return os.pread(self._fd, length, position)

    def walk(self, start: int = 0, end: int | None = None) -> Iterator[tuple[int, BatchHeader]]:
        """(position, header) of every complete batch from ``start``; headers only.

        Small batches are walked a 64 KiB chunk at a time; once batches turn out
        larger than a chunk, only their 61-byte headers are read.
        """
        end = self.size if end is None else end
        position = start
        chunk_size = _SCAN_CHUNK
        while position + HEADER_SIZE <= end:
            chunk = os.pread(self._fd, min(chunk_size, end - position), position)
            advanced = 0
            for offset_in_chunk, header in batch_format.walk(chunk, 0, len(chunk)):
                yield position + offset_in_chunk, header
                advanced = offset_in_chunk + header.size
            if advanced == 0:
                if len(chunk) < HEADER_SIZE:
                    return
                header = batch_format.read_header(chunk)
                size = header.batch_length + LOG_OVERHEAD
                if header.batch_length < HEADER_SIZE - LOG_OVERHEAD or position + size > end:
                    return
                yield position, header
                advanced = size
                chunk_size = HEADER_SIZE
            else:
                chunk_size = _SCAN_CHUNK
            position += advanced

    def position_of(self, offset: int) -> int | None:
        """Position of the batch holding ``offset`` or the first one after it."""
        start = self.index.lookup(offset) if offset > self.base_offset else 0
        for position, header in self.walk(start):
            if header.last_offset >= offset:
                return position
        return None

    def position_for_time(self, timestamp: int) -> int | None:
        """Position of the first batch whose max timestamp is >= ``timestamp``."""
        start_offset = self.time_index.lookup(timestamp)
        start = self.index.lookup(start_offset) if start_offset > self.base_offset else 0
        for position, header in self.walk(start):
            if header.max_timestamp >= timestamp:
                return position
        return None

    # -- recovery --

    def recover(self) -> list[tuple[int, BatchHeader]]:
        """Check every batch (structure, offsets, CRC); truncate at the first bad one.

        Returns (position, header) of the valid batches and rebuilds both indexes.
        """
        valid: list[tuple[int, BatchHeader]] = []
        position = 0
        expected = self.base_offset
        for position_, header in self.walk(0):
            if (
                header.magic != MAGIC
                or header.base_offset < expected
                or header.last_offset_delta < 0
                or not batch_format.crc_ok(self.read_bytes(position_, header.size), 0, header)
            ):
                break
            valid.append((position_, header))
            expected = header.next_offset
            position = position_ + header.size
        self.truncate(position)
        self._index = OffsetIndex(self.index_path, self.base_offset)
        self._time_index = TimeIndex(self.time_index_path, self.base_offset)
        self._index.truncate_after(0)
        self._time_index.truncate_after(self.base_offset)
        self.size = 0
        self._bytes_since_index = 0
        self._max_timestamp = None
        rebuilt_position = 0
        max_ts = -1
        for _, header in valid:
            if self._bytes_since_index >= INDEX_INTERVAL_BYTES or rebuilt_position == 0:
                self._index.append(header.base_offset, rebuilt_position)
                self._bytes_since_index = 0
            if header.max_timestamp > max_ts:
                max_ts = header.max_timestamp
                self._time_index.maybe_append(max_ts, header.base_offset)
            self._bytes_since_index += header.size
            rebuilt_position += header.size
        self._index.flush()
        self._time_index.flush()
        self.size = rebuilt_position
        self._max_timestamp = max_ts
        self.next_offset = valid[-1][1].next_offset if valid else self.base_offset
        return valid

    def truncate(self, position: int) -> None:
        if position < os.fstat(self._fd).st_size:
            fsio.ftruncate(self._fd, position)
        self.size = position

    def scan_next_offset(self) -> int:
        """The offset after the last batch, found from the last index entry (cheap)."""
        last = self.index.last()
        start = last[1] if last and last[1] < self.size else 0
        next_offset = self.base_offset
        for _, header in self.walk(start):
            next_offset = header.next_offset
        self.next_offset = next_offset
        return next_offset

    def corrupt(self, position: int, why: str, topic_partition: str) -> CorruptRecordError:
        return CorruptRecordError(
            f"corrupt batch in {topic_partition}, segment {self.log_path.name} at position {position}: {why}"
        )

    # -- lifecycle --

    def close(self) -> None:
        if self._fd >= 0:
            fsio.close(self._fd)
            self._fd = -1

    def delete(self) -> None:
        """Unlink the files. The descriptor stays open for readers still holding this segment."""
        self.deleted = True
        for path in (self.log_path, self.index_path, self.time_index_path):
            fsio.unlink(path, missing_ok=True)

    def __del__(self) -> None:
        try:
            if self._fd >= 0:
                fsio.close(self._fd)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
