"""``millpond verify``: recompute a topic's chain from the log start, check its signed checkpoints.

Per partition, from the first segment (or the one holding ``--from-time``):

1. every checkpoint of the partition in ``__audit_checkpoints`` is read and, with
   a public key, its signature checked (a bad one is evidence broken);
2. batches are read in file order, each CRC-checked and its base offset checked
   against the previous batch's end; records are gathered into blocks up to the
   next record carrying a chain header;
3. the first block takes its ``prev`` from its header (unsigned: the log start
   after retention has no earlier block; a checkpoint signed at exactly that
   point, if any, anchors it); each later header's ``prev`` must be the hash
   recomputed so far, and its hash the recomputed one;
4. a checkpoint whose seq is reached must name the same hash and offset; one
   past the end of the log is a tail cut.

Everything through the last matching checkpoint is *proven*; records after it
are *chained, not yet signed*. The first break ends the partition's check and
names its offset, segment file, byte position and kind.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

from aiokafka.errors import CorruptRecordException
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ..errors import MillpondError
from ..log import batch as batch_format
from ..log.partition import Partition
from ..log.segment import LogSegment
from ..log.store import LogStore
from ..progress import Progress
from .chain import (
    GENESIS,
    ChainFormatError,
    Columns,
    Link,
    Piece,
    block_hash,
    block_parts,
    canonical_in_c,
    digest,
    drop_front,
    link_of,
    pieces_of,
)
from .checkpoints import CHECKPOINT_TOPIC, Checkpoint, key_id, read_checkpoints

EDITED = "edited record"
RECORDS_INSERTED = "inserted record"
RECORDS_REMOVED = "removed record"
BATCH_REMOVED = "removed batch"
BATCH_INSERTED = "inserted batch"
REORDERED = "reordered batch"
REPLACED_SEGMENT = "replaced segment"
TAIL_CUT = "tail cut after a signed checkpoint"
CHECKPOINT_MISMATCH = "chain differs from a signed checkpoint"
BAD_SIGNATURE = "bad signature"
DAMAGED = "damaged batch"
BAD_HEADER = "unreadable chain header"

_timestamp = attrgetter("timestamp")
_key = attrgetter("key")
_value = attrgetter("value")
_headers = attrgetter("headers")


@dataclass
class Break:
    kind: str
    offset: int
    segment: str
    position: int
    detail: str

    def line(self, topic: str, partition: int) -> str:
        where = self.segment if self.position < 0 else f"{self.segment}, byte {self.position}"
        return f"{topic}-{partition}: {self.kind} at offset {self.offset} ({where}): {self.detail}"


@dataclass
class PartitionReport:
    partition: int
    log_start_offset: int = 0
    log_end_offset: int = 0
    records: int = 0
    blocks: int = 0
    #: chain seq where the check began and ended
    first_seq: int | None = None
    last_seq: int | None = None
    proven_seq: int | None = None
    checkpoints_matched: int = 0
    checkpoints_before_start: int = 0
    #: records before the chain's first block (written before audit.chain was set)
    before_chain: int = 0
    #: records after the last chain header (a block a crash cut short, or records appended around the chain)
    unterminated: int = 0
    #: the first checkpoint at or after the start matched the unsigned prev of the first block
    anchored: bool = False
    broken: Break | None = None

    @property
    def proven_records(self) -> int:
        if self.proven_seq is None or self.first_seq is None:
            return 0
        return self.proven_seq - self.first_seq

    @property
    def unsigned_records(self) -> int:
        if self.last_seq is None:
            return 0
        return self.last_seq - (self.proven_seq if self.proven_seq is not None else self.first_seq or 0)


@dataclass
class Report:
    topic: str
    signatures_checked: bool
    key_id: str | None
    partitions: list[PartitionReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(p.broken is None for p in self.partitions)

    def counts(self) -> dict[str, int]:
        return {
            "records": sum(p.records for p in self.partitions),
            "blocks": sum(p.blocks for p in self.partitions),
            "proven": sum(p.proven_records for p in self.partitions),
            "chained_not_signed": sum(p.unsigned_records for p in self.partitions),
            "checkpoints": sum(p.checkpoints_matched for p in self.partitions),
            "before_chain": sum(p.before_chain for p in self.partitions),
            "unterminated": sum(p.unterminated for p in self.partitions),
        }

    def summary(self) -> str:
        if not self.ok:
            return "\n".join(p.broken.line(self.topic, p.partition) for p in self.partitions if p.broken)
        c = self.counts()
        line = (f"OK {self.topic}: {c['records']} records in {c['blocks']} block{'' if c['blocks'] == 1 else 's'}, "
                f"{c['proven']} proven by {c['checkpoints']} signed checkpoint(s), "
                f"{c['chained_not_signed']} chained, not yet signed")
        if not self.signatures_checked:
            line += " (signatures not checked: no --public-key)"
        if c["before_chain"]:
            line += f"; {c['before_chain']} before the chain began"
        if c["unterminated"]:
            line += f"; {c['unterminated']} after the last chain header"
        return line

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"topic": self.topic, "ok": self.ok, "signatures_checked": self.signatures_checked,
                               "key_id": self.key_id, **self.counts(), "partitions": []}
        for p in self.partitions:
            d = asdict(p)
            d["proven_records"], d["unsigned_records"] = p.proven_records, p.unsigned_records
            out["partitions"].append(d)
        return out

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.as_json(), indent=2) + "\n")


class ShortReadError(MillpondError):
    """A consumer stopped short of a partition's end: an unread tail must never pass as verified."""

    retriable = True


