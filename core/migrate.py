"""``millpond migrate``: move a pipeline's embedded log to a Kafka cluster, resumably.

What moves, so that the same pipeline file restarted with its ``log:`` block switched to
Kafka continues where it stopped (nothing lost, nothing doubled):

- every topic but the embedded log's own bookkeeping (``__consumer_offsets``,
  ``__transaction_state``), created on Kafka with its settings, and its committed records
  only (keys, values, timestamps, headers; aborted data and transaction markers stay
  behind), partition by partition, in offset order. ``__source_offsets`` is such a topic:
  copying it moves the source checkpoints, which name positions upstream, not offsets;
- every consumer group's committed offsets, and the offsets a sink keeps in its own store
  (``Sink.owns_offsets``: the file sink's committed names, a Postgres table), translated
  to Kafka's offsets: a group at embedded offset ``c`` resumes at the Kafka offset of the
  first record copied from an embedded offset at or after ``c`` (the partition's end when
  there is none). Kafka's offsets differ from the embedded ones: markers and aborted data
  are not copied, and every copy transaction adds a marker of its own.

Resumable: the copy runs in Kafka transactions of one partition's chunk each, and the
same transaction writes the chunk's progress to the compacted topic ``__millpond_migrate``
(key ``topic/partition``: the next embedded offset to copy and the translations found so
far). Killed at any moment, the next run's transactional producer fences the old one and
aborts its open transaction, then continues from the progress that committed: no gap and
no double. What the first run saw (topics, the offsets to translate) is written there
first as the ``plan``, so a resumed run translates the offsets of the log as it was, even
after a sink's own store was already moved to Kafka's offsets. ``done`` ends it.

Topics with ``message.timestamp.type=LogAppendTime`` are created with CreateTime and set
to LogAppendTime after the copy: the broker would otherwise stamp the copies with the
time of the migration.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import TopicPartition as KafkaTP

from .backends.base import IsolationLevel, TopicSpec
from .backends.embedded import EmbeddedBackend
from .backends.embedded.groups import OFFSETS_TOPIC
from .backends.embedded.transactions import STATE_TOPIC
from .backends.kafka import KafkaBackend
from .config import PipelineConfig
from .errors import LogLockedError, MillpondError, UnknownTopicError
from .progress import Progress, format_count
from .records import Record, TopicPartition

log = logging.getLogger(__name__)

PROGRESS_TOPIC = "__millpond_migrate"
#: one id for every migration into a cluster: a second one running at once is fenced, not interleaved
TRANSACTIONAL_ID = "millpond-migrate"
#: the embedded log's own bookkeeping: groups are translated, transactions are not carried over
NOT_COPIED = frozenset({OFFSETS_TOPIC, STATE_TOPIC, PROGRESS_TOPIC})
#: records per copy transaction (one partition each)
CHUNK_RECORDS = 20_000
#: Kafka refuses smaller segments (segment.bytes has a floor of 1 MiB); the layout is the broker's business
KAFKA_MIN_SEGMENT_BYTES = 1 << 20
MAX_BATCH_BYTES = 1 << 20


def _key(tp: TopicPartition) -> str:
    return f"{tp.topic}/{tp.partition}"


def _tp(key: str) -> TopicPartition:
    topic, _, partition = key.rpartition("/")
    return TopicPartition(topic, int(partition))


@dataclass
class TopicPlan:
    name: str
    partitions: int
    config: dict[str, Any]
    #: committed records per partition still to copy (filled by the dry run)
    records: dict[int, int] = field(default_factory=dict)


@dataclass
class Plan:
    """What the first run saw in the embedded log; kept on the Kafka side so that a resumed run uses it."""

    source: str
    topics: dict[str, TopicPlan]
    #: group -> {tp: next embedded offset}; for a sink that owns its offsets, the sink's own ones
    groups: dict[str, dict[TopicPartition, int]]
    #: sink connectors whose offsets live in their own store (reset through the sink)
    owned: list[str]
    #: source checkpoints by offset key (moved with ``__source_offsets``; shown in the plan)
    checkpoints: list[str] = field(default_factory=list)

    def positions(self) -> dict[TopicPartition, set[int]]:
        """The embedded offsets each partition must translate."""
        out: dict[TopicPartition, set[int]] = {}
        for offsets in self.groups.values():
            for tp, offset in offsets.items():
                if tp.topic in self.topics:
                    out.setdefault(tp, set()).add(offset)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source,
                "topics": {t.name: {"partitions": t.partitions, "config": t.config} for t in self.topics.values()},
                "groups": {g: {_key(tp): o for tp, o in sorted(offsets.items())} for g, offsets in self.groups.items()},
                "owned": self.owned, "checkpoints": self.checkpoints}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Plan:
        return cls(data["source"],
                   {name: TopicPlan(name, t["partitions"], t["config"]) for name, t in data["topics"].items()},
                   {g: {_tp(k): o for k, o in offsets.items()} for g, offsets in data["groups"].items()},
                   list(data["owned"]), list(data.get("checkpoints", [])))


@dataclass
class PartitionProgress:
    """Where the copy of one partition is: written in the transaction of the chunk it follows."""

    next: int = 0
    copied: int = 0
    #: embedded offset (a group's position) -> Kafka offset
    translated: dict[int, int] = field(default_factory=dict)
    done: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"next": self.next, "copied": self.copied, "done": self.done,
                "translated": {str(k): v for k, v in sorted(self.translated.items())}}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PartitionProgress:
        return cls(int(data["next"]), int(data["copied"]), {int(k): int(v) for k, v in data["translated"].items()},
                   bool(data["done"]))


def kafka_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The topic's settings as Kafka takes them at creation: CreateTime for the copy (see the module
    docstring), segments no smaller than Kafka allows, and Kafka's spelling of "no compression"."""
    out = {k: v for k, v in config.items() if v is not None}
    out.pop("message.timestamp.type", None)
    if out.get("compression.type") == "none":  # the embedded log's word for what Kafka calls uncompressed
        out["compression.type"] = "uncompressed"
    if int(out.get("segment.bytes", KAFKA_MIN_SEGMENT_BYTES)) < KAFKA_MIN_SEGMENT_BYTES:
        out["segment.bytes"] = KAFKA_MIN_SEGMENT_BYTES
    return out


