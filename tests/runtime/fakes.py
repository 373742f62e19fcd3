"""A small in-memory LogBackend for unit tests of the runtime's own logic.

It keeps the semantics the runtime relies on: transactional appends become
visible together at commit (each commit also takes one offset for a marker,
as in Kafka, so offsets have gaps), aborted sends vanish, read-committed
consumers never see an open transaction, and group offsets are stored per
group. It is no stand-in for the embedded log in integration tests.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from millpond.backends.base import GroupOffset, IsolationLevel, Membership, PartitionInfo, TopicSpec
from millpond.errors import TopicExistsError, TransactionError, UnknownTopicError
from millpond.records import Record, TopicPartition, partition_for_key

MARKER = None  # a transaction marker occupies an offset and is never returned


@dataclass
class FakeBackend:
    logs: dict[TopicPartition, list[Record | None]] = field(default_factory=dict)
    topics: dict[str, TopicSpec] = field(default_factory=dict)
    groups: dict[str, dict[TopicPartition, int]] = field(default_factory=dict)
    #: make the next N transactional commits raise (fault injection)
    fail_commits: int = 0
    commits: int = 0
    retention_runs: int = 0
    compaction_runs: int = 0

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def create_topic(self, spec: TopicSpec, *, exist_ok: bool = False) -> None:
        if spec.name in self.topics:
            if exist_ok:
                return
            raise TopicExistsError(spec.name)
        self.topics[spec.name] = spec
        for p in range(spec.partitions):
            self.logs[TopicPartition(spec.name, p)] = []

    async def delete_topic(self, name: str) -> None:
        spec = self.topics.pop(name)
        for p in range(spec.partitions):
            del self.logs[TopicPartition(name, p)]

    async def list_topics(self) -> list[str]:
        return sorted(self.topics)

    async def describe_topic(self, name: str) -> list[PartitionInfo]:
        if name not in self.topics:
            raise UnknownTopicError(name)
        out = []
        for p in range(self.topics[name].partitions):
            n = len(self.logs[TopicPartition(name, p)])
            out.append(PartitionInfo(name, p, 0, n, n, n, 0, 1))
        return out

    async def partitions_for(self, topic: str) -> int:
        if topic not in self.topics:
            raise UnknownTopicError(topic)
        return self.topics[topic].partitions

    def producer(self, transactional_id: str | None = None) -> FakeProducer:
        return FakeProducer(self, transactional_id)

    def consumer(
        self,
        topics: Sequence[str],
        group: str | None = None,
        isolation: IsolationLevel = IsolationLevel.read_committed,
        reset: str = "earliest",
        membership: Membership | None = None,
    ) -> FakeConsumer:
        return FakeConsumer(self, list(topics), group, reset, membership)

    async def offset_for_time(self, tp: TopicPartition, timestamp_ms: int) -> int | None:
        for i, r in enumerate(self.logs[tp]):
            if r is not None and (r.timestamp or 0) >= timestamp_ms:
                return i
        return None

    async def list_groups(self) -> list[str]:
        return sorted(self.groups)

    async def committed(self, group: str) -> dict[TopicPartition, int]:
        return dict(self.groups.get(group, {}))

    async def describe_group(self, group: str) -> list[GroupOffset]:
        return [
            GroupOffset(tp, off, len(self.logs[tp])) for tp, off in sorted(self.groups.get(group, {}).items())
        ]

    async def reset_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        self.groups.setdefault(group, {}).update(offsets)

    @property
    def maintenance(self) -> FakeBackend:
        return self

    bytes_reclaimed = {"retention": 0, "compaction": 0}

    async def run_retention(self, now_ms: int | None = None) -> int:
        self.retention_runs += 1
        return 0

    async def run_compaction(self, now_ms: int | None = None) -> int:
        self.compaction_runs += 1
        return 0

    async def topic_settings(self, name: str) -> dict[str, Any]:
        return dict(self.topics[name].config)

    async def alter_topic(self, spec: TopicSpec) -> dict[str, tuple[object, object]]:
        old = self.topics[spec.name]
        self.topics[spec.name] = spec
        return {k: (old.config.get(k), v) for k, v in spec.config.items() if old.config.get(k) != v}

    # helpers for tests
    def values(self, topic: str, partition: int | None = None) -> list[bytes | None]:
        out = []
        for tp, entries in sorted(self.logs.items()):
            if tp.topic == topic and (partition is None or tp.partition == partition):
                out += [r.value for r in entries if r is not None]
        return out


class FakeProducer:
    def __init__(self, backend: FakeBackend, transactional_id: str | None) -> None:
        self.backend = backend
        self.transactional_id = transactional_id
        self.in_txn = False
        self.pending: list[tuple[TopicPartition, Record]] = []
        self.pending_offsets: list[tuple[str, dict[TopicPartition, int]]] = []
        self.closed = False

    def _tp(self, topic: str, record: Record, partition: int | None) -> TopicPartition:
        if topic not in self.backend.topics:
            raise UnknownTopicError(topic)
        if partition is None:
            n = self.backend.topics[topic].partitions
            partition = 0 if record.key is None else partition_for_key(record.key, n)
        return TopicPartition(topic, partition)

    async def send(self, topic: str, record: Record, partition: int | None = None) -> None:
        assert isinstance(record.value, (bytes, type(None))), "the log holds bytes"
        self.pending.append((self._tp(topic, record, partition), copy.copy(record)))

    async def send_batch(self, topic: str, partition: int, records: Sequence[Record]) -> None:
        for r in records:
            await self.send(topic, r, partition)

    async def flush(self) -> None:
        if self.transactional_id is not None:
            return
        self._append()

    def _append(self) -> None:
        touched = set()
        for tp, r in self.pending:
            log = self.backend.logs[tp]
            log.append(Record(value=r.value, key=r.key, timestamp=r.timestamp, headers=list(r.headers),
                              topic=tp.topic, partition=tp.partition, offset=len(log)))
            touched.add(tp)
        if self.transactional_id is not None:
            for tp in touched:
                self.backend.logs[tp].append(MARKER)
        self.pending = []

    async def init(self) -> None:
        self.initialised = True

    async def begin(self) -> None:
        if self.in_txn:
            raise TransactionError("transaction already open")
        self.in_txn = True

    async def send_offsets(self, group: str, offsets: Mapping[TopicPartition, int]) -> None:
        self.pending_offsets.append((group, dict(offsets)))

    async def commit(self) -> None:
        if not self.in_txn:
            raise TransactionError("no transaction")
        await asyncio.sleep(0)
        if self.backend.fail_commits > 0:
            self.backend.fail_commits -= 1
            raise OSError("injected commit failure")
        self._append()
        for group, offsets in self.pending_offsets:
            self.backend.groups.setdefault(group, {}).update(offsets)
        self.pending_offsets = []
        self.in_txn = False
        self.backend.commits += 1

    async def abort(self) -> None:
        self.pending = []
        self.pending_offsets = []
        self.in_txn = False

    async def close(self) -> None:
        if self.in_txn:
            await self.abort()
        self.closed = True


class FakeConsumer:
    rebalances = False

    def __init__(self, backend: FakeBackend, topics: list[str], group: str | None, reset: str,
                 membership: Membership | None = None) -> None:
        self.backend = backend
        self.group = group
        self.positions: dict[TopicPartition, int] = {}
        committed = backend.groups.get(group, {}) if group else {}
        for t in topics:
            for p in range(backend.topics[t].partitions):
                tp = TopicPartition(t, p)
                if tp in committed:
                    self.positions[tp] = committed[tp]
                else:
                    self.positions[tp] = 0 if reset == "earliest" else len(backend.logs[tp])
        if membership is not None:  # a fixed share, as on the embedded log
            self.positions = {tp: o for tp, o in self.positions.items()
                              if tp.partition % membership.members == membership.member}

    def assignment(self) -> set[TopicPartition]:
        return set(self.positions)

    async def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]

    async def poll(self, max_records: int = 10_000, timeout: float = 1.0) -> list[Record]:
        out: list[Record] = []
        for tp in sorted(self.positions):
            log = self.backend.logs[tp]
            pos = self.positions[tp]
            while pos < len(log) and len(out) < max_records:
                r = log[pos]
                pos += 1
                if r is not None:
                    out.append(copy.copy(r))
            self.positions[tp] = pos
        if not out:
            await asyncio.sleep(min(timeout, 0.01))
        return out

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        assert self.group is not None
        self.backend.groups.setdefault(self.group, {}).update(offsets)

    async def close(self) -> None:
        pass
