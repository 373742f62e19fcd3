"""The Postgres sink against the real server, and source -> sink round trips."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from millpond.connector import ConnectorContext
from millpond.connectors.postgres.sink import PostgresSink, PostgresSinkConfig
from millpond.converters import JsonConverter
from millpond.errors import ConfigError, RecordError
from millpond.records import Record, TopicPartition

from .conftest import connect, drain, make_source

pytestmark = pytest.mark.postgres


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def make_sink(dsn: str, name: str, **cfg: Any) -> PostgresSink:
    return PostgresSink(PostgresSinkConfig(dsn=dsn, **cfg), ConnectorContext(name=name))


def through_log(records: list[Record], topic: str | None = None) -> list[Record]:
    """What a sink gets back from the log: JSON-serialised, deserialised, offsets assigned."""
    conv = JsonConverter()
    out = []
    for i, r in enumerate(records):
        out.append(Record(
            value=conv.deserialize(conv.serialize(r.value)),
            key=conv.deserialize(conv.serialize(r.key)),
            topic=topic or r.topic, partition=0, offset=i, timestamp=r.timestamp,
        ))
    return out


def envelope(op: str, after: dict[str, Any] | None, before: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"before": before, "after": after, "op": op, "source": {"table": "x"}, "ts_ms": 0}


def test_upserts_deletes_truncate_and_offsets_in_one_transaction(pg_dsn: str, name: str) -> None:
    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text, n numeric)")
        sink = make_sink(pg_dsn, name, table=name)
        assert await sink.start() == {}
        tp = TopicPartition("topic-a", 0)
        recs = [
            Record(key={"id": 1}, value=envelope("c", {"id": 1, "v": "a", "n": "1.50"}), topic="topic-a", partition=0, offset=0),
            Record(key={"id": 2}, value={"id": 2, "v": "plain row", "n": None}, topic="topic-a", partition=0, offset=1),
            Record(key={"id": 1}, value=envelope("u", {"id": 1, "v": "b", "n": "2.50"}), topic="topic-a", partition=0, offset=2),
            Record(key={"id": 3}, value=envelope("c", {"id": 3, "v": "c", "n": "3"}), topic="topic-a", partition=0, offset=3),
            Record(key={"id": 3}, value=envelope("d", None, {"id": 3}), topic="topic-a", partition=0, offset=4),
            Record(key={"id": 3}, value=None, topic="topic-a", partition=0, offset=5),
        ]
        await sink.write(recs)
        await sink.flush({tp: 6})
        rows = await conn.fetch(f"SELECT id, v, n::text FROM {name} ORDER BY id")
        assert [tuple(r) for r in rows] == [(1, "b", "2.50"), (2, "plain row", None)]
        stored = await conn.fetch("SELECT topic, partition, next_offset FROM millpond_sink_offsets WHERE connector = $1", name)
        assert [tuple(r) for r in stored] == [("topic-a", 0, 6)]

        # a failing flush writes neither rows nor offsets
        await sink.write([Record(key={"id": 9}, value={"id": "not-an-int"}, topic="topic-a", partition=0, offset=6)])
        with pytest.raises(Exception, match="flush failed"):
            await sink.flush({tp: 7})
        assert await conn.fetchval(f"SELECT count(*) FROM {name}") == 2
        assert await conn.fetchval("SELECT next_offset FROM millpond_sink_offsets WHERE connector = $1", name) == 6
        # the runtime restarts a failed sink; the new one resumes where the last flush ended
        await sink.stop()
        sink = make_sink(pg_dsn, name, table=name)
        assert await sink.start() == {tp: 6}

        # records that cannot mean anything are refused by write(), before anything is buffered
        with pytest.raises(RecordError, match="JSON object"):
            await sink.write([Record(key={"id": 7}, value=[1, 2], topic="topic-a", partition=0, offset=6)])
        with pytest.raises(RecordError, match="lacks key column"):
            await sink.write([Record(key=None, value={"v": "no id"}, topic="topic-a", partition=0, offset=6)])
        with pytest.raises(RecordError, match="delete without a key"):
            await sink.write([Record(key="plain", value=None, topic="topic-a", partition=0, offset=6)])

        # truncate, then new rows after it in the same flush
        await sink.write([
            Record(key=None, value=envelope("t", None), topic="topic-a", partition=0, offset=7),
            Record(key={"id": 5}, value=envelope("c", {"id": 5, "v": "after-truncate", "n": "5"}), topic="topic-a", partition=0, offset=8),
        ])
        await sink.flush({tp: 9})
        assert [tuple(r) for r in await conn.fetch(f"SELECT id, v FROM {name}")] == [(5, "after-truncate")]
        await sink.stop()

        # a new sink resumes from the stored offsets
        sink2 = make_sink(pg_dsn, name, table=name)
        assert await sink2.start() == {tp: 9}
        await sink2.stop()
        await conn.close()

    run(go())


def test_unavailable_toast_columns_keep_their_value(pg_dsn: str, name: str) -> None:
    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, big text, v int)")
        sink = make_sink(pg_dsn, name, table=name)
        await sink.start()
        tp = TopicPartition("t", 0)
        await sink.write([Record(key={"id": 1}, value=envelope("c", {"id": 1, "big": "B" * 3000, "v": 1}), topic="t")])
        await sink.flush({tp: 1})
        unavailable = "__millpond_unavailable_value"
        await sink.write([Record(key={"id": 1}, value=envelope("u", {"id": 1, "big": unavailable, "v": 2}), topic="t")])
        await sink.flush({tp: 2})
        assert tuple(await conn.fetchrow(f"SELECT id, length(big), v FROM {name}")) == (1, 3000, 2)
        # insert + partial update of the same key inside one flush merge onto the full row
        await sink.write([
            Record(key={"id": 2}, value=envelope("c", {"id": 2, "big": "C" * 10, "v": 1}), topic="t"),
            Record(key={"id": 2}, value=envelope("u", {"id": 2, "big": unavailable, "v": 5}), topic="t"),
        ])
        await sink.flush({tp: 4})
        assert tuple(await conn.fetchrow(f"SELECT id, big, v FROM {name} WHERE id = 2")) == (2, "C" * 10, 5)
        await sink.stop()
        await conn.close()

    run(go())


def test_auto_create_and_missing_table_error(pg_dsn: str, name: str) -> None:
    async def go() -> None:
        conn = await connect(pg_dsn)
        sink = make_sink(pg_dsn, name, table=f"{name}_missing")
        await sink.start()
        with pytest.raises(ConfigError, match="does not exist.*auto_create"):
            await sink.write([Record(key={"id": 1}, value={"id": 1}, topic="t")])
        await sink.stop()
        sink = make_sink(pg_dsn, name, schema="auto", auto_create=True)
        await sink.start()
        await sink.write([
            Record(key={"id": 1}, value=envelope("c", {"id": 1, "name": "x", "score": 1.5, "ok": True, "tags": ["a"], "meta": {"k": 1}}),
                   topic=f"pfx.public.{name}"),
        ])
        await sink.flush({TopicPartition(f"pfx.public.{name}", 0): 1})
        row = await conn.fetchrow(f"SELECT * FROM auto.{name}")
        assert dict(row) == {"id": 1, "name": "x", "score": 1.5, "ok": True, "tags": '["a"]', "meta": '{"k": 1}'}
        pk = await conn.fetchval(f"SELECT count(*) FROM pg_index WHERE indrelid = 'auto.{name}'::regclass AND indisprimary")
        assert pk == 1
        await sink.stop()
        await conn.close()

    run(go())


TYPES_DDL = """
    id bigint PRIMARY KEY,
    i2 smallint, i4 int, i8 bigint, num numeric(30,10), num_free numeric, f4 real, f8 double precision,
    b bool, t text, vc varchar(20), ch char(3), j json, jb jsonb,
    ts timestamp, tstz timestamptz, d date, tm time, tmz timetz, iv interval,
    u uuid, by bytea, ai int[], at text[], ai2 int[][], anum numeric[], ajb jsonb[],
    m {mood}, ma {mood}[]
