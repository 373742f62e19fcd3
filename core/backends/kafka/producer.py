"""KafkaProducer: aiokafka's producer behind the runtime's producer contract (sends, transactions, fencing)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import InvalidProducerEpoch, ProducerFenced
from aiokafka.structs import TopicPartition as KafkaTP

from ...audit.kafka import ChainedBackend, ProducerChains
from ...errors import ProducerFencedError, TransactionError
from ...records import Record, TopicPartition


class KafkaProducer:
    """An aiokafka producer, started on first use (``producer()`` is synchronous).

    Sends are queued by aiokafka; their delivery futures are awaited at
    ``flush``/``commit`` so a failed append surfaces there.
    """

    def __init__(self, backend: ChainedBackend, transactional_id: str | None) -> None:
        self.backend = backend
        self.transactional_id = transactional_id
        self._producer: AIOKafkaProducer | None = None
        self._inflight: list[asyncio.Future[Any]] = []
        self._in_transaction = False
        self._fenced_out = False
        #: the hash chain of the audit topics this producer appends to (millpond.audit.kafka)
        self._chains = ProducerChains(backend)

    async def _fenced(self, what: str, call: Awaitable[Any]) -> Any:
        """Run ``call``; a fenced producer becomes a terminal TransactionError, as in the embedded log."""
        try:
            return await call
        except (ProducerFenced, InvalidProducerEpoch) as exc:
            # aiokafka's transaction state is now fatal: nothing is left to abort
            self._fenced_out, self._in_transaction = True, False
            raise ProducerFencedError(
                f"producer {self.transactional_id!r} was fenced by a newer one during {what}: {exc}") from exc

    async def _started(self) -> AIOKafkaProducer:
        if self._producer is None:
            kwargs = self.backend.client_kwargs(AIOKafkaProducer)
            if self.transactional_id is not None:
                kwargs.update(transactional_id=self.transactional_id, enable_idempotence=True)
            elif self.backend.audit.chained:  # a retried batch must not land twice in a chain (millpond.audit.kafka)
                kwargs.update(enable_idempotence=True, acks="all")
            producer = AIOKafkaProducer(**kwargs)
            # start() registers the transactional id, fencing any older producer with it
            await self._fenced("start", producer.start())
            self._producer = producer
        return self._producer

    async def init(self) -> None:
        await self._started()

    async def send(self, topic: str, record: Record, partition: int | None = None) -> None:
        if partition is None:
            partition = record.partition  # None: Kafka's partitioner (murmur2 of the key)
        producer = await self._started()
        if self._chains.chained(topic):  # one block per partition, sent at flush/commit
            self._chains.hold(topic, record, partition)
            return
        self._inflight.append(await producer.send(topic, record.value, record.key, partition,
                                                  record.timestamp, record.headers or None))

    async def send_batch(self, topic: str, partition: int, records: Sequence[Record]) -> None:
        producer = await self._started()
        if self._chains.chained(topic):
            if records:
                await self._chains.send(producer, topic, partition, records, self._inflight)
            return
        batch = producer.create_batch()
        for record in records:
            while batch.append(key=record.key, value=record.value, timestamp=record.timestamp,
                               headers=record.headers) is None:
                if batch.record_count() == 0:
                    raise ValueError(f"record for {topic}-{partition} is larger than the producer's max_batch_size")
                self._inflight.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
        if batch.record_count():
            self._inflight.append(await producer.send_batch(batch, topic, partition=partition))

    async def _send_held(self) -> None:
        """Records ``send`` held for chained topics: one block per partition."""
        for (topic, partition), records in self._chains.take_held():
            await self.send_batch(topic, partition, records)

    async def _delivered(self) -> None:
        await self._send_held()
        inflight, self._inflight = self._inflight, []
        if inflight:
            try:
                await self._fenced("send", asyncio.gather(*inflight))
            except BaseException:
                self._chains.forget()  # what the broker kept is read back at the next send
                raise

    async def flush(self) -> None:
        if self._in_transaction:
            raise TransactionError("flush inside a transaction: call commit() instead")
        await self._send_held()
        if self._producer is not None:
            await self._producer.flush()
        await self._delivered()
        await self._chains.delivered()

    async def begin(self) -> None:
        if self.transactional_id is None:
            raise TransactionError("begin() needs a producer created with a transactional id")
        if self._in_transaction:
            raise TransactionError(f"transaction of {self.transactional_id!r} is already open")
        if self._fenced_out:
            raise TransactionError(f"producer {self.transactional_id!r} was fenced; create a new one")
        producer = await self._started()
        await self._fenced("begin", producer.begin_transaction())
        self._in_transaction = True

    async def send_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        if not self._in_transaction or self._producer is None:
            raise TransactionError("send_offsets() outside a transaction")
        await self._fenced("send_offsets", self._producer.send_offsets_to_transaction(
            {KafkaTP(*tp): offset for tp, offset in offsets.items()}, group))

    async def commit(self) -> None:
        if not self._in_transaction or self._producer is None:
            raise TransactionError("commit() without begin()")
        await self._delivered()
        await self._fenced("commit", self._producer.commit_transaction())
        self._in_transaction = False
        await self._chains.delivered()

    async def abort(self) -> None:
        self._inflight = []
        self._chains.forget()  # sent blocks may or may not have reached the log: read it back
        if self._in_transaction and self._producer is not None and not self._fenced_out:
            self._in_transaction = False
            await self._fenced("abort", self._producer.abort_transaction())

    async def close(self) -> None:
        try:
            if self._in_transaction:
                await self.abort()
            elif self._inflight or self._chains.held:
                await self.flush()
            await self._chains.close()
        finally:
            if self._producer is not None:
                await self._producer.stop()
                self._producer = None
