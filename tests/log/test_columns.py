"""The column encoder (``_columns.c``) writes exactly what aiokafka's builder writes."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from millpond.log import batch as batch_format
from millpond.records import JsonRecords, Record
from tests.ci import speedups_required

pytestmark = pytest.mark.skipif(
    batch_format._columns is None and not speedups_required(),  # noqa: SLF001
    reason="C speedups not built or switched off (tests/test_speedups.py fails under CI=true)",
)

fields = st.one_of(st.none(), st.binary(max_size=300))
rows = st.lists(
    st.tuples(fields, fields, st.integers(min_value=0, max_value=2**41)), min_size=1, max_size=50
)


def both(columns: JsonRecords, **kwargs: object) -> tuple[bytearray, bytearray]:
    """(column encoder, aiokafka's per-record builder) for the same records."""
    fast = batch_format.build_batch(columns, **kwargs)  # type: ignore[arg-type]
    slow = batch_format.build_batch(list(columns), **kwargs)  # type: ignore[arg-type]
    return fast, slow


@settings(max_examples=200, deadline=None)
@given(rows, st.booleans())
def test_same_bytes_as_the_record_builder(data: list[tuple[bytes | None, bytes | None, int]], txn: bool) -> None:
    columns = JsonRecords("t", [k for k, _, _ in data], [v for _, v, _ in data], [t for _, _, t in data])
    kwargs = {"producer_id": 7, "producer_epoch": 3, "transactional": True} if txn else {}
    fast, slow = both(columns, **kwargs)
    assert fast == slow
    header = batch_format.read_header(fast)
    assert batch_format.crc_ok(fast, 0, header)
    decoded = [(r.key, r.value, r.timestamp) for r in batch_format.iter_records(bytes(fast))]
    assert decoded == data


def test_log_append_time_is_stamped_like_the_record_builder() -> None:
    columns = JsonRecords("t", [b"k", None], [b"v", b"w"], [5, 3])
    fast, slow = both(columns, log_append_time=1_700_000_000_000)
    assert fast == slow
    assert {r.timestamp for r in batch_format.iter_records(bytes(fast))} == {1_700_000_000_000}


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_match_the_record_builder(codec: str) -> None:
    columns = JsonRecords("t", [b"k%d" % i for i in range(100)], [b'{"v":%d}' % i * 5 for i in range(100)],
                          list(range(100)))
    fast, slow = both(columns, compression=batch_format.CODECS[codec], producer_id=4, producer_epoch=1,
                      transactional=True)
    assert fast == slow
    assert batch_format.read_header(fast).attributes & batch_format.COMPRESSION_MASK == batch_format.CODECS[codec]
    assert [r.value for r in batch_format.iter_records(bytes(fast))] == columns.values


def test_incompressible_records_are_compressed_all_the_same_like_the_record_builder() -> None:
    columns = JsonRecords("t", [None], [os.urandom(64)], [1])
    fast, slow = both(columns, compression=batch_format.CODECS["zstd"])
    assert fast == slow and batch_format.read_header(fast).attributes & batch_format.COMPRESSION_MASK == 4


def test_bad_columns_are_refused_with_the_index() -> None:
    columns = JsonRecords("t", [b"k", "not bytes"], [b"v", b"w"], [1, 2])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"keys\[1\] must be bytes"):
        batch_format.build_batch(columns)  # type: ignore[arg-type]
    columns = JsonRecords("t", [b"k"], [b"v"], [1.5])  # type: ignore[list-item]
    with pytest.raises(TypeError, match=r"timestamps\[0\] must be an int"):
        batch_format.build_batch(columns)  # type: ignore[arg-type]


def test_json_records_iterate_and_slice_as_records() -> None:
    columns = JsonRecords("t", [b"1", None, b"3"], [b"a", b"b", None], [10, 11, 12])
    assert [(r.key, r.value, r.timestamp, r.topic) for r in columns] == [
        (b"1", b"a", 10, "t"), (None, b"b", 11, "t"), (b"3", None, 12, "t")
    ]
    assert columns[1:].keys == [None, b"3"] and len(columns[1:]) == 2
    assert isinstance(columns[0], Record) and columns[0].key == b"1"
    assert columns.value_bytes == 2
