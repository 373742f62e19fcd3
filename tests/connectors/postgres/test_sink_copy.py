"""The Postgres sink's typed path: rows as COPY text, checked against the JSON path's own semantics.

The model is the server itself: ``jsonb_populate_record`` over the row's JSON
document is what the sink's JSON path writes, so a table filled through the
typed path must equal one filled row by row through ``jsonb_populate_record``.
The COPY text is read back with the source's parser of text-format COPY
(:func:`connectors.postgres.sql.parse_copy_text`), written independently of
the encoder.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import json
import math
import uuid
from typing import Any

import pytest

from millpond.connector import ConnectorContext
from millpond.connectors.postgres.sink import PostgresSink, PostgresSinkConfig
from millpond.connectors.postgres.sink_apply import DIRECT_SKIP, DIRECT_SKIP_MAX, _Direct
from millpond.connectors.postgres.sink_copy import copy_text
from millpond.connectors.postgres.sql import parse_copy_text
from millpond.records import Record, TopicPartition

from .conftest import connect

COLUMNS = ["id", "t", "n", "b", "f", "doc"]
TYPES = {"id": "bigint", "t": "text", "n": "numeric", "b": "boolean", "f": "double precision", "doc": "jsonb"}


def _model_cell(value: Any) -> bytes | None:
    """The text jsonb_populate_record hands a scalar column's input function for a JSON value."""
    if value is None:
        return None
    return value.encode() if isinstance(value, str) else json.dumps(value).encode()


def test_copy_text_reads_back_as_the_json_path_would_hand_each_value_over() -> None:
    rows = [
        {"id": 1, "t": "tab\there\nnew line\r\\back\\slash", "n": "12.50", "b": True, "f": 2.5, "doc": {"k": [1, "\t"]}},
        {"id": 2, "t": "", "n": 123456789012345678901234567890, "b": False, "f": -0.0, "doc": "just a string"},
        {"id": 3, "t": None, "n": None, "b": None, "f": None, "doc": None},
        {"id": 4, "t": "grüße \\N", "n": decimal.Decimal("1.10"), "b": True, "f": 1e300, "doc": [None, True]},
    ]
    data, count, unfit = copy_text(rows, COLUMNS, TYPES)
    assert (count, unfit) == (4, [])
    parsed = parse_copy_text(data)
    assert len(parsed) == 4
    for row, cells in zip(rows, parsed):
        for column, cell in zip(COLUMNS, cells):
            value = row[column]
            if column == "doc":
                assert (None if cell is None else json.loads(cell)) == value
            elif isinstance(value, bool):
                assert cell == (b"true" if value else b"false")
            elif isinstance(value, float):
                assert cell is not None and float(cell) == value
            elif isinstance(value, decimal.Decimal):
                assert cell == str(value).encode()
            else:
                assert cell == _model_cell(value), column


def test_rows_text_cannot_carry_are_left_to_the_json_path() -> None:
    good = {"id": 1, "t": "x", "n": 1, "b": True, "f": 1.0, "doc": {"a": 1}}
    unfit_rows = [
        {**good, "id": 2, "t": ["a", "list"]},   # an array column's JSON: the JSON path builds the array
        {**good, "id": 3, "n": {"an": "object"}},  # a composite's JSON
        {**good, "id": 4, "f": math.nan},          # no JSON text for it
        {**good, "id": 5, "t": b"bytes"},
        {k: v for k, v in good.items() if k != "b"} | {"id": 6},  # lacks a column: keeps the table's value
    ]
    data, count, unfit = copy_text([good, *unfit_rows], COLUMNS, TYPES)
    assert count == 1 and [r["id"] for r in unfit] == [2, 3, 4, 5, 6]
    assert [c[0] for c in parse_copy_text(data)] == [b"1"]
    # a json (not jsonb) column: the JSON path normalises its text, so every row goes that way
    assert copy_text([good], COLUMNS, {**TYPES, "doc": "json"}) == (b"", 0, [good])
    # other objects the JSON path stages as str() (its default=str) go as the same text
    when = datetime.datetime(2024, 2, 29, 23, 59, 59, tzinfo=datetime.timezone.utc)
    ident = uuid.UUID(int=7)
    data, count, _ = copy_text([{"a": when, "b": ident}], ["a", "b"], {"a": "timestamptz", "b": "uuid"})
    assert parse_copy_text(data) == [[str(when).encode(), str(ident).encode()]]


def test_direct_copy_backs_off_after_a_miss_and_resets_on_a_hit() -> None:
    d = _Direct()
    assert d.due()
    d.missed()
    assert [d.due() for _ in range(DIRECT_SKIP + 1)] == [False] * DIRECT_SKIP + [True]
    d.missed()
    assert [d.due() for _ in range(2 * DIRECT_SKIP + 1)] == [False] * (2 * DIRECT_SKIP) + [True]
    for _ in range(20):
        d.missed()
    assert d.backoff == DIRECT_SKIP_MAX
    d.hit()
    assert d.backoff == DIRECT_SKIP


DDL = ("(id bigint PRIMARY KEY, t text, n numeric(12,2), b boolean, f double precision, ts timestamptz, "
       "d date, doc jsonb, arr int[], by bytea, u uuid)")


