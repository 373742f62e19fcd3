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
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from ..errors import ConfigError
from ..log import batch as batch_format
from ..log.batch import Encodable, Row
from ..log.partition import Partition
from ..records import JsonRecords
from .chain import CHAIN_HEADER, ChainState, Columns, Link, link_of

if TYPE_CHECKING:
    from ..config import AuditSettings

log = logging.getLogger(__name__)

#: (partition, last offset of the block, its link, records in it): called after each chained append
BlockListener = Callable[[Partition, int, Link, int], None]


def chained(partition: Partition) -> bool:
    return partition.settings.audit_chain != "none"


def columns_of(rows: Sequence[Encodable], now: int) -> Columns:
    """The block's records as columns, timestamps resolved as the batch builder would (None: ``now``)."""
    if isinstance(rows, JsonRecords):
        return Columns(list(rows.timestamps), list(rows.keys), list(rows.values), None)
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


def load_state(partition: Partition) -> ChainState:
    """The chain state at the partition's tail: the last chain header and the records after it."""
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

    def __init__(self) -> None:
        self._states: WeakKeyDictionary[Partition, ChainState] = WeakKeyDictionary()
        self.listener: BlockListener | None = None

    def state(self, partition: Partition) -> ChainState:
        state = self._states.get(partition)
        if state is None:
            state = self._states[partition] = load_state(partition)
        return state

    @staticmethod
    def _unstamped(rows: Sequence[Encodable]) -> bool:
        return any(row.timestamp is None for row in rows)

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

        Records held as columns are built as two batches in one write: all but the
        last in one C call, the last with its header by the record builder (columns
        carry no headers). The chain is over records, so the block is the same.
        """
        if not rows or not chained(partition):
            return partition.append(rows, producer_id=producer_id, producer_epoch=producer_epoch,
                                    transactional=transactional)
        now = int(time.time() * 1000)
        state = self.state(partition)
        block = columns_of(rows, now)
        link = state.extend(block)
        last = len(rows) - 1
        tail = Row(block.keys[last], block.values[last], block.timestamps[last],
                   [*(block.headers[last] if block.headers is not None else ()), (CHAIN_HEADER, link.encode())])
        codec = batch_format.CODECS.get(partition.settings.compression_type, 0)

        def build(part: Sequence[Encodable]) -> bytearray:
            return batch_format.build_batch(part, compression=codec, producer_id=producer_id,
                                            producer_epoch=producer_epoch, transactional=transactional)

        if isinstance(rows, JsonRecords):
            buffers = [build(rows[:last]), build([tail])] if last else [build([tail])]
        else:
            head: Sequence[Encodable] = rows[:last]
            if self._unstamped(head):  # the header's hash used ``now``: the batch must say the same
                head = [Row(r.key, r.value, t, r.headers) for r, t in zip(head, block.timestamps)]
            buffers = [build([*head, tail])]
        first = partition.append_batches(buffers)
        state.advance(link)
        if self.listener is not None:
            self.listener(partition, partition.log_end_offset - 1, link, len(rows))
        return first


async def enable_audit(backend: Any, settings: AuditSettings) -> None:
    """Sign checkpoints as the pipeline's ``audit:`` block says; the backend is open. Closes it on failure."""
    from ..backends.embedded import EmbeddedBackend
    from .checkpoints import Signer, load_private_key

    try:
        from ..backends.kafka import KafkaBackend

        if isinstance(backend, KafkaBackend):
            from .kafka import enable_kafka_audit

            await enable_kafka_audit(backend, Signer(load_private_key(settings.signing_key_file)),
                                     every_records=settings.checkpoint_records,
                                     every_seconds=settings.checkpoint_seconds)
            return
        if not isinstance(backend, EmbeddedBackend):
            raise ConfigError(f"audit: signed checkpoints are not written by a {type(backend).__name__}")
        backend.enable_audit(Signer(load_private_key(settings.signing_key_file)),
                             every_records=settings.checkpoint_records, every_seconds=settings.checkpoint_seconds)
    except BaseException:
        await backend.close()
        raise
