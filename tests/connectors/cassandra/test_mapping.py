"""Unit tests of the record -> row mapping (no server needed)."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest

from millpond.connectors.cassandra.config import CassandraSinkConfig
from millpond.connectors.cassandra.mapping import (
    DELETE,
    MISSING,
    TRUNCATE,
    UNAVAILABLE,
    UPSERT,
    Column,
    RowMapper,
    TypeMismatch,
    auto_source,
    classify,
    coercer,
    compile_source,
)
from millpond.connectors.cassandra.sink import write_timestamp
from millpond.errors import RecordError
from millpond.records import Record


def rec(value: Any, key: Any = None, offset: int = 3, **kw: Any) -> Record:
    return Record(value=value, key=key, topic="t", partition=1, offset=offset, timestamp=kw.pop("timestamp", 1000), **kw)


@pytest.mark.parametrize(
    "cql, given, expected",
    [
        ("int", 5, 5),
        ("int", "42", 42),
        ("int", 7.0, 7),
        ("bigint", 2**62, 2**62),
        ("varint", 2**80, 2**80),
        ("double", 1, 1.0),
        ("double", "2.5", 2.5),
        ("decimal", 0.1, Decimal("0.1")),
        ("decimal", "12.340", Decimal("12.340")),
        ("text", "hé", "hé"),
        ("text", b"bytes", "bytes"),
        ("text", {"a": 1}, '{"a":1}'),
        ("boolean", False, False),
        ("boolean", "true", True),
        ("timestamp", 1_600_000_000_000, 1_600_000_000_000),
        ("timestamp", "2024-01-02 03:04:05.5+02:00",
         dt.datetime(2024, 1, 2, 3, 4, 5, 500000, tzinfo=dt.timezone(dt.timedelta(hours=2)))),
        ("timestamp", "2024-01-02T03:04:05", dt.datetime(2024, 1, 2, 3, 4, 5, tzinfo=dt.timezone.utc)),
        ("uuid", "12345678-1234-5678-1234-567812345678", uuid.UUID("12345678-1234-5678-1234-567812345678")),
        ("blob", "\\x00ff", b"\x00\xff"),
        ("blob", "AP8=", b"\x00\xff"),
        ("list<int>", ["1", 2], [1, 2]),
        ("set<text>", ["a", "a", "b"], {"a", "b"}),
        ("map<int, text>", {"1": "x"}, {1: "x"}),
        ("frozen<map<text, list<int>>>", {"k": [1]}, {"k": [1]}),
        ("tuple<int, text>", [1, None], (1, None)),
        ("vector<float, 3>", [1, 2, 3], [1.0, 2.0, 3.0]),
    ],
)
def test_coercion(cql: str, given: Any, expected: Any) -> None:
    assert coercer(cql)(given) == expected


@pytest.mark.parametrize(
    "cql, given, fragment",
    [
        ("int", True, "expected int, got bool"),
        ("int", "five", "expected int, got str 'five'"),
        ("int", 2**31, "out of range for int"),
        ("smallint", 40000, "out of range for smallint"),
        ("double", [1], "expected double, got list"),
        ("decimal", "NaN", "not a finite decimal"),
        ("text", 5, "expected text, got int 5"),
        ("boolean", 1, "expected boolean, got int"),
        ("uuid", "nope", "expected uuid"),
        ("timeuuid", str(uuid.uuid4()), "not a version-1"),
        ("blob", "not base64!", "blob"),
        ("list<int>", [1, None], "null inside a list<int>"),
        ("map<text, int>", ["a"], "expected map<text, int>"),
        ("vector<float, 2>", [1.0], "expected vector<float, 2>"),
    ],
)
def test_coercion_mismatch(cql: str, given: Any, fragment: str) -> None:
    with pytest.raises(TypeMismatch, match=None) as info:
        coercer(cql)(given)
    assert fragment in str(info.value)


def test_classify() -> None:
    assert classify(rec({"a": 1})) == (UPSERT, {"a": 1})
    assert classify(rec(None)) == (DELETE, None)
    assert classify(rec({"op": "u", "before": None, "after": {"a": 2}})) == (UPSERT, {"a": 2})
    assert classify(rec({"op": "d", "before": {"a": 2}, "after": None})) == (DELETE, {"a": 2})
    assert classify(rec({"op": "t", "before": None, "after": None})) == (TRUNCATE, None)
    with pytest.raises(RecordError, match="unknown op 'x'"):
        classify(rec({"op": "x", "before": None, "after": None}))
    with pytest.raises(RecordError, match="no 'after'"):
        classify(rec({"op": "c", "before": None, "after": None}))


def test_sources() -> None:
    r = rec({"a": {"b": 1}}, key={"id": 9}, headers=[("h", b"x"), ("h", b"y")])
    assert compile_source("value.a.b")(r, r.value, UPSERT) == 1
    assert compile_source("value.a.c")(r, r.value, UPSERT) is MISSING
    assert compile_source("key.id")(r, r.value, UPSERT) == 9
    assert compile_source("header.h")(r, r.value, UPSERT) == b"y"  # the last one wins
    assert compile_source("header.nope")(r, r.value, UPSERT) is MISSING
    assert [compile_source(s)(r, None, UPSERT) for s in ("topic", "partition", "offset", "timestamp")] == ["t", 1, 3, 1000]
    tomb = rec(None, key={"id": 9})
    assert compile_source("value.id")(tomb, None, DELETE) == 9  # a tombstone's row comes from its key
    assert auto_source("id", True)(rec({"x": 1}, key=5), {"x": 1}, UPSERT) == 5
    assert auto_source("id", False)(rec({"x": 1}, key=5), {"x": 1}, UPSERT) is MISSING


def test_row_mapper_errors_name_everything() -> None:
    mapper = RowMapper(
        "ks.t",
        [Column("id", "int", auto_source("id", True), coercer("int")),
         Column("v", "text", auto_source("v", False), coercer("text"))],
        ["id"],
        ["id"],
    )
    assert mapper.upsert(rec({"id": 1}), {"id": 1}) == [1, MISSING]
    # a TOASTed value the Postgres source could not see is left as it is
    assert mapper.upsert(rec({"id": 1, "v": UNAVAILABLE}), {"id": 1, "v": UNAVAILABLE}) == [1, MISSING]
    with pytest.raises(RecordError) as info:
        mapper.upsert(rec({"id": 1, "v": 3}, offset=77), {"id": 1, "v": 3})
    assert str(info.value) == "topic 't' partition 1 offset 77: ks.t: column 'v' is text: expected text, got int 3"
    with pytest.raises(RecordError, match="primary key column 'id' \\(int\\) has no value"):
        mapper.delete(rec(None), None)


def test_write_timestamp_never_ties_and_follows_offsets() -> None:
    same_ms = [write_timestamp(rec({}, offset=o, timestamp=5)) for o in range(0, 5000, 7)]
    assert same_ms == sorted(set(same_ms))
    assert write_timestamp(rec({}, offset=10, timestamp=2)) == 2010
    with pytest.raises(RecordError):
        write_timestamp(Record(value={}, topic="t", partition=0))


def test_config_rejects_bad_sources_and_never_shows_the_password() -> None:
    base = {"keyspace": "ks", "tables": [{"topic": "t", "table": "x"}], "username": "u", "password": "hunter2"}
    cfg = CassandraSinkConfig.model_validate(base)
    assert "hunter2" not in repr(cfg) and "hunter2" not in str(cfg.model_dump())
    with pytest.raises(ValueError, match="source 'values.x'"):
        CassandraSinkConfig.model_validate({**base, "tables": [{"topic": "t", "table": "x", "columns": {"a": "values.x"}}]})
    with pytest.raises(ValueError, match="not a plain Cassandra identifier"):
        CassandraSinkConfig.model_validate({**base, "tables": [{"topic": "t", "table": "a-b"}]})
    with pytest.raises(ValueError, match="primary key column 'z'"):
        CassandraSinkConfig.model_validate(
            {**base, "tables": [{"topic": "t", "table": "x", "create": {"columns": {"a": "int"}, "partition_key": ["z"]}}]}
        )
