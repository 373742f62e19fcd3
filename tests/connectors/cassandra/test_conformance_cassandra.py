"""The Cassandra sink passes millpond.testing's contract check against the real server:
flushed writes are there, and a replay from the start (it keeps no offsets of its own)
changes nothing, because its writes are idempotent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from millpond.connector import Sink
from millpond.testing import check_sink, log_records

from .support import make_sink, sink_config

pytestmark = pytest.mark.cassandra


def test_cassandra_sink_keeps_the_contract(cql: Any, keyspace: str, cassandra_contact: tuple[str, int]) -> None:
    cql.execute(f"CREATE TABLE {keyspace}.conformance (id int PRIMARY KEY, v text)")
    records = log_records([{"id": i % 25, "v": f"version {i}"} for i in range(50)], topic="c", partitions=1,
                          key=lambda i, v: {"id": v["id"]})
    config = sink_config(cassandra_contact, keyspace, [{"topic": "c", "table": "conformance"}])

    def make() -> Sink:
        return make_sink(config)

    async def read_back() -> list[Any]:
        return sorted((r.id, r.v) for r in cql.execute(f"SELECT id, v FROM {keyspace}.conformance"))

    def expected(rs: Any) -> list[Any]:
        latest = {r.value["id"]: r.value["v"] for r in rs}  # the last write per key wins
        return sorted(latest.items())

    asyncio.run(check_sink(make, records, read_back, expected=expected))
