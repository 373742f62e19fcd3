"""CassandraSink against the real Apache Cassandra 5.0 of the test harness."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest

from millpond.errors import ConnectorError, RecordError

from .support import make_sink, rec, sink_config, write

pytestmark = pytest.mark.cassandra

TS = 1_700_000_000_000  # a record timestamp, ms


def _row(cql: Any, query: str) -> Any:
    return cql.execute(query).one()


def test_all_types_round_trip(cql: Any, keyspace: str, cassandra_contact: tuple[str, int]) -> None:
    cql.execute(
        f"""CREATE TABLE {keyspace}.typed (
            id int PRIMARY KEY, name text, big bigint, flag boolean, ratio double, price decimal,
            at timestamp, ref uuid, raw blob, tags frozen<list<text>>, counts map<text, int>, ids set<int>,
            day date)"""
    )
    ref = uuid.uuid4()
    value = {
        "id": 7,
        "name": "zoë",
        "big": 2**40 + 3,
        "flag": True,
        "ratio": 0.25,
        "price": "12.340",
        "at": "2024-02-29T12:34:56.789Z",
        "ref": str(ref),
        "raw": "\\x00ff10",
        "tags": ["a", "b", "a"],
        "counts": {"x": 1, "y": 2},
        "ids": [3, 1, 3],
        "day": "2024-03-01",
    }
    write(sink_config(cassandra_contact, keyspace, [{"topic": "t", "table": "typed"}]), [rec("t", 0, 7, value)])
    row = _row(cql, f"SELECT * FROM {keyspace}.typed WHERE id = 7")
    assert row.name == "zoë"
    assert row.big == 2**40 + 3
    assert row.flag is True
    assert row.ratio == 0.25
    assert row.price == Decimal("12.340")
    assert row.at == dt.datetime(2024, 2, 29, 12, 34, 56, 789000)
    assert row.ref == ref
    assert row.raw == b"\x00\xff\x10"
    assert row.tags == ["a", "b", "a"]
    assert dict(row.counts) == {"x": 1, "y": 2}
    assert set(row.ids) == {1, 3}
    assert str(row.day) == "2024-03-01"


def test_nonfrozen_list_is_refused_unless_accepted(
    cql: Any, keyspace: str, cassandra_contact: tuple[str, int]
) -> None:
    cql.execute(f"CREATE TABLE {keyspace}.l (id int PRIMARY KEY, tags list<text>)")
    config = sink_config(cassandra_contact, keyspace, [{"topic": "t", "table": "l"}])
    with pytest.raises(ConnectorError, match=r"column 'tags' \(list<text>\) is a non-frozen list"):
        write(config)
    config["tables"][0]["nonfrozen_lists"] = True
    write(config, [rec("t", 0, 1, {"id": 1, "tags": ["x", "y"]})])
    assert _row(cql, f"SELECT tags FROM {keyspace}.l WHERE id = 1").tags == ["x", "y"]
    # the reason for the refusal: the very same record written again appends again
    write(config, [rec("t", 0, 1, {"id": 1, "tags": ["x", "y"]})])
    assert _row(cql, f"SELECT tags FROM {keyspace}.l WHERE id = 1").tags == ["x", "y", "x", "y"]


def test_timestamps_as_epoch_millis_and_blob_as_base64(
    cql: Any, keyspace: str, cassandra_contact: tuple[str, int]
) -> None:
    cql.execute(f"CREATE TABLE {keyspace}.m (id bigint PRIMARY KEY, at timestamp, raw blob)")
    write(
        sink_config(cassandra_contact, keyspace, [{"topic": "t", "table": "m"}]),
        [rec("t", 0, None, {"id": 1, "at": 1_600_000_000_123, "raw": "aGk="})],
    )
    row = _row(cql, f"SELECT at, raw FROM {keyspace}.m WHERE id = 1")
    assert row.at == dt.datetime(2020, 9, 13, 12, 26, 40, 123000)
    assert row.raw == b"hi"


def test_upsert_and_nulls_are_unset(cql: Any, keyspace: str, cassandra_contact: tuple[str, int]) -> None:
    cql.execute(f"CREATE TABLE {keyspace}.u (id int PRIMARY KEY, a text, b int)")
    config = sink_config(cassandra_contact, keyspace, [{"topic": "t", "table": "u"}])
    write(config, [rec("t", 0, 1, {"id": 1, "a": "first", "b": 1})])
    # a null and a missing field leave the cells as they are (no cell tombstones)
    write(config, [rec("t", 1, 1, {"id": 1, "a": None, "b": 2}), rec("t", 2, 2, {"id": 2, "b": 5})])
    rows = {r.id: (r.a, r.b) for r in cql.execute(f"SELECT * FROM {keyspace}.u")}
    assert rows == {1: ("first", 2), 2: (None, 5)}
    # no tombstone was written for the null: the cell still has the first write's timestamp
    wt = _row(cql, f"SELECT WRITETIME(a) AS wt FROM {keyspace}.u WHERE id = 1").wt
    assert wt == TS * 1000 + 0


def test_cdc_envelope_upsert_and_delete(cql: Any, keyspace: str, cassandra_contact: tuple[str, int]) -> None:
    cql.execute(f"CREATE TABLE {keyspace}.c (id int PRIMARY KEY, name text)")
    config = sink_config(cassandra_contact, keyspace, [{"topic": "cdc", "table": "c"}])
    write(
        config,
        [
            rec("cdc", 0, {"id": 1}, {"op": "c", "before": None, "after": {"id": 1, "name": "one"}}),
            rec("cdc", 1, {"id": 2}, {"op": "r", "before": None, "after": {"id": 2, "name": "two"}}),
            rec("cdc", 2, {"id": 1}, {"op": "u", "before": {"id": 1}, "after": {"id": 1, "name": "uno"}}),
            rec("cdc", 3, {"id": 2}, {"op": "d", "before": {"id": 2, "name": "two"}, "after": None}),
        ],
    )
    rows = {r.id: r.name for r in cql.execute(f"SELECT * FROM {keyspace}.c")}
    assert rows == {1: "uno"}


def test_cdc_truncate_skipped_or_applied_in_order(
    cql: Any, keyspace: str, cassandra_contact: tuple[str, int]
) -> None:
    cql.execute(f"CREATE TABLE {keyspace}.kept (id int PRIMARY KEY, v text)")
    cql.execute(f"CREATE TABLE {keyspace}.cut (id int PRIMARY KEY, v text)")
    config = sink_config(
        cassandra_contact, keyspace,
        [{"topic": "cdc", "table": "kept"}, {"topic": "cdc", "table": "cut", "truncates": "apply"}],
    )
    truncate = {"op": "t", "before": None, "after": None, "source": {}}
    records = [rec("cdc", i, {"id": i}, {"op": "c", "before": None, "after": {"id": i, "v": "before"}})
               for i in range(300)]
    records.append(rec("cdc", 300, None, truncate))
    records += [rec("cdc", 301 + i, {"id": i}, {"op": "c", "before": None, "after": {"id": i, "v": "after"}})
                for i in range(3)]
    write(config, records)  # one write(): the truncate waits for the 300 writes before it
    assert cql.execute(f"SELECT count(*) FROM {keyspace}.kept").one()[0] == 300
    assert sorted((r.id, r.v) for r in cql.execute(f"SELECT * FROM {keyspace}.cut")) == [
        (0, "after"), (1, "after"), (2, "after")]


def test_unavailable_toast_value_keeps_the_cell(
    cql: Any, keyspace: str, cassandra_contact: tuple[str, int]
) -> None:
    cql.execute(f"CREATE TABLE {keyspace}.toast (id int PRIMARY KEY, big text, n int)")
    config = sink_config(cassandra_contact, keyspace, [{"topic": "cdc", "table": "toast"}])
    write(config, [rec("cdc", 0, {"id": 1}, {"op": "c", "before": None, "after": {"id": 1, "big": "x" * 5000, "n": 1}})])
    write(config, [rec("cdc", 1, {"id": 1}, {"op": "u", "before": None,
                                             "after": {"id": 1, "big": "__millpond_unavailable_value", "n": 2},
                                             "source": {"unavailable": ["big"]}})])
    row = _row(cql, f"SELECT * FROM {keyspace}.toast WHERE id = 1")
    assert (row.big, row.n) == ("x" * 5000, 2)


def test_tombstone_deletes_by_key(cql: Any, keyspace: str, cassandra_contact: tuple[str, int]) -> None:
    cql.execute(f"CREATE TABLE {keyspace}.d (k text, n int, v text, PRIMARY KEY (k, n))")
    config = sink_config(cassandra_contact, keyspace, [{"topic": "t", "table": "d"}])
    write(
        config,
        [
            rec("t", 0, {"k": "a", "n": 1}, {"k": "a", "n": 1, "v": "x"}),
            rec("t", 1, {"k": "a", "n": 2}, {"k": "a", "n": 2, "v": "y"}),
        ],
    )
    write(config, [rec("t", 2, {"k": "a", "n": 1}, None)])
    rows = [(r.k, r.n, r.v) for r in cql.execute(f"SELECT * FROM {keyspace}.d")]
    assert rows == [("a", 2, "y")]
    wt = _row(cql, f"SELECT WRITETIME(v) AS wt FROM {keyspace}.d WHERE k = 'a' AND n = 2").wt
    assert wt == TS * 1000 + 1


def test_ttl(cql: Any, keyspace: str, cassandra_contact: tuple[str, int]) -> None:
    cql.execute(f"CREATE TABLE {keyspace}.e (id int PRIMARY KEY, v text)")
    cql.execute(f"CREATE TABLE {keyspace}.forever (id int PRIMARY KEY, v text)")
    config = sink_config(
        cassandra_contact,
        keyspace,
        [{"topic": "t", "table": "e"}, {"topic": "t", "table": "forever", "ttl": 0}],
        ttl=2,
    )
    write(config, [rec("t", 0, 1, {"id": 1, "v": "short"})])
    ttl = _row(cql, f"SELECT TTL(v) AS ttl FROM {keyspace}.e WHERE id = 1").ttl
    assert ttl is not None and 0 < ttl <= 2
    assert _row(cql, f"SELECT TTL(v) AS ttl FROM {keyspace}.forever WHERE id = 1").ttl is None
    time.sleep(3.2)
    assert _row(cql, f"SELECT * FROM {keyspace}.e WHERE id = 1") is None
    assert _row(cql, f"SELECT v FROM {keyspace}.forever WHERE id = 1").v == "short"


def test_write_timestamp_orders_records_and_replays(
    cql: Any, keyspace: str, cassandra_contact: tuple[str, int]
) -> None:
    cql.execute(f"CREATE TABLE {keyspace}.o (id int PRIMARY KEY, v int)")
    config = sink_config(cassandra_contact, keyspace, [{"topic": "t", "table": "o"}], concurrency=64)
    # many updates of a few rows, all with the same record timestamp, written
    # concurrently: the highest offset must win for every row
    records = [rec("t", off, off % 5, {"id": off % 5, "v": off}) for off in range(2000)]
    write(config, records)
    rows = {r.id: r.v for r in cql.execute(f"SELECT * FROM {keyspace}.o")}
    assert rows == {i: 1995 + i for i in range(5)}
    wt = _row(cql, f"SELECT WRITETIME(v) AS wt FROM {keyspace}.o WHERE id = 4").wt
    assert wt == TS * 1000 + 1999

    # replaying older records (a restart from an earlier committed offset) changes nothing
    write(config, records[100:900])
    assert {r.id: r.v for r in cql.execute(f"SELECT * FROM {keyspace}.o")} == rows

    # a delete at a later offset, then a replay of the insert before it: stays deleted
    write(config, [rec("t", 2000, 0, None)])
    write(config, [rec("t", 1995, 0, {"id": 0, "v": 1995})])
    assert _row(cql, f"SELECT * FROM {keyspace}.o WHERE id = 0") is None
    # ... and a newer insert after the delete comes back
    write(config, [rec("t", 2001, 0, {"id": 0, "v": 2001})])
    assert _row(cql, f"SELECT v FROM {keyspace}.o WHERE id = 0").v == 2001


def test_later_record_time_beats_higher_offset_of_another_partition(
    cql: Any, keyspace: str, cassandra_contact: tuple[str, int]
) -> None:
    cql.execute(f"CREATE TABLE {keyspace}.p (id int PRIMARY KEY, v text)")
    config = sink_config(cassandra_contact, keyspace, [{"topic": "t", "table": "p"}])
    write(config, [rec("t", 50, 1, {"id": 1, "v": "new"}, timestamp=TS + 1, partition=1)])
    write(config, [rec("t", 900, 1, {"id": 1, "v": "old"}, timestamp=TS, partition=0)])
    assert _row(cql, f"SELECT v FROM {keyspace}.p WHERE id = 1").v == "new"


def test_explicit_columns_headers_and_several_tables(
    cql: Any, keyspace: str, cassandra_contact: tuple[str, int]
) -> None:
    config = sink_config(
        cassandra_contact,
        keyspace,
        [
            {
                "topic": "orders",
                "table": "by_id",
                "create": {
                    "columns": {"order_id": "int", "total": "decimal", "origin": "text", "seen": "timestamp",
                                "src": "text", "pos": "bigint"},
                    "partition_key": ["order_id"],
                },
                "columns": {"order_id": "key.id", "total": "value.total", "origin": "header.origin",
                            "seen": "timestamp", "src": "topic", "pos": "offset"},
            },
            {
                "topic": "orders",
                "table": f"{keyspace}.by_customer",
                "create": {
                    "columns": {"customer": "int", "order_id": "int", "total": "decimal"},
                    "partition_key": ["customer"],
                    "clustering_key": ["order_id"],
                },
                "columns": {"customer": "value.customer.id", "order_id": "key.id", "total": "value.total"},
            },
        ],
    )
    records = [
        rec("orders", i, {"id": i}, {"total": f"{i}.50", "customer": {"id": i % 2}},
            headers=[("origin", b"web"), ("other", None)], timestamp=TS + i)
        for i in range(6)
    ]
    write(config, records)
    row = _row(cql, f"SELECT * FROM {keyspace}.by_id WHERE order_id = 3")
    assert (row.total, row.origin, row.src, row.pos) == (Decimal("3.50"), "web", "orders", 3)
    assert row.seen == dt.datetime(2023, 11, 14, 22, 13, 20, 3000)
    by_customer = [(r.customer, r.order_id) for r in cql.execute(f"SELECT * FROM {keyspace}.by_customer WHERE customer = 1")]
    assert by_customer == [(1, 1), (1, 3), (1, 5)]
    # a tombstone names its row by the key alone; by_customer's partition key comes from the
    # value, which a tombstone lacks: a clear error, unless that table ignores deletes
    with pytest.raises(RecordError, match=r"by_customer: primary key column 'customer'.*"):
        write(config, [rec("orders", 9, {"id": 3}, None, timestamp=TS + 9)])
    config["tables"][1]["deletes"] = False
    write(config, [rec("orders", 9, {"id": 3}, None, timestamp=TS + 9)])
    assert _row(cql, f"SELECT * FROM {keyspace}.by_id WHERE order_id = 3") is None
    assert _row(cql, f"SELECT * FROM {keyspace}.by_customer WHERE customer = 1 AND order_id = 3") is not None


def test_create_keyspace_and_table(cql: Any, cassandra_contact: tuple[str, int]) -> None:
    name = "created_by_sink"
    cql.execute(f"DROP KEYSPACE IF EXISTS {name}")
    try:
        config = sink_config(
            cassandra_contact,
            name,
            [{"topic": "t", "table": "x", "create": {"columns": {"id": "uuid", "v": "text"}, "partition_key": ["id"]}}],
            create_keyspace={"replication_factor": 1},
        )
        ref = uuid.uuid4()
        write(config, [rec("t", 0, str(ref), {"v": "made"})])
        assert _row(cql, f"SELECT v FROM {name}.x WHERE id = {ref}").v == "made"
        # a second start finds both in place
        write(config, [rec("t", 1, str(ref), {"v": "again"})])
        assert _row(cql, f"SELECT v FROM {name}.x WHERE id = {ref}").v == "again"
    finally:
        cql.execute(f"DROP KEYSPACE IF EXISTS {name}")


def test_rows_of_one_partition_go_as_unlogged_batches(
    cql: Any, keyspace: str, cassandra_contact: tuple[str, int]
) -> None:
    cql.execute(f"CREATE TABLE {keyspace}.wide (k int, c int, v text, PRIMARY KEY (k, c))")
    config = sink_config(cassandra_contact, keyspace, [{"topic": "t", "table": "wide"}], max_batch_rows=10)
    records = [rec("t", i, None, {"k": i % 3, "c": i, "v": str(i)}) for i in range(95)]
    sink = make_sink(config)

    async def go() -> list[int]:
        await sink.start()
        try:
            jobs = sink._jobs(records)
            sizes = sorted(len(j.records) for j in jobs)
            sink._window.submit(jobs)  # type: ignore[union-attr]
            await sink.flush({})
            return sizes
        finally:
            await sink.stop()

    sizes = asyncio.run(go())
    # 32/32/31 rows per partition key, chunked by 10
    assert sizes == sorted([10, 10, 10, 2, 10, 10, 10, 2, 10, 10, 10, 1])
    assert cql.execute(f"SELECT count(*) FROM {keyspace}.wide").one()[0] == 95


def test_missing_table_is_a_clear_error(keyspace: str, cassandra_contact: tuple[str, int]) -> None:
    config = sink_config(cassandra_contact, keyspace, [{"topic": "orders", "table": "nope"}])
    with pytest.raises(ConnectorError, match=rf"table {keyspace}\.nope \(for topic 'orders'\) does not exist"):
        write(config)
    config = sink_config(cassandra_contact, "no_such_keyspace", [{"topic": "orders", "table": "nope"}])
    with pytest.raises(ConnectorError, match=r"keyspace 'no_such_keyspace' .* does not exist"):
        write(config)


def test_unknown_column_in_mapping(cql: Any, keyspace: str, cassandra_contact: tuple[str, int]) -> None:
    cql.execute(f"CREATE TABLE {keyspace}.k (id int PRIMARY KEY, v text)")
    config = sink_config(
        cassandra_contact, keyspace, [{"topic": "t", "table": "k", "columns": {"id": "key", "w": "value.w"}}]
    )
    with pytest.raises(ConnectorError, match=r"no column 'w' \(mapped from 'value.w'"):
        write(config)


def test_type_mismatch_names_column_type_and_record(
    cql: Any, keyspace: str, cassandra_contact: tuple[str, int]
) -> None:
    cql.execute(f"CREATE TABLE {keyspace}.tm (id int PRIMARY KEY, n int, b boolean)")
    config = sink_config(cassandra_contact, keyspace, [{"topic": "t", "table": "tm"}])
    good = rec("t", 40, 1, {"id": 1, "n": 5})
    bad = rec("t", 41, 2, {"id": 2, "n": "five"}, partition=3)
    with pytest.raises(RecordError) as info:
        write(config, [good, bad])
    message = str(info.value)
    for part in ("'n'", "int", "'five'", "topic 't'", "partition 3", "offset 41", f"{keyspace}.tm"):
        assert part in message, (part, message)
    # validated before anything was sent: the good record of that batch was not written
    assert cql.execute(f"SELECT * FROM {keyspace}.tm").one() is None
    with pytest.raises(RecordError, match=r"'n' is int: 3000000000 is out of range"):
        write(config, [rec("t", 42, 3, {"id": 3, "n": 3_000_000_000})])
    with pytest.raises(RecordError, match=r"primary key column 'id'"):
        write(config, [rec("t", 43, None, {"n": 1})])


def test_server_side_rejection_fails_flush_with_where(
    cql: Any, keyspace: str, cassandra_contact: tuple[str, int]
) -> None:
    cql.execute(f"CREATE TABLE {keyspace}.gone (id int PRIMARY KEY, v text)")
    config = sink_config(cassandra_contact, keyspace, [{"topic": "t", "table": "gone"}])

    async def go() -> None:
        sink = make_sink(config)
        await sink.start()
        try:
            cql.execute(f"DROP TABLE {keyspace}.gone")
            await sink.write([rec("t", 5, 1, {"id": 1, "v": "x"})])
            await sink.flush({})
        finally:
            await sink.stop()

    with pytest.raises(ConnectorError, match=rf"{keyspace}\.gone, topic 't' partition 0 offset 5"):
        asyncio.run(go())


def test_many_rows_with_bounded_concurrency(cql: Any, keyspace: str, cassandra_contact: tuple[str, int]) -> None:
    cql.execute(f"CREATE TABLE {keyspace}.many (id bigint PRIMARY KEY, v text)")
    config = sink_config(cassandra_contact, keyspace, [{"topic": "t", "table": "many"}], concurrency=4)
    batches = [[rec("t", b * 1000 + i, None, {"id": b * 1000 + i, "v": "x"}) for i in range(1000)] for b in range(5)]
    sink = write(config, *batches)
    assert sink.rows_sent == 5000
    assert cql.execute(f"SELECT count(*) FROM {keyspace}.many").one()[0] == 5000


def test_flush_returns_only_when_every_write_is_acknowledged(
    cql: Any, keyspace: str, cassandra_contact: tuple[str, int]
) -> None:
    cql.execute(f"CREATE TABLE {keyspace}.acks (id int PRIMARY KEY, v text)")
    config = sink_config(cassandra_contact, keyspace, [{"topic": "t", "table": "acks"}], concurrency=256)
    n = 6000

    async def go() -> tuple[int, int, int, int]:
        sink = make_sink(config)
        await sink.start()
        try:
            await sink.write([rec("t", i, i, {"id": i, "v": "x" * 200}) for i in range(n)])
            window = sink._window
            assert window is not None
            pending_after_write = sink.rows_sent - window.acked_rows
            await sink.flush({})
            # no await in between: what the runtime would commit right now
            acked = window.acked_rows
            count = cql.execute(f"SELECT count(*) FROM {keyspace}.acks").one()[0]
            return pending_after_write, sink.rows_sent, acked, count
        finally:
            await sink.stop()

    pending, sent, acked, count = asyncio.run(go())
    assert pending > 0, "write() waited for everything; this test would not show what flush() adds"
    assert sent == acked == count == n
