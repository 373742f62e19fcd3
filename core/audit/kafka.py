"""The audit chain on Apache Kafka: the same records, the same header, checked by the same verifier.

The chain is defined over records (see :mod:`millpond.audit.chain`), so on Kafka
it rides in the data: the last record of each block carries the ``millpond.chain``
header, exactly as on the embedded log, and a topic copied record by record from
one to the other verifies the same way.

Writing. Kafka knows nothing of ``audit.chain`` (a broker rejects settings it
does not know), so the backend keeps that setting on its side
(:func:`split_settings`): a topic is chained for a backend once a pipeline has
declared it with ``audit.chain: sha256`` (``create_topic``/``alter_topic``, which
every ``millpond run`` calls for its topics). A :class:`KafkaProducer` of that
backend then chains each partition it sends to:

- the chain state of a partition is loaded at the producer's first send to it,
  from the partition's tail read ``read_uncommitted`` (the last record carrying a
  header and any records after it, as the embedded log does at its first append;
  with no header left, from the partition's last signed checkpoint);
  aborted transactions stay in the log, so they stay in the chain;
- a block is one ``send_batch`` call (a source task's chunk), or the records
  given to ``send`` for one partition up to the next ``flush``/``commit``, cut
  into as many blocks as it takes Kafka batches (``max_batch_size``): retention
  deletes whole segments, so the log start stays on a block boundary; its
  timestamps are fixed before hashing (aiokafka would stamp a missing one later);
- once the block is acknowledged, a signed checkpoint is due every N records
  or T seconds, and for every partition with unsigned records when the
  producer closes; checkpoints go to ``__audit_checkpoints`` on the same
  cluster (with acks=all). A backend with chained topics makes its producers
  idempotent (acks=all too): a retried batch neither lands twice nor out of
  order, and no checkpoint claims records a leader change can still lose. A send
  that fails, or an abort, drops the state: the next send reloads it from the
  tail, which is what the broker kept.

**One writer per partition.** The chain is linear only if one producer at a
time appends to a chained partition: Kafka orders what arrives from different
connections as it arrives, and each producer extends the chain from the state
it loaded. A second writer (another worker, a second task with its own
producer, or a plain client) forks the chain: its blocks name a ``prev`` the
log has already moved past, or carry no header at all, and ``millpond verify``
reports the first such place: an inserted batch or record, or a chain that
differs from a signed checkpoint (the forking writer signs its own branch). Give an audit
topic's partitions a single producing task (``tasks.max: 1`` on its source).
A writer that does not know the topic is chained (a plain client, or ``millpond
produce`` without the pipeline that declares it) appends records without a
header: between two blocks of a running producer they are an inserted record;
at the tail while no chained producer has the partition, the next producer
takes them into its first block (as the embedded log does with a torn block)
and logs a warning naming their offset.
A broker that stamps LogAppendTime, or compaction, rewrites records: both are
refused for chained topics, as on the embedded log. A copy of a chained topic
(from the embedded log, say) keeps its headers only if the target is not
declared chained: a chained producer would chain the copied blocks again.

Verifying is :func:`millpond.audit.verify.verify_through_backend`, which
``millpond verify`` uses when the pipeline's ``log:`` is Kafka: each partition
read ``read_uncommitted`` from its log start offset through the same chain
check as the embedded log, checkpoints matched by seq and hash (a copy
renumbers offsets without changing a record).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.structs import TopicPartition as KafkaTP

from ..errors import ConfigError, MillpondError
from ..log.batch import Encodable
from ..records import Record
from .chain import CHAIN_HEADER, GENESIS, ChainState, Columns, Link, state_after
from .checkpoints import CHECKPOINT_TOPIC, CHECKPOINT_TOPIC_CONFIG, Checkpoint, Signer
from .embedded import columns_of

if TYPE_CHECKING:
    from ..backends.base import TopicSpec


log = logging.getLogger(__name__)


class ChainedBackend(Protocol):
    """What the chain uses of the Kafka backend (which imports this module, so it is not imported here)."""

    audit: KafkaAudit

    def client_kwargs(self, cls: type) -> dict[str, Any]: ...

    def cached_partitions(self, topic: str) -> int: ...

    async def create_topic(self, spec: TopicSpec, *, exist_ok: bool = False) -> None: ...

    async def list_topics(self) -> list[str]: ...

AUDIT_CHAIN = "audit.chain"
#: records read back per step when looking for the last chain header at a partition's tail
TAIL_WINDOW = 1000
#: how long a read of a partition may see no progress before it is an error
READ_STALL_S = 30.0


class ChainReadError(MillpondError):
    """The tail of a chained partition (or the checkpoints) could not be read back; the broker may
    be moving the partition's leadership, so the task retries."""

    retriable = True


