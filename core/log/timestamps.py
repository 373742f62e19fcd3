"""The largest timestamp below each roll, kept beside the segments, so a lookup by time reads one segment.

``max-timestamps`` in the partition folder, entries of 24 bytes, big-endian::

    0   8  end_offset   a closed segment's next offset (where the next one starts)
    8   8  bound        no record at an offset below end_offset has a larger timestamp
    16  8  check        end_offset ^ bound ^ _SALT: a zero-filled or torn entry does not pass

One entry is appended (no fsync) at every roll: the sealed segment's largest
timestamp folded into the entry before it, so both columns only grow and a lookup
bisects them, touching a handful of entries however many segments there are.
Kafka keeps each segment's largest timestamp in memory and walks the segments;
a read-only millpond view opens afresh for every CLI command, so without this
file a lookup read every segment's time index.

The file is a cache, never a claim: a bound may be too high (retention, compaction
and recovery only remove records), never too low, so a lookup starts at or before
the segment holding the answer and walks forward. Offsets past the last entry
(a log written before this file, or rolls a power cut lost) are walked as before.
Whatever could make a bound too low drops it: an unclean open checks every entry
and cuts the file at the first one that fails its check, goes backwards or ends
past the log end offset (offsets recovery gives out again); putting quarantined
segments back deletes the file.
"""

from __future__ import annotations

import bisect
import os
import struct
from collections.abc import Callable
from pathlib import Path

from . import fsio

FILE = "max-timestamps"
_ENTRY = struct.Struct(">qqq")
_SALT = 0x6D696C6C706F6E64  # "millpond"
#: entries wholly before the log start are dropped once there are this many of them
_PRUNE_AT = 1024


def _encode(end_offset: int, bound: int) -> bytes:
    return _ENTRY.pack(end_offset, bound, end_offset ^ bound ^ _SALT)


class MaxTimestamps:
    """The ``max-timestamps`` file of one partition folder, read incrementally."""

    def __init__(self, directory: Path, *, writable: bool) -> None:
        self.directory = directory
        self.writable = writable
        self._data = bytearray()  # the whole entries read so far
        self._inode = -1  # a rewrite (a new file under the name) makes a reader start over

    @property
    def path(self) -> Path:
        return self.directory / FILE

    def _read(self) -> None:
        """Take in the entries appended since the last call (all of them after a rewrite)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            self._data.clear()
            self._inode = -1
            return
        try:
            inode = os.fstat(fd).st_ino
            if inode != self._inode:
                self._inode = inode
                self._data.clear()
            new = os.pread(fd, 1 << 30, len(self._data))
        finally:
            os.close(fd)
        self._data += new[: len(new) - len(new) % _ENTRY.size]

    def _entry(self, i: int) -> tuple[int, int] | None:
        """(end_offset, bound) of entry ``i``, or None when it fails its check."""
        end, bound, check = _ENTRY.unpack_from(self._data, i * _ENTRY.size)
        return (end, bound) if end ^ bound ^ _SALT == check else None

    def _count(self) -> int:
        return len(self._data) // _ENTRY.size

    def start_offset(self, timestamp: int) -> int:
        """An offset below which no record has a timestamp >= ``timestamp`` (0 when none is known)."""
        self._read()
        count = self._count()
        if not count:
            return 0
        i = bisect.bisect_left(range(count), timestamp, key=lambda j: _ENTRY.unpack_from(self._data, j * _ENTRY.size)[1])
        if i == 0:
            return 0
        before = self._entry(i - 1)
        after = self._entry(i) if i < count else (1 << 63, 1 << 63)
        if before is None or after is None or before[0] > after[0] or before[1] > after[1]:
            return 0  # damaged: walk every segment, as without the file
        return before[0]

    def note_roll(self, base_offset: int, end_offset: int, max_timestamp: int,
                  gap: Callable[[int, int], int]) -> None:
        """The segment [base_offset, end_offset) was sealed with ``max_timestamp`` its largest.

        ``gap(low, high)`` is the largest timestamp of the records in [low, high), read from
        the segments: for rolls the file has no entry for (once, for a log older than the file).
        """
        if not self._data:
            self._read()
        last = self._entry(self._count() - 1) if self._count() else None
        if last is not None and last[0] >= end_offset:
            return
        if last is None:
            bound = max(max_timestamp, gap(0, base_offset))
        elif last[0] < base_offset:
            bound = max(last[1], max_timestamp, gap(last[0], base_offset))
        else:
            bound = max(last[1], max_timestamp)
        entry = _encode(end_offset, bound)
        fsio.append_file(self.path, entry)
        self._data += entry

    def check(self, log_end_offset: int) -> None:
        """After an unclean stop (writer): cut the file at the first entry that fails its check,
        does not follow the one before it, or ends past ``log_end_offset``."""
        self._read()
        previous = (-1, -(1 << 63))
        for i in range(self._count()):
            entry = self._entry(i)
            if entry is None or entry[0] <= previous[0] or entry[1] < previous[1] or entry[0] > log_end_offset:
                self._rewrite(bytes(self._data[: i * _ENTRY.size]))
                return
            previous = entry

    def prune(self, log_start_offset: int) -> None:
        """Drop entries that end at or before the log start, once there are many (retention)."""
        count = self._count()
        if count < _PRUNE_AT:
            return
        ends = range(count)
        gone = bisect.bisect_right(ends, log_start_offset,
                                   key=lambda j: _ENTRY.unpack_from(self._data, j * _ENTRY.size)[0])
        if gone >= _PRUNE_AT // 2:
            self._rewrite(bytes(self._data[gone * _ENTRY.size :]))

    def forget(self) -> None:
        """Delete the file: segments came back whose records it may not bound (restored from quarantine)."""
        fsio.unlink(self.path, missing_ok=True)
        self._data.clear()
        self._inode = -1

    def _rewrite(self, data: bytes) -> None:
        if data:
            fsio.replace_file(self.path, data)
            self._inode = os.stat(self.path).st_ino
        else:
            fsio.unlink(self.path, missing_ok=True)
            self._inode = -1
        self._data = bytearray(data)
