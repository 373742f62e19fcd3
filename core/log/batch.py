"""Kafka RecordBatch v2 (magic 2): the unit of every read and write.

Byte layout of a batch (big-endian), as Kafka writes it::

    offset  size  field
    0       8     base_offset              patched on append; outside the CRC
    8       4     batch_length             bytes after this field
    12      4     partition_leader_epoch   outside the CRC
    16      1     magic                    always 2
    17      4     crc                      CRC-32C of bytes 21..end
    21      2     attributes               bits 0-2 compression, 3 timestamp type,
                                           4 transactional, 5 control
    23      4     last_offset_delta
    27      8     first_timestamp
    35      8     max_timestamp
    43      8     producer_id
    51      2     producer_epoch
    53      4     base_sequence
    57      4     records_count
    61      ...   records (compressed as one block when compression is set)

Records are encoded and decoded by aiokafka's C implementation; this module
never encodes a varint in Python except for the one-record control batches.
Records already held as columns (:class:`~millpond.records.JsonRecords`) or
blocks of lines (:class:`~millpond.records.LineRecords`) are encoded by
``_columns.c`` in one call (then compressed like the builder does).
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import crc32c
from aiokafka import codec

from ..errors import MillpondError
from ..records import JsonRecords, LineRecords
from .codec import CBatch as _CBatch
from .codec import CBuilder as _CBuilder
from .codec import columns as _columns
from .codec import iter_records as iter_records
from .codec import line_end as line_end

HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_SIZE = HEADER.size  # 61
LOG_OVERHEAD = 12  # base_offset + batch_length
CRC_START = 21
MAGIC = 2

COMPRESSION_MASK = 0x07
TIMESTAMP_TYPE_MASK = 0x08
TRANSACTIONAL_MASK = 0x10
CONTROL_MASK = 0x20

CODECS = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}

CREATE_TIME = 0
LOG_APPEND_TIME = 1

NO_PRODUCER_ID = -1
_ATTRIBUTES = struct.Struct(">h")
_CRC = struct.Struct(">I")
_MAX_TIMESTAMP = struct.Struct(">q")
_BASE_OFFSET = struct.Struct(">q")


class BatchHeader(NamedTuple):
    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    first_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records_count: int

    @property
    def size(self) -> int:
        """Bytes the whole batch takes on disk."""
        return self.batch_length + LOG_OVERHEAD

    @property
    def last_offset(self) -> int:
        return self.base_offset + self.last_offset_delta

    @property
    def next_offset(self) -> int:
        return self.base_offset + self.last_offset_delta + 1

    @property
    def is_transactional(self) -> bool:
        return bool(self.attributes & TRANSACTIONAL_MASK)

    @property
    def is_control(self) -> bool:
        return bool(self.attributes & CONTROL_MASK)


def c_extension_loaded() -> bool:
    """True when the batch codec is aiokafka's C implementation (checked at import)."""
    return bool(_CBuilder.__module__.startswith("aiokafka.record._crecords"))


def read_header(buf: Any, position: int = 0) -> BatchHeader:
    return BatchHeader._make(HEADER.unpack_from(buf, position))


def crc_ok(buf: Any, position: int, header: BatchHeader) -> bool:
    end = position + header.size
    return crc32c.crc32c(memoryview(buf)[position + CRC_START : end]) == header.crc


def set_base_offset(buf: bytearray, base_offset: int, position: int = 0) -> None:
    """Assign offsets to a built batch; base_offset is outside the CRC, so no re-hash."""
    _BASE_OFFSET.pack_into(buf, position, base_offset)


def _set_attributes(buf: bytearray, attributes: int, max_timestamp: int | None = None) -> None:
    _ATTRIBUTES.pack_into(buf, 21, attributes)
    if max_timestamp is not None:
        _MAX_TIMESTAMP.pack_into(buf, 35, max_timestamp)
    _CRC.pack_into(buf, 17, crc32c.crc32c(memoryview(buf)[CRC_START:]))


class Row(NamedTuple):
    """One record to encode. A :class:`millpond.records.Record` has the same
    attributes, so the producer hands its records over without copying them."""

    key: bytes | None
    value: bytes | None
    timestamp: int | None  # None: now
    headers: list[tuple[str, bytes | None]]


class Encodable(Protocol):
    @property
    def key(self) -> Any: ...
    @property
    def value(self) -> Any: ...
    @property
    def timestamp(self) -> int | None: ...
    @property
    def headers(self) -> list[tuple[str, bytes | None]]: ...


#: what aiokafka's builder compresses with (Kafka's default levels: lz4 9, zstd 3)
_ENCODERS: dict[int, Callable[[bytes], bytes]] = {
    CODECS["gzip"]: codec.gzip_encode,
    CODECS["snappy"]: codec.snappy_encode,
    CODECS["lz4"]: codec.lz4_encode,
    CODECS["zstd"]: codec.zstd_encode,
}


