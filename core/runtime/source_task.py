"""The source task loop: source -> transforms -> converters -> one log transaction.

Each transaction holds the records of several polls *and* the source's
checkpoint after the last of them (in ``__source_offsets``). Both become
visible together or not at all, so after a crash the task resumes exactly
after what the log holds. Batching several polls per transaction (bounded by
records, bytes and time) is what makes this fast; the bounds are also the
backpressure: the source is not polled while a batch is being committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, cast

import orjson

from ..backends.base import LogBackend, Producer
from ..config import ConnectorSpec, PipelineConfig
from ..connector import Converter, Source, Transform
from ..converters import JsonConverter, StringConverter
from ..errors import PluginError, RecordError
from ..records import JsonLines, JsonRecords, LineRecords, Record, count_lines, partition_for_key
from .build import apply_transforms, make_converters, make_source, make_transforms
from .source_offsets import SOURCE_OFFSETS_TOPIC, encode_offset, offset_key, read_source_offset
from .task import ConnectorTask

log = logging.getLogger("millpond.runtime.source")

_NOTHING = object()


@dataclass(slots=True)
class SourceLimits:
    """Bounds of one transaction: whichever is reached first closes it."""

    #: records and bytes bound the memory a transaction holds (``max_bytes`` of values and their
    #: records); ``max_ms`` bounds its latency, so a bigger bound costs a slow source nothing and a
    #: fast one only memory.
    #: Each commit costs twelve fsyncs on the loop (measured: six segment fsyncs for the data,
    #: ``__source_offsets`` and the transaction state and their markers, three partition checkpoints and
    #: their folders), ~50 ms on a busy disk: at 100,000 records / 32 MiB a file source of 200-byte
    #: lines paid them every 100,000 lines, 0.5 us of a line's ~2 us; now every 250,000
    max_records: int = 250_000
    max_bytes: int = 64 * 1024 * 1024
    max_ms: float = 250.0
    #: pause between polls while the source has nothing
    idle_poll_s: float = 0.05


def decode_json(encoded: JsonRecords) -> list[Record]:
    """Records a source serialised as JSON (or as lines), back as values (for transforms and other converters)."""
    if isinstance(encoded, JsonLines):
        return encoded.records()
    loads = JsonConverter().deserialize if encoded.converter == "json" else StringConverter().deserialize
    topic = encoded.topic
    return [
        Record(loads(value), loads(key), timestamp, topic=topic)
        for key, value, timestamp in zip(encoded.keys, encoded.values, encoded.timestamps)
    ]


def encoded_as(transforms: list[Transform], key_conv: Converter, value_conv: Converter) -> str | None:
    """The converter whose bytes a source may hand over as columns (``ConnectorContext.encoded_as``):
    the pipeline's, when no transform wants records and key and value use the same built-in one.

    ``"json-lines"`` when every transform has a batch form (declared, ``Transform.batch_form``), the
    value converter is ``json`` (what the batch forms write) and the key converter ``string`` (keys
    of lines stay the source's bytes): JSON documents may then come as unparsed lines.
    """
    if transforms:
        if all(t.batch_form for t in transforms) and type(value_conv) is JsonConverter \
                and type(key_conv) is StringConverter:
            return "json-lines"
        return None
    for name, cls in (("json", JsonConverter), ("string", StringConverter)):
        if type(key_conv) is cls and type(value_conv) is cls:
            return name
    return None


def as_columns(topic: str, records: list[Record] | JsonRecords) -> list[Record] | JsonRecords:
    """Serialised records without headers as columns, which the embedded log encodes in one C call
    instead of one builder call per record (a third of the cost of a record that was transformed)."""
    if records.__class__ is not list or not records:
        return records
    # column by column, each pass in C (a loop with the checks per record cost what the builder saves)
    if any([r.headers for r in records]):
        return records
    keys = [r.key for r in records]
    values = [r.value for r in records]
    timestamps = [r.timestamp for r in records]
    if not (_BYTES_OR_NONE.issuperset(map(type, keys)) and _BYTES_OR_NONE.issuperset(map(type, values))
            and _INT.issuperset(map(type, timestamps))):
        return records  # what the C encoder does not take: the builder does
    # the columns hold the connector's converter's bytes, whatever its name: nothing reads the tag past here
    return JsonRecords(topic, keys, values, cast(list[int], timestamps))


def _through_batch_forms(transforms: list[Transform], block: bytes, lines: int) -> bytes | None:
    """``block`` (``lines`` newline-ended lines) through every transform's batch form; None as soon as
    one refuses it. A block that comes back with another number of lines breaks the batch form's
    contract (one record out per record in) and would misplace every offset after it: an error."""
    out: bytes | None = block
    for transform in transforms:
        out = transform.apply_json_lines(block)
        if out is None:
            return None
        if (out[-1:] != b"\n" and out) or count_lines(out) != lines:
            raise PluginError(
                f"transform {type(transform).__name__}: apply_json_lines returned {count_lines(out)} lines "
                f"for {lines} (it must return one newline-ended line per line it is given)"
            )
        block = out
    return out


_BYTES_OR_NONE = frozenset((bytes, type(None)))
_INT = frozenset((int,))


class SourceTask(ConnectorTask):
    """Runs one task of a source connector until ``stop`` is set."""

    kind = "source"

    def __init__(
        self,
        config: PipelineConfig,
        spec: ConnectorSpec,
        backend: LogBackend,
        task: int = 0,
        limits: SourceLimits | None = None,
        source_factory: Callable[[], Source] | None = None,
    ) -> None:
        super().__init__(config, spec, backend, task)
        self.limits = limits or SourceLimits()
        self.offset_key = offset_key(spec.name, task, spec.tasks)
        self.transactional_id = f"millpond.{config.name}.{self.offset_key}"
        self._source_factory = source_factory or (lambda: make_source(config, spec, task))
        self._partitions: dict[str, int] = {}
        self._sticky: dict[str, int] = {}
        self._key_cache: dict[tuple[bytes, int], int] = {}
        self._txn_count = 0
        self.transactions = 0
        # asked where a dead-lettered record came from
        self._source: Source | None = None
        self._batch_offset: Any = None

    # -- status -------------------------------------------------------------

    def is_idle(self, for_seconds: float) -> bool:
        return self.running and self.idle_since is not None and time.monotonic() - self.idle_since >= for_seconds

    # -- the loop -----------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        transforms = make_transforms(self.spec)
        key_conv, value_conv = make_converters(self.spec)
        # records a source serialised itself go to the log as they are
        as_is = encoded_as(transforms, key_conv, value_conv)
        producer = self.backend.producer(transactional_id=self.transactional_id)
        # Fence the previous incarnation and let its last transaction settle
        # before the checkpoint is read: on Kafka the markers land a moment
        # after the commit returns.
        await producer.init()
        offset = await read_source_offset(self.backend, self.offset_key)
        source = self._source_factory()
        source.context.encoded_as = as_is
        self._source = source
        log.info("source %r starting from %s", self.name, "the beginning" if offset is None else "its committed offset")
        self.idle_since = None
        try:
            await source.start(offset)
            self.running = True
            while not stop.is_set():
                pending: dict[tuple[str, int], list[Record] | JsonRecords] = {}
                new_offset: Any = _NOTHING
                count = 0
                size = 0
                started = time.monotonic()
                limit_s = self.limits.max_ms / 1000.0
                while True:
                    polled = time.perf_counter()
                    batch = await source.poll()
                    self.observe("poll", time.perf_counter() - polled)
                    if batch is None:
                        break
                    new_offset = self._batch_offset = batch.offset
                    if batch.records:
                        n, b = await self._prepare(batch.records, transforms, key_conv, value_conv, pending)
                        count += n
                        size += b
                    for encoded in batch.encoded:
                        if isinstance(encoded, JsonLines) and as_is == "json-lines":
                            n, b = await self._prepare_json_lines(encoded, transforms, key_conv, value_conv, pending)
                        elif encoded.converter == as_is:
                            n, b = await self._prepare_encoded(encoded, pending)
                        else:  # transforms or other converters want the values, not their bytes
                            n, b = await self._prepare(
                                decode_json(encoded), transforms, key_conv, value_conv, pending
                            )
                        count += n
                        size += b
                    if (
                        count >= self.limits.max_records
                        or size >= self.limits.max_bytes
                        or time.monotonic() - started >= limit_s
                        or stop.is_set()
                    ):
                        break
                    await asyncio.sleep(0)
                if new_offset is _NOTHING:
                    if self.idle_since is None:
                        self.idle_since = time.monotonic()
                    try:
                        await asyncio.wait_for(stop.wait(), self.limits.idle_poll_s)
                    except asyncio.TimeoutError:
                        pass
                    continue
                self.idle_since = None
                committing = time.perf_counter()
                await self._commit(producer, pending, new_offset)
                self.observe("commit", time.perf_counter() - committing)
                self.records_out += count
                self.bytes_out += size
                await source.commit(new_offset)
        finally:
            self.running = False
            try:
                await source.stop()
            finally:
                await producer.close()

    async def _partition_count(self, topic: str) -> int:
        n = self._partitions.get(topic)
        if n is None:
            n = await self.backend.partitions_for(topic)
            self._partitions[topic] = n
        return n

    async def _prepare(
        self,
        records: list[Record],
        transforms: list[Transform],
        key_conv: Converter,
        value_conv: Converter,
        pending: dict[tuple[str, int], list[Record] | JsonRecords],
    ) -> tuple[int, int]:
        """Transform, serialise and partition ``records`` into ``pending``; returns (records, bytes) added."""
        for where, columns in pending.items():
            if isinstance(columns, JsonRecords):  # records from here on go one by one
                pending[where] = list(columns)
        buckets = cast(dict[tuple[str, int], list[Record]], pending)
        now = int(time.time() * 1000)
        default_topic = self.spec.topic
        assert default_topic is not None
        count = 0
        size = 0
        ks = key_conv.serialize
        vs = value_conv.serialize
        # str values under the string converter: encode inline (the hot path of text sources)
        encode_str = type(value_conv) is StringConverter
        # dicts under the JSON converter: its first attempt, inline (the hot path of JSON sources)
        dumps = orjson.dumps if type(value_conv) is JsonConverter else None
        default_bucket: list[Record] | None = None
        outs: Iterable[Record]
        one: list[Record] = [records[0]] if records else []  # reused: no container per record without transforms
        # one transform (the common case): called directly, without the chain's containers per record
        single = transforms[0].apply if len(transforms) == 1 else None
        for original in records:
            if transforms:
                try:
                    if single is not None:
                        outs = single(original)
                        if outs.__class__ is not list:  # a generator raises as it is consumed
                            outs = list(outs)
                    else:
                        outs = list(apply_transforms(transforms, original))
                except RecordError as exc:
                    await self._dead_letter(pending, exc, original, "transform")
                    continue
            else:
                one[0] = original
                outs = one
            for r in outs:
                key = r.key
                value = r.value
                try:
                    if key is not None:
                        key = ks(key)
                    if encode_str and value.__class__ is str:
                        value = value.encode()
                    elif dumps is not None and value.__class__ is dict:
                        try:
                            value = dumps(value, default=str)
                        except TypeError:  # what orjson refuses: the converter's other attempts
                            value = vs(value)
                    else:
                        value = vs(value)
                except RecordError as exc:
                    await self._dead_letter(pending, exc, r, "convert", original)
                    continue
                r.key = key
                r.value = value
                if r.timestamp is None:
                    r.timestamp = now
                if value is not None:
                    size += len(value)
                count += 1
                if key is None and r.topic is None and r.partition is None:
                    if default_bucket is None:
                        n = self._partitions.get(default_topic) or await self._partition_count(default_topic)
                        sticky = self._sticky_partition(default_topic, n)
                        default_bucket = buckets.setdefault((default_topic, sticky), [])
                    default_bucket.append(r)
                    continue
                topic = r.topic or default_topic
                partition = r.partition
                if partition is None:
                    n = self._partitions.get(topic) or await self._partition_count(topic)
                    if key is None:
                        partition = self._sticky_partition(topic, n)
                    elif n == 1:
                        partition = 0  # what murmur2 % 1 gives, without hashing a key that is new every time
                    else:
                        partition = self._key_partition(key, n)
                r.topic = topic
                r.partition = partition
                bucket = buckets.get((topic, partition))
                if bucket is None:
                    bucket = buckets[(topic, partition)] = []
                bucket.append(r)
        return count, size

    async def _prepare_encoded(
        self, encoded: JsonRecords, pending: dict[tuple[str, int], list[Record] | JsonRecords]
    ) -> tuple[int, int]:
        """Partition records that are already JSON into ``pending``, as columns."""
        topic = encoded.topic
        n = self._partitions.get(topic) or await self._partition_count(topic)
        # blocks of lines carry a key per block: no need to split them to know
        keys = encoded.block_keys if isinstance(encoded, LineRecords) else encoded.keys
        if n == 1:
            parts = {0: encoded}
        elif keys and keys.count(keys[0]) == len(keys):  # one key for all (lines of one file)
            key = keys[0]
            parts = {self._sticky_partition(topic, n) if key is None else self._key_partition(key, n): encoded}
        else:
            parts = {}
            for key, value, timestamp in zip(encoded.keys, encoded.values, encoded.timestamps):
                p = self._sticky_partition(topic, n) if key is None else self._key_partition(key, n)
                part = parts.get(p)
                if part is None:
                    part = parts[p] = JsonRecords(topic)
                part.append(key, value, timestamp)
        size = encoded.value_bytes
        for p, part in parts.items():
            bucket = pending.get((topic, p))
            if bucket is None:
                pending[(topic, p)] = part  # the source is done with it: no copy of its columns
                continue
            if isinstance(bucket, JsonRecords) and type(bucket) is not type(part):
                pending[(topic, p)] = bucket = list(bucket)  # columns of two kinds: records from here on
            bucket.extend(part)  # a list when records of this transaction came one by one
        return len(encoded), size

    async def _prepare_json_lines(
        self,
        lines: JsonLines,
        transforms: list[Transform],
        key_conv: Converter,
        value_conv: Converter,
        pending: dict[tuple[str, int], list[Record] | JsonRecords],
    ) -> tuple[int, int]:
        """Run each block of JSON lines through the transforms' batch forms, then partition the blocks
        they return as columns into ``pending``. A block some batch form refuses goes record by record
        (``apply``, converters and the error policy), in its place, so the order stays the source's."""
        count = 0
        size = 0
        done = LineRecords(lines.topic)
        for block, n, key, timestamp in zip(lines.blocks, lines.counts, lines.block_keys, lines.block_timestamps):
            out = _through_batch_forms(transforms, block, n)
            if out is not None:
                done.add_block(out, n, key, timestamp)
                continue
            if len(done):  # what came before this block goes first
                c, b = await self._prepare_encoded(done, pending)
                count, size, done = count + c, size + b, LineRecords(lines.topic)
            one = JsonLines.of(lines.topic, block, n, key, timestamp)
            c, b = await self._prepare(one.records(), transforms, key_conv, value_conv, pending)
            count, size = count + c, size + b
        if len(done):
            c, b = await self._prepare_encoded(done, pending)
            count, size = count + c, size + b
        return count, size

    def _key_partition(self, key: bytes, n: int) -> int:
        """Kafka's murmur2 partition of ``key``, memoised: keys repeat (a path, a user id)."""
        cache = self._key_cache
        hit = cache.get((key, n))
        if hit is None:
            if len(cache) >= 65_536:
                cache.clear()
            hit = cache[(key, n)] = partition_for_key(key, n)
        return hit

    def _sticky_partition(self, topic: str, n: int) -> int:
        """Records without a key stick to one partition per transaction (Kafka's sticky
        partitioner), so a batch stays contiguous and order within a partition follows the source."""
        p = self._sticky.get(topic)
        if p is None:
            p = self._sticky[topic] = (self._txn_count + self.task) % n
        return p

    async def _dead_letter(
        self, pending: dict[tuple[str, int], list[Record] | JsonRecords], exc: RecordError, record: Record, stage: str,
        original: Record | None = None,
    ) -> None:
        origin = None if self._source is None else self._source.origin_of(original or record)
        if origin is None:  # the source cannot say more than its checkpoint after this batch
            origin = {"checkpoint": self._batch_offset}
        dlq = self.errors.handle(exc, record, stage, topic=record.topic or self.spec.topic, source=origin)
        if dlq is None:
            return
        topic = self.errors.dead_letter_topic
        assert topic is not None
        n = await self._partition_count(topic)
        partition = 0 if dlq.key is None else partition_for_key(dlq.key, n)
        if dlq.timestamp is None:
            dlq.timestamp = int(time.time() * 1000)
        bucket = pending.setdefault((topic, partition), [])
        if isinstance(bucket, JsonRecords):
            pending[(topic, partition)] = bucket = list(bucket)
        bucket.append(dlq)

    async def _commit(self, producer: Producer, pending: dict[tuple[str, int], list[Record] | JsonRecords], offset: Any) -> None:
        """Append the records and the checkpoint in one transaction."""
        marker = encode_offset(self.offset_key, offset, int(time.time() * 1000))
        await producer.begin()
        try:
            for (topic, partition), records in pending.items():
                await producer.send_batch(topic, partition, as_columns(topic, records))
            await producer.send(SOURCE_OFFSETS_TOPIC, marker, None)
            await producer.commit()
        except BaseException:
            try:
                await producer.abort()
            except Exception:  # the original error matters more
                log.debug("abort after a failed commit failed too", exc_info=True)
            raise
        self.transactions += 1
        self._txn_count += 1
        self._sticky.clear()