#: polls of one second with nothing fetched before a read through a consumer gives up
_IDLE_POLLS = 30


class _Broken(Exception):
    def __init__(self, found: Break) -> None:
        self.found = found


@dataclass
class _Position:
    """Where a batch (or a block in it) is: its file (or ``kafka:topic-partition``) and byte position,
    and whether it opens a segment file after the first one checked."""

    file: str
    position: int
    offset: int
    file_start: bool = False


@dataclass
class _End:
    """The log's end as the check began: where a tail cut is reported."""

    log_start_offset: int
    log_end_offset: int
    file: str
    position: int


def verify_topic(store: LogStore, topic: str, *, partitions: list[int] | None = None, from_time: int | None = None,
                 public_key: Ed25519PublicKey | None = None, progress: Progress | None = None,
                 jobs: int = 1) -> Report:
    """Check ``topic`` of a (read-only) store; see the module docstring.

    With ``jobs`` > 1, partitions are checked in that many processes at once, each opening the
    log read-only itself, where that pays: decoding Record objects holds the GIL, and so do zstd
    (cramjam) and the C cut, so threads would not run at once. With the canonical form cut in C a
    process checks ~80 MB of log a second, and a pool takes about half a second to start: below
    ``PROCESSES_FROM_BYTES`` one process is done first."""
    report = Report(topic, public_key is not None, key_id(public_key) if public_key is not None else None)
    numbers = partitions if partitions is not None else list(range(len(store.topic(topic).partitions)))
    if jobs > 1 and len(numbers) > 1 and (not canonical_in_c() or _size(store, topic, numbers) >= PROCESSES_FROM_BYTES):
        report.partitions = _in_processes(store.directory, topic, numbers, from_time, public_key, progress, jobs)
        return report
    checkpoints = read_checkpoints(store, topic)
    for number in numbers:
        partition = store.partition(topic, number)
        if not partition.writable:
            partition.refresh()
        mine = [(o, c) for o, c in checkpoints if not isinstance(c, Checkpoint) or c.partition == number]
        report.partitions.append(_verify_partition(partition, mine, from_time, public_key, progress))
    return report


#: log bytes from which ``jobs`` > 1 starts processes when the canonical form is cut in C. Measured
#: on 2 shared cores (load 2.6): 185 MB in 3 partitions took 2.4-2.6 s in one process and 2.6-3.4 s
#: in two (one of them checks two partitions, and the pool starts first); processes pay only for a
#: log several seconds long and cores to spare.
PROCESSES_FROM_BYTES = 512 << 20


