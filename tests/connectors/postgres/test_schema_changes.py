"""Column types and schema changes, postgres-cdc -> log -> postgres sink, on the real server.

``test_running_pipeline_follows_add_drop_and_retype`` runs ``millpond run`` as a
user does (embedded log, the sink with ``auto_create`` and ``schema_changes:
apply``) and changes the source table under it: the replica must be created
with the source's exact types and then follow ADD COLUMN, DROP COLUMN and a
type change, row for row. The other tests drive the real source and the sink
directly to check the stops of ``schema_changes: add`` and ``fail``: one line
naming table and column, nothing written past the change.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from millpond.connector import ConnectorContext
from millpond.connectors.postgres.sink import PostgresSink, PostgresSinkConfig
from millpond.errors import ConnectorError
from millpond.records import TopicPartition
from tests.faults import millpond_command

from .conftest import connect, drain, make_source
from .test_sink import through_log

pytestmark = pytest.mark.postgres

PIPELINE = """
name: schema-changes
log:
  embedded: {dir: ./data}
topics:
  - {name: sc.items, partitions: 1}
connectors:
  - name: sc-cdc
    kind: source
    type: postgres-cdc
    topic: sc.items
    config:
      dsn: ${PG_DSN}
      tables: ["${PG_SCHEMA}.items"]
      topics: {items: sc.items}
      slot: ${PG_SLOT}
      publication: ${PG_SLOT}
      heartbeat_interval_s: 1
      idle_sleep_s: 0.05
    converter: {key: json, value: json}
  - name: sc-replica
    kind: sink
    type: postgres
    topics: [sc.items]
    config:
      dsn: ${PG_DSN}
      tables: {sc.items: "${PG_TARGET_SCHEMA}.items"}
      auto_create: true
      schema_changes: apply
      offsets_table: ${PG_TARGET_SCHEMA}.offsets
    converter: {key: json, value: json}
    errors: {policy: fail}
