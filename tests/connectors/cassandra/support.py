"""Helpers for the Cassandra sink tests: build a sink, drive it as the runtime would."""

from __future__ import annotations

import asyncio
from typing import Any

from millpond.connector import ConnectorContext
from millpond.connectors.cassandra import CassandraSink
from millpond.records import Record


def sink_config(contact: tuple[str, int], keyspace: str, tables: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    host, port = contact
    return {"contact_points": [host], "port": port, "keyspace": keyspace, "tables": tables, **extra}


def make_sink(config: dict[str, Any]) -> CassandraSink:
    return CassandraSink(config, ConnectorContext(name="cassandra-test"))


def write(config: dict[str, Any], *batches: list[Record]) -> CassandraSink:
    """start, write each batch, flush, stop: what the runtime does, in order."""

    async def go() -> CassandraSink:
        sink = make_sink(config)
        assert await sink.start() is None
        try:
            for batch in batches:
                await sink.write(batch)
            await sink.flush({})
        finally:
            await sink.stop()
        return sink

    return asyncio.run(go())


def rec(topic: str, offset: int, key: Any, value: Any, *, timestamp: int = 1_700_000_000_000,
        partition: int = 0, headers: list[tuple[str, bytes | None]] | None = None) -> Record:
    return Record(value=value, key=key, timestamp=timestamp, headers=headers or [], topic=topic,
                  partition=partition, offset=offset)
