"""One segment of a partition: a ``.log`` file of whole batches and its indexes.

Files, named by the segment's ``base_offset`` (the first offset it may hold)::

    00000000000000000000.log        batches, back to back (see batch.py)
    00000000000000000000.index      sparse offset -> position (see index.py)
    00000000000000000000.timeindex  sparse max timestamp -> offset
    00000000000000000000.txnindex   aborted transactions whose marker is here (only if any)

Batches are written with ``os.pwrite`` at the segment's known size and read
with ``os.pread``. Not mmap: a long sequential read through a mapping leaves
every page it passed resident (fault-around maps 64 KiB per touch), which
breaks the bounded-memory promise for a reader of a 1 GB log. The ``.log`` is
opened when it is first read or written and may be closed again by the
process's descriptor cache (descriptors.py). A deleted segment's descriptor, if
open, stays open until the object is collected, so a reader that holds the
segment keeps reading it after the files are unlinked or swapped.
"""

from __future__ import annotations

import bisect
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import CorruptRecordError, StorageError
from . import batch as batch_format
from . import fsio
from .batch import HEADER_SIZE, MAGIC, BatchHeader
from .descriptors import descriptors
from .index import OffsetIndex, TimeIndex
from .segment_scan import ScanStop, SegmentScan

__all__ = ["INDEX_INTERVAL_BYTES", "LogSegment", "ScanStop", "segment_name"]

INDEX_INTERVAL_BYTES = 4096

log = logging.getLogger(__name__)


def segment_name(base_offset: int) -> str:
    return f"{base_offset:020d}"


