"""One partition's chain checked block by block, wherever its batches come from (segment files or a consumer).

``ChainCheck`` is fed batches in log order; it gathers records into blocks up to the next
chain header, recomputes each block's hash, compares it with the header and with the signed
checkpoints it reaches, and raises :class:`Broken` with the first place where evidence breaks.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import attrgetter
from typing import Any

from ..log.segment import LogSegment
from .chain import GENESIS, Columns, Link, Piece, block_hash, block_parts, digest, drop_front, link_of
from .checkpoints import Checkpoint
from .report import (
    BATCH_INSERTED,
    BATCH_REMOVED,
    CHECKPOINT_MISMATCH,
    EDITED,
    RECORDS_INSERTED,
    RECORDS_REMOVED,
    REORDERED,
    REPLACED_SEGMENT,
    TAIL_CUT,
    Break,
    PartitionReport,
)

_timestamp = attrgetter("timestamp")
_key = attrgetter("key")
_value = attrgetter("value")
_headers = attrgetter("headers")

class Broken(Exception):
    def __init__(self, found: Break) -> None:
        self.found = found


@dataclass
class Position:
    """Where a batch (or a block in it) is: its file (or ``kafka:topic-partition``) and byte position,
    and whether it opens a segment file after the first one checked."""

    file: str
    position: int
    offset: int
    file_start: bool = False


@dataclass
class End:
    """The log's end as the check began: where a tail cut is reported."""

    log_start_offset: int
    log_end_offset: int
    file: str
    position: int


