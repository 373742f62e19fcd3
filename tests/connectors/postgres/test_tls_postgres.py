"""Postgres over TLS: ``sslmode`` (and ``sslrootcert``) in the DSN, for the CDC source and the sink,
against a server of its own with ``ssl=on`` that rejects TCP connections without TLS
(the ``pg_tls_server`` fixture, tests/servers/postgres.py)."""

from __future__ import annotations

import asyncio
from urllib.parse import quote

import asyncpg
import pytest

from millpond.connector import ConnectorContext
from millpond.connectors.postgres.sink import PostgresSink, PostgresSinkConfig
from millpond.errors import ConnectorError
from millpond.records import TopicPartition
from tests.servers.postgres import PASSWORD, PostgresServer

from .conftest import drain, make_source

pytestmark = pytest.mark.postgres


def tls_dsn(server: PostgresServer, sslmode: str, ca: object = None) -> str:
    dsn = f"{server.dsn}?sslmode={sslmode}"
    return dsn + (f"&sslrootcert={quote(str(ca))}" if ca is not None else "")


def test_cdc_source_and_sink_work_with_verify_full_and_require(pg_tls_server: PostgresServer, name: str) -> None:
    """Rows inserted in one table reach another through the CDC source (verify-full) and the
    sink (require); every session the test opens is encrypted, as pg_stat_ssl shows."""
    assert pg_tls_server.pki is not None
    verify_full = tls_dsn(pg_tls_server, "verify-full", pg_tls_server.pki.ca)
    require = tls_dsn(pg_tls_server, "require")

    async def go() -> None:
        conn = await asyncpg.connect(verify_full)
        assert await conn.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
        await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
        await conn.execute(f"CREATE TABLE {name}_copy (id int PRIMARY KEY, v text)")
        source = make_source(verify_full, name, [name], snapshot_mode="never", idle_sleep_s=0)
        await source.start(None)
        await conn.execute(f"INSERT INTO {name} SELECT i, 'row ' || i FROM generate_series(1, 25) i")
        records, _ = await drain(source)
        await source.stop()
        assert len(records) == 25

        sink = PostgresSink(PostgresSinkConfig(dsn=require, table=f"{name}_copy"), ConnectorContext(name=name))
        assert await sink.start() == {}
        for offset, record in enumerate(records):
            record.topic, record.partition, record.offset = "cdc", 0, offset
        await sink.write(records)
        await sink.flush({TopicPartition("cdc", 0): len(records)})
        await sink.stop()
        rows = await conn.fetch(f"SELECT id, v FROM {name}_copy ORDER BY id")
        assert [tuple(r) for r in rows] == [(i, f"row {i}") for i in range(1, 26)]
        encrypted = await conn.fetchval(
            "SELECT bool_and(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE a.usename = $1",
            "millpond")
        assert encrypted is True
        await conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                           "WHERE slot_name = $1", f"millpond_{name}")
        await conn.close()

    asyncio.run(go())


@pytest.mark.parametrize(("sslmode", "wrong_ca", "says"), [
    ("disable", False, "no encryption"),
    ("verify-full", True, "certificate verify failed"),
], ids=["no-tls-refused", "wrong-ca"])
def test_a_connection_the_server_or_the_client_refuses_is_named_without_the_password(
    pg_tls_server: PostgresServer, name: str, sslmode: str, wrong_ca: bool, says: str
) -> None:
    assert pg_tls_server.pki is not None
    dsn = tls_dsn(pg_tls_server, sslmode, pg_tls_server.pki.other_ca if wrong_ca else None)

    async def go() -> str:
        sink = PostgresSink(PostgresSinkConfig(dsn=dsn, table="t"), ConnectorContext(name=name))
        with pytest.raises(ConnectorError) as caught:
            await sink.start()
        return str(caught.value)

    message = asyncio.run(go())
    assert says in message and PASSWORD not in message and "\n" not in message
