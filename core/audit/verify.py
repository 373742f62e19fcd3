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

from collections.abc import Iterator
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
    ChainFormatError,
    Link,
    canonical_in_c,
    link_of,
    pieces_of,
)
from .check import Broken, ChainCheck, End, Position
from .checkpoints import CHECKPOINT_TOPIC, Checkpoint, checkpoint_of, key_id, read_checkpoints
from .report import (
    BAD_HEADER,
    BAD_SIGNATURE,
    BATCH_INSERTED,
    BATCH_REMOVED,
    CHECKPOINT_MISMATCH,
    DAMAGED,
    EDITED,
    RECORDS_INSERTED,
    RECORDS_REMOVED,
    REORDERED,
    REPLACED_SEGMENT,
    TAIL_CUT,
    Break,
    PartitionReport,
    Report,
)

__all__ = [  # the report's names stay importable from here, where ``verify`` hands them out
    "BAD_HEADER", "BAD_SIGNATURE", "BATCH_INSERTED", "BATCH_REMOVED", "CHECKPOINT_MISMATCH", "DAMAGED", "EDITED",
    "RECORDS_INSERTED", "RECORDS_REMOVED", "REORDERED", "REPLACED_SEGMENT", "TAIL_CUT", "Break", "PartitionReport",
    "Report", "ShortReadError", "verify_topic", "verify_through_backend",
]



class ShortReadError(MillpondError):
    """A consumer stopped short of a partition's end: an unread tail must never pass as verified."""

    retriable = True


#: polls of one second with nothing fetched before a read through a consumer gives up
_IDLE_POLLS = 30


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
    except Broken as exc:
        out.broken = exc.found
    return out


def _check_signatures(checkpoints: list[tuple[int, Checkpoint | str]],
                      public_key: Ed25519PublicKey | None) -> list[Checkpoint]:
    where = f"{CHECKPOINT_TOPIC}-0"
    out: list[Checkpoint] = []
    expected_id = key_id(public_key) if public_key is not None else None
    for offset, checkpoint in checkpoints:
        if isinstance(checkpoint, str):
            raise Broken(Break(BAD_SIGNATURE, offset, where, -1, checkpoint))
        if public_key is not None:
            if checkpoint.key_id != expected_id:
                raise Broken(Break(BAD_SIGNATURE, offset, where, -1, f"checkpoint of offset {checkpoint.offset} "
                                    f"names key {checkpoint.key_id}, not the given key {expected_id}"))
            if not checkpoint.signed_by(public_key):
                raise Broken(Break(BAD_SIGNATURE, offset, where, -1, f"the signature of the checkpoint of offset "
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
                    raise Broken(Break(DAMAGED, header.base_offset, str(segment.log_path), position + at,
                                        f"magic {header.magic}, not {batch_format.MAGIC}"))
                if expected is not None and header.base_offset != expected:
                    gap = header.base_offset > expected
                    where = (f"where the segment file follows {previous.log_path.name}"
                             if position + at == 0 and previous is not None else "after the previous batch")
                    raise Broken(Break(BATCH_REMOVED if gap else BATCH_INSERTED, header.base_offset,
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
                raise Broken(Break(DAMAGED, expected if expected is not None else segment.base_offset,
                                    str(segment.log_path), position,
                                    f"{size - position} bytes at the end of the file are not a whole batch"))
            position += consumed
        previous = segment


def _walk_chain(partition: Partition, checkpoints: list[Checkpoint], from_time: int | None, out: PartitionReport,
                progress: Progress | None) -> None:
    active = partition.active_segment
    end = End(partition.log_start_offset, partition.log_end_offset, str(active.log_path), active.size)
    chain = ChainCheck(end, checkpoints, out)
    batches = _batches(partition, from_time)
    try:
        _add_all(chain, batches, progress)
    except Broken as exc:
        if exc.found.kind == BATCH_REMOVED and chain.prev is not None and chain.block_start is not None:
            # a later block that continues the chain from here: the batches were moved, not removed
            if _continues_later(chain.prev, batches):
                exc.found.kind = REORDERED
                exc.found.detail += "; the block that follows at this point comes later in the log"
        raise
    chain.finish()


def _add_all(chain: ChainCheck, batches: Iterator[tuple[LogSegment, int, batch_format.BatchHeader, bytes]],
             progress: Progress | None) -> None:
    iter_records = batch_format.iter_records
    in_c = canonical_in_c()  # records cut into canonical form in C: no Record objects
    for segment, position, header, data in batches:
        if chain.first_segment is None:
            chain.first_segment = segment
        if not batch_format.crc_ok(data, 0, header):
            raise Broken(Break(DAMAGED, header.base_offset, str(segment.log_path), position,
                                "CRC-32C mismatch (an accident: a deliberate edit recomputes it)"))
        if header.is_control:
            continue
        at = Position(str(segment.log_path), position, header.base_offset,
                       position == 0 and segment is not chain.first_segment)
        try:
            if in_c:
                try:
                    pieces = pieces_of(data, header)
                except ValueError as exc:  # a CRC recomputed over records that do not parse
                    raise Broken(Break(DAMAGED, header.base_offset, str(segment.log_path), position,
                                        str(exc))) from None
                count = header.records_count
                if pieces:
                    chain.add_pieces(pieces, at, count)
            else:
                try:
                    records = list(iter_records(data))
                except CorruptRecordException as exc:
                    raise Broken(Break(DAMAGED, header.base_offset, str(segment.log_path), position,
                                        f"malformed record batch: {exc}")) from None
                count = len(records)
                if records:
                    chain.add(records, at)
        except ChainFormatError as exc:
            raise Broken(Break(BAD_HEADER, header.last_offset, str(segment.log_path), position, str(exc))) from None
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
    except (Broken, ChainFormatError):
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
    chains: dict[int, ChainCheck] = {}
    broken: dict[int, Broken] = {}
    for info in infos:
        out = PartitionReport(info.partition, info.log_start_offset, info.log_end_offset)
        report.partitions.append(out)
        mine = [(o, c) for o, c in checkpoints if not isinstance(c, Checkpoint) or c.partition == info.partition]
        where = f"kafka:{topic}-{info.partition}"
        try:
            signed = _check_signatures(mine, public_key)
        except Broken as exc:
            broken[info.partition] = exc
            continue
        end = End(info.log_start_offset, info.log_end_offset, where, -1)
        chains[info.partition] = ChainCheck(end, signed, out, strict_offsets=False)
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
                    chain.add(batch, Position(f"kafka:{topic}-{number}", -1, batch[0].offset))
                except ChainFormatError as exc:
                    broken[number] = Broken(Break(BAD_HEADER, batch[-1].offset, f"kafka:{topic}-{number}", -1,
                                                   str(exc)))
                except Broken as exc:
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
            except Broken as exc:
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
                found = checkpoint_of(record.key, record.value, topic)
                if found is not None:
                    out.append((record.offset, found))
        if position < info.log_end_offset:
            raise ShortReadError(f"verify read {CHECKPOINT_TOPIC} only to offset {position} of its log end "
                                 f"{info.log_end_offset}: nothing was fetched for {_IDLE_POLLS} s; nothing verified")
    finally:
        await consumer.close()
    return out