class ChainCheck:
    """The running state of one partition's check."""

    def __init__(self, end: End, checkpoints: list[Checkpoint], out: PartitionReport, *,
                 strict_offsets: bool = True) -> None:
        self.end = end
        #: the log the checkpoints were signed on (not a copy): their offsets must match too
        self.strict_offsets = strict_offsets
        key = (lambda c: c.offset) if strict_offsets else (lambda c: c.seq)
        self.checkpoints = sorted(checkpoints, key=key)
        self.next_checkpoint = 0
        self.out = out
        self.prev: bytes | None = None
        self.seq = 0
        self.block = Columns()
        #: the block so far as pieces of canonical form cut in C (a check of the log's files), instead
        #: of ``block`` (a check through a consumer, or without the C speedup)
        self.pieces: list[Piece] = []
        self.piece_records = 0
        self.block_start: Position | None = None
        #: hash -> seq after it, of every block passed (an old prev names an inserted or replayed batch)
        self.seen: dict[bytes, int] = {}
        self.first_segment: LogSegment | None = None

    def add(self, records: list[Any], at: Position) -> None:
        """Records of one batch; closes a block at each record carrying a header."""
        self.out.records += len(records)
        if any(map(_headers, records[:-1])):  # headers inside the batch: any record may end a block
            cut = [i for i, r in enumerate(records) if r.headers and link_of(r.headers) is not None]
        else:
            last = records[-1].headers
            cut = [len(records) - 1] if last and link_of(last) is not None else []
        start = 0
        for i in cut:
            self._gather(records[start : i + 1], at, records[start].offset)
            self._close(Link.decode(link_of(records[i].headers)), records[i].offset, at)
            start = i + 1
        if start < len(records):
            self._gather(records[start:], at, records[start].offset)

    def add_pieces(self, pieces: list[Piece], at: Position, count: int) -> None:
        """The pieces of one batch (``count`` records, ``at.offset`` its base offset); closes a block at
        each piece that ends with a chain header."""
        self.out.records += count
        for piece in pieces:
            if self.block_start is None:
                first = at.offset + piece.first_offset_delta
                self.block_start = Position(at.file, at.position, first, at.file_start and first == at.offset)
            self.pieces.append(piece)
            self.piece_records += piece.n
            if piece.link is not None:
                self._close(Link.decode(piece.link), at.offset + piece.last_offset_delta, at)

    def _gather(self, records: list[Any], at: Position, first_offset: int) -> None:
        if self.block_start is None:
            self.block_start = Position(at.file, at.position, first_offset, at.file_start and first_offset == at.offset)
        block = self.block
        block.timestamps.extend(map(_timestamp, records))
        block.keys.extend(map(_key, records))
        block.values.extend(map(_value, records))
        headers = list(map(_headers, records))
        if any(headers) or block.headers is not None:
            if block.headers is None:
                block.headers = [()] * (len(block.timestamps) - len(records))
            block.headers.extend(headers)

    def _fail(self, kind: str, detail: str, offset: int | None = None, at: Position | None = None) -> Broken:
        where = at or self.block_start
        assert where is not None
        return Broken(Break(kind, where.offset if offset is None else offset, where.file,
                             where.position, detail))

    def _close(self, link: Link, last_offset: int, at: Position) -> None:
        block, pieces, out = self.block, self.pieces, self.out
        start = self.block_start
        assert start is not None
        n = len(block) + self.piece_records
        if self.prev is None:  # the first block: its prev is taken from its header
            if link.prev == GENESIS and n > link.seq:
                cut = n - link.seq  # records from before the chain was switched on
                out.before_chain += cut
                block = Columns(block.timestamps[cut:], block.keys[cut:], block.values[cut:],
                                None if block.headers is None else block.headers[cut:])
                pieces = drop_front(pieces, cut)
                n = link.seq
            self.prev, self.seq = link.prev, link.seq - n
            out.first_seq = self.seq
            self.seen[self.prev] = self.seq
            self._anchor(start.offset)
        elif link.prev != self.prev:
            raise self._fail(*self._classify_prev(link, n, start))
        found = digest(self.prev, block_parts(pieces)) if pieces else block_hash(self.prev, block)
        if found != link.hash or link.seq != self.seq + n:
            claimed = link.seq - self.seq
            if claimed < n:
                kind, what = RECORDS_INSERTED, f"the block holds {n} records, its header says {claimed}"
            elif claimed > n:
                kind, what = RECORDS_REMOVED, f"the block holds {n} records, its header says {claimed}"
            else:
                kind, what = EDITED, "a record of the block differs from what was hashed (key, value, timestamp or headers)"
            raise self._fail(kind, f"{what}; block offsets {start.offset}..{last_offset}")
        self.prev, self.seq = found, link.seq
        self.seen[found] = self.seq
        out.blocks += 1
        out.last_seq = self.seq
        self._reach_checkpoints(last_offset, at)
        self.block = Columns()
        self.pieces, self.piece_records = [], 0
        self.block_start = None

    def _classify_prev(self, link: Link, n: int, start: Position) -> tuple[str, str]:
        began = link.seq - n
        if start.file_start:
            return REPLACED_SEGMENT, (f"the segment file's first block does not continue the chain of the file "
                                      f"before it (one of them was replaced, or batches at their boundary removed); "
                                      f"its header starts at seq {began}, the chain is at {self.seq}")
        if link.prev in self.seen:
            return BATCH_INSERTED, (f"the block continues the chain as it was at seq {self.seen[link.prev]}, "
                                    f"but {self.seq - self.seen[link.prev]} records came between")
        if began > self.seq:
            return BATCH_REMOVED, f"{began - self.seq} records are missing before it (chain at seq {self.seq}, block starts at seq {began})"
        if began < self.seq:
            return REORDERED, f"the block belongs at seq {began}, the chain is at seq {self.seq}"
        return BATCH_REMOVED, "the block does not continue the chain before it (batches replaced or removed)"

    def _anchor(self, start_offset: int) -> None:
        """Checkpoints of offsets before the first block are history retention deleted; one at exactly
        the chain's state before it anchors the first block's (unsigned) prev."""
        while self.next_checkpoint < len(self.checkpoints):
            checkpoint = self.checkpoints[self.next_checkpoint]
            if (checkpoint.offset >= start_offset) if self.strict_offsets else (checkpoint.seq > self.seq):
                return
            if checkpoint.seq == self.seq and checkpoint.hash == self.prev:
                self.out.anchored = True
                self.out.proven_seq = self.seq
            else:
                self.out.checkpoints_before_start += 1
            self.next_checkpoint += 1

    def _reach_checkpoints(self, last_offset: int, at: Position) -> None:
        while self.next_checkpoint < len(self.checkpoints):
            checkpoint = self.checkpoints[self.next_checkpoint]
            if checkpoint.seq > self.seq:
                return
            if checkpoint.seq < self.seq:
                raise self._fail(CHECKPOINT_MISMATCH, f"a checkpoint signed seq {checkpoint.seq} at offset "
                                 f"{checkpoint.offset}, inside this block: the chain was rewritten")
            assert self.prev is not None
            if checkpoint.hash != self.prev or (self.strict_offsets and checkpoint.offset != last_offset):
                raise self._fail(CHECKPOINT_MISMATCH, f"the checkpoint signed at seq {checkpoint.seq} names hash "
                                 f"{checkpoint.hash.hex()[:16]}.. at offset {checkpoint.offset}; the log has "
                                 f"{self.prev.hex()[:16]}.. at offset {last_offset}: the chain was rewritten")
            self.out.checkpoints_matched += 1
            self.out.proven_seq = self.seq
            self.next_checkpoint += 1

    def finish(self) -> None:
        self.out.unterminated = len(self.block) + self.piece_records
        if self.prev is None:  # no block at all: checkpoints of offsets retention deleted are history
            start = self.end.log_start_offset
            while self.next_checkpoint < len(self.checkpoints) and self.checkpoints[self.next_checkpoint].offset < start:
                self.out.checkpoints_before_start += 1
                self.next_checkpoint += 1
        if self.next_checkpoint < len(self.checkpoints):
            checkpoint = self.checkpoints[-1]
            end = self.end.log_end_offset
            raise Broken(Break(TAIL_CUT, end, self.end.file, self.end.position,
                                f"a checkpoint signed seq {checkpoint.seq} at offset {checkpoint.offset}, but the "
                                f"log ends at offset {end} after seq {self.seq}"))
