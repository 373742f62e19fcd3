"""Records and the small value types that name where they live.

A :class:`Record` is the unit everything in millpond passes around. In the
log, ``key`` and ``value`` are bytes; inside a connector's pipeline, before a
converter serialises them (or after one deserialises them), they may be any
JSON-ready value.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any, ClassVar, NamedTuple, Self, overload

from . import speedups

#: the newlines in a block: memchr from one to the next in C (``_jsonlines``; a tenth of what
#: ``bytes.count`` takes on 200-byte lines, which walks every byte), ``bytes.count`` without it
count_lines: Callable[[bytes], int]
try:
    speedups.refuse()  # MILLPOND_PURE_PYTHON=1: the Python path, on purpose
    from ._jsonlines import count_lines
except ImportError:  # built by setup.py; optional, see tests/test_speedups.py

    def count_lines(block: bytes) -> int:
        return block.count(b"\n")


class TopicPartition(NamedTuple):
    topic: str
    partition: int

    def __str__(self) -> str:
        return f"{self.topic}-{self.partition}"


Headers = list[tuple[str, bytes | None]]


@dataclass(slots=True)
class Record:
    value: Any
    key: Any = None
    timestamp: int | None = None
    headers: Headers = field(default_factory=list)
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None

    @property
    def topic_partition(self) -> TopicPartition:
        assert self.topic is not None and self.partition is not None
        return TopicPartition(self.topic, self.partition)


@dataclass(slots=True)
class EncodedRecords:
    """One partition's records of a poll as the log holds them, in columns: what a sink that takes
    encoded values (``Sink.takes_encoded``) gets instead of records.

    ``keys`` and ``values`` are the log's bytes (None: a null key, a tombstone), in the encoding of
    the converter the sink declared; ``offsets`` and ``timestamps`` (milliseconds) go with them, in
    offset order. No Python object is made per record beyond the bytes themselves.
    """

    tp: TopicPartition
    offsets: list[int]
    timestamps: list[int | None]
    keys: list[bytes | None]
    values: list[bytes | None]

    def __len__(self) -> int:
        return len(self.offsets)

    def after(self, n: int) -> EncodedRecords:
        """The records from the ``n``-th on."""
        return EncodedRecords(self.tp, self.offsets[n:], self.timestamps[n:], self.keys[n:], self.values[n:])


@dataclass(slots=True)
class PartitionBatches:
    """Record batches of one partition as the log stores them (Kafka RecordBatch v2), undecoded.

    What a consumer that reads batches (``BatchConsumer.poll_batches``) returns
    for a sink that takes them (``Sink.takes_batches``): committed data
    batches only (no control batches, nothing aborted), CRC-checked, in offset
    order. Records before ``from_offset`` in the first batch were read before
    and are not part of it.
    """

    tp: TopicPartition
    batches: list[bytes]
    from_offset: int

    def records(self) -> list[Record]:
        """The records, decoded (the path every sink can take)."""
        from .log.codec import iter_records  # the log imports this module

        topic, partition = self.tp
        start = self.from_offset
        return [
            Record(r.value, r.key, r.timestamp, r.headers, topic, partition, r.offset)
            for data in self.batches
            for r in iter_records(data)
            if r.offset >= start
        ]

    def columns(self) -> EncodedRecords:
        """The records' offsets, timestamps, keys and values in columns (for ``Sink.write_encoded``):
        about 0.9 us a record for the C codec's record objects, then 0.2 us for the columns (a
        :class:`Record` of each would add 1 us more)."""
        from .log.codec import iter_records  # the log imports this module

        found = [r for data in self.batches for r in iter_records(data)]
        start = self.from_offset
        if found and found[0].offset < start:  # the first batch began before the position
            found = [r for r in found if r.offset >= start]
        return EncodedRecords(self.tp, list(map(_OFFSET, found)), list(map(_TIMESTAMP, found)),
                              list(map(_KEY, found)), list(map(_VALUE, found)))


_OFFSET, _TIMESTAMP, _KEY, _VALUE = (attrgetter(name) for name in ("offset", "timestamp", "key", "value"))


class JsonRecords(Sequence["Record"]):
    """Records of one topic whose key and value are already JSON, held as columns.

    Building a :class:`Record` and a dict per change, then serialising it,
    costs several microseconds; a source that renders JSON itself (the
    Postgres CDC decoder does it in C) returns its records in this form
    instead (``SourceBatch.encoded``). When the pipeline has no transforms
    and JSON converters, the runtime appends the columns as they are, and the
    embedded log encodes a whole batch of them in one C call. Otherwise the
    runtime decodes them back into records, so the result is the same.

    ``keys`` and ``values`` hold UTF-8 JSON bytes or None (a null key, a
    tombstone); ``timestamps`` milliseconds since the epoch.
    """

    __slots__ = ("topic", "keys", "values", "timestamps")

    #: the converter whose bytes the columns hold: the runtime appends them as they are only when the
    #: connector's key and value converters are of this name (and no transform wants the records)
    converter: ClassVar[str] = "json"

    def __init__(
        self,
        topic: str,
        keys: list[bytes | None] | None = None,
        values: list[bytes | None] | None = None,
        timestamps: list[int] | None = None,
    ) -> None:
        self.topic = topic
        self.keys: list[bytes | None] = [] if keys is None else keys
        self.values: list[bytes | None] = [] if values is None else values
        self.timestamps: list[int] = [] if timestamps is None else timestamps

    def append(self, key: bytes | None, value: bytes | None, timestamp: int) -> None:
        self.keys.append(key)
        self.values.append(value)
        self.timestamps.append(timestamp)

    def extend(self, other: JsonRecords) -> None:
        self.keys.extend(other.keys)
        self.values.extend(other.values)
        self.timestamps.extend(other.timestamps)

    @property
    def value_bytes(self) -> int:
        return sum(map(len, filter(None, self.values)))

    def __len__(self) -> int:
        return len(self.keys)

    @overload
    def __getitem__(self, index: int) -> Record: ...
    @overload
    def __getitem__(self, index: slice) -> JsonRecords: ...
    def __getitem__(self, index: int | slice) -> Record | JsonRecords:  # noqa: D105
        if isinstance(index, slice):
            return type(self)(self.topic, self.keys[index], self.values[index], self.timestamps[index])
        return Record(self.values[index], self.keys[index], self.timestamps[index], topic=self.topic)

    def __iter__(self) -> Iterator[Record]:
        topic = self.topic
        for key, value, timestamp in zip(self.keys, self.values, self.timestamps):
            yield Record(value, key, timestamp, topic=topic)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(topic={self.topic!r}, {len(self)} records)"


class LineRecords(JsonRecords):
    """Lines of text held as blocks: each value is one line's UTF-8 bytes, as the ``string``
    converter would serialise it.

    A text source (the file source) hands over what it read as it is, a block
    of newline-ended lines with one key and one timestamp, when the pipeline
    wants nothing else (``ConnectorContext.encoded_as == "string"``): no
    :class:`Record`, no ``str`` and no ``bytes`` per line. The embedded log
    encodes the blocks into a batch in one C call (``_columns.build_lines``).
    Everything else sees the columns of a :class:`JsonRecords` (``keys``,
    ``values``, ``timestamps``), split from the blocks when first asked for,
    so every backend that takes JsonRecords takes these. Keys are UTF-8 bytes
    or None.
    """

    __slots__ = ("blocks", "counts", "block_keys", "block_timestamps", "_count", "_value_bytes", "_columns")

    converter: ClassVar[str] = "string"

    def __init__(
        self,
        topic: str,
        blocks: list[bytes] | None = None,
        counts: list[int] | None = None,
        keys: list[bytes | None] | None = None,
        timestamps: list[int] | None = None,
    ) -> None:
        self.topic = topic
        #: each block is ``counts[i]`` lines, every one ended by a newline that is not part of its value
        self.blocks: list[bytes] = [] if blocks is None else blocks
        self.counts: list[int] = [] if counts is None else counts
        self.block_keys: list[bytes | None] = [] if keys is None else keys
        self.block_timestamps: list[int] = [] if timestamps is None else timestamps
        self._count = sum(self.counts)
        self._value_bytes = sum(map(len, self.blocks)) - self._count
        self._columns: tuple[list[bytes | None], list[bytes | None], list[int]] | None = None

    @classmethod
    def of(cls, topic: str, block: bytes, count: int, key: bytes | None, timestamp: int) -> Self:
        """``count`` newline-ended lines in ``block``, with one key and one timestamp."""
        return cls(topic, [block], [count], [key], [timestamp])

    def _split(self) -> tuple[list[bytes | None], list[bytes | None], list[int]]:
        if self._columns is None:
            keys: list[bytes | None] = []
            values: list[bytes | None] = []
            timestamps: list[int] = []
            for block, count, key, timestamp in zip(self.blocks, self.counts, self.block_keys, self.block_timestamps):
                if count:
                    values += block[:-1].split(b"\n")
                    keys += [key] * count
                    timestamps += [timestamp] * count
            self._columns = (keys, values, timestamps)
        return self._columns

    @property
    def keys(self) -> list[bytes | None]:  # type: ignore[override]  # read-only: split from the blocks
        return self._split()[0]

    @property
    def values(self) -> list[bytes | None]:  # type: ignore[override]  # read-only: split from the blocks
        return self._split()[1]

    @property
    def timestamps(self) -> list[int]:  # type: ignore[override]  # read-only: split from the blocks
        return self._split()[2]

    @property
    def value_bytes(self) -> int:
        return self._value_bytes

    def __len__(self) -> int:
        return self._count

    def add_block(self, block: bytes, count: int, key: bytes | None, timestamp: int) -> None:
        """``count`` newline-ended lines in ``block``, with one key and one timestamp, after the others."""
        self.blocks.append(block)
        self.counts.append(count)
        self.block_keys.append(key)
        self.block_timestamps.append(timestamp)
        self._count += count
        self._value_bytes += len(block) - count
        self._columns = None

    def append(self, key: bytes | None, value: bytes | None, timestamp: int) -> None:
        if value is None or b"\n" in value:
            raise ValueError("a LineRecords value is one line of bytes")
        self.add_block(value + b"\n", 1, key, timestamp)

    def extend(self, other: JsonRecords) -> None:
        if not isinstance(other, LineRecords):
            raise TypeError(f"LineRecords extends with LineRecords, not {type(other).__name__}")
        for block, count, key, timestamp in zip(other.blocks, other.counts, other.block_keys, other.block_timestamps):
            self.add_block(block, count, key, timestamp)

    @overload
    def __getitem__(self, index: int) -> Record: ...
    @overload
    def __getitem__(self, index: slice) -> LineRecords: ...
    def __getitem__(self, index: int | slice) -> Record | LineRecords:  # noqa: D105
        if not isinstance(index, slice):
            return Record(self.values[index], self.keys[index], self.timestamps[index], topic=self.topic)
        start, stop, step = index.indices(self._count)
        if step != 1:
            raise ValueError("LineRecords slices are contiguous")
        out = LineRecords(self.topic)
        first = 0  # the index of the block's first line
        for block, count, key, timestamp in zip(self.blocks, self.counts, self.block_keys, self.block_timestamps):
            lo, hi = max(start, first) - first, min(stop, first + count) - first
            if lo < hi:
                if lo == 0 and hi == count:
                    out.add_block(block, count, key, timestamp)
                else:
                    a, b = _line_start(block, lo), _line_start(block, hi)
                    out.add_block(block[a:b], hi - lo, key, timestamp)
            first += count
            if first >= stop:
                break
        return out


class JsonLines(LineRecords):
    """Lines of a JSON-lines source held as blocks, not yet parsed: each line is one document's text.

    What a source of JSON documents (the file source's ``format: json``) hands over when every
    transform of the pipeline has a batch form (``ConnectorContext.encoded_as == "json-lines"``): the
    runtime runs each block through the transforms' ``apply_json_lines`` and appends what they
    return, so no line becomes a :class:`Record` and a dict one by one. The columns are not the log's
    bytes: the runtime never appends them as they are. :meth:`records` parses them the way the
    source would have (:func:`json_or_text`), for the record-by-record path. Keys are the ``string``
    converter's bytes (UTF-8) or None.
    """

    __slots__ = ()

    converter: ClassVar[str] = "json-lines"

    def records(self) -> list[Record]:
        """The records the source would have returned: each line parsed, key and timestamp its block's."""
        out: list[Record] = []
        topic = self.topic
        for block, count, key, timestamp in zip(self.blocks, self.counts, self.block_keys, self.block_timestamps):
            if count:
                text_key = None if key is None else key.decode()
                out += [Record(json_or_text(line), text_key, timestamp, topic=topic)
                        for line in block[:-1].decode().split("\n")]
        return out


#: the stdlib's C scanner, which json.loads calls after checks that cost as much as it on short lines
_scan_json: Callable[[str, int], tuple[Any, int]] = getattr(json.JSONDecoder(), "scan_once")


def json_or_text(line: str) -> Any:
    """A line of a JSON-lines file as a value: the document it holds, or the line itself (a str) when
    it is not JSON, so the transforms and the error policy deal with it instead of the source failing."""
    try:
        value, end = _scan_json(line, 0)
        if end == len(line):
            return value
    except (StopIteration, ValueError, RecursionError):
        pass
    try:  # whitespace around the document, or not JSON: json.loads decides
        return json.loads(line)
    except ValueError:
        return line


def _line_start(block: bytes, n: int) -> int:
    """Where line ``n`` of ``block`` starts (its length when ``n`` is the line count)."""
    from .log.codec import line_end  # the log imports this module

    return line_end(block, n)


_MASK = 0xFFFFFFFF
_M = 0x5BD1E995
#: one compiled ``<nI`` per word count seen (keys are short, so few of them)
_WORDS: dict[int, struct.Struct] = {}


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (``org.apache.kafka.common.utils.Utils.murmur2``).

    The body reads the key as little-endian 32-bit words in one ``struct``
    call instead of assembling each word from four byte lookups: every CDC
    key is new, so this runs once per record and the per-byte indexing was
    most of its cost.
    """
    length = len(data)
    m = _M
    h = (0x9747B28C ^ length) & _MASK
    nwords = length >> 2
    if nwords:
        words = _WORDS.get(nwords)
        if words is None:
            words = _WORDS[nwords] = struct.Struct(f"<{nwords}I")
        for k in words.unpack_from(data):
            k = (k * m) & _MASK
            k = ((k ^ (k >> 24)) * m) & _MASK
            h = ((h * m) & _MASK) ^ k
    extra = length & 3
    if extra:
        tail = length - extra
        if extra == 3:
            h ^= data[tail + 2] << 16
        if extra >= 2:
            h ^= data[tail + 1] << 8
        h = ((h ^ data[tail]) * m) & _MASK
    h ^= h >> 13
    h = (h * m) & _MASK
    h ^= h >> 15
    if h & 0x80000000:
        h -= 0x100000000
    return h


def partition_for_key(key: bytes, num_partitions: int) -> int:
    """The partition Kafka's default partitioner picks for a non-null key."""
    return (murmur2(key) & 0x7FFFFFFF) % num_partitions
