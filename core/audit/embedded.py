"""The chain on the embedded log: where records become a block, and where a restart finds the chain.

Every append of the embedded backend to a partition (a producer's flush, a
transaction's data) goes through :meth:`Chains.append`. Appends run on the
event loop's thread, so one :class:`~millpond.audit.chain.ChainState` per
partition keeps the chain linear whichever producer appends. The state is
loaded at the partition's first append from its tail: the last record that
carries a chain header, and the records after it (a crash that tore the
second batch of a two-batch block leaves them), which open the next block.
Recovery has already cut the tail back to whole batches by then, so the state
is the header of the last block that survived.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from weakref import WeakKeyDictionary

from ..log import batch as batch_format
from ..log.batch import Encodable, Row
from ..log.partition import Partition
from ..log.store import LogStore
from ..records import JsonRecords
from .chain import CHAIN_HEADER, GENESIS, ChainState, Columns, Link, block_hash, block_hash_then, link_of

log = logging.getLogger(__name__)

#: blocks at least this long are hashed in a thread while their batch is built
PARALLEL_RECORDS = 1000
_HASHER: ThreadPoolExecutor | None = None


def _hasher() -> ThreadPoolExecutor:
    global _HASHER
    if _HASHER is None:
        _HASHER = ThreadPoolExecutor(1, thread_name_prefix="millpond-audit-hash")
    return _HASHER


#: (partition, last offset of the block, its link, records in it): called after each chained append
BlockListener = Callable[[Partition, int, Link, int], None]


def chained(partition: Partition) -> bool:
    return partition.settings.audit_chain != "none"


def columns_of(rows: Sequence[Encodable], now: int) -> Columns:
    """The block's records as columns, timestamps resolved as the batch builder would (None: ``now``)."""
    if isinstance(rows, JsonRecords):  # read, never changed: no copies
        return Columns(rows.timestamps, rows.keys, rows.values, None)
    timestamps = [row.timestamp for row in rows]
    if None in timestamps:
        timestamps = [now if t is None else t for t in timestamps]
    headers: list[Sequence[tuple[str, bytes | None]]] = [row.headers for row in rows]
    return Columns(
        timestamps,  # type: ignore[arg-type]  # None replaced above
        [row.key for row in rows],
        [row.value for row in rows],
        headers if any(headers) else None,
    )


def load_state(partition: Partition, anchor: tuple[bytes, int] | None = None) -> ChainState:
    """The chain state at the partition's tail: the last chain header and the records after it.

    With no header left in the partition (retention deleted every sealed segment and a crash tore
    the active one's blocks away), ``anchor`` carries on: the (hash, seq) of the partition's last
    signed checkpoint, whose data was durable before it was written."""
    after = Columns()
    for segment in reversed(list(partition.segments)):
        batches = [(pos, header) for pos, header in segment.walk() if not header.is_control]
        for pos, header in reversed(batches):
            records = list(batch_format.iter_records(segment.read_bytes(pos, header.size)))
            for i in range(len(records) - 1, -1, -1):
                raw = link_of(records[i].headers)
                if raw is not None:
                    link = Link.decode(raw)
                    tail = records[i + 1 :]
                    if tail or after:
                        log.warning("%s: %d record(s) after the last chain header at offset %d open the next "
                                    "block", partition.name, len(tail) + len(after), records[i].offset)
                    return ChainState(link.hash, link.seq, _columns_of_records(tail, after))
            after = _columns_of_records(records, after)
    if anchor is not None:
        return ChainState(anchor[0], anchor[1], after)
    # No header at all: the chain starts here; records written before it was switched on stay outside
    # (verify reports them as before the chain).
    return ChainState()


def _columns_of_records(records: Sequence[Any], after: Columns) -> Columns:
    out = Columns([r.timestamp for r in records], [r.key for r in records], [r.value for r in records],
                  [r.headers for r in records] if any(r.headers for r in records) else None)
    out.extend(after)
    return out


