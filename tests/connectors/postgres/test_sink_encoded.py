"""The Postgres sink's encoded path (``write_encoded``) gives the table the record path gives.

On the real server and the embedded log: one stream of CDC changes, as the
``postgres-cdc`` source writes them, goes into two tables through two sink
pipelines, one as it runs (JSON values handed over in columns) and one with the
sink's ``takes_encoded`` switched off (every record decoded by the converter).
The stream mixes what the fast way takes (plain inserts and updates) with what
it must leave to the exact path: a topic's first change, deletes and their
tombstones, a truncate, a column added at the source, TOAST "unavailable"
columns, integers beyond 64 bits (which orjson would read as floats), an
update with a ``before`` row, a value written with spaces, and a value that is
not JSON (dead-lettered by both). Both tables must equal each other and a
dict model, value by value, and the dead letters must be the same.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from millpond.backends import open_backend
from millpond.config import PipelineConfig
from millpond.connectors.postgres.sink import PostgresSink
from millpond.connectors.postgres.sink_envelope import plain_row, scan_rows
from millpond.connectors.postgres.source import UNAVAILABLE
from millpond.converters import JsonConverter
from millpond.records import Record
from millpond.runtime import RuntimeOptions, run_pipeline_async
from millpond.runtime.launch import create_topics
from tests.runtime.test_dlq import read_all

pytestmark = pytest.mark.postgres

TOPIC = "enc.public.items"
TYPES = {"id": "bigint", "name": "text", "big": "numeric", "f": "double precision", "doc": "jsonb", "note": "text"}
ADDED = {**TYPES, "extra": "text"}
NAMES = ["plain", "zoë 🐟 ünï", "tab\there", "new\nline", "back\\slash", 'quote"d', "", "∑ ≠ ∞", "\u2028sep"]
FLOATS = [0.1, 0.30000000000000004, 1e-7, 123456.789, 1.7976931348623157e308, 5e-324, -0.0, 2.5]


def _source(types: dict[str, str], lsn: int, unavailable: list[str] | None = None) -> dict[str, Any]:
    source: dict[str, Any] = {
        "connector": "postgres-cdc", "name": "src", "db": "millpond", "schema": "public", "table": "items",
        "lsn": f"0/{lsn:X}", "txid": 700 + lsn // 10, "commit_ts_ms": 1_700_000_000_000 + lsn,
        "snapshot": False, "column_types": types,
    }
    if unavailable:
        source["unavailable"] = unavailable
    return source


def _value(op: str, after: dict[str, Any] | None, before: dict[str, Any] | None, types: dict[str, str],
           lsn: int) -> bytes:
    unavailable = [k for k, v in (after or {}).items() if v == UNAVAILABLE]
    envelope = {"before": before, "after": after, "op": op, "source": _source(types, lsn, unavailable),
                "ts_ms": 1_700_000_000_500 + lsn}
    data = JsonConverter().serialize(envelope)  # orjson, the stdlib for integers beyond 64 bits
    assert data is not None
    return data


def stream() -> tuple[list[tuple[bytes | None, bytes | None]], dict[int, dict[str, Any]], int]:
    """(key, value) pairs, the rows they leave (id -> row) and how many values are not JSON."""
    out: list[tuple[bytes | None, bytes | None]] = []
    model: dict[int, dict[str, Any]] = {}
    types = TYPES
    lsn = 0

    def put(op: str, after: dict[str, Any] | None, before: dict[str, Any] | None = None, key: int | None = None) -> None:
        nonlocal lsn
        lsn += 1
        k = key if key is not None else (after or before or {})["id"]
        out.append((orjson.dumps({"id": k}), _value(op, after, before, types, lsn)))

    def row(i: int, extra: bool = False) -> dict[str, Any]:
        r: dict[str, Any] = {
            "id": i,
            "name": None if i % 11 == 0 else f"{NAMES[i % len(NAMES)]}-{i}",
            "big": 10**25 + i if i % 47 == 0 else (None if i % 5 == 0 else i * 3),
            "f": FLOATS[i % len(FLOATS)] if i % 13 else None,
            "doc": {"i": i, "tags": ["a", NAMES[i % len(NAMES)]], "huge": 2**70 + i if i % 41 == 0 else i} if i % 3 == 0 else None,
            "note": f"note {i}" * (1 + i % 4),
        }
        if extra:
            r["extra"] = f"x{i}"
        return r

    def upsert(op: str, r: dict[str, Any]) -> None:
        put(op, r)
        merged = dict(model.get(r["id"], {}))
        merged.update({c: v for c, v in r.items() if v != UNAVAILABLE})
        model[r["id"]] = merged

    for i in range(1, 40):
        upsert("c", row(i))
    # a truncate: everything so far goes
    lsn += 1
    out.append((None, _value("t", None, None, types, lsn)))
    model.clear()
    for i in range(1, 600):
        upsert("c" if i % 2 else "r", row(i))
    for i in range(1, 600, 9):  # updates, some twice in one poll
        upsert("u", {**row(i), "name": f"upd {NAMES[i % len(NAMES)]} {i}", "f": i / 7})
    for i in range(5, 600, 17):  # TOAST: the note did not change and was not sent
        upsert("u", {**row(i), "name": f"toast {i}", "note": UNAVAILABLE})
    for i in range(3, 600, 23):  # deletes, each followed by its tombstone
        put("d", None, {"id": i})
        out.append((orjson.dumps({"id": i}), None))
        model.pop(i, None)
    for i in (4, 8):  # an update that carries the old row (REPLICA IDENTITY FULL)
        r = {**row(i), "name": f"with before {i}"}
        lsn += 1
        out.append((orjson.dumps({"id": i}), _value("u", r, row(i), types, lsn)))
        model[i] = {**model[i], **r}
    # a value that is not JSON, and one written with spaces (JSON all the same)
    out.append((orjson.dumps({"id": 10}), b'{"before": null, "after": {"id": 10, "name": "not json'))
    r = {**row(10), "name": "spaced"}
    lsn += 1
    out.append((orjson.dumps({"id": 10}), json.dumps(json.loads(_value("u", r, None, types, lsn))).encode()))
    model[10] = {**model[10], **r}
    # the source added a column: the sink adds it, rows after carry it
    types = ADDED
    for i in range(600, 900):
        upsert("c", row(i, extra=True))
    for i in range(1, 900, 31):
        if i in model:
            upsert("u", {**row(i, extra=True), "name": f"late {i}"})
    return out, model, 1


def config(tmp: Path, dsn: str, sink: str, table: str) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "enc",
        "log": {"embedded": {"dir": str(tmp / "log")}},
        "topics": [{"name": TOPIC, "partitions": 1}, {"name": f"dlq_{sink}", "partitions": 1}],
        "connectors": [
            {"name": sink, "kind": "sink", "type": "postgres", "topics": [TOPIC],
             "config": {"dsn": dsn, "table": table, "auto_create": True},
             "converter": {"key": "json", "value": "json"}, "guarantee": "exactly_once",
             "errors": {"policy": "dead_letter", "topic": f"dlq_{sink}"}},
        ],
    })


async def produce(cfg: PipelineConfig, pairs: list[tuple[bytes | None, bytes | None]]) -> None:
    backend = open_backend(cfg.log)
    await backend.open()
    try:
        await create_topics(cfg, backend)
        producer = backend.producer(transactional_id="test")
        # several transactions: several polls, each partly fast and partly exact
        for lo in range(0, len(pairs), 250):
            await producer.begin()
            await producer.send_batch(TOPIC, 0, [Record(v, k, 1) for k, v in pairs[lo:lo + 250]])
            await producer.commit()
    finally:
        await backend.close()


async def dead_letters(cfg: PipelineConfig, topic: str) -> list[tuple[Any, Any]]:
    backend = open_backend(cfg.log)
    await backend.open()
    try:
        return [(r.key, r.value) for r in await read_all(backend, topic)]
    finally:
        await backend.close()


def run_sink(tmp: Path, dsn: str, sink: str, table: str, pairs: list[tuple[bytes | None, bytes | None]],
             produce_first: bool, flush_records: int) -> list[tuple[Any, Any]]:
    cfg = config(tmp, dsn, sink, table)
    if produce_first:
        asyncio.run(produce(cfg, pairs))
    options = RuntimeOptions(idle_seconds=0.5, install_signal_handlers=False)
    options.sink_limits.poll_timeout_s = 0.05
    options.sink_limits.idle_flush_s = 0.05
    options.sink_limits.max_poll_records = 700  # several polls, each with a flush or not
    options.sink_limits.flush_records = flush_records
    asyncio.run(asyncio.wait_for(run_pipeline_async(cfg, until_idle=True, options=options), 120))
    return asyncio.run(dead_letters(cfg, f"dlq_{sink}"))


async def table_rows(dsn: str, table: str) -> dict[int, dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(f"SELECT *, big::text AS big_text, doc::text AS doc_text FROM {table}")
    finally:
        await conn.close()
    return {r["id"]: dict(r) for r in rows}


@pytest.mark.parametrize("flush_records", [500_000, 300])  # one flush; a flush every poll or two
def test_encoded_path_gives_the_record_paths_table(
    tmp_path: Path, pg_dsn: str, name: str, monkeypatch: pytest.MonkeyPatch, flush_records: int
) -> None:
    pairs, model, bad = stream()
    calls: list[int] = []
    write = PostgresSink.write

    async def counting(self: PostgresSink, records: list[Record]) -> None:
        calls.append(len(records))
        await write(self, records)

    monkeypatch.setattr(PostgresSink, "write", counting)
    fast = run_sink(tmp_path, pg_dsn, f"{name}_fast", f"{name}_fast", pairs, True, flush_records)
    fast_writes = sum(calls)
    monkeypatch.setattr(PostgresSink, "takes_encoded", None)
    calls.clear()
    slow = run_sink(tmp_path, pg_dsn, f"{name}_rec", f"{name}_rec", pairs, False, flush_records)

    # the fast way took the plain changes: write saw only the rest (and the record path saw everything)
    assert sum(calls) >= len(pairs) - bad
    assert fast_writes < len(pairs) // 4, (fast_writes, len(pairs))
    # the value that is not JSON went to the dead letters, the same way on both paths
    assert len(fast) == len(slow) == bad
    assert fast == slow

    got_fast = asyncio.run(table_rows(pg_dsn, f"{name}_fast"))
    got_slow = asyncio.run(table_rows(pg_dsn, f"{name}_rec"))
    assert got_fast == got_slow
    assert sorted(got_fast) == sorted(model)
    for i, want in model.items():
        have = got_fast[i]
        assert have["name"] == want["name"], i
        assert have["note"] == want["note"], i
        assert have.get("extra") == want.get("extra"), i
        assert have["f"] == want["f"], i
        assert have["big_text"] == (None if want["big"] is None else str(want["big"])), i  # exact, not a float
        assert (None if have["doc_text"] is None else json.loads(have["doc_text"])) == want["doc"], i


def testplain_row_reads_only_a_plain_change_as_the_converter_does() -> None:
    """The bytes check: what ``plain_row`` reads is what the JSON converter reads; all else is None."""
    types_raw = orjson.dumps(TYPES)
    row = {"id": 1, "name": "zoë\t\"q\"", "big": 5, "f": 0.1, "doc": {"op": "c", "x": [1, {"y": None}]}, "note": "n"}
    good = _value("u", row, None, TYPES, 1)
    shape: list[bytes] = []
    assert plain_row(good, types_raw, shape) == JsonConverter().deserialize(good)["after"] == row
    assert shape  # learnt from a value checked in full: the next ones of the transaction compare bytes
    other = _value("c", {**row, "id": 2}, None, TYPES, 0x2F00A)  # another LSN (hex digits), same fields else
    assert plain_row(other, types_raw, shape) == {**row, "id": 2}
    s = good.decode()
    not_plain = [
        _value("d", None, {"id": 1}, TYPES, 1),  # a delete
        _value("t", None, None, TYPES, 1),  # a truncate
        _value("c", {**row, "big": 10**20}, None, TYPES, 1),  # an integer beyond 64 bits
        _value("c", row, None, ADDED, 1),  # other column types
        _value("c", row, {"id": 1}, TYPES, 1),  # a before row
        s.replace('"ts_ms":', '"ts_ms": ').encode(),  # spaces
        s.replace('"ts_ms":1700000000501', '"ts_ms":01').encode(),  # not JSON: a leading zero
        s.replace('"snapshot":false', '"snapshot":fals').encode(),  # not JSON in the source block
        s.replace('"snapshot":false', '"column_types":{}').encode(),  # the source names its types twice
        s.replace('"name":"zo', '"name":"\\ud800zo').encode(),  # a lone surrogate: the stdlib's to read
        s[:-1].encode(),  # cut short
        s.replace('"op":"u"', '"op":"x"').encode(),  # an op that is no upsert
        s.replace('"lsn":"0/1"', '"lsn":"0/1\\x"').encode(),  # not JSON in the LSN's string
        s.replace('"txid":700', '"txid":0700').encode(),  # not JSON elsewhere in the fields
    ]
    for value in not_plain:
        assert plain_row(value, types_raw, []) is None, value
        assert plain_row(value, types_raw, list(shape)) is None, value
    # an LSN that is not hex digits does not fit the shape: checked in full (and valid)
    assert plain_row(s.replace('"lsn":"0/1"', '"lsn":"0/1g"').encode(), types_raw, list(shape)) == row
    # the C scan (when built) takes what plain_row takes, or less: never a value plain_row refuses
    if scan_rows is not None:
        template = shape[2]
        assert template is not None
        later = [
            _value("c", {**row, "id": 3}, None, TYPES, 0x1234),  # another transaction: txid, commit time, LSN
            _value("r", {**row, "id": 4, "big": 2**63}, None, TYPES, 99),  # 19 digits: the exact path's
            s.replace('"commit_ts_ms":1700000000001', '"commit_ts_ms":0').encode(),
        ]
        for value in [good, other, *later, *not_plain]:
            found = scan_rows([value], template)[0]
            expected = plain_row(value, types_raw, [])
            try:  # the sink parses what the scan found, and takes the exact path if it does not parse
                parsed = None if found is None else orjson.loads(found)
            except orjson.JSONDecodeError:
                parsed = None
            assert parsed in (None, expected), value
            if expected is None:
                assert parsed is None, value
        assert [t is not None for t in scan_rows([good, other, *later, None], template)] == [
            True, True, True, False, True, False]
    # a column named "op" in the row: ",\"op\":\"" comes first inside it; not plain, never misread
    tricky = _value("c", {**row, "doc": None, "op": "d"}, None, TYPES, 1)
    assert plain_row(tricky, types_raw, []) in (None, JsonConverter().deserialize(tricky)["after"])


def test_rows_copied_early_give_the_same_table(pg_dsn: str, name: str) -> None:
    """Polls written through ``write_encoded`` (rows COPYed while the next poll is read) and through
    ``write`` give the same table, across flushes, a delete before rows of other keys (passed) and of
    its key (not passed), updates whose early COPY meets existing keys, and a flush that fails."""
    from millpond.connector import ConnectorContext
    from millpond.connectors.postgres.sink import PostgresSinkConfig
    from millpond.errors import RetriableConnectorError
    from millpond.records import EncodedRecords, TopicPartition

    tp = TopicPartition(TOPIC, 0)
    offset = 0

    def poll(changes: list[tuple[str, int, str]]) -> EncodedRecords:
        nonlocal offset
        keys: list[bytes | None] = []
        values: list[bytes | None] = []
        for op, i, text in changes:
            keys.append(orjson.dumps({"id": i}))
            if op == "d":
                values.append(_value("d", None, {"id": i}, TYPES, offset + len(keys)))
            else:
                row = {"id": i, "name": text, "big": i, "f": 0.5, "doc": None, "note": "n"}
                values.append(_value(op, row, None, TYPES, offset + len(keys)))
        part = EncodedRecords(tp, list(range(offset, offset + len(keys))), [0] * len(keys), keys, values)
        offset += len(keys)
        return part

    script: list[Any] = [
        [("c", i, "a") for i in range(1, 101)],
        [("d", 150, ""), ("c", 150, "b"), *[("c", i, "b") for i in range(151, 201)]],  # waits: key 150 changed
        "flush",
        [("d", 5, ""), *[("c", i, "c") for i in range(201, 301)]],  # passes the delete of another key
        "fail",  # a flush that rolls back takes the early rows with it; written again by the next
        "flush",
        [("u", i, "u") for i in range(1, 51)],  # existing keys: the early COPY rolls back, the flush upserts
        [("c", i, "d") for i in range(300, 400)],
        "flush",
        [("c", i, "e") for i in range(400, 450)],
        [("u", 7, "last"), ("d", 8, "")],
        "flush",
    ]

    async def go() -> None:
        nonlocal offset
        conn = await asyncpg.connect(pg_dsn)
        ddl = "(id bigint PRIMARY KEY, name text, big numeric, f double precision, doc jsonb, note text)"
        await conn.execute(f"CREATE TABLE {name}_e {ddl}; CREATE TABLE {name}_r {ddl}")
        results = []
        for table, encoded in ((f"{name}_e", True), (f"{name}_r", False)):
            offset = 0
            sink = PostgresSink(PostgresSinkConfig(dsn=pg_dsn, table=table), ConnectorContext(name=table))
            await sink.start()
            kinds = []  # what the encoded sink's buffer holds at each flush: "early" rows are in the table
            for step in script:
                if step == "flush":
                    if encoded:
                        await sink._early.settle(sink._buffer)
                        kinds.append([e[1] for e in sink._buffer])
                    await sink.flush({tp: offset})
                    continue
                if step == "fail":
                    if encoded:
                        expected, sink._expected = sink._expected, {tp: 10**9}  # another writer, as it seems
                        with pytest.raises(RetriableConnectorError):
                            await sink.flush({tp: offset})
                        sink._expected = expected
                        assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE id > 200") == 0
                    continue
                part = poll(step)
                if encoded:
                    assert await sink.write_encoded(part) == len(part)
                else:
                    await sink.write([Record(JsonConverter().deserialize(v), JsonConverter().deserialize(k),
                                             0, [], TOPIC, 0, o)
                                      for k, v, o in zip(part.keys, part.values, part.offsets)])
            if encoded:
                assert kinds == [
                    ["up", "early", "del", "rows"],  # the first change (by write), rows early, blocked rows
                    ["del", "rows"],  # early until the flush that failed: written again by the next
                    ["rows", "rows"],  # the COPY of the updates met existing keys: the flush upserts both
                    ["rows", "rows", "del"],  # no early COPY for a while after that
                ], kinds
            await sink.stop()
            results.append([tuple(r) for r in await conn.fetch(f"SELECT * FROM {table} ORDER BY id")])
        await conn.close()
        assert results[0] == results[1]
        ids = [r[0] for r in results[0]]
        assert 5 in ids and 8 not in ids and 150 in ids and len(ids) == 100 + 51 + 100 + 99 + 50 - 1
        assert dict((r[0], r[1]) for r in results[0])[7] == "last"

    asyncio.run(go())
