"""The on-disk batch format: Kafka's RecordBatch v2, checked with a different parser."""

from __future__ import annotations

import random
import struct

import crc32c
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from aiokafka.record.default_records import _DefaultRecordBatchPy

from millpond.log import batch
from millpond.records import murmur2, partition_for_key

from .conftest import read_all, rows


def test_c_codec_is_loaded() -> None:
    assert batch.c_extension_loaded()


def test_segment_bytes_parse_with_the_pure_python_kafka_parser(store) -> None:  # type: ignore[no-untyped-def]
    partition = store.create_topic("t", 1).partitions[0]
    partition.append(rows(5))
    partition.append([batch.Row(None, b"x", 1, [("h", b"v")])])
    data = partition.active_segment.read_bytes(0, partition.active_segment.size)
    position, decoded = 0, []
    while position < len(data):
        length = struct.unpack_from(">i", data, position + 8)[0]
        parsed = _DefaultRecordBatchPy(data[position : position + 12 + length])
        assert parsed.validate_crc()
        decoded.extend((r.offset, r.key, r.value[:12] if r.value else None, r.headers) for r in parsed)
        position += 12 + length
    assert [d[0] for d in decoded] == list(range(6))
    assert decoded[0][1:3] == (b"key-00000000", b"000000000000")
    assert decoded[5][1:] == (None, b"x", [("h", b"v")])


def test_header_fields_and_crc() -> None:
    buf = batch.build_batch(rows(3), producer_id=7, producer_epoch=2, transactional=True)
    batch.set_base_offset(buf, 100)
    header = batch.read_header(buf)
    assert (header.base_offset, header.last_offset, header.next_offset) == (100, 102, 103)
    assert header.is_transactional and not header.is_control and header.producer_id == 7
    assert header.crc == crc32c.crc32c(bytes(buf[batch.CRC_START :]))
    assert batch.crc_ok(buf, 0, header)  # the base offset lies outside the CRC


def test_log_append_time_rewrites_timestamps() -> None:
    buf = batch.build_batch(rows(3), log_append_time=42)
    header = batch.read_header(buf)
    assert header.attributes & batch.TIMESTAMP_TYPE_MASK
    assert batch.crc_ok(buf, 0, header)
    assert [r.timestamp for r in batch.iter_records(bytes(buf))] == [42, 42, 42]


def test_control_batches() -> None:
    for commit in (True, False):
        buf = batch.build_control_batch(5, 1, commit)
        header = batch.read_header(buf)
        assert header.is_control and header.is_transactional and batch.crc_ok(buf, 0, header)
        assert batch.control_type(buf) == (batch.CONTROL_COMMIT if commit else batch.CONTROL_ABORT)


def test_compressed_segments_round_trip(store) -> None:  # type: ignore[no-untyped-def]
    for codec in ("gzip", "lz4", "zstd"):
        partition = store.create_topic(f"c-{codec}", 1, {"compression.type": codec}).partitions[0]
        partition.append(rows(200, value_size=200))
        got = read_all(partition)
        assert [r.value[:12] for r in got] == [b"%012d" % i for i in range(200)]
        assert partition.active_segment.size < 200 * 200 / 2  # really compressed


# Kafka's own UtilsTest vectors for murmur2.
MURMUR2_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


def test_murmur2_matches_kafka() -> None:
    for data, expected in MURMUR2_VECTORS.items():
        assert murmur2(data) == expected
        assert (murmur2(data) & 0x7FFFFFFF) == aiokafka_murmur2(data) & 0x7FFFFFFF


def test_murmur2_matches_aiokafka_for_every_length_and_tail() -> None:
    # the word-at-a-time body and each of the 0-3 tail bytes, on keys up to 130 bytes
    rng = random.Random(5)
    for length in range(131):
        for _ in range(8):
            data = bytes(rng.randrange(256) for _ in range(length))
            assert murmur2(data) & 0x7FFFFFFF == aiokafka_murmur2(data) & 0x7FFFFFFF, data


def test_partition_for_key_is_kafkas_default_partitioner() -> None:
    # toPositive(murmur2(key)) % numPartitions, as in Kafka's BuiltInPartitioner
    assert partition_for_key(b"foobar", 10) == (-790332482 & 0x7FFFFFFF) % 10
    assert partition_for_key(b"21", 3) == (-973932308 & 0x7FFFFFFF) % 3
