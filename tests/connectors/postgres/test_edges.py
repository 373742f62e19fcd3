"""The edges a user meets first: a refused connection, a slot dropped behind the pipeline's back,
snapshot progress of a table without statistics (issues 10 and 21), on the real server."""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from typing import Any

import pytest

from millpond.connector import ConnectorContext
from millpond.connectors.postgres import snapshot as snapshot_module
from millpond.connectors.postgres.sink import PostgresSink, PostgresSinkConfig
from millpond.connectors.postgres.sql import describe_dsn
from millpond.errors import ConnectorError, RetriableConnectorError

from .conftest import connect, drain, make_source

SECRET = "s3cret-pw"


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_describe_dsn_names_host_port_database_and_user_never_the_password() -> None:
    assert describe_dsn(f"postgresql://ann:{SECRET}@db.example:6543/shop") == "db.example:6543 database 'shop' user 'ann'"
    assert describe_dsn(f"host=h port=7 dbname=d user=u password={SECRET}") == "h:7 database 'd' user 'u'"
    assert describe_dsn("postgresql:///x") == "localhost:5432 database 'x'"


@pytest.mark.parametrize("side", ["source", "sink"])
def test_a_refused_connection_is_one_retriable_line(side: str) -> None:
    port = closed_port()
    dsn = f"postgresql://millpond:{SECRET}@127.0.0.1:{port}/shop"
    connector: Any = (
        make_source(dsn, "cdc", ["t"]) if side == "source"
        else PostgresSink(PostgresSinkConfig(dsn=dsn, table="t"), ConnectorContext(name="replica"))
    )
    with pytest.raises(RetriableConnectorError) as caught:
        asyncio.run(connector.start(None) if side == "source" else connector.start())
    message = str(caught.value)
    assert f"cannot connect to Postgres at 127.0.0.1:{port} database 'shop' user 'millpond': connection refused" in message
    assert SECRET not in message and "\n" not in message
    assert caught.value.__cause__ is None and caught.value.__suppress_context__  # no driver traceback chained


@pytest.mark.postgres
def test_a_wrong_password_is_one_line_that_retrying_cannot_fix(pg_dsn: str) -> None:
    dsn = pg_dsn.replace("millpond-test-pw", SECRET)
    with pytest.raises(ConnectorError) as caught:
        asyncio.run(make_source(dsn, "cdc", ["t"]).start(None))
    assert not isinstance(caught.value, RetriableConnectorError)
    message = str(caught.value)
    assert "refused the login" in message and "password authentication failed" in message, message
    assert SECRET not in message and "\n" not in message


@pytest.mark.postgres
def test_a_dropped_slot_is_refused_and_nothing_is_left_behind(pg_dsn: str, name: str) -> None:
    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
        await conn.execute(f"INSERT INTO {name} SELECT generate_series(1, 5)")
        src = make_source(pg_dsn, name, [name], idle_sleep_s=0)
        src.context.extra["log_dir"] = "data/cdc"
        await src.start(None)
        await drain(src)  # snapshot, then the stream: a checkpoint with snapshot_done
        await conn.execute(f"INSERT INTO {name} VALUES (6)")
        _, offset = await drain(src)
        await src.stop()
        assert offset is not None and offset["snapshot_done"]
        await conn.execute("SELECT pg_drop_replication_slot($1)", f"millpond_{name}")
        await conn.execute(f"INSERT INTO {name} VALUES (7)")  # lost to the stream

        again = make_source(pg_dsn, name, [name], idle_sleep_s=0)
        again.context.extra["log_dir"] = "data/cdc"
        with pytest.raises(ConnectorError) as caught:
            await again.start(offset)
        await again.stop()
        message = str(caught.value)
        assert "replication slot is gone" in message and "Nothing was created" in message, message
        assert f"millpond groups reset {name} --to-earliest --execute --log data/cdc" in message, message
        assert "\n" not in message
        # no slot holds WAL for the refused pipeline: neither the slot nor a reader's copy of it
        left = await conn.fetch("SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE $1", f"millpond_{name}%")
        assert left == []
        await conn.execute(f"DROP PUBLICATION IF EXISTS millpond_{name}")
        await conn.close()

    asyncio.run(go())


@pytest.mark.postgres
@pytest.mark.parametrize("count_limit", [snapshot_module._COUNT_BYTES, 0])  # noqa: SLF001
def test_snapshot_progress_without_statistics(
    pg_dsn: str, name: str, count_limit: int, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No "N of about 0 rows": a small table is counted; a large one (here: any) gets no total."""
    monkeypatch.setattr(snapshot_module, "_COUNT_BYTES", count_limit)
    monkeypatch.setattr(snapshot_module, "PROGRESS_FIRST_S", 0.0)  # a progress line for every chunk
    monkeypatch.setattr(snapshot_module, "PROGRESS_EVERY_S", 0.0)

    async def go() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY)")
        await conn.execute(f"INSERT INTO {name} SELECT generate_series(1, 25)")
        assert await conn.fetchval(f"SELECT reltuples FROM pg_class WHERE oid = '{name}'::regclass") <= 0
        src = make_source(pg_dsn, name, [name], snapshot_mode="initial_only", snapshot_chunk_rows=10)
        await src.start(None)
        records, _ = await drain(src)
        await src.stop()
        assert len(records) == 25
        await conn.close()

    with caplog.at_level(logging.INFO, logger="millpond.connectors.postgres.source"):
        asyncio.run(go())
    progress = [r.getMessage() for r in caplog.records if f"snapshot of public.{name}: " in r.getMessage()]
    assert len(progress) == 3, progress  # chunks of 10, 10 and 5 rows
    if count_limit:
        assert f"snapshot of public.{name}: 10 of about 25 rows (40%)" in progress[0], progress
        assert f"snapshot of public.{name}: 20 of about 25 rows (80%)" in progress[1], progress
    else:
        assert f"snapshot of public.{name}: 10 rows" in progress[0] and "%" not in progress[0], progress
    assert not any("about 0 rows" in m or re.search(r"\b0 rows/s", m) for m in progress)