class Chains:
    """The chain state of every chained partition an embedded backend appends to."""

    def __init__(self, anchor: Callable[[Partition], tuple[bytes, int] | None] | None = None) -> None:
        self._states: WeakKeyDictionary[Partition, ChainState] = WeakKeyDictionary()
        self.listener: BlockListener | None = None
        #: (hash, seq) of a partition's last signed checkpoint, where no header is left (see load_state)
        self.anchor = anchor

    def state(self, partition: Partition) -> ChainState:
        state = self._states.get(partition)
        if state is None:
            state = load_state(partition)
            if state.prev == GENESIS and not state.seq and self.anchor is not None:
                found = self.anchor(partition)
                if found is not None:
                    state = load_state(partition, found)
            self._states[partition] = state
        return state

    @staticmethod
    def _stamped(head: Sequence[Encodable], block: Columns) -> Sequence[Encodable]:
        """``head`` with the timestamps the hash used (a record without one was given ``now``)."""
        if isinstance(head, JsonRecords) or not any(row.timestamp is None for row in head):
            return head
        return [Row(r.key, r.value, t, r.headers) for r, t in zip(head, block.timestamps)]

    def append(
        self,
        partition: Partition,
        rows: Sequence[Encodable],
        *,
        producer_id: int = batch_format.NO_PRODUCER_ID,
        producer_epoch: int = -1,
        transactional: bool = False,
    ) -> int:
        """``partition.append``, with the chain header on the last record when the topic is chained.

        A crash can tear such a write between its two batches; recovery keeps the
        first, and its records open the next block (see :func:`load_state`).
        """
        if not rows or not chained(partition):
            return partition.append(rows, producer_id=producer_id, producer_epoch=producer_epoch,
                                    transactional=transactional)
        now = int(time.time() * 1000)
        state = self.state(partition)
        block = columns_of(rows, now)
        last = len(rows) - 1
        codec = batch_format.CODECS.get(partition.settings.compression_type, 0)

        def build(part: Sequence[Encodable]) -> bytearray:
            return batch_format.build_batch(part, compression=codec, producer_id=producer_id,
                                            producer_epoch=producer_epoch, transactional=transactional)

        def tail(link: Link) -> Row:
            headers = block.headers[last] if block.headers is not None else ()
            return Row(block.keys[last], block.values[last], block.timestamps[last],
                       [*headers, (CHAIN_HEADER, link.encode())])

        # A long block is two batches in one write: all records but the last are built and compressed
        # while the block is hashed in a thread (block_hash cuts the canonical form and hashes it in C
        # without the GIL, and zstd lets go of it too, so a second core hides the hash), then the last
        # record with the header. Columns carry no headers, so they always take two. The chain is over
        # records: the framing is invisible to it.
        if last >= PARALLEL_RECORDS and type(rows) is JsonRecords and not state.pending:
            # The head batch from the caller's own columns, their last record taken off for the while
            # (put back before returning, whatever happens): a slice would copy three lists of
            # references, a cache miss per record (~1 ms of 10,000, more than anything else the
            # chain adds to the event loop's thread). The hash reads the columns, the last record apart.
            final = (rows.timestamps.pop(), rows.keys.pop(), rows.values.pop())
            try:
                hashing = _hasher().submit(block_hash_then, state.prev, block, final)
                try:
                    head = build(rows)
                finally:
                    digest = hashing.result()  # before the lists change again
            finally:
                rows.timestamps.append(final[0])
                rows.keys.append(final[1])
                rows.values.append(final[2])
            link = Link(state.prev, digest, state.seq + len(rows))
            buffers = [head, build([tail(link)])]
        elif last >= PARALLEL_RECORDS:
            whole = state.whole(block)
            hashing = _hasher().submit(block_hash, state.prev, whole)
            try:
                head = build(self._stamped(rows[:last], block))
            finally:
                link = Link(state.prev, hashing.result(), state.seq + len(whole))
            buffers = [head, build([tail(link)])]
        else:
            link = state.extend(block)
            if isinstance(rows, JsonRecords):
                buffers = [build(rows[:last]), build([tail(link)])] if last else [build([tail(link)])]
            else:
                buffers = [build([*self._stamped(rows[:last], block), tail(link)])]
        first = partition.append_batches(buffers)
        state.advance(link)
        if self.listener is not None:
            self.listener(partition, partition.log_end_offset - 1, link, len(rows))
        return first


def last_checkpoint(store: LogStore, partition: Partition) -> tuple[bytes, int] | None:
    """(hash, seq) of the partition's last checkpoint in ``__audit_checkpoints``, if any (unchecked:
    the writer's own topic; verify checks every signature)."""
    from .checkpoints import Checkpoint, read_checkpoints

    found = [c for _, c in read_checkpoints(store, partition.topic)
             if isinstance(c, Checkpoint) and c.partition == partition.partition]
    if not found:
        return None
    latest = max(found, key=lambda c: c.seq)
    return latest.hash, latest.seq