def _size(store: LogStore, topic: str, numbers: list[int]) -> int:
    total = 0
    for number in numbers:
        partition = store.partition(topic, number)
        if not partition.writable:
            partition.refresh()
        total += partition.size_bytes
    return total


def _in_processes(directory: Path, topic: str, numbers: list[int], from_time: int | None,
                  public_key: Ed25519PublicKey | None, progress: Progress | None, jobs: int) -> list[PartitionReport]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    raw = None if public_key is None else public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    with ProcessPoolExecutor(min(jobs, len(numbers)), mp_context=context) as pool:
        futures = [pool.submit(_verify_one, str(directory), topic, n, from_time, raw) for n in numbers]
        out = []
        for future in futures:
            result = future.result()
            if progress is not None:
                progress.add(result.records)
            out.append(result)
    return out


def _verify_one(directory: str, topic: str, number: int, from_time: int | None, raw: bytes | None) -> PartitionReport:
    public_key = None if raw is None else Ed25519PublicKey.from_public_bytes(raw)
    store = LogStore(directory, writable=False)
    try:
        return verify_topic(store, topic, partitions=[number], from_time=from_time, public_key=public_key).partitions[0]
    finally:
        store.close()


def _verify_partition(partition: Partition, checkpoints: list[tuple[int, Checkpoint | str]], from_time: int | None,
                      public_key: Ed25519PublicKey | None, progress: Progress | None) -> PartitionReport:
    out = PartitionReport(partition.partition, partition.log_start_offset, partition.log_end_offset)
    try:
        signed = _check_signatures(checkpoints, public_key)
        _walk_chain(partition, signed, from_time, out, progress)
    except _Broken as exc:
        out.broken = exc.found
    return out


def _check_signatures(checkpoints: list[tuple[int, Checkpoint | str]],
                      public_key: Ed25519PublicKey | None) -> list[Checkpoint]:
    where = f"{CHECKPOINT_TOPIC}-0"
    out: list[Checkpoint] = []
    expected_id = key_id(public_key) if public_key is not None else None
    for offset, checkpoint in checkpoints:
        if isinstance(checkpoint, str):
            raise _Broken(Break(BAD_SIGNATURE, offset, where, -1, checkpoint))
        if public_key is not None:
            if checkpoint.key_id != expected_id:
                raise _Broken(Break(BAD_SIGNATURE, offset, where, -1, f"checkpoint of offset {checkpoint.offset} "
                                    f"names key {checkpoint.key_id}, not the given key {expected_id}"))
            if not checkpoint.signed_by(public_key):
                raise _Broken(Break(BAD_SIGNATURE, offset, where, -1, f"the signature of the checkpoint of offset "
                                    f"{checkpoint.offset} (seq {checkpoint.seq}) does not verify: forged or altered"))
        out.append(checkpoint)
    out.sort(key=lambda c: c.seq)
    return out


_CHUNK = 8 << 20


