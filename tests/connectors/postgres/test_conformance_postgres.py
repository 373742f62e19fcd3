"""The Postgres sink passes millpond.testing's contract check against the real server."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from millpond.connector import ConnectorContext, Sink
from millpond.connectors.postgres.sink import PostgresSink, PostgresSinkConfig
from millpond.records import Record
from millpond.testing import check_sink, log_records

from .conftest import connect

pytestmark = pytest.mark.postgres


def test_postgres_sink_keeps_the_contract(pg_dsn: str, name: str) -> None:
    records = log_records([{"id": i, "v": f"row {i}"} for i in range(60)], topic=name, partitions=3,
                          key=lambda i, v: {"id": i})

    def make() -> Sink:
        return PostgresSink(PostgresSinkConfig(dsn=pg_dsn, table=name, auto_create=True), ConnectorContext(name))

    async def read_back() -> list[Any]:
        conn = await connect(pg_dsn)
        try:
            return [tuple(r) for r in await conn.fetch(f"SELECT id, v FROM {name} ORDER BY id")]
        finally:
            await conn.close()

    def expected(rs: Any) -> list[Any]:
        rows: list[Record] = sorted(rs, key=lambda r: r.value["id"])
        return [(r.value["id"], r.value["v"]) for r in rows]

    asyncio.run(check_sink(make, records, read_back, expected=expected))
