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
import struct
from pathlib import Path
from typing import ClassVar

from . import fsio

_OFFSET_ENTRY = struct.Struct(">ii")
_TIME_ENTRY = struct.Struct(">qi")


def _load(path: Path, entry: struct.Struct) -> list[tuple[int, int]]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    data = data[: len(data) - len(data) % entry.size]  # a torn last entry is dropped
    return list(entry.iter_unpack(data))


class _SparseIndex:
    """Two sorted columns kept in memory, mirrored by fixed-size entries on disk."""

    entry: ClassVar[struct.Struct]

    def __init__(self, path: Path, base_offset: int) -> None:
        self.path = path
        self.base_offset = base_offset
        entries = _load(path, self.entry)
        self._first = [a for a, _ in entries]
        self._second = [b for _, b in entries]
        self._pending = bytearray()

    def __len__(self) -> int:
        return len(self._first)

    def _add(self, first: int, second: int) -> None:
        self._first.append(first)
        self._second.append(second)
        self._pending += self.entry.pack(first, second)

    def _keep(self, count: int) -> None:
        del self._first[count:]
        del self._second[count:]
        self.rewrite()

    def flush(self) -> None:
        if self._pending:
            fsio.append_file(self.path, bytes(self._pending))
            self._pending.clear()

    def rewrite(self) -> None:
        data = b"".join(self.entry.pack(a, b) for a, b in zip(self._first, self._second))
        fsio.replace_file(self.path, data)
        self._pending.clear()


class OffsetIndex(_SparseIndex):
    """Maps an offset to the position of the batch to start scanning from.

    Columns: relative offset, position.
    """

    entry = _OFFSET_ENTRY

    def append(self, offset: int, position: int) -> None:
        self._add(offset - self.base_offset, position)

    def lookup(self, offset: int) -> int:
        """Position of the last indexed batch starting at or before ``offset`` (0 if none)."""
        i = bisect.bisect_right(self._first, offset - self.base_offset) - 1
        return self._second[i] if i >= 0 else 0

    def last(self) -> tuple[int, int] | None:
        """(offset, position) of the last entry."""
        if not self._first:
            return None
        return self.base_offset + self._first[-1], self._second[-1]

    def truncate_after(self, position: int) -> None:
        """Forget entries pointing at or past ``position`` (the log was truncated there)."""
        self._keep(bisect.bisect_left(self._second, position))


class TimeIndex(_SparseIndex):
    """Maps a timestamp to the first offset worth scanning for it.

    Columns: max timestamp so far, relative offset.
    """

    entry = _TIME_ENTRY

    @property
    def max_timestamp(self) -> int | None:
        return self._first[-1] if self._first else None

    def maybe_append(self, max_timestamp: int, offset: int) -> None:
        """Add an entry when the segment's max timestamp grew."""
        if self._first and max_timestamp <= self._first[-1]:
            return
        self._add(max_timestamp, offset - self.base_offset)

    def lookup(self, timestamp: int) -> int:
        """An offset at or before the first record with a timestamp >= ``timestamp``."""
        i = bisect.bisect_left(self._first, timestamp) - 1
        return self.base_offset + (self._second[i] if i >= 0 else 0)

    def truncate_after(self, offset: int) -> None:
        self._keep(bisect.bisect_left(self._second, offset - self.base_offset))
