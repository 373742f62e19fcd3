"""The source task hands serialised records to the log as columns when nothing needs the builder."""

from __future__ import annotations

from millpond.log import batch as batch_format
from millpond.records import JsonRecords, Record
from millpond.runtime.source_task import as_columns


def decoded(rows: object) -> list[tuple[object, ...]]:
    buf = batch_format.build_batch(rows)  # type: ignore[arg-type]
    return [(r.offset, r.key, r.value, r.timestamp, list(r.headers)) for r in batch_format.iter_records(bytes(buf))]


def test_plain_records_become_columns_with_the_same_batch() -> None:
    records = [Record(f"v{i}".encode(), None if i % 2 else b"k", 1_700_000_000_000 + i) for i in range(100)]
    records.append(Record(None, b"tombstone", 5))
    columns = as_columns("t", records)
    assert isinstance(columns, JsonRecords)
    assert decoded(columns) == decoded(records)


def test_what_the_c_encoder_does_not_take_stays_records() -> None:
    cases = [
        Record(b"v", None, 1, [("h", b"x")]),  # headers
        Record(b"v", None, None),  # no timestamp yet
        Record(bytearray(b"v"), None, 1),  # not bytes
        Record(b"v", "a str key", 1),
    ]
    for odd in cases:
        records = [Record(b"a", None, 1), odd]
        assert as_columns("t", records) is records
    assert as_columns("t", []) == []
