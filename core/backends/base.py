"""The LogBackend seam between the runtime and a log.

Shaped after Kafka's client model (admin, producer with transactions,
consumer with groups) so that the embedded log and Apache Kafka implement the
same calls, and the runtime never knows which one it runs on.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, runtime_checkable

from ..records import PartitionBatches, Record, TopicPartition


class IsolationLevel(str, enum.Enum):
    read_uncommitted = "read_uncommitted"
    read_committed = "read_committed"


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """A topic to create: name, partition count and Kafka-named settings."""

    name: str
    partitions: int = 1
    config: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PartitionInfo:
    topic: str
    partition: int
    log_start_offset: int
    log_end_offset: int
    high_watermark: int
    last_stable_offset: int
    size_bytes: int
    segments: int
    #: what is wrong with the partition's files, one line each (quarantined data, damage)
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class GroupOffset:
    """One partition of a consumer group: where it is and how far behind."""

    topic_partition: TopicPartition
    committed: int | None
    log_end_offset: int

    @property
    def lag(self) -> int:
        return self.log_end_offset - (self.committed or 0)


class Producer(Protocol):
    """Appends records. With a transactional id it is a transactional producer:
    ``begin``/``commit``/``abort`` bracket appends to any partitions together
    with consumer-group offsets, which become visible atomically."""

    async def send(self, topic: str, record: Record, partition: int | None = None) -> None:
        """Queue a record (partition from the key when None). Durable after ``flush``/``commit``."""

    async def send_batch(self, topic: str, partition: int, records: Sequence[Record]) -> None:
        """Queue many records for one partition (the fast path)."""

    async def flush(self) -> None:
        """Append everything queued (non-transactional producers)."""

    async def init(self) -> None:
        """Register the transactional id now: fence older producers with it and finish
        their open transactions, so what a restarted task reads next is final."""

    async def begin(self) -> None: ...

    async def send_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit ``offsets`` (next offsets to read) for ``group`` as part of the open transaction."""

    async def commit(self) -> None: ...

    async def abort(self) -> None: ...

    async def close(self) -> None: ...


class RebalanceListener(Protocol):
    """What a group member does when the group moves partitions (Kafka's ConsumerRebalanceListener).

    Called from inside the consumer while it rebalances: between the two calls the
    member owns nothing, so a sink flushes and commits in ``on_partitions_revoked``
    and never again for those partitions, and seeks in ``on_partitions_assigned``.
    """

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        """``revoked`` go to the group: make their work durable and commit it now (positions are still valid)."""

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        """The group gave this member ``assigned`` (all it owns now): seek them where work resumes."""


@dataclass(frozen=True, slots=True)
class Membership:
    """How a consumer shares its group's partitions with the group's other members.

    ``member`` of ``members`` names this consumer's place among the tasks of one
    connector; ``listener`` hears of every change. A backend with a group protocol
    (Kafka) lets the group coordinator split the partitions among whoever is
    alive, on any worker; one without (the embedded log, one process) gives
    member i the partitions whose index modulo ``members`` is i, once.
    ``client_id`` names the worker, so ``groups describe`` shows who holds what.
    """

    listener: RebalanceListener
    member: int = 0
    members: int = 1
    client_id: str | None = None


def static_share(partitions: Sequence[TopicPartition], member: int, members: int) -> list[TopicPartition]:
    """Member ``member``'s fixed share of ``partitions`` when no coordinator splits them: every
    ``members``-th partition of each topic, so members differ by at most one partition per topic."""
    return [tp for tp in partitions if tp.partition % members == member]