def split_settings(name: str, config: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """The topic settings Kafka takes, and the chain mode ("none" or "sha256") millpond keeps.

    Refuses what would rewrite chained records on the broker (compaction, LogAppendTime)."""
    kafka = dict(config)
    mode = str(kafka.pop(AUDIT_CHAIN, "none"))
    if mode not in ("none", "sha256"):
        raise ConfigError(f"topic {name!r}: {AUDIT_CHAIN} is {mode!r}; it takes none or sha256")
    if mode != "none":
        if "compact" in str(kafka.get("cleanup.policy", "delete")):
            raise ConfigError(f"topic {name!r}: {AUDIT_CHAIN} {mode} needs cleanup.policy delete, not "
                              f"{kafka['cleanup.policy']} (compaction removes chained records)")
        if kafka.get("message.timestamp.type") == "LogAppendTime":
            raise ConfigError(f"topic {name!r}: {AUDIT_CHAIN} needs message.timestamp.type CreateTime: "
                              "LogAppendTime rewrites the timestamps that were hashed")
    return kafka, mode


# -- reading a partition ------------------------------------------------------------------------------------


async def _read_range(consumer: AIOKafkaConsumer, tp: KafkaTP, start: int, end: int) -> list[Any]:
    """Records of ``tp`` with offsets in [start, end), read_uncommitted (control records are skipped)."""
    out: list[Any] = []
    if start >= end:
        return out
    consumer.seek(tp, start)
    stalled = time.monotonic()
    while await consumer.position(tp) < end:
        fetched = await consumer.getmany(tp, timeout_ms=500, max_records=10_000)
        rows = [r for r in fetched.get(tp, ()) if r.offset < end]
        if rows:
            out.extend(rows)
            stalled = time.monotonic()
        elif time.monotonic() - stalled > READ_STALL_S:
            raise ChainReadError(f"{tp.topic}-{tp.partition}: no records from offset {await consumer.position(tp)} "
                                 f"for {READ_STALL_S:.0f}s while reading the chain's tail up to offset {end}")
    return out


async def load_state(consumer: AIOKafkaConsumer, topic: str, partition: int) -> ChainState:
    """The chain state at the tail of a Kafka partition: the last header and the records after it.

    Reads back from the high watermark a window at a time (growing) until a header turns up."""
    tp = KafkaTP(topic, partition)
    consumer.assign([tp])
    start = (await consumer.beginning_offsets([tp]))[tp]
    end = (await consumer.end_offsets([tp]))[tp]
    after: list[Any] = []
    hi, window = end, TAIL_WINDOW
    while hi > start:
        lo = max(start, hi - window)
        records = await _read_range(consumer, tp, lo, hi) + after
        state = state_after(records)
        if state is not None:
            if state.pending:
                log.warning("%s-%d: %d record(s) after the last chain header (up to offset %d) open the next "
                            "block", topic, partition, len(state.pending), records[-1].offset)
            return state
        after = records
        hi, window = lo, window * 4
    return ChainState()  # no header: the chain starts here (earlier records stay before it)


# -- writing ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Unsigned:
    link: Link
    offset: int
    records: int
    since: float


class KafkaCheckpointer:
    """Signed checkpoints on a Kafka cluster, for every producer of one backend (see checkpoints.py)."""

    def __init__(self, backend: ChainedBackend, signer: Signer, *, every_records: int, every_seconds: float) -> None:
        self.backend = backend
        self.signer = signer
        self.every_records = every_records
        self.every_seconds = every_seconds
        self._unsigned: dict[tuple[str, int], _Unsigned] = {}
        self._producer: AIOKafkaProducer | None = None
        self.written = 0

    async def open(self) -> None:
        from ..backends.base import TopicSpec

        await self.backend.create_topic(TopicSpec(CHECKPOINT_TOPIC, 1, dict(CHECKPOINT_TOPIC_CONFIG)), exist_ok=True)

    async def on_block(self, topic: str, partition: int, offset: int, link: Link, records: int) -> None:
        """A block acknowledged by the broker, its last record at ``offset``."""
        now = time.monotonic()
        pending = self._unsigned.get((topic, partition))
        if pending is None:
            pending = self._unsigned[(topic, partition)] = _Unsigned(link, offset, 0, now)
        pending.link, pending.offset = link, offset
        pending.records += records
        if pending.records >= self.every_records or now - pending.since >= self.every_seconds:
            await self.write(topic, partition)

    async def write(self, topic: str, partition: int) -> None:
        pending = self._unsigned.pop((topic, partition), None)
        if pending is None:
            return
        if self._producer is None:
            # acks=all: a checkpoint must never claim records the cluster can still lose
            kwargs = {**self.backend.client_kwargs(AIOKafkaProducer), "acks": "all", "enable_idempotence": True}
            self._producer = AIOKafkaProducer(**kwargs)
            await self._producer.start()
        checkpoint = self.signer.sign(topic, partition, pending.offset, pending.link, int(time.time() * 1000))
        await self._producer.send_and_wait(CHECKPOINT_TOPIC, checkpoint.to_json(), f"{topic}/{partition}".encode(),
                                           0, checkpoint.time_ms)
        self.written += 1
        log.debug("audit checkpoint %s-%d offset %d seq %d", topic, partition, pending.offset, pending.link.seq)

    async def write_all(self, partitions: Sequence[tuple[str, int]] | None = None) -> None:
        for topic, partition in list(self._unsigned if partitions is None else partitions):
            await self.write(topic, partition)

    async def close(self) -> None:
        try:
            await self.write_all()
        finally:
            if self._producer is not None:
                await self._producer.stop()
                self._producer = None


class KafkaAudit:
    """What one Kafka backend knows of audit: its chained topics, and its checkpointer once enabled."""

    def __init__(self) -> None:
        self.chained: set[str] = set()
        self.checkpointer: KafkaCheckpointer | None = None

    def declare(self, topic: str, mode: str) -> None:
        if mode == "none":
            self.chained.discard(topic)
        else:
            self.chained.add(topic)

    async def close(self) -> None:
        if self.checkpointer is not None:
            checkpointer, self.checkpointer = self.checkpointer, None
            await checkpointer.close()


@dataclass(slots=True)
class SentBlock:
    """A block handed to aiokafka (one batch): its records and its batch's delivery future."""

    topic: str
    partition: int
    link: Link
    records: int
    future: asyncio.Future[Any]


@dataclass(slots=True)
class ProducerChains:
    """The chain state of the partitions one producer appends to (one writer per partition)."""

    backend: ChainedBackend
    states: dict[tuple[str, int], ChainState] = field(default_factory=dict)
    #: records given to ``send`` per partition, sent as one block at flush/commit
    held: dict[tuple[str, int], list[Record]] = field(default_factory=dict)
    sent: list[SentBlock] = field(default_factory=list)
    #: partitions chained since the producer started (their checkpoints are written at close)
    touched: set[tuple[str, int]] = field(default_factory=set)

    def chained(self, topic: str) -> bool:
        return topic in self.backend.audit.chained

    def hold(self, topic: str, record: Record, partition: int | None) -> None:
        if partition is None:
            n = self.backend.cached_partitions(topic)
            partition = int(DefaultPartitioner()(record.key, list(range(n)), list(range(n))))
        self.held.setdefault((topic, partition), []).append(record)

    async def _state(self, topic: str, partition: int) -> ChainState:
        state = self.states.get((topic, partition))
        if state is None:
            consumer = AIOKafkaConsumer(**self.backend.client_kwargs(AIOKafkaConsumer),
                                        isolation_level="read_uncommitted", enable_auto_commit=False)
            await consumer.start()
            try:
                state = await load_state(consumer, topic, partition)
                # only an existing checkpoint topic: naming a missing one lets the broker create it with defaults
                if state.prev == GENESIS and not state.seq and CHECKPOINT_TOPIC in await self.backend.list_topics():
                    state = await _from_checkpoint(consumer, topic, partition, state)
            finally:
                await consumer.stop()
            self.states[(topic, partition)] = state
        return state

    async def send(self, producer: AIOKafkaProducer, topic: str, partition: int, records: Sequence[Record],
                   inflight: list[asyncio.Future[Any]]) -> None:
        """Send the records as blocks of one Kafka batch each, the chain header on each batch's last record.

        One batch per block, because a broker rolls segments between batches and retention
        deletes whole segments: the log start of a chained partition then always falls on a
        block boundary, and verify after years of retention starts on a whole block. Timestamps
        are fixed before hashing. The state advances as each batch is queued (the producer
        sends a partition's batches in order); :meth:`forget` undoes it on failure."""
        state = await self._state(topic, partition)
        block = columns_of(cast(Sequence[Encodable], records), int(time.time() * 1000))
        rows = [Record(block.values[i], block.keys[i], block.timestamps[i],
                       list(block.headers[i]) if block.headers is not None else [])
                for i in range(len(block))]
        start = 0
        while start < len(rows):
            end = _fitting(producer, rows, start)
            while True:
                link = state.extend(_slice(block, start, end))
                batch = _batch(producer, rows[start:end], link)
                if batch is not None:
                    break
                if end - start == 1:
                    raise ValueError(f"record for {topic}-{partition} with its {CHAIN_HEADER} header is larger "
                                     "than the producer's max_batch_size")
                end -= 1  # the header did not fit after the last record: one record less, hashed again
            future = await producer.send_batch(batch, topic, partition=partition)
            inflight.append(future)
            state.advance(link)
            self.sent.append(SentBlock(topic, partition, link, end - start, future))
            start = end
        self.touched.add((topic, partition))

    def take_held(self) -> list[tuple[tuple[str, int], list[Record]]]:
        held, self.held = self.held, {}
        return list(held.items())

    async def delivered(self) -> None:
        """Every sent block is acknowledged: checkpoints that fall due are written."""
        sent, self.sent = self.sent, []
        checkpointer = self.backend.audit.checkpointer
        if checkpointer is None:
            return
        for block in sent:
            base = int(block.future.result().offset)
            await checkpointer.on_block(block.topic, block.partition, base + block.records - 1,
                                        block.link, block.records)

    def forget(self) -> None:
        """A send failed or a transaction was aborted: reload every state from what the broker kept."""
        self.states.clear()
        self.held.clear()
        self.sent.clear()

    async def close(self) -> None:
        checkpointer = self.backend.audit.checkpointer
        if checkpointer is not None:
            await checkpointer.write_all([tp for tp in sorted(self.touched)])


async def _from_checkpoint(consumer: AIOKafkaConsumer, topic: str, partition: int, state: ChainState) -> ChainState:
    """No header left in the partition (retention deleted every block, or DeleteRecords did): the chain
    carries on from the partition's last signed checkpoint, as on the embedded log, or the verifier would
    meet old checkpoints on a chain begun again. Its own topic's records: verify checks every signature."""
    tp = KafkaTP(CHECKPOINT_TOPIC, 0)
    consumer.assign([tp])
    start = (await consumer.beginning_offsets([tp]))[tp]
    end = (await consumer.end_offsets([tp]))[tp]
    key = f"{topic}/{partition}".encode()
    latest: Checkpoint | None = None
    for record in await _read_range(consumer, tp, start, end):
        if record.key != key:
            continue
        try:
            found = Checkpoint.from_json(record.value)
        except (ValueError, KeyError, TypeError):
            continue  # verify names it
        if found.topic == topic and found.partition == partition and (latest is None or found.seq > latest.seq):
            latest = found
    if latest is None:
        return state
    log.info("%s-%d: no chain header left; the chain carries on from the checkpoint of seq %d", topic, partition,
             latest.seq)
    return ChainState(latest.hash, latest.seq, state.pending)


def _fitting(producer: AIOKafkaProducer, rows: Sequence[Record], start: int) -> int:
    """The end of the run of ``rows`` from ``start`` that fits in one batch (at least one record)."""
    trial = producer.create_batch()
    end = start
    while end < len(rows):
        r = rows[end]
        if trial.append(key=r.key, value=r.value, timestamp=r.timestamp, headers=r.headers) is None:
            break
        end += 1
    return max(end, start + 1)


def _slice(block: Columns, start: int, end: int) -> Columns:
    return Columns(block.timestamps[start:end], block.keys[start:end], block.values[start:end],
                   None if block.headers is None else block.headers[start:end])


def _batch(producer: AIOKafkaProducer, rows: Sequence[Record], link: Link) -> Any:
    """One batch of the rows, the last with the chain header; None if they do not fit with it."""
    batch = producer.create_batch()
    for r in rows[:-1]:
        if batch.append(key=r.key, value=r.value, timestamp=r.timestamp, headers=r.headers) is None:
            return None
    last = rows[-1]
    if batch.append(key=last.key, value=last.value, timestamp=last.timestamp,
                    headers=[*last.headers, (CHAIN_HEADER, link.encode())]) is None:
        return None
    return batch


async def enable_kafka_audit(backend: ChainedBackend, signer: Signer, *, every_records: int,
                             every_seconds: float) -> None:
    """Sign checkpoints of the backend's chained partitions; after open()."""
    checkpointer = KafkaCheckpointer(backend, signer, every_records=every_records, every_seconds=every_seconds)
    await checkpointer.open()
    backend.audit.checkpointer = checkpointer