def _batches(partition: Partition, from_time: int | None
             ) -> Iterator[tuple[LogSegment, int, batch_format.BatchHeader, bytes]]:
    """(segment, position, header, bytes) of every batch, in file order, read a chunk at a time.

    Walks the files itself rather than through the segment's own walk: that one stops at the
    first damage with a message for an operator, where this names the kind for an auditor.
    """
    segments = list(partition.segments)
    start = 0
    if from_time is not None:
        offset = partition.offset_for_time(from_time)
        start = len(segments) if offset is None else partition.segment_for(offset)
    expected: int | None = None
    previous: LogSegment | None = None
    for number, segment in enumerate(segments[start:], start):
        active = number == len(segments) - 1
        size = segment.size
        position = 0
        while position < size:
            buf = segment.read_bytes(position, min(_CHUNK, size - position))
            consumed = 0
            for at, header in batch_format.walk(buf, 0, len(buf)):
                if header.magic != batch_format.MAGIC:
                    raise _Broken(Break(DAMAGED, header.base_offset, str(segment.log_path), position + at,
                                        f"magic {header.magic}, not {batch_format.MAGIC}"))
                if expected is not None and header.base_offset != expected:
                    gap = header.base_offset > expected
                    where = (f"where the segment file follows {previous.log_path.name}"
                             if position + at == 0 and previous is not None else "after the previous batch")
                    raise _Broken(Break(BATCH_REMOVED if gap else BATCH_INSERTED, header.base_offset,
                                        str(segment.log_path), position + at,
                                        f"offsets jump from {expected} to {header.base_offset} {where}"))
                expected = header.next_offset
                consumed = at + header.size
                yield segment, position + at, header, buf[at:consumed]
            if consumed == 0:
                if len(buf) >= batch_format.HEADER_SIZE and batch_format.read_header(buf).size > _CHUNK:
                    header = batch_format.read_header(buf)  # one batch larger than a chunk
                    data = segment.read_bytes(position, header.size)
                    if len(data) == header.size:
                        yield segment, position, header, data
                        expected = header.next_offset
                        position += header.size
                        continue
                if active:
                    break  # a batch the writer is still appending
                raise _Broken(Break(DAMAGED, expected if expected is not None else segment.base_offset,
                                    str(segment.log_path), position,
                                    f"{size - position} bytes at the end of the file are not a whole batch"))
            position += consumed
        previous = segment


