"""The sink task loop: log -> converters -> transforms -> sink, then commit.

Each sink connector is a consumer group (named after the connector) reading
read-committed. The sink decides where to resume: a sink that stores its
offsets with its data returns them from ``start()`` and the consumer seeks
there; otherwise the group's committed offsets apply. ``flush(offsets)`` makes
the sink durable up to ``offsets``, and only then does the group commit the
same offsets, so the lag the CLI shows never claims more than the sink holds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any
from dataclasses import dataclass

from ..backends.base import BatchConsumer, Consumer, IsolationLevel, LogBackend, Producer
from ..config import ConnectorSpec, PipelineConfig
from ..connector import Sink, Transform
from ..converters import StringConverter
from ..errors import RecordError
from ..records import PartitionBatches, Record, TopicPartition, partition_for_key
from .build import apply_transforms, make_converters, make_sink, make_transforms
from .task import ConnectorTask

log = logging.getLogger("millpond.runtime.sink")


@dataclass(slots=True)
class SinkLimits:
    max_poll_records: int = 20_000
    poll_timeout_s: float = 0.2
    #: flush after this many consumed records or this much time, whichever first
    flush_records: int = 500_000
    flush_interval_s: float = 5.0
    #: once the log has nothing more, flush what is pending at most this often
    #: (low latency without a file or a commit per trickling record)
    idle_flush_s: float = 1.0
    #: ... but at once when this much is pending: a backlog that was just caught up with is worth a
    #: file or a commit of its own, and waiting for ``idle_flush_s`` would only delay it
    idle_flush_records: int = 10_000
    #: how long the log must stay quiet before that backlog counts as caught up
    caught_up_s: float = 0.01


class SinkTask(ConnectorTask):
    """Runs one task of a sink connector until ``stop`` is set."""

    kind = "sink"

    def __init__(
        self,
        config: PipelineConfig,
        spec: ConnectorSpec,
        backend: LogBackend,
        task: int = 0,
        limits: SinkLimits | None = None,
        sink_factory: Callable[[], Sink] | None = None,
    ) -> None:
        super().__init__(config, spec, backend, task)
        self.limits = limits or SinkLimits()
        self.group = spec.name
        self._sink_factory = sink_factory or (lambda: make_sink(config, spec, task))
        self._flush_requested = False
        self._consumer: Consumer | None = None
        self._positions: dict[TopicPartition, int] = {}
        self._unflushed = 0
        self.flushes = 0

    def request_flush(self) -> None:
        """Ask for a flush at the next turn of the loop (the scheduler's periodic commit)."""
        self._flush_requested = True

    async def caught_up(self) -> bool:
        """True when everything up to each partition's last stable offset is flushed and committed."""
        consumer = self._consumer
        if not self.running or consumer is None or self._unflushed or self.idle_since is None:
            return False
        ends: dict[TopicPartition, int] = {}
        for topic in self.spec.topics:
            for info in await self.backend.describe_topic(topic):
                ends[TopicPartition(info.topic, info.partition)] = info.last_stable_offset
        for tp in consumer.assignment():
            if await consumer.position(tp) < ends.get(tp, 0):
                return False
        return True

    async def run(self, stop: asyncio.Event) -> None:
        transforms = make_transforms(self.spec)
        key_conv, value_conv = make_converters(self.spec)
        kd = key_conv.deserialize
        vd = value_conv.deserialize
        sink = self._sink_factory()
        consumer = self.backend.consumer(
            self.spec.topics, group=self.group, isolation=IsolationLevel.read_committed, reset="earliest"
        )
        dlq: Producer | None = self.backend.producer() if self.errors.dead_letter_topic else None
        self._consumer = consumer
        self._positions = {}
        self._unflushed = 0
        self.idle_since = None
        failed = False
        keep_raw = self.spec.errors.policy == "dead_letter"
        # text in, text out, nothing in between: decode a whole poll in one pass
        fast = not transforms and type(value_conv) is StringConverter and type(key_conv) is StringConverter
        # ... and a sink that writes the log's bytes as they are: no record objects at all
        batches = consumer if fast and sink.takes_batches and isinstance(consumer, BatchConsumer) else None
        try:
            own = await sink.start()
            if own:
                assigned = consumer.assignment()
                for tp, offset in own.items():
                    tp = TopicPartition(*tp)
                    if tp in assigned:
                        await consumer.seek(tp, offset)
                log.info("sink %r resumes from its own offsets %s", self.name, _fmt(own))
            for tp in consumer.assignment():
                self._positions[tp] = await consumer.position(tp)
            self.running = True
            last_flush = time.monotonic()
            while not stop.is_set():
                polled = time.perf_counter()
                records: list[Record] = []
                count: int | None = 0
                backlog = self._unflushed >= self.limits.idle_flush_records
                timeout = self.limits.caught_up_s if backlog else self.limits.poll_timeout_s
                if batches is not None:
                    taken = await batches.poll_batches(self.limits.max_poll_records, timeout)
                    if taken:
                        self.observe("poll", time.perf_counter() - polled)
                        self.bytes_in += sum([len(b) for part in taken for b in part.batches])
                        count = await self._write_batches(sink, taken)
                        if count is None:  # not all plain lines: as records, with the error policy
                            records = [r for part in taken for r in part.records()]
                else:
                    records = await consumer.poll(self.limits.max_poll_records, timeout)
                    if records:
                        self.observe("poll", time.perf_counter() - polled)
                        self.bytes_in += _raw_size(records)
                if records:
                    if fast and self._decode_strings(records):
                        await self._write(sink, dlq, records, None)
                    else:
                        await self._convert_and_write(records, sink, dlq, transforms, kd, vd, keep_raw)
                    count = len(records)
                if count:
                    self.idle_since = None
                    self._unflushed += count
                    self.records_in += count
                else:
                    if self.idle_since is None:
                        self.idle_since = time.monotonic()
                    if not self._unflushed and await self._positions_moved(consumer):
                        # only transaction markers were passed: commit so the lag reads 0
                        self._unflushed = 1
                if self._unflushed and (
                    self._flush_requested
                    or self._unflushed >= self.limits.flush_records
                    or time.monotonic() - last_flush >= self.limits.flush_interval_s
                    or (not count and (backlog or time.monotonic() - last_flush >= self.limits.idle_flush_s))
                ):
                    await self._flush(sink, consumer, dlq)
                    last_flush = time.monotonic()
                self._flush_requested = False
            if self._unflushed:
                await self._flush(sink, consumer, dlq)
        except BaseException:
            failed = True
            raise
        finally:
            self.running = False
            try:
                await sink.stop()
            finally:
                try:
                    await consumer.close()
                finally:
                    if dlq is not None:
                        await dlq.close()
            if failed:
                log.debug("sink %r stopped after a failure; unflushed work is redone from committed offsets", self.name)

    @staticmethod
    def _decode_strings(records: list[Record]) -> bool:
        """Decode every key and value as UTF-8, all or nothing (False leaves ``records`` as they were)."""
        done = 0
        try:
            for r in records:
                v = r.value
                if v is not None:
                    r.value = v.decode()
                k = r.key
                if k is not None:
                    r.key = k.decode()
                done += 1
        except UnicodeDecodeError:
            # undo: valid UTF-8 round-trips exactly
            for r in records[: done + 1]:
                if isinstance(r.value, str):
                    r.value = r.value.encode()
                if isinstance(r.key, str):
                    r.key = r.key.encode()
            return False
        return True

    async def _convert_and_write(
        self,
        records: list[Record],
        sink: Sink,
        dlq: Producer | None,
        transforms: list[Transform],
        kd: Callable[[bytes | None], Any],
        vd: Callable[[bytes | None], Any],
        keep_raw: bool,
    ) -> None:
        """Deserialise, transform and write one poll, applying the error policy per record."""
        out: list[Record] = []
        # the raw (key, value) behind each written record, so a
        # write error dead-letters what the log holds
        raws: list[tuple[bytes | None, bytes | None]] | None = [] if keep_raw else None
        for r in records:
            raw_key = r.key
            raw_value = r.value
            try:
                r.key = kd(raw_key) if raw_key is not None else None
                r.value = vd(raw_value)
            except RecordError as exc:
                await self._reject(dlq, exc, _raw(r, raw_key, raw_value), "convert")
                continue
            if transforms:
                try:
                    produced = list(apply_transforms(transforms, r))
                except RecordError as exc:
                    await self._reject(dlq, exc, _raw(r, raw_key, raw_value), "transform")
                    continue
                out.extend(produced)
                if raws is not None:
                    raws.extend([(raw_key, raw_value)] * len(produced))
            else:
                out.append(r)
                if raws is not None:
                    raws.append((raw_key, raw_value))
        if out:
            await self._write(sink, dlq, out, raws)

    async def _write_batches(self, sink: Sink, taken: list[PartitionBatches]) -> int | None:
        """Hand a poll's batches to the sink; the records written, or None if it took none."""
        writing = time.perf_counter()
        count = await sink.write_batches(taken)
        if count is not None:
            self.observe("write", time.perf_counter() - writing)
            self.records_out += count
        return count

    async def _write(
        self,
        sink: Sink,
        dlq: Producer | None,
        records: list[Record],
        raws: list[tuple[bytes | None, bytes | None]] | None,
    ) -> None:
        """Write a batch; a RecordError isolates the failing record by writing one at a time.

        Sinks are expected to raise RecordError before they take any part of a
        batch (validate, then write), so re-offering records one by one writes
        each good record once.
        """
        try:
            writing = time.perf_counter()
            await sink.write(records)
            self.observe("write", time.perf_counter() - writing)
            self.records_out += len(records)
            return
        except RecordError as exc:
            if len(records) == 1:
                await self._reject(dlq, exc, _raw(records[0], *raws[0]) if raws else records[0], "write")
                return
        for i, r in enumerate(records):
            try:
                await sink.write([r])
                self.records_out += 1
            except RecordError as exc:
                await self._reject(dlq, exc, _raw(r, *raws[i]) if raws else r, "write")

    async def _reject(self, dlq: Producer | None, exc: RecordError, record: Record, stage: str) -> None:
        dead = self.errors.handle(exc, record, stage)
        if dead is None:
            return
        assert dlq is not None
        topic = self.errors.dead_letter_topic
        assert topic is not None
        n = await self.backend.partitions_for(topic)
        partition = 0 if dead.key is None else partition_for_key(dead.key, n)
        if dead.timestamp is None:
            dead.timestamp = int(time.time() * 1000)
        await dlq.send(topic, dead, partition)

    async def _positions_moved(self, consumer: Consumer) -> bool:
        for tp in consumer.assignment():
            if await consumer.position(tp) != self._positions.get(tp):
                return True
        return False

    async def _flush(self, sink: Sink, consumer: Consumer, dlq: Producer | None) -> None:
        # the consumer's positions, not last offset + 1: they also step over
        # transaction markers, so a caught-up group shows lag 0
        offsets = {tp: await consumer.position(tp) for tp in consumer.assignment()}
        if dlq is not None:
            # dead letters first: a crash after this replays those records (at
            # least once into the dead-letter topic), never loses them
            await dlq.flush()
        flushing = time.perf_counter()
        await sink.flush(offsets)
        self.observe("flush", time.perf_counter() - flushing)
        committing = time.perf_counter()
        await consumer.commit(offsets)
        self.observe("commit", time.perf_counter() - committing)
        self._positions = offsets
        self._unflushed = 0
        self.flushes += 1


def _raw_size(records: list[Record]) -> int:
    """Key and value bytes of a poll as the log holds them (before conversion), in one pass: 60 to
    130 ns a record, about 5% of polling it from the embedded log and less of converting and writing it."""
    return sum([len(r.value or b"") + len(r.key or b"") for r in records])


def _raw(record: Record, key: bytes | None, value: bytes | None) -> Record:
    return Record(
        value=value,
        key=key,
        timestamp=record.timestamp,
        headers=record.headers,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
    )


def _fmt(offsets: object) -> str:
    if isinstance(offsets, dict):
        return ", ".join(f"{TopicPartition(*tp)}@{o}" for tp, o in sorted(offsets.items()))
    return str(offsets)
