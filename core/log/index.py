"""Sparse indexes beside each segment, in Kafka's on-disk layout.

``NNN.index`` (offset index), entries of 8 bytes, big-endian::

    0  4  relative_offset   offset - segment.base_offset (of a batch's first record)
    4  4  position          byte position of that batch in the .log file

``NNN.timeindex`` (time index), entries of 12 bytes, big-endian::

    0  8  timestamp         the largest timestamp seen in the segment so far
    8  4  relative_offset   first offset of the batch where it was reached

One entry is added after every ``index_interval_bytes`` of appended data, so
an index is about 1/500 of its segment. Both are rebuilt from the segment
when missing or when the segment is recovered, so they are never trusted
further than the segment's own bytes.
"""

from __future__ import annotations

import bisect
import os
import struct
from pathlib import Path

_OFFSET_ENTRY = struct.Struct(">ii")
_TIME_ENTRY = struct.Struct(">qi")


def _load(path: Path, entry: struct.Struct) -> list[tuple[int, int]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    data = data[: len(data) - len(data) % entry.size]  # a torn last entry is dropped
    return list(entry.iter_unpack(data))


class OffsetIndex:
    """Maps an offset to the position of the batch to start scanning from."""

    def __init__(self, path: Path, base_offset: int) -> None:
        self.path = path
        self.base_offset = base_offset
        entries = _load(path, _OFFSET_ENTRY)
        self._relative_offsets = [relative for relative, _ in entries]
        self._positions = [position for _, position in entries]
        self._pending = bytearray()

    def __len__(self) -> int:
        return len(self._positions)

    def append(self, offset: int, position: int) -> None:
        relative = offset - self.base_offset
        self._relative_offsets.append(relative)
        self._positions.append(position)
        self._pending += _OFFSET_ENTRY.pack(relative, position)

    def lookup(self, offset: int) -> int:
        """Position of the last indexed batch starting at or before ``offset`` (0 if none)."""
        i = bisect.bisect_right(self._relative_offsets, offset - self.base_offset) - 1
        return self._positions[i] if i >= 0 else 0

    def last(self) -> tuple[int, int] | None:
        """(offset, position) of the last entry."""
        if not self._positions:
            return None
        return self.base_offset + self._relative_offsets[-1], self._positions[-1]

    def truncate_after(self, position: int) -> None:
        """Forget entries pointing at or past ``position`` (the log was truncated there)."""
        keep = bisect.bisect_left(self._positions, position)
        del self._relative_offsets[keep:]
        del self._positions[keep:]
        self.rewrite()

    def flush(self) -> None:
        if self._pending:
            with open(self.path, "ab") as f:
                f.write(self._pending)
            self._pending.clear()

    def rewrite(self) -> None:
        data = bytearray()
        for relative, position in zip(self._relative_offsets, self._positions):
            data += _OFFSET_ENTRY.pack(relative, position)
        _replace(self.path, bytes(data))
        self._pending.clear()


class TimeIndex:
    """Maps a timestamp to the first offset worth scanning for it."""

    def __init__(self, path: Path, base_offset: int) -> None:
        self.path = path
        self.base_offset = base_offset
        entries = _load(path, _TIME_ENTRY)
        self._timestamps = [timestamp for timestamp, _ in entries]
        self._relative_offsets = [relative for _, relative in entries]
        self._pending = bytearray()

    def __len__(self) -> int:
        return len(self._timestamps)

    @property
    def max_timestamp(self) -> int | None:
        return self._timestamps[-1] if self._timestamps else None

    def maybe_append(self, max_timestamp: int, offset: int) -> None:
        """Add an entry when the segment's max timestamp grew."""
        if self._timestamps and max_timestamp <= self._timestamps[-1]:
            return
        relative = offset - self.base_offset
        self._timestamps.append(max_timestamp)
        self._relative_offsets.append(relative)
        self._pending += _TIME_ENTRY.pack(max_timestamp, relative)

    def lookup(self, timestamp: int) -> int:
        """An offset at or before the first record with a timestamp >= ``timestamp``."""
        i = bisect.bisect_left(self._timestamps, timestamp) - 1
        return self.base_offset + (self._relative_offsets[i] if i >= 0 else 0)

    def truncate_after(self, offset: int) -> None:
        keep = bisect.bisect_left(self._relative_offsets, offset - self.base_offset)
        del self._timestamps[keep:]
        del self._relative_offsets[keep:]
        self.rewrite()

    def flush(self) -> None:
        if self._pending:
            with open(self.path, "ab") as f:
                f.write(self._pending)
            self._pending.clear()

    def rewrite(self) -> None:
        data = bytearray()
        for timestamp, relative in zip(self._timestamps, self._relative_offsets):
            data += _TIME_ENTRY.pack(timestamp, relative)
        _replace(self.path, bytes(data))
        self._pending.clear()


def _replace(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
