"""Sparse indexes beside each segment, in Kafka's on-disk layout.

``NNN.index`` (offset index), entries of 8 bytes, big-endian::

    0  4  relative_offset   offset - segment.base_offset, of a batch's LAST record
    4  4  position          byte position of that batch in the .log file

``NNN.timeindex`` (time index), entries of 12 bytes, big-endian::

    0  8  timestamp         the largest timestamp seen in the segment so far
    8  4  relative_offset   last offset of the batch where it was reached

Entries name a batch's last offset, as Kafka's do (``DumpLogSegments
--verify-index-only`` checks exactly that): an entry at or before an offset
still points at or before the batch holding it, so a lookup scans forward from
there.

One entry is added after every ``index_interval_bytes`` of appended data, so
an index is about 1/500 of its segment. Both are rebuilt from the segment
when missing, when the segment is recovered, or when their entries disagree
with the segment (``problem``, checked on load; ``LogSegment`` also checks the
batch an offset entry points at before trusting it), so they are never trusted
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


def _load(path: Path, entry: struct.Struct) -> tuple[list[tuple[int, int]], bool]:
    """The whole entries of the file, and whether a torn (partial) last entry was left out."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], False
    torn = len(data) % entry.size
    return list(entry.iter_unpack(data[: len(data) - torn])), bool(torn)


def _increasing(values: list[int], *, strictly: bool) -> bool:
    if strictly:
        return all(a < b for a, b in zip(values, values[1:]))
    return all(a <= b for a, b in zip(values, values[1:]))


class _SparseIndex:
    """Two sorted columns kept in memory, mirrored by fixed-size entries on disk."""

    entry: ClassVar[struct.Struct]

    def _problem(self, segment_size: int, relative_end: int | None) -> str | None:
        raise NotImplementedError

    def __init__(self, path: Path, base_offset: int, *, load: bool = True) -> None:
        self.path = path
        self.base_offset = base_offset
        entries, self.torn = _load(path, self.entry) if load else ([], False)
        self._first = [a for a, _ in entries]
        self._second = [b for _, b in entries]
        self._pending = bytearray()
        self._torn = False  # a flush failed part-way: the file may end in a torn entry

    def problem(self, segment_size: int, next_offset: int | None) -> str | None:
        """Why the loaded entries cannot belong to a segment of ``segment_size`` bytes
        ending before ``next_offset`` (None: unknown yet), or None when they are sane.

        Cheap: the entries only, no read of the segment."""
        if self.torn:
            return "torn last entry"
        return self._problem(segment_size, None if next_offset is None else next_offset - self.base_offset)

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
        if self._torn:
            self.rewrite()
        elif self._pending:
            try:
                fsio.append_file(self.path, bytes(self._pending))
            except BaseException:
                self._torn = True  # appending the entries again would shift every later one
                raise
            self._pending.clear()

    def rewrite(self) -> None:
        data = b"".join(self.entry.pack(a, b) for a, b in zip(self._first, self._second))
        fsio.replace_file(self.path, data)
        self._pending.clear()
        self._torn = False


