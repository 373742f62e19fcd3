"""KafkaConsumer: manual assignment over every partition, or a group member's share with rebalances."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError
from aiokafka.structs import TopicPartition as KafkaTP

from ...errors import GroupRebalancedError, TransactionError
from ...records import Record, TopicPartition
from ..base import IsolationLevel, Membership
from .seams import Clients

#: Longest a poll keeps waiting past its timeout for records the broker says exist.
POLL_CAP_S = 30.0


class _Relay(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hands aiokafka's rebalance callbacks to the runtime's listener, in millpond's partition names."""

    def __init__(self, owner: KafkaConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: set[KafkaTP]) -> None:
        owner = self.owner
        assert owner.membership is not None
        gone = {TopicPartition(tp.topic, tp.partition) for tp in revoked}
        try:
            if gone:
                await owner.membership.listener.on_partitions_revoked(gone)
        finally:
            owner._assignment = [tp for tp in owner._assignment if tp not in gone]

    async def on_partitions_assigned(self, assigned: set[KafkaTP]) -> None:
        owner = self.owner
        assert owner.membership is not None
        owner._assignment = sorted(TopicPartition(tp.topic, tp.partition) for tp in assigned)
        await owner.membership.listener.on_partitions_assigned(set(owner._assignment))


class KafkaConsumer:
    """Every partition of its topics, assigned manually, the group only storing offsets; or,
    with a membership, this member's share of the group's partitions (Kafka's subscribe)."""

    def __init__(self, backend: Clients, topics: Sequence[str], group: str | None,
                 isolation: IsolationLevel, reset: str, membership: Membership | None = None) -> None:
        self.backend = backend
        self.group = group
        self.isolation = isolation
        self.reset = reset
        self.membership = membership
        self.topics = list(topics)
        self.rebalances = membership is not None
        if membership is not None and group is None:
            raise ValueError("a consumer with a membership needs a group")
        self._assignment = [] if membership is not None else \
            [TopicPartition(t, p) for t in topics for p in range(backend.cached_partitions(t))]
        self._consumer: AIOKafkaConsumer | None = None

    def assignment(self) -> set[TopicPartition]:
        return set(self._assignment)

    async def _started(self) -> AIOKafkaConsumer:
        if self._consumer is None:
            kwargs = self.backend.client_kwargs(AIOKafkaConsumer)
            if self.membership is not None and self.membership.client_id:
                kwargs["client_id"] = self.membership.client_id
            consumer = AIOKafkaConsumer(**kwargs, group_id=self.group,
                                        isolation_level=self.isolation.value, enable_auto_commit=False,
                                        auto_offset_reset=self.reset)
            await consumer.start()
            if self.membership is not None:
                consumer.subscribe(self.topics, listener=_Relay(self))
            else:
                consumer.assign([KafkaTP(*tp) for tp in self._assignment])
            self._consumer = consumer
        return self._consumer

    async def seek(self, tp: TopicPartition, offset: int) -> None:
        (await self._started()).seek(KafkaTP(*tp), offset)

    async def position(self, tp: TopicPartition) -> int:
        return int(await (await self._started()).position(KafkaTP(*tp)))

    async def _pending(self, consumer: AIOKafkaConsumer) -> bool:
        """True while some partition was never fetched, or the broker reported records past its position."""
        for tp in self._assignment:
            ktp = KafkaTP(*tp)
            end = consumer.last_stable_offset(ktp) if self.isolation == IsolationLevel.read_committed \
                else consumer.highwater(ktp)
            if end is None or await consumer.position(ktp) < end:
                return True
        return False

    async def poll(self, max_records: int = 10_000, timeout: float = 1.0) -> list[Record]:
        consumer = await self._started()
        cap = time.monotonic() + max(timeout, POLL_CAP_S)
        wait = timeout
        while True:
            fetched = await consumer.getmany(timeout_ms=int(wait * 1000), max_records=max_records)
            if fetched and self.membership is not None:
                # records fetched before a rebalance took their partition away are the new owner's
                owned = set(self._assignment)
                fetched = {tp: rows for tp, rows in fetched.items() if TopicPartition(tp.topic, tp.partition) in owned}
            if fetched:
                return [Record(r.value, r.key, r.timestamp, list(r.headers), r.topic, r.partition, r.offset)
                        for rows in fetched.values() for r in rows]
            if time.monotonic() >= cap or not await self._pending(consumer):
                return []
            wait = 0.05

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self.group is None:
            raise TransactionError("commit() needs a consumer with a group")
        consumer = await self._started()
        if self.membership is not None:
            foreign = sorted(set(offsets) - set(self._assignment))
            if foreign:
                raise GroupRebalancedError(
                    f"group {self.group!r}: commit of {', '.join(f'{tp.topic}-{tp.partition}' for tp in foreign)} "
                    f"refused, this member does not own them")
        try:
            await consumer.commit({KafkaTP(*tp): offset for tp, offset in offsets.items()})
        except CommitFailedError as exc:
            raise GroupRebalancedError(
                f"group {self.group!r}: commit of {', '.join(f'{tp.topic}-{tp.partition}' for tp in sorted(offsets))} "
                f"refused, the group is rebalancing or moved them to another member") from exc

    async def close(self) -> None:
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None