class _Chain:
    """The running state of one partition's check."""

    def __init__(self, end: _End, checkpoints: list[Checkpoint], out: PartitionReport, *,
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
        self.block_start: _Position | None = None
        #: hash -> seq after it, of every block passed (an old prev names an inserted or replayed batch)
        self.seen: dict[bytes, int] = {}
        self.first_segment: LogSegment | None = None

    def add(self, records: list[Any], at: _Position) -> None:
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

    def add_pieces(self, pieces: list[Piece], at: _Position, count: int) -> None:
        """The pieces of one batch (``count`` records, ``at.offset`` its base offset); closes a block at
        each piece that ends with a chain header."""
        self.out.records += count
        for piece in pieces:
            if self.block_start is None:
                first = at.offset + piece.first_offset_delta
                self.block_start = _Position(at.file, at.position, first, at.file_start and first == at.offset)
            self.pieces.append(piece)
            self.piece_records += piece.n
            if piece.link is not None:
                self._close(Link.decode(piece.link), at.offset + piece.last_offset_delta, at)

    def _gather(self, records: list[Any], at: _Position, first_offset: int) -> None:
        if self.block_start is None:
            self.block_start = _Position(at.file, at.position, first_offset, at.file_start and first_offset == at.offset)
        block = self.block
        block.timestamps.extend(map(_timestamp, records))
        block.keys.extend(map(_key, records))
        block.values.extend(map(_value, records))
        headers = list(map(_headers, records))
        if any(headers) or block.headers is not None:
            if block.headers is None:
                block.headers = [()] * (len(block.timestamps) - len(records))
            block.headers.extend(headers)

    def _fail(self, kind: str, detail: str, offset: int | None = None, at: _Position | None = None) -> _Broken:
        where = at or self.block_start
        assert where is not None
        return _Broken(Break(kind, where.offset if offset is None else offset, where.file,
                             where.position, detail))

    def _close(self, link: Link, last_offset: int, at: _Position) -> None:
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

    def _classify_prev(self, link: Link, n: int, start: _Position) -> tuple[str, str]:
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

    def _reach_checkpoints(self, last_offset: int, at: _Position) -> None:
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
            raise _Broken(Break(TAIL_CUT, end, self.end.file, self.end.position,
                                f"a checkpoint signed seq {checkpoint.seq} at offset {checkpoint.offset}, but the "
                                f"log ends at offset {end} after seq {self.seq}"))


def _walk_chain(partition: Partition, checkpoints: list[Checkpoint], from_time: int | None, out: PartitionReport,
                progress: Progress | None) -> None:
    active = partition.active_segment
    end = _End(partition.log_start_offset, partition.log_end_offset, str(active.log_path), active.size)
    chain = _Chain(end, checkpoints, out)
    batches = _batches(partition, from_time)
    try:
        _add_all(chain, batches, progress)
    except _Broken as exc:
        if exc.found.kind == BATCH_REMOVED and chain.prev is not None and chain.block_start is not None:
            # a later block that continues the chain from here: the batches were moved, not removed
            if _continues_later(chain.prev, batches):
                exc.found.kind = REORDERED
                exc.found.detail += "; the block that follows at this point comes later in the log"
        raise
    chain.finish()


def _add_all(chain: _Chain, batches: Iterator[tuple[LogSegment, int, batch_format.BatchHeader, bytes]],
             progress: Progress | None) -> None:
    iter_records = batch_format.iter_records
    in_c = canonical_in_c()  # records cut into canonical form in C: no Record objects
    for segment, position, header, data in batches:
        if chain.first_segment is None:
            chain.first_segment = segment
        if not batch_format.crc_ok(data, 0, header):
            raise _Broken(Break(DAMAGED, header.base_offset, str(segment.log_path), position,
                                "CRC-32C mismatch (an accident: a deliberate edit recomputes it)"))
        if header.is_control:
            continue
        at = _Position(str(segment.log_path), position, header.base_offset,
                       position == 0 and segment is not chain.first_segment)
        try:
            if in_c:
                try:
                    pieces = pieces_of(data, header)
                except ValueError as exc:  # a CRC recomputed over records that do not parse
                    raise _Broken(Break(DAMAGED, header.base_offset, str(segment.log_path), position,
                                        str(exc))) from None
                count = header.records_count
                if pieces:
                    chain.add_pieces(pieces, at, count)
            else:
                try:
                    records = list(iter_records(data))
                except CorruptRecordException as exc:
                    raise _Broken(Break(DAMAGED, header.base_offset, str(segment.log_path), position,
                                        f"malformed record batch: {exc}")) from None
                count = len(records)
                if records:
                    chain.add(records, at)
        except ChainFormatError as exc:
            raise _Broken(Break(BAD_HEADER, header.last_offset, str(segment.log_path), position, str(exc))) from None
        if progress is not None and count:
            progress.add(count)


def _continues_later(prev: bytes, batches: Iterator[tuple[LogSegment, int, batch_format.BatchHeader, bytes]]) -> bool:
    try:
        for _, _, header, data in batches:
            if header.is_control or not batch_format.crc_ok(data, 0, header):
                continue
            for record in batch_format.iter_records(data):
                raw = link_of(record.headers) if record.headers else None
                if raw is not None and Link.decode(raw).prev == prev:
                    return True
    except (_Broken, ChainFormatError):
        pass
    return False


async def verify_through_backend(backend: Any, topic: str, *, public_key: Ed25519PublicKey | None = None,
                                 progress: Progress | None = None) -> Report:
    """Check ``topic`` through a backend's consumer (read_uncommitted): the chain as it travels, on
    Kafka or in a copy. Offsets and batch framing may differ from the log the checkpoints were signed
    on, so checkpoints are matched by seq and hash only, and places are named by offset."""
    from ..backends.base import IsolationLevel
    from ..records import TopicPartition

    report = Report(topic, public_key is not None, key_id(public_key) if public_key is not None else None)
    infos = await backend.describe_topic(topic)
    checkpoints = await _checkpoints_through(backend, topic)
    chains: dict[int, _Chain] = {}
    broken: dict[int, _Broken] = {}
    for info in infos:
        out = PartitionReport(info.partition, info.log_start_offset, info.log_end_offset)
        report.partitions.append(out)
        mine = [(o, c) for o, c in checkpoints if not isinstance(c, Checkpoint) or c.partition == info.partition]
        where = f"kafka:{topic}-{info.partition}"
        try:
            signed = _check_signatures(mine, public_key)
        except _Broken as exc:
            broken[info.partition] = exc
            continue
        end = _End(info.log_start_offset, info.log_end_offset, where, -1)
        chains[info.partition] = _Chain(end, signed, out, strict_offsets=False)
    consumer = backend.consumer([topic], None, IsolationLevel.read_uncommitted, "earliest")
    try:
        ends = {info.partition: info.log_end_offset for info in infos}
        infos_by = {info.partition: info for info in infos}
        for info in infos:
            await consumer.seek(TopicPartition(topic, info.partition), info.log_start_offset)
        remaining = {p for p, chain in chains.items() if ends[p] > infos_by[p].log_start_offset}
        idle = 0
        while remaining and idle < _IDLE_POLLS:
            records = await consumer.poll(10_000, 1.0)
            idle = 0 if records else idle + 1
            by_partition: dict[int, list[Any]] = {}
            for record in records:
                by_partition.setdefault(record.partition, []).append(record)
            for number, batch in by_partition.items():
                chain = chains.get(number)
                if chain is None or number in broken:
                    continue
                try:
                    chain.add(batch, _Position(f"kafka:{topic}-{number}", -1, batch[0].offset))
                except ChainFormatError as exc:
                    broken[number] = _Broken(Break(BAD_HEADER, batch[-1].offset, f"kafka:{topic}-{number}", -1,
                                                   str(exc)))
                except _Broken as exc:
                    broken[number] = exc
                if progress is not None:
                    progress.add(len(batch))
                if batch[-1].offset + 1 >= ends[number]:
                    remaining.discard(number)
            remaining -= set(broken)
            # a transaction marker can end a partition: the position passes it, no record does
            for number in list(remaining):
                if await consumer.position(TopicPartition(topic, number)) >= ends[number]:
                    remaining.discard(number)
        if remaining:
            number = min(remaining)
            at = await consumer.position(TopicPartition(topic, number))
            raise ShortReadError(f"verify read partition {topic}-{number} only to offset {at} of its log end "
                                 f"{ends[number]}: nothing was fetched for {_IDLE_POLLS} s; nothing verified")
    finally:
        await consumer.close()
    for out in report.partitions:
        chain = chains.get(out.partition)
        if out.partition not in broken and chain is not None:
            try:
                chain.finish()
            except _Broken as exc:
                broken[out.partition] = exc
        if out.partition in broken:
            out.broken = broken[out.partition].found
    return report


async def _checkpoints_through(backend: Any, topic: str) -> list[tuple[int, Checkpoint | str]]:
    from ..backends.base import IsolationLevel
    from ..records import TopicPartition

    if CHECKPOINT_TOPIC not in await backend.list_topics():
        return []
    (info,) = await backend.describe_topic(CHECKPOINT_TOPIC)
    consumer = backend.consumer([CHECKPOINT_TOPIC], None, IsolationLevel.read_uncommitted, "earliest")
    out: list[tuple[int, Checkpoint | str]] = []
    prefix = f"{topic}/".encode()
    try:
        await consumer.seek(TopicPartition(CHECKPOINT_TOPIC, 0), info.log_start_offset)
        position = info.log_start_offset
        idle = 0
        while position < info.log_end_offset and idle < _IDLE_POLLS:
            records = await consumer.poll(10_000, 1.0)
            idle = 0 if records else idle + 1
            if not records:
                position = max(position, await consumer.position(TopicPartition(CHECKPOINT_TOPIC, 0)))
            for record in records:
                position = max(position, record.offset + 1)
                if record.key is None or not bytes(record.key).startswith(prefix):
                    continue
                try:
                    checkpoint = Checkpoint.from_json(record.value)
                except (ValueError, KeyError, TypeError) as exc:
                    out.append((record.offset, f"unreadable checkpoint ({exc})"))
                    continue
                if checkpoint.topic == topic:
                    out.append((record.offset, checkpoint))
        if position < info.log_end_offset:
            raise ShortReadError(f"verify read {CHECKPOINT_TOPIC} only to offset {position} of its log end "
                                 f"{info.log_end_offset}: nothing was fetched for {_IDLE_POLLS} s; nothing verified")
    finally:
        await consumer.close()
    return out