class OffsetIndex(_SparseIndex):
    """Maps an offset to the position of the batch to start scanning from.

    Columns: relative offset, position.
    """

    entry = _OFFSET_ENTRY

    def append(self, last_offset: int, position: int) -> None:
        """Index the batch at ``position`` by its last offset."""
        self._add(last_offset - self.base_offset, position)

    def lookup(self, offset: int) -> int:
        """Position of the last indexed batch ending at or before ``offset`` (0 if none): the
        batch holding ``offset`` starts there or later."""
        i = bisect.bisect_right(self._first, offset - self.base_offset) - 1
        return self._second[i] if i >= 0 else 0

    def lookup_entry(self, offset: int) -> tuple[int, int] | None:
        """(offset, position) of the last entry at or before ``offset`` (None if none)."""
        i = bisect.bisect_right(self._first, offset - self.base_offset) - 1
        return (self.base_offset + self._first[i], self._second[i]) if i >= 0 else None

    def _problem(self, segment_size: int, relative_end: int | None) -> str | None:
        if not self._first:
            return None
        if self._first[0] < 0 or self._second[0] < 0:
            return f"negative entry ({self._first[0]}, {self._second[0]})"
        if not _increasing(self._first, strictly=True) or not _increasing(self._second, strictly=True):
            return "entries out of order"
        if self._second[-1] >= segment_size:
            return f"position {self._second[-1]} is past the end of the segment ({segment_size} bytes)"
        if relative_end is not None and self._first[-1] >= relative_end:
            return f"offset {self.base_offset + self._first[-1]} is past the end of the segment"
        return None

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

    def offsets(self) -> list[int]:
        """The offset of every entry: each is the last offset of a batch."""
        return [self.base_offset + relative for relative in self._second]

    def timestamps(self) -> list[int]:
        """The timestamp of every entry: the largest in the segment up to its batch, and that batch's own."""
        return list(self._first)

    def maybe_append(self, max_timestamp: int, offset: int) -> None:
        """Add an entry when the segment's max timestamp grew; ``offset`` is the last offset
        of the batch that reached it."""
        if self._first and max_timestamp <= self._first[-1]:
            return
        self._add(max_timestamp, offset - self.base_offset)

    def _problem(self, segment_size: int, relative_end: int | None) -> str | None:
        if not self._first:
            return None
        if self._second[0] < 0:
            return f"negative offset in entry ({self._first[0]}, {self._second[0]})"
        if not _increasing(self._first, strictly=True) or not _increasing(self._second, strictly=False):
            return "entries out of order"
        if segment_size == 0 or (relative_end is not None and self._second[-1] >= relative_end):
            return f"offset {self.base_offset + self._second[-1]} is past the end of the segment"
        return None

    def lookup(self, timestamp: int) -> int:
        """An offset at or before the first record with a timestamp >= ``timestamp``."""
        i = bisect.bisect_left(self._first, timestamp) - 1
        return self.base_offset + (self._second[i] if i >= 0 else 0)

    def truncate_after(self, offset: int) -> None:
        self._keep(bisect.bisect_left(self._second, offset - self.base_offset))


# -- the transaction index --

#: ``NNN.txnindex``: one entry per aborted transaction whose ABORT marker is in segment NNN, in
#: Kafka's layout (``AbortedTxn``), 34 bytes, big-endian::
#:
#:     0   2  version             0
#:     2   8  producer_id
#:     10  8  first_offset        the transaction's first offset
#:     18  8  last_offset         the offset of its ABORT marker
#:     26  8  last_stable_offset  the partition's last stable offset once the marker was written
#:
#: Entries follow in the order of their markers. Kafka's fetch collects a fetch range's aborted
#: transactions from these files, and stops at the first entry whose last_stable_offset shows no
#: earlier open transaction can reach past it; a broker given the partition folder reads them as is.
ABORTED_TXN = struct.Struct(">hqqqq")
ABORTED_TXN_VERSION = 0


class AbortedTxn(tuple[int, int, int, int]):
    """(producer_id, first_offset, last_offset, last_stable_offset) of one aborted transaction."""

    __slots__ = ()

    def __new__(cls, producer_id: int, first_offset: int, last_offset: int, last_stable_offset: int) -> AbortedTxn:
        return super().__new__(cls, (producer_id, first_offset, last_offset, last_stable_offset))

    @property
    def producer_id(self) -> int:
        return self[0]

    @property
    def first_offset(self) -> int:
        return self[1]

    @property
    def last_offset(self) -> int:
        return self[2]

    @property
    def last_stable_offset(self) -> int:
        return self[3]

    def encode(self) -> bytes:
        return ABORTED_TXN.pack(ABORTED_TXN_VERSION, *self)


def encode_aborted(entries: list[AbortedTxn]) -> bytes:
    return b"".join(entry.encode() for entry in entries)


def parse_aborted(data: bytes, base_offset: int) -> tuple[list[AbortedTxn], str | None]:
    """The entries of a ``.txnindex`` of the segment at ``base_offset``, and why the file cannot
    be trusted (None when it can). A torn last entry (a crash mid-append) is a problem too:
    its transaction may be any."""
    entries: list[AbortedTxn] = []
    whole = len(data) - len(data) % ABORTED_TXN.size
    previous = -1
    for number, (version, pid, first, last, lso) in enumerate(ABORTED_TXN.iter_unpack(data[:whole]), 1):
        if version != ABORTED_TXN_VERSION:
            return entries, f"entry {number} has version {version}, not {ABORTED_TXN_VERSION}"
        if not 0 <= first <= last or last < base_offset or lso < 0:
            return entries, (f"entry {number} (producer {pid}, offsets {first}..{last}, last stable offset {lso}) "
                             f"is not an aborted transaction ending in this segment")
        if last <= previous:
            return entries, f"entry {number} ends at offset {last}, not after the one before ({previous})"
        previous = last
        entries.append(AbortedTxn(pid, first, last, lso))
    if whole != len(data):
        return entries, f"{len(data) - whole} bytes of a torn last entry"
    return entries, None