class Migration:
    """One run of ``millpond migrate`` from the embedded log of ``config`` to ``kafka``."""

    def __init__(self, config: PipelineConfig, kafka: KafkaBackend, *, stream: IO[str] | None = None,
                 chunk_records: int = CHUNK_RECORDS) -> None:
        if config.log.embedded is None:
            raise MillpondError(f"pipeline {config.name!r}: its log: block names no embedded log; "
                                "migrate moves an embedded log to Kafka")
        self.config = config
        self.directory = Path(config.log.embedded.dir)
        self.kafka = kafka
        self.stream = stream if stream is not None else sys.stderr
        self.chunk_records = chunk_records

    def say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    # -- opening --

    async def _open_embedded(self, readonly: bool) -> EmbeddedBackend:
        if not self.directory.joinpath("topics").is_dir():
            raise MillpondError(f"no embedded log at {self.directory} (pipeline {self.config.name!r})")
        backend = EmbeddedBackend(self.directory, readonly=readonly)
        try:
            await backend.open()
        except LogLockedError as exc:
            holder = re.search(r"held by another process \(([^)]*)\)", str(exc))
            raise LogLockedError(f"cannot migrate the log at {self.directory}: a worker holds it "
                                 f"({holder.group(1) if holder else exc}); a log must not change while it is copied: "
                                 "stop it, then migrate") from None
        return backend

    async def check_log(self) -> None:
        """Refuse now, before reaching Kafka, when a worker holds the log (``run`` takes the lock again)."""
        embedded = await self._open_embedded(readonly=False)
        await embedded.close()

    # -- the plan --

    async def _make_plan(self, embedded: EmbeddedBackend, count: bool) -> Plan:
        topics: dict[str, TopicPlan] = {}
        for name in await embedded.list_topics():
            if name in NOT_COPIED:
                continue
            infos = await embedded.describe_topic(name)
            for info in infos:
                if info.problems:
                    raise MillpondError(f"{name}-{info.partition} in {self.directory}: " + "; ".join(info.problems)
                                        + " (repair it first: millpond topics repair)")
            topics[name] = TopicPlan(name, len(infos), dict(await embedded.topic_settings(name)))
            if count:
                for info in infos:
                    tp = TopicPartition(name, info.partition)
                    topics[name].records[info.partition] = sum(
                        [len(chunk) async for chunk in self._committed(embedded, tp, info.log_start_offset, 10_000)])
        groups = {g: await embedded.committed(g) for g in await embedded.list_groups()}
        owned = []
        from .runtime.build import make_sink  # the runtime pulls in the plugins

        for spec in self.config.connectors:
            if spec.kind != "sink":
                continue
            sink = make_sink(self.config, spec, 0)
            if not sink.owns_offsets:
                continue
            stored = await sink.start()
            try:
                groups[spec.name] = {**groups.get(spec.name, {}), **{TopicPartition(*tp): int(o)
                                                                      for tp, o in (stored or {}).items()}}
            finally:
                await sink.stop()
            owned.append(spec.name)
        checkpoints: list[str] = []
        if "__source_offsets" in topics:
            from .runtime.source_offsets import _latest_by_key

            checkpoints = sorted(k.decode("utf-8", "replace") for k, v in (await _latest_by_key(embedded)).items()
                                 if v is not None)
        return Plan(str(self.directory.resolve()), topics, {g: o for g, o in groups.items() if o}, owned, checkpoints)

    async def dry_run(self) -> Plan:
        """Print what a migration would do; change nothing (the log is opened read-only)."""
        embedded = await self._open_embedded(readonly=True)
        try:
            plan = await self._make_plan(embedded, count=True)
        finally:
            await embedded.close()
        existing = set(await self.kafka.list_topics())
        self.say(f"migrate {plan.source} -> Kafka at {self.kafka.bootstrap_servers} (dry run: nothing changed)")
        for topic in plan.topics.values():
            there = " (exists on Kafka)" if topic.name in existing else ""
            settings = ", ".join(f"{k}={v}" for k, v in sorted(topic.config.items())) or "defaults"
            self.say(f"topic {topic.name}: {topic.partitions} partition(s), {settings}{there}")
            for p, n in sorted(topic.records.items()):
                self.say(f"  {topic.name}-{p}: {format_count(n)} committed records")
        for group, offsets in sorted(plan.groups.items()):
            where = "its sink's own store and the group" if group in plan.owned else "the group"
            self.say(f"group {group}: {len(offsets)} partition offset(s) translated, written to {where}")
        for key in plan.checkpoints:
            self.say(f"source checkpoint {key}: moved with __source_offsets")
        if PROGRESS_TOPIC in existing:
            self.say(f"{PROGRESS_TOPIC} exists on Kafka: a migration started there; running migrate resumes it")
        return plan

    # -- reading --

    async def _committed(self, embedded: EmbeddedBackend, tp: TopicPartition, start: int,
                         chunk: int) -> AsyncIterator[list[Record]]:
        """The committed records of one partition from ``start`` to its last stable offset, in chunks."""
        infos = {i.partition: i for i in await embedded.describe_topic(tp.topic)}
        end = infos[tp.partition].last_stable_offset
        if start >= end:
            return
        consumer = embedded.consumer([tp.topic], None, IsolationLevel.read_committed)
        try:
            for p, info in infos.items():  # only this partition: the others are read at their own turn
                await consumer.seek(TopicPartition(tp.topic, p), start if p == tp.partition else info.last_stable_offset)
            pending: list[Record] = []
            while True:
                records = await consumer.poll(max_records=chunk, timeout=0.05)
                pending += records
                at_end = not records and await consumer.position(tp) >= end
                while len(pending) >= chunk or (at_end and pending):
                    yield pending[:chunk]
                    pending = pending[chunk:]
                if at_end:
                    return
        finally:
            await consumer.close()

    # -- the Kafka side --

    async def _read_progress(self) -> dict[str, Any]:
        """The committed records of ``__millpond_migrate``, latest per key (empty: no migration began)."""
        try:
            infos = await self.kafka.describe_topic(PROGRESS_TOPIC)
        except UnknownTopicError:
            return {}
        ends = {TopicPartition(i.topic, i.partition): i.last_stable_offset for i in infos}
        latest: dict[str, Any] = {}
        if all(e == 0 for e in ends.values()):
            return latest
        consumer = self.kafka.consumer([PROGRESS_TOPIC], None, IsolationLevel.read_committed)
        try:
            while any([await consumer.position(tp) < end for tp, end in ends.items()]):
                for r in await consumer.poll(timeout=0.5):
                    if r.key is not None:
                        latest[r.key.decode()] = None if r.value is None else json.loads(r.value)
        finally:
            await consumer.close()
        return latest

    async def _producer(self) -> AIOKafkaProducer:
        """Our transactional producer; starting it fences an earlier run and aborts its open transaction."""
        producer = AIOKafkaProducer(**self.kafka.client_kwargs(AIOKafkaProducer), transactional_id=TRANSACTIONAL_ID,
                                    enable_idempotence=True, max_batch_size=MAX_BATCH_BYTES,
                                    max_request_size=4 * MAX_BATCH_BYTES)
        await producer.start()
        return producer

    @staticmethod
    def _progress_record(key: str, value: Mapping[str, Any]) -> tuple[bytes, bytes]:
        return key.encode(), json.dumps(value, separators=(",", ":"), sort_keys=True).encode()

    async def _write(self, producer: AIOKafkaProducer, entries: dict[str, Mapping[str, Any]]) -> None:
        """Progress entries in a transaction of their own."""
        async with producer.transaction():
            for key, value in entries.items():
                k, v = self._progress_record(key, value)
                await producer.send(PROGRESS_TOPIC, v, k, partition=0)

    async def _ends(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        probe = AIOKafkaConsumer(**self.kafka.client_kwargs(AIOKafkaConsumer), isolation_level="read_uncommitted",
                                 enable_auto_commit=False)
        await probe.start()
        try:
            ends = await probe.end_offsets([KafkaTP(*tp) for tp in tps])
        finally:
            await probe.stop()
        return {TopicPartition(tp.topic, tp.partition): int(o) for tp, o in ends.items()}

    # -- the run --

    async def run(self) -> Plan:
        embedded = await self._open_embedded(readonly=False)
        try:
            return await self._run(embedded)
        finally:
            await embedded.close()

    async def _run(self, embedded: EmbeddedBackend) -> Plan:
        # The producer first: starting it completes (or aborts) a killed run's last transaction, so the
        # progress read next is final; read before, a commit still under way would be missed and its chunk copied twice.
        producer = await self._producer()
        try:
            state = await self._read_progress()
            if "done" in state:
                plan = Plan.from_json(state["plan"])
                self.say(f"the migration of {plan.source} to {self.kafka.bootstrap_servers} is complete already: "
                         "nothing to do")
                return plan
            if "plan" in state:
                plan = Plan.from_json(state["plan"])
                if plan.source != str(self.directory.resolve()):
                    raise MillpondError(f"{PROGRESS_TOPIC} at {self.kafka.bootstrap_servers} holds the migration of "
                                        f"{plan.source}, not of {self.directory.resolve()}")
                self.say(f"resuming the migration of {plan.source} to {self.kafka.bootstrap_servers}")
            else:
                plan = await self._make_plan(embedded, count=False)
                await self._check_targets(plan)
                await self.kafka.create_topic(TopicSpec(PROGRESS_TOPIC, 1, {"cleanup.policy": "compact"}),
                                              exist_ok=True)
                await self._write(producer, {"plan": plan.to_json()})
                self.say(f"migrating {plan.source} to {self.kafka.bootstrap_servers}: {len(plan.topics)} topic(s), "
                         f"{len(plan.groups)} group(s)")
            for topic in plan.topics.values():
                await self.kafka.create_topic(TopicSpec(topic.name, topic.partitions, kafka_settings(topic.config)),
                                              exist_ok=True)
            positions = plan.positions()
            progress: dict[TopicPartition, PartitionProgress] = {}
            for topic in plan.topics.values():
                for p in range(topic.partitions):
                    tp = TopicPartition(topic.name, p)
                    saved = state.get(_key(tp))
                    progress[tp] = PartitionProgress.from_json(saved) if saved else PartitionProgress()
                    if not progress[tp].done:
                        await self._copy(embedded, producer, tp, progress[tp], positions.get(tp, set()))
            await self._finish(plan, producer, progress)
        finally:
            await producer.stop()
        return plan

    async def _check_targets(self, plan: Plan) -> None:
        """A first run copies into new topics only: records already there would be doubled or mixed in."""
        existing = set(await self.kafka.list_topics())
        clash = sorted(set(plan.topics) & existing)
        if clash:
            raise MillpondError(f"topic(s) {', '.join(clash)} exist at {self.kafka.bootstrap_servers} already; "
                                "migrate copies into new topics only (delete them there, or migrate elsewhere)")

    async def _copy(self, embedded: EmbeddedBackend, producer: AIOKafkaProducer, tp: TopicPartition,
                    state: PartitionProgress, positions: set[int]) -> None:
        info = (await embedded.describe_topic(tp.topic))[tp.partition]
        start = max(state.next, info.log_start_offset)
        # offsets, not records: aborted data and markers are in the span too
        meter = Progress(f"copying {tp}", total=state.copied + max(0, info.last_stable_offset - start),
                         approximate=True, stream=self.stream)
        meter.update(state.copied)
        waiting = sorted(p for p in positions if p not in state.translated)
        async for chunk in self._committed(embedded, tp, start, self.chunk_records):
            try:
                async with producer.transaction():
                    sent = await self._send(producer, tp, chunk)
                    offsets = [o for fut, n in sent for o in range(fut.result().offset, fut.result().offset + n)]
                    for record, kafka_offset in zip(chunk, offsets):
                        assert record.offset is not None
                        while waiting and waiting[0] <= record.offset:
                            state.translated[waiting.pop(0)] = kafka_offset
                    last = chunk[-1].offset
                    assert last is not None
                    state.next, state.copied = last + 1, state.copied + len(chunk)
                    k, v = self._progress_record(_key(tp), state.to_json())
                    await producer.send(PROGRESS_TOPIC, v, k, partition=0)
            except KafkaError as exc:
                raise MillpondError(f"copying {tp} from embedded offset {chunk[0].offset} to "
                                    f"{self.kafka.bootstrap_servers}: {type(exc).__name__}: {exc}") from exc
            meter.update(state.copied)
        state.done = True
        await self._write(producer, {_key(tp): state.to_json()})
        meter.done(" copied")

    @staticmethod
    async def _send(producer: AIOKafkaProducer, tp: TopicPartition,
                    records: list[Record]) -> list[tuple[asyncio.Future[Any], int]]:
        """Send ``records`` in batches of our own making; returns each batch's delivery and record count,
        delivered (a batch's records take consecutive offsets from its base offset)."""
        sent: list[tuple[asyncio.Future[Any], int]] = []
        batch = producer.create_batch()
        count = 0
        for record in records:
            while batch.append(key=record.key, value=record.value, timestamp=record.timestamp,
                               headers=record.headers) is None:
                if count == 0:
                    raise MillpondError(f"{tp}@{record.offset}: record larger than {MAX_BATCH_BYTES} bytes")
                sent.append((await producer.send_batch(batch, tp.topic, partition=tp.partition), count))
                batch, count = producer.create_batch(), 0
            count += 1
        if count:
            sent.append((await producer.send_batch(batch, tp.topic, partition=tp.partition), count))
        await asyncio.gather(*(fut for fut, _ in sent))
        return sent

    async def _finish(self, plan: Plan, producer: AIOKafkaProducer,
                      progress: Mapping[TopicPartition, PartitionProgress]) -> None:
        """Translate the groups (and sinks' own offsets), set the topics' final settings, mark it done.
        Each step may be repeated after a crash with the same result."""
        ends = await self._ends(sorted(progress))
        for group, offsets in sorted(plan.groups.items()):
            translated = {tp: progress[tp].translated.get(o, ends[tp]) for tp, o in offsets.items() if tp in progress}
            if not translated:
                continue
            if group in plan.owned:
                from .api.offsets import reset_sink_offsets

                spec = next(s for s in self.config.connectors if s.name == group)
                await reset_sink_offsets(self.config, spec, self.kafka, translated)
            else:
                await self.kafka.reset_offsets(group, translated)
            self.say(f"group {group}: " + ", ".join(f"{tp} {offsets[tp]}->{o}" for tp, o in sorted(translated.items())))
        for topic in plan.topics.values():
            if topic.config.get("message.timestamp.type") == "LogAppendTime":
                await self.kafka.alter_topic(TopicSpec(topic.name, topic.partitions,
                                                       {**kafka_settings(topic.config),
                                                        "message.timestamp.type": "LogAppendTime"}))
        copied = sum(p.copied for p in progress.values())
        await self._write(producer, {"done": {"records": copied}})
        self.say(f"migrated {len(plan.topics)} topic(s), {copied:,} records, {len(plan.groups)} group(s) to "
                 f"{self.kafka.bootstrap_servers}; switch the pipeline's log: block to kafka and run it")


def target_backend(bootstrap: str | None, to_file: str | None) -> KafkaBackend:
    """The Kafka cluster to migrate to: ``--to-bootstrap HOST:PORT``, or the ``log: {kafka: ...}`` block of a
    pipeline file (its security settings and client config included)."""
    if to_file is not None:
        from .config import load_pipeline

        kafka = load_pipeline(to_file).log.kafka
        if kafka is None:
            raise MillpondError(f"{to_file}: its log: block names no Kafka cluster (log: {{kafka: ...}})")
        return KafkaBackend(kafka.bootstrap_servers, client_id=kafka.client_id, config=kafka.config,
                            security=kafka.security)
    assert bootstrap is not None
    return KafkaBackend(bootstrap, client_id="millpond-migrate")