class Consumer(Protocol):
    """Reads records of a set of topics for one consumer group (or none).

    Without a :class:`Membership` the consumer owns every partition and uses the
    group only to store offsets; with one, ``assignment()`` is this member's share
    (empty until the group has assigned it) and changes only through the listener.
    """

    #: True when the assignment moves through a group protocol (the listener is called by the
    #: consumer); False when it is fixed at creation (the caller treats it as assigned once)
    rebalances: bool

    def assignment(self) -> set[TopicPartition]: ...

    async def seek(self, tp: TopicPartition, offset: int) -> None: ...

    async def position(self, tp: TopicPartition) -> int: ...

    async def poll(self, max_records: int = 10_000, timeout: float = 1.0) -> list[Record]:
        """Records after the current positions; waits up to ``timeout`` when none are ready."""

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Store ``offsets`` (next offsets to read) as the group's committed offsets."""

    async def close(self) -> None: ...


@runtime_checkable
class BatchConsumer(Consumer, Protocol):
    """A consumer that can also hand over the log's batches undecoded (the embedded log), for a
    sink that takes them (``Sink.takes_batches``). Checked once when a sink task starts."""

    async def poll_batches(self, max_records: int = 10_000, timeout: float = 1.0) -> list[PartitionBatches]:
        """What ``poll`` would return, as batches per partition; moves the positions the same way."""


class Lifecycle:
    """``async with backend:`` opens and closes a backend (both backends inherit this)."""

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class LogMaintenance(Protocol):
    """Housekeeping a log needs from its host process: the embedded log has it;
    Kafka brokers run their own retention and compaction, so that backend has none."""

    #: bytes each job (``"retention"``, ``"compaction"``) has freed since the log was opened
    bytes_reclaimed: dict[str, int]

    async def run_retention(self, now_ms: int | None = None) -> int:
        """Delete closed segments past ``retention.ms`` / ``retention.bytes``; returns segments deleted."""

    async def run_compaction(self, now_ms: int | None = None) -> int:
        """Compact topics with ``cleanup.policy=compact``; returns segments rewritten."""


class LogBackend(Protocol):
    @property
    def maintenance(self) -> LogMaintenance | None:
        """The housekeeping this process must schedule, or None when the log does its own (Kafka)."""

    async def open(self) -> None: ...

    async def close(self) -> None: ...

    # topics
    async def create_topic(self, spec: TopicSpec, *, exist_ok: bool = False) -> None: ...

    async def delete_topic(self, name: str) -> None: ...

    async def list_topics(self) -> list[str]: ...

    async def describe_topic(self, name: str) -> list[PartitionInfo]: ...

    async def partitions_for(self, topic: str) -> int: ...

    async def topic_settings(self, name: str) -> dict[str, Any]:
        """The topic's own settings (Kafka's names), defaults left out."""

    async def alter_topic(self, spec: TopicSpec) -> dict[str, tuple[object, object]]:
        """Make the topic's settings those of ``spec``; returns {setting: (old, new)} for what changed."""

    # producing and consuming
    def producer(self, transactional_id: str | None = None) -> Producer: ...

    def consumer(
        self,
        topics: Sequence[str],
        group: str | None = None,
        isolation: IsolationLevel = IsolationLevel.read_committed,
        reset: str = "earliest",
        membership: Membership | None = None,
    ) -> Consumer: ...

    async def offset_for_time(self, tp: TopicPartition, timestamp_ms: int) -> int | None:
        """First offset whose timestamp is >= ``timestamp_ms``, or None past the end."""

    # consumer groups
    async def list_groups(self) -> list[str]: ...

    async def committed(self, group: str) -> dict[TopicPartition, int]: ...

    async def describe_group(self, group: str) -> list[GroupOffset]: ...

    async def reset_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None: ...


async def send_in_transaction(
    backend: LogBackend, transactional_id: str, records: Iterable[tuple[str, Record, int | None]]
) -> None:
    """Send ``(topic, record, partition)`` triples in one transaction of their own: all or none.

    The producer registers ``transactional_id`` first, which fences any other producer of that id
    (a task's own id stops an incarnation of it still running, as a restart would).
    """
    producer = backend.producer(transactional_id=transactional_id)
    try:
        await producer.init()
        await producer.begin()
        try:
            for topic, record, partition in records:
                await producer.send(topic, record, partition)
            await producer.commit()
        except BaseException:
            await producer.abort()
            raise
    finally:
        await producer.close()