class LogSegment(SegmentScan):
    """One segment's files, appends and reads; the scans that find where its data ends and where it
    is damaged (``check``, ``check_tail``, ``scan_next_offset``, ``ends_with``) are in segment_scan.py."""

    def __init__(self, directory: Path, base_offset: int, *, writable: bool, label: str = "") -> None:
        self.directory = directory
        self.base_offset = base_offset
        self.label = label or str(directory)
        self._name = segment_name(base_offset)
        self._log_name = os.path.join(directory, self._name + ".log")
        self.writable = writable
        #: the .log's descriptor while the cache keeps it open (-1: opened again when needed)
        self._fd = -1
        self._users = 0  # reads and writes under way: the cache does not close it meanwhile
        self.closed = False
        try:
            stat = os.stat(self._log_name)
        except FileNotFoundError:
            if not writable:
                raise
            self._fd = fsio.open(self._log_name, os.O_RDWR | os.O_CREAT, 0o644)
            descriptors.adopt(self)
            stat = os.fstat(self._fd)
        self.size = stat.st_size
        self._inode = (stat.st_dev, stat.st_ino)  # a file put under this name since is not this segment
        self.created_ms = int(stat.st_mtime * 1000) if self.size else int(time.time() * 1000)
        #: the offset after the last batch; set by the partition after it opens the segment
        self.next_offset = base_offset
        self._index: OffsetIndex | None = None
        self._time_index: TimeIndex | None = None
        self._max_timestamp: int | None = None
        self._bytes_since_index = 0
        self.sealed = False
        self.deleted = False
        #: a failed append may have left part of a batch past ``size``; cut before the next write
        self._torn_tail = False
        #: batches follow each other without offset gaps (never compacted); set by the partition
        self.contiguous = False
        #: where the data ends when quarantined or discarded offsets follow (next_offset is past them)
        self.data_end: int | None = None
        #: position of the last batch, once known (an append, a scan to the end, the partition checkpoint)
        self.last_batch: int | None = None
        #: positions of offset-index entries already seen to point at their batch -> its base offset
        self._verified: dict[int, int] = {}
        self._time_bases: list[int] | None = None
        self._time_stamps: dict[int, int] = {}

    # -- files (named on first use: a store of many segments opens without building paths) --

    @property
    def log_path(self) -> Path:
        return Path(self._log_name)

    @property
    def index_path(self) -> Path:
        return self.directory / f"{self._name}.index"

    @property
    def time_index_path(self) -> Path:
        return self.directory / f"{self._name}.timeindex"

    @property
    def txn_index_path(self) -> Path:
        """Aborted transactions whose ABORT marker is in this segment (the partition reads and writes it)."""
        return self.directory / f"{self._name}.txnindex"

    def _open_file(self) -> int:
        """Open the .log again (the descriptor cache closed it, or it was never opened)."""
        if self.closed:
            raise StorageError(f"segment {self._log_name} of {self.label} is closed")
        try:
            fd = fsio.open(self._log_name, os.O_RDWR if self.writable else os.O_RDONLY)
        except FileNotFoundError:
            fd = -1
        if fd >= 0:
            stat = os.fstat(fd)
            if (stat.st_dev, stat.st_ino) == self._inode:
                return fd
            fsio.close(fd)
        raise StorageError(f"segment {self._log_name} of {self.label} was deleted or replaced (retention or "
                           "compaction) since it was opened; read it again")

    def _pread(self, length: int, position: int) -> bytes:
        fd = descriptors.acquire(self)
        try:
            return os.pread(fd, length, position)
        finally:
            descriptors.release(self)

    def file_size(self) -> int:
        """The .log's size on disk now (a reader of the active segment: what the writer has written)."""
        fd = descriptors.acquire(self)
        try:
            return os.fstat(fd).st_size
        finally:
            descriptors.release(self)

    # -- indexes (loaded on first use, so opening a partition reads no index) --

    @property
    def index(self) -> OffsetIndex:
        if self._index is None:
            self._load_indexes()
        assert self._index is not None
        return self._index

    @property
    def time_index(self) -> TimeIndex:
        if self._time_index is None:
            self._load_indexes()
        assert self._time_index is not None
        return self._time_index

    def _visible_size(self) -> int:
        """The segment's size; for a read-only view of the active segment, what the writer has
        written by now (its index entries may already cover more than the last refresh saw)."""
        if self.writable or self.sealed or self.closed:
            return self.size
        return max(self.size, self.file_size())

    def _load_indexes(self) -> None:
        """Load both indexes; rebuild them from the segment when their entries are not sane."""
        index = OffsetIndex(self.index_path, self.base_offset)
        time_index = TimeIndex(self.time_index_path, self.base_offset)
        next_offset = self.next_offset if self.sealed else None
        size = self._visible_size()  # after the index files were read: the data was written first
        for loaded in (index, time_index):
            problem = loaded.problem(size, next_offset)
            if problem is not None:
                self.rebuild_indexes(f"{loaded.path.name}: {problem}")
                return
        self._index, self._time_index = index, time_index

    def rebuild_indexes(self, why: str, *, level: int = logging.WARNING) -> None:
        """Rebuild both indexes from the batches of the segment (Kafka does the same
        with an index it cannot trust). Written back when the segment is writable."""
        log.log(level, "%s: index of segment %s disagrees with its data (%s); rebuilding it from %s",
                self.label, self.log_path.name, why, self.log_path)
        headers = []
        scan = self._scan(0, self.size)
        try:
            while True:
                headers.append(next(scan)[1])
        except StopIteration:
            pass
        self._index = OffsetIndex(self.index_path, self.base_offset, load=False)
        self._time_index = TimeIndex(self.time_index_path, self.base_offset, load=False)
        self._bytes_since_index = 0
        self._verified.clear()
        self._time_bases = None
        self._index_headers(headers)
        if self.writable:
            self._index.rewrite()
            self._time_index.rewrite()

    def _index_headers(self, headers: list[BatchHeader]) -> None:
        """Add index entries for ``headers``, batches back to back from position 0."""
        assert self._index is not None and self._time_index is not None
        position = 0
        max_ts = -1
        for header in headers:
            if self._bytes_since_index >= INDEX_INTERVAL_BYTES or position == 0:
                self._index.append(header.last_offset, position)
                self._verified[position] = header.base_offset  # read from the segment just now
                self._bytes_since_index = 0
            if header.max_timestamp > max_ts:
                max_ts = header.max_timestamp
                self._time_index.maybe_append(max_ts, header.last_offset)
            self._bytes_since_index += header.size
            position += header.size
        self._max_timestamp = max_ts

    @property
    def max_timestamp(self) -> int:
        """Largest record timestamp in the segment (-1 when empty)."""
        if self._max_timestamp is None:
            indexed = self.time_index.max_timestamp
            if indexed is not None and not self._time_entry_matches(indexed):
                self.rebuild_indexes(f"{self.time_index_path.name}: last entry does not match its batch")
                if self._max_timestamp is not None:
                    return self._max_timestamp
                indexed = self.time_index.max_timestamp
            last = self.index.last()
            start = last[1] if last else 0
            best = -1 if indexed is None else indexed
            for _, header in self.walk(start):
                best = max(best, header.max_timestamp)
            self._max_timestamp = best
        return self._max_timestamp

    def _time_entry_matches(self, timestamp: int) -> bool:
        """The time index's last entry names a batch that starts at its offset and reaches its timestamp."""
        offset = self.time_index.lookup(timestamp + 1) if timestamp < (1 << 63) - 1 else None
        if offset is None:
            return False
        try:
            position = self.position_of(offset)
        except CorruptRecordError:
            return False
        if position is None:
            return False
        header = batch_format.read_header(self.read_bytes(position, HEADER_SIZE))
        return header.last_offset == offset and header.max_timestamp == timestamp

    # -- writing --

    def append(self, data: bytes | bytearray | memoryview, headers: list[BatchHeader]) -> None:
        """Append whole batches (already carrying their offsets).

        If the write fails (disk full), ``size`` stays where it was and the
        bytes written past it are cut, now or before the next append or flush.
        """
        self._cut_torn_tail()
        position = self.size
        view = memoryview(data)
        written = 0
        fd = descriptors.acquire(self)
        try:
            while written < len(view):
                written += fsio.pwrite(fd, view[written:], position + written)
        except BaseException:
            self._torn_tail = True
            try:
                self._cut_torn_tail()
            except OSError:
                pass  # still failing: cut before the next append or flush
            raise
        finally:
            descriptors.release(self)
        index = self.index
        time_index = self.time_index
        max_ts = self.max_timestamp if self.size else -1
        for header in headers:
            if self._bytes_since_index >= INDEX_INTERVAL_BYTES or position == 0:
                index.append(header.last_offset, position)
                self._verified[position] = header.base_offset
                self._bytes_since_index = 0
            if header.max_timestamp > max_ts:
                max_ts = header.max_timestamp
                time_index.maybe_append(max_ts, header.last_offset)
            self._bytes_since_index += header.size
            self.last_batch = position
            position += header.size
        self._max_timestamp = max_ts
        self.size = position
        self.next_offset = headers[-1].next_offset

    def _cut_torn_tail(self) -> None:
        if self._torn_tail:
            self.truncate(self.size)
            self._torn_tail = False

    def flush(self, fsync: bool = True) -> None:
        if self.writable:
            self._cut_torn_tail()
        if self._index is not None:
            self._index.flush()
        if self._time_index is not None:
            self._time_index.flush()
        if fsync and self.writable:
            fd = descriptors.acquire(self)
            try:
                fsio.fsync(fd, why="segment")
            finally:
                descriptors.release(self)

    def seal(self) -> None:
        """No more appends: flush the indexes."""
        self.flush(fsync=self.writable)
        self.sealed = True

    # -- reading --

    def read_bytes(self, position: int, length: int) -> bytes:
        if position < 0:
            raise self.corrupt(position, "negative position", self.label)
        length = max(0, min(length, self.size - position))
        return self._pread(length, position)

    def batch_bytes(self, position: int, size: int, chunk: list[Any]) -> bytes:
        """The batch of ``size`` bytes at ``position``, a header of a ``walk(chunk=chunk)`` gave:
        taken from the chunk the walk read it in when the whole batch is there (it usually is:
        the scan reads 64 KiB at a time), read from the file otherwise. One read of the file per
        chunk instead of one more per batch; a small segment is read once."""
        if chunk:
            at: int = chunk[0]
            data: bytes = chunk[1]
            if at <= position and position + size <= at + len(data):
                return data[position - at : position - at + size]
        return self.read_bytes(position, size)

    def walk(self, start: int = 0, end: int | None = None, *,
             chunk: list[Any] | None = None) -> Iterator[tuple[int, BatchHeader]]:
        """(position, header) of every batch from ``start``; headers only.

        Damage is a :class:`CorruptRecordError` naming the segment and position,
        never a quiet end: only a batch running past the end of the *active*
        segment ends the walk quietly (a writer may be appending it). ``chunk``:
        see ``batch_bytes``.
        """
        last: BatchHeader | None = None
        stopped: list[ScanStop | None] = []
        # a compacted segment has offset gaps, so its batches' base offsets (outside the CRC) are
        # checked against the time index instead: each entry names a batch's last offset
        indexed = self._indexed_bases() if self.sealed and not self.contiguous else None
        floor = self.base_offset if start == 0 else None  # where the previous batch ended, once known
        for position, last in self._scan(start, self.size if end is None else end, chunk=chunk, stopped=stopped):
            if indexed:
                i = bisect.bisect_left(indexed, last.base_offset if floor is None else floor)
                if i < len(indexed) and indexed[i] != last.last_offset and indexed[i] <= last.last_offset:
                    # The entry names this batch or a later one, so its timestamp (the segment's largest
                    # up to that batch) is at least this batch's; if so, this batch's offsets are wrong.
                    if self._time_stamps.get(indexed[i], -1) >= last.max_timestamp:
                        raise self.corrupt(position, f"batch offsets {last.base_offset}..{last.last_offset} do "
                                           f"not end at offset {indexed[i]}, where {self.time_index_path.name} "
                                           "says a batch ends", self.label)
                    # else the entry names no batch (a power cut can leave zeros in an index): the index is wrong
                    self.rebuild_indexes(f"{self.time_index_path.name}: entry at offset {indexed[i]} names no "
                                         "batch of the segment")
                    indexed = None
                else:
                    floor = last.next_offset
            yield position, last
        stop = stopped[0] if stopped else None
        if stop is not None and (self.sealed or not stop.torn):
            raise self.corrupt(stop.position, stop.why, self.label)
        data_end = self.next_offset if self.data_end is None else self.data_end
        if end is None and self.sealed and self.contiguous and last is not None and last.next_offset != data_end:
            raise self.corrupt(self.size, f"the segment ends at offset {last.next_offset}, but the next one "
                               f"starts at {self.next_offset}: it was cut short", self.label)

    def _indexed_bases(self) -> list[int]:
        """Last offsets of the batches the time index names (sorted); ``_time_stamps`` maps each
        to the timestamp its entry says that batch reached."""
        if self._time_bases is None:
            index = self.time_index
            self._time_stamps = dict(zip(index.offsets(), index.timestamps()))
            self._time_bases = sorted(self._time_stamps)
        return self._time_bases

    def _verified_start(self, offset: int) -> int:
        """Where to start scanning for ``offset``: the offset index's entry, once the
        batch it points at is seen to end at the entry's offset (Kafka's entries name
        a batch's last offset). The batch holding ``offset`` is at or after it."""
        if offset <= self.base_offset:
            return 0
        entry = self.index.lookup_entry(offset)
        if entry is None:
            return 0
        entry_offset, position = entry
        if position in self._verified:
            return position
        header = None
        if 0 <= position <= self._visible_size() - HEADER_SIZE:
            header = batch_format.read_header(self._pread(HEADER_SIZE, position))
        if header is not None and header.last_offset == entry_offset and header.magic == MAGIC:
            self._verified[position] = header.base_offset
        else:
            self.rebuild_indexes(f"{self.index_path.name}: entry ({entry_offset}, {position}) "
                                 "does not point at the batch ending at that offset")
            entry = self.index.lookup_entry(offset)
            return entry[1] if entry else 0
        return position

    def position_of(self, offset: int) -> int | None:
        """Position of the batch holding ``offset`` or the first one after it."""
        for position, header in self.walk(self._verified_start(offset)):
            if header.last_offset >= offset:
                return position
        return None

    def position_for_time(self, timestamp: int) -> int | None:
        """Position of the first batch whose max timestamp is >= ``timestamp``."""
        start_offset = self.time_index.lookup(timestamp)
        start = self._verified_start(start_offset)
        for position, header in self.walk(start):
            if header.max_timestamp >= timestamp:
                return position
        return None

    # -- recovery (check, check_tail, scan_next_offset, ends_with: segment_scan.py) --

    def cut(self, valid: list[tuple[int, BatchHeader]]) -> None:
        """Keep only the ``valid`` batches (a prefix, from ``check``); rebuild both indexes."""
        self.truncate(valid[-1][0] + valid[-1][1].size if valid else 0)
        self._index = OffsetIndex(self.index_path, self.base_offset, load=False)
        self._time_index = TimeIndex(self.time_index_path, self.base_offset, load=False)
        self._bytes_since_index = 0
        self._verified.clear()
        self._time_bases = None
        self._index_headers([header for _, header in valid])
        if self.writable:
            self._index.rewrite()
            self._time_index.rewrite()
        self.next_offset = valid[-1][1].next_offset if valid else self.base_offset

    def recover(self) -> list[tuple[int, BatchHeader]]:
        """Check every batch (structure, offsets, CRC); truncate at the first bad one.

        Returns (position, header) of the valid batches and rebuilds both indexes.
        """
        valid, _ = self.check()
        self.cut(valid)
        return valid

    def truncate(self, position: int) -> None:
        if self.last_batch is not None and self.last_batch >= position:
            self.last_batch = None
        fd = descriptors.acquire(self)
        try:
            if position < os.fstat(fd).st_size:
                fsio.ftruncate(fd, position)
        finally:
            descriptors.release(self)
        self.size = position

    def corrupt(self, position: int, why: str, topic_partition: str) -> CorruptRecordError:
        return CorruptRecordError(
            f"corrupt batch in {topic_partition}, segment {self.log_path.name} at position {position}: {why}"
        )

    # -- lifecycle --

    def close(self) -> None:
        self.closed = True
        descriptors.forget(self)
        if self._fd >= 0:
            fsio.close(self._fd)
            self._fd = -1

    def keep_open(self) -> None:
        """Its files are about to go (deleted, or replaced by a swap): an open descriptor leaves the cache,
        so a reader that holds the segment goes on reading the old bytes until it lets go of it."""
        self.deleted = True
        descriptors.pin(self)

    def delete(self) -> None:
        """Unlink the files. An open descriptor stays open for readers still holding this segment."""
        self.keep_open()
        for path in (self.log_path, self.index_path, self.time_index_path, self.txn_index_path):
            fsio.unlink(path, missing_ok=True)

    def __del__(self) -> None:
        try:
            if self._fd >= 0:
                fsio.close(self._fd)
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass
