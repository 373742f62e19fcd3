"""The scanning side of a segment: walking its batch headers to find where the data ends
and where it is damaged (the part of ``LogSegment``, segment.py, that recovery and a
checkpoint's cheap checks use).

``SegmentScan`` is a mixin of ``LogSegment``; ``_SegmentBase`` below declares what it reads
of the segment and stubs the methods segment.py defines (``LogSegment`` comes first in its
own MRO, so they are always the real ones; tests/log/test_partition_parts.py checks it).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

from . import batch as batch_format
from .batch import HEADER, HEADER_SIZE, LOG_OVERHEAD, MAGIC, BatchHeader
from .index import OffsetIndex

_SCAN_CHUNK = 1 << 16


@dataclass(frozen=True, slots=True)
class ScanStop:
    """Where and why a scan of a segment stopped before its end.

    ``torn`` is True for a batch that runs past the end (or a few bytes too few
    for a header): the normal state of the active segment after a crash or
    while a writer is appending. Anything else (a header that cannot be a
    batch header, offsets going backwards) is damage wherever it is.
    """

    position: int
    why: str
    torn: bool


def _misplaced(header: BatchHeader, expected: int, limit: int | None, contiguous: bool) -> str:
    """Why a batch's offsets cannot be where they are ('' when they can). The base offset is
    outside the CRC, so this is what catches a damaged one."""
    span = f"batch offsets {header.base_offset}..{header.last_offset}"
    if header.last_offset_delta < 0:
        return f"{span}: negative last offset delta {header.last_offset_delta}"
    if header.base_offset < expected:
        return f"{span} go back before offset {expected}"
    if contiguous and header.base_offset != expected:
        return f"{span} leave a gap after offset {expected - 1}"
    if limit is not None and header.next_offset > limit:
        return f"{span} run past offset {limit - 1}, the last this segment can hold"
    return ""


def _stopped(stopped: list[ScanStop | None] | None, stop: ScanStop | None) -> ScanStop | None:
    """``stop``, noted in ``stopped`` when given (see ``SegmentScan._scan``)."""
    if stopped is not None:
        stopped.append(stop)
    return stop


class _SegmentBase:
    """What the scan reads of a segment (set in ``LogSegment.__init__``), and stubs for segment.py's methods."""

    base_offset: int
    size: int
    next_offset: int
    sealed: bool
    contiguous: bool
    data_end: int | None
    last_batch: int | None
    _verified: dict[int, int]

    @property
    def index(self) -> OffsetIndex:
        raise NotImplementedError

    def _pread(self, length: int, position: int) -> bytes:
        raise NotImplementedError

    def read_bytes(self, position: int, length: int) -> bytes:
        raise NotImplementedError

    def _verified_start(self, offset: int) -> int:
        raise NotImplementedError