def _compress(buf: bytearray, compression: int) -> None:
    """Compress the records of an uncompressed batch in place, as aiokafka's C builder
    (and Kafka's producer) does, even when that is not smaller; the CRC is the caller's."""
    compressed = _ENCODERS[compression](bytes(buf[HEADER_SIZE:]))
    del buf[HEADER_SIZE:]
    buf += compressed
    struct.pack_into(">i", buf, 8, len(buf) - LOG_OVERHEAD)
    attributes = _ATTRIBUTES.unpack_from(buf, 21)[0] | compression
    _ATTRIBUTES.pack_into(buf, 21, attributes)


def build_batch(
    rows: Sequence[Encodable],
    *,
    compression: int = 0,
    producer_id: int = NO_PRODUCER_ID,
    producer_epoch: int = -1,
    transactional: bool = False,
    log_append_time: int | None = None,
) -> bytearray:
    """Encode rows into one batch with offsets 0..n-1 (the log assigns the base).

    With ``log_append_time`` the batch is marked LogAppendTime and every
    record reads back with that timestamp (Kafka's broker-side rewrite).
    """
    buf: bytearray
    if _columns is not None and isinstance(rows, JsonRecords) and len(rows):
        attributes = TRANSACTIONAL_MASK if transactional else 0
        if isinstance(rows, LineRecords):  # blocks of lines: no object per line on the way
            buf = _columns.build_lines(rows.blocks, rows.counts, rows.block_keys, rows.block_timestamps,
                                       producer_id, producer_epoch, attributes)
        else:
            buf = _columns.build(rows.keys, rows.values, rows.timestamps, producer_id, producer_epoch, attributes)
        if compression:
            _compress(buf, compression)
        if log_append_time is None:
            _CRC.pack_into(buf, 17, crc32c.crc32c(memoryview(buf)[CRC_START:]))
    else:
        builder = _CBuilder(2, compression, int(transactional), producer_id, producer_epoch, -1, 1 << 30)
        append = builder.append
        now = int(time.time() * 1000)
        for offset, row in enumerate(rows):
            timestamp = row.timestamp
            append(offset, now if timestamp is None else timestamp, row.key, row.value, row.headers)
        buf = builder.build()
    if log_append_time is not None:
        attributes = _ATTRIBUTES.unpack_from(buf, 21)[0] | TIMESTAMP_TYPE_MASK
        _set_attributes(buf, attributes, log_append_time)
    return buf


CONTROL_ABORT = 0
CONTROL_COMMIT = 1
_CONTROL_KEY = struct.Struct(">hh")
_CONTROL_VALUE = struct.Struct(">hi")


def build_control_batch(producer_id: int, producer_epoch: int, commit: bool) -> bytearray:
    """A transaction marker: a one-record control batch, as Kafka's EndTransactionMarker."""
    key = _CONTROL_KEY.pack(0, CONTROL_COMMIT if commit else CONTROL_ABORT)
    value = _CONTROL_VALUE.pack(0, 0)
    buf = build_batch(
        [Row(key, value, None, [])],
        producer_id=producer_id,
        producer_epoch=producer_epoch,
        transactional=True,
    )
    attributes = _ATTRIBUTES.unpack_from(buf, 21)[0] | CONTROL_MASK
    _set_attributes(buf, attributes)
    return buf


def control_type(batch: bytes | bytearray | memoryview) -> int:
    """CONTROL_COMMIT or CONTROL_ABORT of a control batch (its single record's key)."""
    for record in _CBatch(bytes(batch)):
        key = record.key
        assert key is not None
        return int(_CONTROL_KEY.unpack(key)[1])
    raise MillpondError("control batch without a record")


class Lines(NamedTuple):
    """The values of some batches as newline-ended lines (what :func:`lines` returns)."""

    data: bytes
    records: int
    first_offset: int
    last_offset: int
    #: the data is ASCII (else the caller checks that it is UTF-8 if it needs to)
    ascii: bool


def lines(batches: list[bytes], from_offset: int = 0) -> Lines | None:
    """Every value of ``batches`` at or after ``from_offset``, each followed by a newline, in one
    bytes object: a text sink writes it as it is. None when a value is null or holds a newline
    (it is not a line), so the caller decodes the records instead.

    ``_columns.c`` does it without a Python object per record; the fallback decodes them.
    """
    if _columns is not None:
        result = _columns.lines(batches, from_offset)
        return None if result is None else Lines(*result)
    parts: list[bytes] = []
    first = last = -1
    for data in batches:
        for record in iter_records(data):
            if record.offset < from_offset:
                continue
            value = record.value
            if value is None or b"\n" in value:
                return None
            parts.append(value)
            if first < 0:
                first = record.offset
            last = record.offset
    joined = b"\n".join(parts) + b"\n" if parts else b""
    return Lines(joined, len(parts), first, last, joined.isascii())


def walk(buf: Any, start: int, end: int) -> Iterator[tuple[int, BatchHeader]]:
    """(position, header) of each complete batch in ``buf[start:end]``.

    Stops at the first batch that does not fit before ``end`` (a torn tail or
    a batch still being written); the caller decides whether that is normal.
    """
    position = start
    unpack_from = HEADER.unpack_from
    make = BatchHeader._make
    while position + HEADER_SIZE <= end:
        header = make(unpack_from(buf, position))
        size = header.batch_length + LOG_OVERHEAD
        if header.batch_length < HEADER_SIZE - LOG_OVERHEAD or position + size > end:
            return
        yield position, header
        position += size