"""

TYPES_ROWS = """
    (1, -32768, 2147483647, -9223372036854775808, 12345678901234567890.0123456789, 1e-30, 1.5, 3.141592653589793,
     true, 'hé "quoted" \\ back', 'vc', 'ab', '{{"a": [1, 2.5]}}', '{{"b": {{"c": null}}}}',
     '2024-02-29 23:59:59.999999', '2024-01-02 03:04:05.5+05:30', '0001-01-01', '23:59:59', '12:00:00+02', '1 year 2 mons 3 days 04:05:06',
     'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '\\x00ff10', '{{1,NULL,3}}', '{{"a b","NULL",NULL,"q\\"x"}}', '{{{{1,2}},{{3,4}}}}',
     '{{1.10,NaN}}', ARRAY['{{"x": 1}}'::jsonb], 'happy', '{{sad,happy}}'),
    (2, NULL, NULL, NULL, 'NaN', NULL, 'Infinity', '-Infinity', false, '', NULL, NULL, 'null', '[]',
     'infinity', '-infinity', NULL, NULL, NULL, NULL, NULL, '\\x', '{{}}', '{{}}', NULL, NULL, NULL, NULL, '{{}}'),
    (3, NULL, NULL, NULL, NULL, NULL, 'NaN', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
     NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)
"""


def test_every_type_round_trips_source_to_sink(pg_dsn: str, name: str) -> None:
    """Snapshot and stream of every supported type, through JSON, into an identical table."""

    async def go() -> None:
        conn = await connect(pg_dsn)
        mood = f"{name}_mood"
        await conn.execute(f"CREATE TYPE {mood} AS ENUM ('sad', 'happy')")
        ddl = TYPES_DDL.format(mood=mood)
        await conn.execute(f"CREATE TABLE {name} ({ddl})")
        await conn.execute(f"CREATE TABLE {name}_copy ({ddl})")
        await conn.execute(f"INSERT INTO {name} VALUES {TYPES_ROWS.format()}")
        src = make_source(pg_dsn, name, [name], idle_sleep_s=0)
        await src.start(None)
        snap, _ = await drain(src)
        assert {r.value["op"] for r in snap} == {"r"}
        # the same rows again through the stream (new ids), plus an update and a delete
        await conn.execute(f"INSERT INTO {name} SELECT id + 100, i2, i4, i8, num, num_free, f4, f8, b, t, vc, ch, j, jb, ts, tstz, d, tm, tmz, iv, u, by, ai, at, ai2, anum, ajb, m, ma FROM {name}")
        await conn.execute(f"UPDATE {name} SET t = 'updated', ai = '{{7}}' WHERE id = 101")
        await conn.execute(f"DELETE FROM {name} WHERE id = 3")
        stream, _ = await drain(src)
        await src.stop()
        await conn.execute(f"SELECT pg_drop_replication_slot('millpond_{name}')")
        await conn.execute(f"DROP PUBLICATION millpond_{name}")
        assert {r.value["op"] for r in stream if r.value} == {"c", "u", "d"}
        sink = make_sink(pg_dsn, name, table=f"{name}_copy")
        await sink.start()
        records = through_log(snap + stream, topic="t")
        await sink.write(records)
        await sink.flush({TopicPartition("t", 0): len(records)})
        await sink.stop()
        # json has no equality: compare rows as jsonb, and every other column by its exact text too
        diff = await conn.fetch(
            f"(SELECT to_jsonb(t) FROM {name} t EXCEPT SELECT to_jsonb(t) FROM {name}_copy t) UNION ALL "
            f"(SELECT to_jsonb(t) FROM {name}_copy t EXCEPT SELECT to_jsonb(t) FROM {name} t)"
        )
        assert await conn.fetchval(f"SELECT count(*) FROM {name}_copy") == 5
        cols = ", ".join(c for c in [
            "id", "i2", "i4", "i8", "num", "num_free", "f4", "f8", "b", "t", "vc", "ch", "jb", "ts", "tstz",
            "d", "tm", "tmz", "iv", "u", "by", "ai", "at", "ai2", "anum", "ajb", "m", "ma"])
        src_text = await conn.fetch(f"SELECT ROW({cols})::text FROM {name} ORDER BY id")
        copy_text = await conn.fetch(f"SELECT ROW({cols})::text FROM {name}_copy ORDER BY id")
        await conn.close()
        assert diff == []
        for a, b in zip(src_text, copy_text):
            assert a[0] == b[0], [(x, y) for x, y in zip(a[0].split(","), b[0].split(",")) if x != y]
        assert len(src_text) == len(copy_text)
        # spot checks of the JSON-ready values themselves
        first = next(r.value["after"] for r in snap if r.key == {"id": 1})
        assert first["num"] == "12345678901234567890.0123456789"
        assert first["i8"] == -9223372036854775808
        assert first["jb"] == {"b": {"c": None}}
        assert first["tstz"] == "2024-01-01T21:34:05.5+00:00"
        assert first["ts"] == "2024-02-29T23:59:59.999999"
        assert first["by"] == "\\x00ff10"
        assert first["ai2"] == [[1, 2], [3, 4]] and first["at"] == ["a b", "NULL", None, 'q"x']
        assert first["m"] == "happy" and first["ma"] == ["sad", "happy"]
        assert first["iv"] == "P1Y2M3DT4H5M6S"
        json.dumps(first)

    run(go())


def test_table_without_primary_key_is_keyed_by_the_record_key(pg_dsn: str, name: str) -> None:
    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name} (code text, region int, v int)")
        sink = make_sink(pg_dsn, name, table=name)
        await sink.start()
        tp = TopicPartition("t", 0)
        await sink.write([
            Record(key={"code": "a", "region": 1}, value={"code": "a", "region": 1, "v": 1}, topic="t"),
            Record(key={"code": "a", "region": 2}, value={"code": "a", "region": 2, "v": 1}, topic="t"),
        ])
        await sink.flush({tp: 2})
        await sink.write([
            Record(key={"code": "a", "region": 1}, value={"code": "a", "region": 1, "v": 2}, topic="t"),
            Record(key={"code": "a", "region": 2}, value=None, topic="t"),
        ])
        await sink.flush({tp: 4})
        rows = await conn.fetch(f"SELECT code, region, v FROM {name}")
        assert [tuple(r) for r in rows] == [("a", 1, 2)]
        await sink.stop()
        await conn.close()

    run(go())


def test_staged_documents_and_keys_match_the_stdlib_forms() -> None:
    """The orjson staging text reads back as the row (big integers through the stdlib
    fallback), and the single-column key shortcut gives the general path's identity."""
    from millpond.connectors.postgres.sink_apply import key_of as _key_of
    from millpond.connectors.postgres.sink_copy import document as _document

    rows = [
        {"id": 1, "name": "grüße", "n": None, "f": 2.5, "tags": ["a", "b"], "doc": {"k": [1, {"x": True}]}},
        {"id": 123456789012345678901234567890, "amount": "12.50"},
    ]
    for row in rows:
        assert json.loads(_document(row)) == row
    assert _key_of({"id": 7, "x": 1}, ["id"]) == 7
    assert _key_of({"id": "a"}, ["id"]) == "a"
    assert _key_of({"id": True}, ["id"]) == (True,)
    assert _key_of({"id": [1, 2]}, ["id"]) == ("json", "[[1,2]]")
    assert _key_of({"id": "[[1,2]]"}, ["id"]) != _key_of({"id": [1, 2]}, ["id"])
    assert _key_of({"a": 1, "b": "x"}, ["a", "b"]) == (1, "x")
    with pytest.raises(KeyError):
        _key_of({"x": 1}, ["id"])