"""


async def column_types(conn: asyncpg.Connection, table: str) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT attname, format_type(atttypid, atttypmod) AS t FROM pg_attribute "
        "WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        table,
    )
    return {r["attname"]: r["t"] for r in rows}


async def differ(conn: asyncpg.Connection, a: str, b: str) -> int:
    return int(await conn.fetchval(
        f"SELECT count(*) FROM ((SELECT to_jsonb(x) FROM {a} x EXCEPT ALL SELECT to_jsonb(y) FROM {b} y) "
        f"UNION ALL (SELECT to_jsonb(y) FROM {b} y EXCEPT ALL SELECT to_jsonb(x) FROM {a} x)) d"
    ))


async def wait_for(what: str, check: Callable[[], Awaitable[bool]], proc: subprocess.Popen[bytes],
                   log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await check():
            return
        if proc.poll() is not None:
            pytest.fail(f"the worker exited ({proc.returncode}) before {what}:\n{log.read_text()[-3000:]}")
        await asyncio.sleep(0.2)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text()[-3000:]}")


def test_running_pipeline_follows_add_drop_and_retype(tmp_path: Path, pg_dsn: str, name: str) -> None:
    src, dst = f"{name}_src", f"{name}_dst"
    (tmp_path / "pipeline.yaml").write_text(PIPELINE)
    env = {**os.environ, "PG_DSN": pg_dsn, "PG_SCHEMA": src, "PG_TARGET_SCHEMA": dst, "PG_SLOT": f"millpond_{name}"}
    log = tmp_path / "worker.log"

    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE SCHEMA {src}; CREATE SCHEMA {dst}")
        await conn.execute(
            f"CREATE TABLE {src}.items (id bigint PRIMARY KEY, price numeric(12,2), at timestamptz, "
            "doc jsonb, tags text[], label varchar(10))"
        )
        await conn.execute(
            f"INSERT INTO {src}.items VALUES (1, 1.50, '2024-01-02 03:04:05+00', '{{\"a\": 1}}', '{{x,y}}', 'one'), "
            f"(2, 2.25, NULL, NULL, NULL, 'two')"
        )
        with open(log, "wb") as out:
            proc = subprocess.Popen(millpond_command() + ["run", "pipeline.yaml"], cwd=tmp_path, env=env,
                                    stdout=out, stderr=subprocess.STDOUT)
        try:
            async def rows(n: int) -> bool:
                exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{dst}.items")
                return bool(exists) and await conn.fetchval(f"SELECT count(*) FROM {dst}.items") == n

            await wait_for("the snapshot in the replica", lambda: rows(2), proc, log)
            # auto_create made the source's exact types, not text
            assert await column_types(conn, f"{dst}.items") == await column_types(conn, f"{src}.items")

            await conn.execute(f"INSERT INTO {src}.items VALUES (3, 3, now(), '[1]', '{{}}', 'three')")
            await wait_for("a streamed row", lambda: rows(3), proc, log)

            await conn.execute(f"ALTER TABLE {src}.items ADD COLUMN note varchar(40), ADD COLUMN qty int[]")
            await conn.execute(f"INSERT INTO {src}.items VALUES (4, 4, now(), NULL, NULL, 'four', 'n4', '{{1,2}}')")
            await conn.execute(f"UPDATE {src}.items SET note = 'n1' WHERE id = 1")

            async def same() -> bool:
                types_now = await column_types(conn, f"{dst}.items")
                return types_now == await column_types(conn, f"{src}.items") and \
                    await differ(conn, f"{src}.items", f"{dst}.items") == 0

            await wait_for("ADD COLUMN in the replica", same, proc, log)

            await conn.execute(f"ALTER TABLE {src}.items DROP COLUMN tags")
            await conn.execute(f"INSERT INTO {src}.items VALUES (5, 5, now(), NULL, 'five', 'n5', '{{5}}')")
            await wait_for("DROP COLUMN in the replica", same, proc, log)
            assert "tags" not in await column_types(conn, f"{dst}.items")

            await conn.execute(f"ALTER TABLE {src}.items ALTER COLUMN price TYPE numeric(14,4), "
                               "ALTER COLUMN label TYPE text")
            await conn.execute(f"UPDATE {src}.items SET price = 2.1234, label = repeat('l', 30) WHERE id = 2")
            await wait_for("the type change in the replica", same, proc, log)
            types = await column_types(conn, f"{dst}.items")
            assert types["price"] == "numeric(14,4)" and types["label"] == "text", types
            assert await conn.fetchval(f"SELECT price::text FROM {dst}.items WHERE id = 2") == "2.1234"
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            await conn.execute(f"SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                               f"WHERE slot_name = 'millpond_{name}'")
            await conn.execute(f"DROP PUBLICATION IF EXISTS millpond_{name}")
            await conn.execute(f"DROP SCHEMA {src} CASCADE; DROP SCHEMA {dst} CASCADE")
            await conn.close()
        text = log.read_text()
        assert "changed table" in text and "drop tags" in text, text[-3000:]
        assert "Traceback" not in text, text[-3000:]

    asyncio.run(go())


def make_sink(dsn: str, name: str, **cfg: Any) -> PostgresSink:
    return PostgresSink(PostgresSinkConfig(dsn=dsn, **cfg), ConnectorContext(name=name))


async def _stream_into_sink(pg_dsn: str, name: str, mode: str, change: str) -> tuple[ConnectorError | None, Any]:
    """Snapshot + one row, ``change`` at the source, one more row; the sink (``mode``) takes it all."""
    conn = await connect(pg_dsn)
    await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text, n numeric(6,2))")
    await conn.execute(f"INSERT INTO {name} VALUES (1, 'a', 1)")
    source = make_source(pg_dsn, name, [name], idle_sleep_s=0)
    await source.start(None)
    records, _ = await drain(source)  # the snapshot, before the change
    await conn.execute(f"INSERT INTO {name} VALUES (2, 'b', 2)")
    await conn.execute(change)
    await conn.execute(f"INSERT INTO {name} (id) VALUES (3)")
    records += (await drain(source))[0]
    await source.stop()
    sink = make_sink(pg_dsn, name, schema=f"{name}_dst", auto_create=True, schema_changes=mode)
    await sink.start()
    error: ConnectorError | None = None
    try:
        await sink.write(through_log(records))
        await sink.flush({TopicPartition(records[0].topic or "", 0): len(records)})
    except ConnectorError as exc:
        error = exc
    await sink.stop()
    types = await column_types(conn, f"{name}_dst.{name}") if error is None else None
    await conn.execute(f"SELECT pg_drop_replication_slot('millpond_{name}')")
    await conn.execute(f"DROP PUBLICATION millpond_{name}")
    await conn.execute(f"DROP SCHEMA IF EXISTS {name}_dst CASCADE")
    await conn.close()
    return error, types


@pytest.mark.parametrize(("change", "column", "what"), [
    ("ALTER TABLE {t} DROP COLUMN v", "v", "was dropped at the source"),
    ("ALTER TABLE {t} ALTER COLUMN n TYPE numeric(8,3)", "n", "changed type at the source from numeric(6,2) to numeric(8,3)"),
])
def test_add_mode_stops_on_a_drop_or_type_change(pg_dsn: str, name: str, change: str, column: str, what: str) -> None:
    error, _ = asyncio.run(_stream_into_sink(pg_dsn, name, "add", change.format(t=name)))
    assert error is not None
    message = str(error)
    assert f"column {name}_dst.{name}.{column} {what}" in message, message
    assert "schema_changes is 'add'" in message and "\n" not in message


def test_add_mode_adds_a_column(pg_dsn: str, name: str) -> None:
    error, types = asyncio.run(_stream_into_sink(pg_dsn, name, "add", f"ALTER TABLE {name} ADD COLUMN at timestamptz"))
    assert error is None
    assert types == {"id": "integer", "v": "text", "n": "numeric(6,2)", "at": "timestamp with time zone"}


def test_fail_mode_stops_on_an_added_column(pg_dsn: str, name: str) -> None:
    error, _ = asyncio.run(_stream_into_sink(pg_dsn, name, "fail", f"ALTER TABLE {name} ADD COLUMN extra jsonb"))
    assert error is not None and f"column {name}_dst.{name}.extra was added at the source (type jsonb)" in str(error)


def change(topic: str, offset: int, row: dict[str, Any], types: dict[str, str]) -> Any:
    """A postgres-cdc change as a sink reads it back from the log."""
    from millpond.records import Record

    return Record(key={"id": row["id"]}, topic=topic, partition=0, offset=offset,
                  value={"before": None, "after": row, "op": "c", "ts_ms": 0,
                         "source": {"table": topic, "column_types": types}})


def test_two_topics_into_one_table_add_their_columns_and_stop_nothing(pg_dsn: str, name: str) -> None:
    """Columns one topic lacks are not 'dropped': drops are changes between records of one topic."""
    a = {"id": "integer", "x": "text"}
    b = {"id": "integer", "y": "numeric(5,1)"}

    async def go() -> None:
        conn = await connect(pg_dsn)
        sink = make_sink(pg_dsn, name, table=f"{name}_dst.t", auto_create=True)
        await sink.start()
        await sink.write([change("a", 0, {"id": 1, "x": "one"}, a), change("b", 0, {"id": 2, "y": "2.5"}, b),
                          change("a", 1, {"id": 3, "x": "three"}, a)])
        await sink.flush({TopicPartition("a", 0): 2, TopicPartition("b", 0): 1})
        await sink.stop()
        assert await column_types(conn, f"{name}_dst.t") == {"id": "integer", "x": "text", "y": "numeric(5,1)"}
        assert await conn.fetchval(f"SELECT count(*) FROM {name}_dst.t") == 3
        await conn.execute(f"DROP SCHEMA {name}_dst CASCADE")
        await conn.close()

    asyncio.run(go())


def test_a_stopped_sink_set_to_apply_applies_the_drop_on_restart(pg_dsn: str, name: str) -> None:
    before = {"id": "integer", "x": "text", "gone": "text"}
    after = {"id": "integer", "x": "text"}
    records = [change("a", 0, {"id": 1, "x": "a", "gone": "g"}, before), change("a", 1, {"id": 2, "x": "b"}, after)]

    async def go() -> None:
        conn = await connect(pg_dsn)
        first = make_sink(pg_dsn, name, table=f"{name}_dst.t", auto_create=True, offsets_table=f"{name}_offsets")
        assert await first.start() == {}
        with pytest.raises(ConnectorError, match=rf"column {name}_dst\.t\.gone was dropped at the source"):
            await first.write(records)
        await first.stop()
        again = make_sink(pg_dsn, name, table=f"{name}_dst.t", auto_create=True, schema_changes="apply",
                          offsets_table=f"{name}_offsets")
        assert await again.start() == {}  # nothing was flushed: the runtime hands it the same records
        await again.write(records)
        await again.flush({TopicPartition("a", 0): 2})
        await again.stop()
        assert await column_types(conn, f"{name}_dst.t") == after
        assert [tuple(r) for r in await conn.fetch(f"SELECT id, x FROM {name}_dst.t ORDER BY id")] == [(1, "a"), (2, "b")]
        await conn.execute(f"DROP SCHEMA {name}_dst CASCADE; DROP TABLE {name}_offsets")
        await conn.close()

    asyncio.run(go())


def test_a_batch_retried_one_by_one_still_carries_its_schema_change(pg_dsn: str, name: str) -> None:
    """The runtime re-offers a batch record by record after a RecordError: the ADD COLUMN must survive that."""
    from millpond.errors import RecordError
    from millpond.records import Record

    old = {"id": "integer", "x": "text"}
    new = {"id": "integer", "x": "text", "added": "date"}

    async def go() -> None:
        conn = await connect(pg_dsn)
        sink = make_sink(pg_dsn, name, table=f"{name}_dst.t", auto_create=True)
        await sink.start()
        await sink.write([change("a", 0, {"id": 1, "x": "a"}, old)])
        good = change("a", 1, {"id": 2, "x": "b", "added": "2024-02-29"}, new)
        bad = Record(key={"id": 3}, value="not a row", topic="a", partition=0, offset=2)
        with pytest.raises(RecordError):
            await sink.write([good, bad])
        await sink.write([good])  # as the runtime does: one by one, the bad one to its error policy
        with pytest.raises(RecordError):
            await sink.write([bad])
        await sink.flush({TopicPartition("a", 0): 3})
        await sink.stop()
        assert (await column_types(conn, f"{name}_dst.t"))["added"] == "date"
        assert str(await conn.fetchval(f"SELECT added FROM {name}_dst.t WHERE id = 2")) == "2024-02-29"
        await conn.execute(f"DROP SCHEMA {name}_dst CASCADE")
        await conn.close()

    asyncio.run(go())
