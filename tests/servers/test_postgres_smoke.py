"""The Postgres fixture gives a real server with logical decoding through pgoutput."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

pytestmark = pytest.mark.postgres


async def _insert_is_decoded(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SHOW wal_level") == "logical"
        await conn.execute("DROP TABLE IF EXISTS smoke; CREATE TABLE smoke (id int PRIMARY KEY, v text)")
        await conn.execute("DROP PUBLICATION IF EXISTS smoke_pub; CREATE PUBLICATION smoke_pub FOR TABLE smoke")
        await conn.execute("SELECT pg_create_logical_replication_slot('smoke_slot', 'pgoutput')")
        try:
            await conn.execute("INSERT INTO smoke VALUES (1, 'hello')")
            rows = await conn.fetch(
                "SELECT lsn, xid, data FROM pg_logical_slot_get_binary_changes("
                "'smoke_slot', NULL, NULL, 'proto_version', '1', 'publication_names', 'smoke_pub')"
            )
        finally:
            await conn.execute("SELECT pg_drop_replication_slot('smoke_slot')")
        kinds = [bytes(r["data"][:1]) for r in rows]
        assert kinds == [b"B", b"R", b"I", b"C"], kinds
        insert = bytes(rows[2]["data"])
        assert b"hello" in insert
    finally:
        await conn.close()


def test_logical_slot_with_pgoutput_returns_the_insert(pg_dsn: str) -> None:
    asyncio.run(_insert_is_decoded(pg_dsn))