class SegmentScan(_SegmentBase):
    """Scans of a segment's batch headers: where its data ends, and where and why it is damaged."""

    def _scan(
        self, start: int, end: int, expected: int | None = None, chunk: list[Any] | None = None,
        stopped: list[ScanStop | None] | None = None,
    ) -> Generator[tuple[int, BatchHeader], None, ScanStop | None]:
        """(position, header) of each well-formed batch in [start, end); returns where and why
        it stopped early (None when it reached ``end``).

        Well-formed: a length that fits a header, magic 2, and offsets that only go
        forward from ``expected`` (the segment's base offset unless told) and stay
        inside the segment. The CRC is the reader's to check (it reads the bytes).
        Small batches are read a 64 KiB chunk at a time; once batches turn out
        larger than a chunk, only their 61-byte headers are read. ``chunk``, when
        given, holds [position, bytes] of the last chunk read, so a reader takes the
        batches inside it from there instead of reading them again. ``stopped``, when
        given, gets what it returns appended, so a caller may iterate it with a plain
        ``for`` (no StopIteration caught per segment).
        """
        position = start
        # from the start of the segment, or from a verified index entry, the first batch's base is known exactly
        first = start != 0 and expected is None
        expected = self.base_offset if expected is None else expected
        contiguous = self.contiguous
        # a sealed segment ends where the next begins; any segment holds at most 2**31 offsets (Kafka's rule)
        limit: int | None = self.next_offset if self.sealed else self.base_offset + (1 << 31) - 1
        chunk_size = _SCAN_CHUNK
        unpack_from = HEADER.unpack_from
        make = BatchHeader._make
        while position < end:
            if position + HEADER_SIZE > end:
                return _stopped(stopped, ScanStop(position, f"{end - position} bytes after the last batch", True))
            data = self._pread(min(chunk_size, end - position), position)
            if chunk is not None:
                chunk[:] = (position, data)
            if len(data) < HEADER_SIZE:
                return _stopped(stopped, ScanStop(position, "the file is shorter than expected", True))
            # the whole batches in the chunk (batch.walk's loop, inline: a generator more per chunk and
            # per batch was a fifth of the cost of reading a segment of two batches)
            advanced = 0
            length = len(data)
            while advanced + HEADER_SIZE <= length:
                header = make(unpack_from(data, advanced))
                size = header.batch_length + LOG_OVERHEAD
                if header.batch_length < HEADER_SIZE - LOG_OVERHEAD or advanced + size > length:
                    break  # damage shows when the next chunk starts here, a torn batch at the end
                if header.magic != MAGIC:
                    return _stopped(stopped, ScanStop(position + advanced, f"unknown magic {header.magic}", False))
                base = header.base_offset
                if (
                    base < expected
                    or header.last_offset_delta < 0
                    or (contiguous and base != expected and not first)
                    or (limit is not None and base + header.last_offset_delta >= limit)
                ):
                    why = _misplaced(header, expected, limit, contiguous and not first)
                    return _stopped(stopped, ScanStop(position + advanced, why, False))
                yield position + advanced, header
                expected = base + header.last_offset_delta + 1
                first = False
                advanced += size
            if advanced == 0:
                header = batch_format.read_header(data)
                size = header.batch_length + LOG_OVERHEAD
                if header.batch_length < HEADER_SIZE - LOG_OVERHEAD:
                    return _stopped(stopped, ScanStop(position, f"batch length {header.batch_length} is too small", False))
                if header.magic != MAGIC:
                    return _stopped(stopped, ScanStop(position, f"unknown magic {header.magic}", False))
                if position + size > end:
                    return _stopped(stopped, ScanStop(position, f"batch of {size} bytes runs past the end ({end})", True))
                chunk_size = HEADER_SIZE
                misplaced = _misplaced(header, expected, limit, contiguous and not first)
                if misplaced:
                    return _stopped(stopped, ScanStop(position, misplaced, False))
                yield position, header
                expected = header.next_offset
                first = False
                advanced = size
            else:
                chunk_size = _SCAN_CHUNK
            position += advanced
        return _stopped(stopped, None)

    def check(self) -> tuple[list[tuple[int, BatchHeader]], ScanStop | None]:
        """Check every batch (structure, offsets, CRC) without changing anything.

        Returns (position, header) of the valid batches up to the first bad one,
        and where and why that one is bad (None when the whole segment is good).
        """
        valid: list[tuple[int, BatchHeader]] = []
        scan = self._scan(0, self.size)
        while True:
            try:
                position, header = next(scan)
            except StopIteration as done:
                stop: ScanStop | None = done.value
                return valid, stop
            if not batch_format.crc_ok(self.read_bytes(position, header.size), 0, header):
                return valid, ScanStop(position, "CRC-32C mismatch", False)
            valid.append((position, header))

    def check_tail(self) -> ScanStop | None:
        """Where the last index interval of a sealed segment is damaged (cheap: from the last
        index entry to the end), or None. Damage before it shows when it is read."""
        if not self.size and not self.contiguous:
            return None  # a compacted segment the cleaner emptied: nothing to check, no index to read
        last = self.index.last()
        start = self._verified_start(last[0]) if last else 0
        expected = self._verified.get(start, self.base_offset) if start else self.base_offset
        scan = self._scan(start, self.size, expected)
        end = expected
        while True:
            try:
                end = next(scan)[1].next_offset
            except StopIteration as done:
                stop: ScanStop | None = done.value
                break
        if stop is None and self.contiguous and end != (self.next_offset if self.data_end is None else self.data_end):
            stop = ScanStop(self.size, f"the segment ends at offset {end}, but the next one starts at "
                            f"{self.next_offset}: it was cut short", False)
        return stop

    def scan_next_offset(self) -> ScanStop | None:
        """Set ``next_offset`` (the offset after the last batch), scanning from the last
        index entry (cheap). Returns where the scan stopped early, if it did."""
        last = self.index.last()
        start = self._verified_start(last[0]) if last else 0
        expected = self._verified.get(start, self.base_offset) if start else self.base_offset
        next_offset = expected
        scan = self._scan(start, self.size, expected)
        while True:
            try:
                position, header = next(scan)
                next_offset = header.next_offset
                self.last_batch = position
            except StopIteration as done:
                self.next_offset = next_offset
                stop: ScanStop | None = done.value
                if stop is not None:
                    self.last_batch = None
                return stop

    def ends_with(self, position: int, next_offset: int) -> bool:
        """The batch at ``position`` is well formed and the last one, ending at ``next_offset``: the
        cheap check of a segment a checkpoint says nothing was appended to since (one header read)."""
        if not 0 <= position <= self.size - HEADER_SIZE:
            return False
        header = batch_format.read_header(self._pread(HEADER_SIZE, position))
        if (header.magic != MAGIC or header.last_offset_delta < 0 or position + header.size != self.size
                or header.next_offset != next_offset or header.base_offset < self.base_offset):
            return False
        self.last_batch = position
        return True