def _row(i: int, version: int) -> dict[str, Any]:
    return {
        "id": i, "t": f"row {i}\tv{version}\n\\", "n": f"{i}.{version:02d}", "b": i % 2 == 0, "f": i / 3,
        "ts": f"2024-01-01T00:00:{i % 60:02d}.5+01:00", "d": "2024-02-29",
        "doc": {"i": i, "v": version} if i % 5 else f"text {i}",
        # every seventh row carries an array: the JSON path writes it, the others go as COPY text
        "arr": [i, version] if i % 7 == 0 else None,
        "by": "\\x00ff" if i % 3 else None, "u": str(uuid.UUID(int=i)),
    }


@pytest.mark.postgres
def test_typed_path_writes_what_jsonb_populate_record_writes(pg_dsn: str, name: str) -> None:
    """Inserts (straight COPY), then updates and inserts mixed (the COPY meets a key: staged upsert),
    then more of both while the direct COPY backs off, with deletes (keys staged as COPY text); each
    flush against the server's own model."""

    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name} {DDL}")
        await conn.execute(f"CREATE TABLE {name}_model {DDL}")
        sink = PostgresSink(PostgresSinkConfig(dsn=pg_dsn, table=name), ConnectorContext(name=name))
        await sink.start()
        tp = TopicPartition("t", 0)
        offset = 0
        rounds = [
            [_row(i, 1) for i in range(1, 301)],
            [_row(i, 2) for i in range(150, 451)],   # 150..300 exist: the direct COPY fails, rows are staged
            [_row(i, 3) for i in range(440, 600)],
        ]
        deleted = [range(0), range(0), range(1, 60, 2)]
        for rows, gone in zip(rounds, deleted):
            records = []
            for row in rows:
                value = {"before": None, "after": row, "op": "c", "source": {"table": name}, "ts_ms": 0}
                records.append(Record(key={"id": row["id"]}, value=value, topic="t", partition=0, offset=offset))
                offset += 1
            for i in gone:  # a delete and its tombstone, as postgres-cdc writes them
                value = {"before": {"id": i}, "after": None, "op": "d", "source": {"table": name}, "ts_ms": 0}
                records.append(Record(key={"id": i}, value=value, topic="t", partition=0, offset=offset))
                records.append(Record(key={"id": i}, value=None, topic="t", partition=0, offset=offset + 1))
                offset += 2
            await sink.write(records)
            await sink.flush({tp: offset})
            for row in rows:
                await conn.execute(
                    f"INSERT INTO {name}_model SELECT * FROM jsonb_populate_record(NULL::{name}_model, $1::jsonb) "
                    "ON CONFLICT (id) DO UPDATE SET (t, n, b, f, ts, d, doc, arr, by, u) = "
                    "(EXCLUDED.t, EXCLUDED.n, EXCLUDED.b, EXCLUDED.f, EXCLUDED.ts, EXCLUDED.d, EXCLUDED.doc, "
                    "EXCLUDED.arr, EXCLUDED.by, EXCLUDED.u)",
                    json.dumps(row),
                )
            await conn.execute(f"DELETE FROM {name}_model WHERE id = ANY($1::bigint[])", list(gone))
            differ = await conn.fetchval(
                f"SELECT count(*) FROM ((TABLE {name} EXCEPT TABLE {name}_model) "
                f"UNION ALL (TABLE {name}_model EXCEPT TABLE {name})) d")
            assert differ == 0
        assert await conn.fetchval(f"SELECT count(*) FROM {name}") == 599 - 30
        assert await conn.fetchval(f"SELECT t FROM {name} WHERE id = 200") == "row 200\tv2\n\\"
        assert sink.rows_written == 300 + 301 + 160 + 30
        await sink.stop()
        await conn.close()

    asyncio.run(go())


@pytest.mark.postgres
def test_a_staging_table_made_in_a_rolled_back_flush_is_made_again(pg_dsn: str, name: str) -> None:
    """The typed staging table is created inside the flush's transaction: a rollback takes it away,
    and the next flush that needs it must create it again rather than COPY into nothing."""
    from millpond.connectors.postgres.sink_apply import Applier
    from millpond.connectors.postgres.sink_schema import describe

    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
        await conn.execute(f"INSERT INTO {name} SELECT g, 'old' FROM generate_series(1, 10) g")
        target = await describe(conn, "public", name, None)
        assert target is not None
        target.direct.missed()  # updates: straight to the staged upsert
        applier = Applier("test", apply_truncate=True)
        entries: list[Any] = [(target, "rows", {i: {"id": i, "v": "new"} for i in range(1, 6)}, None)]

        async def ddl(*_: Any) -> None:
            raise AssertionError("no schema change here")

        txn = conn.transaction()
        await txn.start()
        assert await applier.apply(conn, entries, ddl) == 5
        await txn.rollback()
        applier.committed(False)
        assert await conn.fetchval(f"SELECT count(*) FROM {name} WHERE v = 'new'") == 0
        async with conn.transaction():
            assert await applier.apply(conn, entries, ddl) == 5
        applier.committed(True)
        async with conn.transaction():  # and a committed one is reused
            assert await applier.apply(conn, entries, ddl) == 5
        assert await conn.fetchval(f"SELECT count(*) FROM {name} WHERE v = 'new'") == 5
        await conn.close()

    asyncio.run(go())
