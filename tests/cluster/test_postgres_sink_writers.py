"""The Postgres sink shared by the tasks of several workers: a task that lost a partition without
knowing it (a paused "zombie") cannot write over what the partition's new owner wrote."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from millpond.connector import ConnectorContext
from millpond.connectors.postgres.sink import PostgresSink, PostgresSinkConfig
from millpond.errors import RetriableConnectorError
from millpond.records import Record, TopicPartition

pytestmark = pytest.mark.postgres


def rows(ids: range, partition: int, start: int, tag: str) -> list[Record]:
    return [Record({"id": i, "who": tag}, None, 0, topic="t", partition=partition, offset=start + n)
            for n, i in enumerate(ids)]


def test_a_zombie_cannot_flush_a_partition_the_new_owner_moved_on(pg_dsn: str) -> None:
    name = f"z{uuid.uuid4().hex[:8]}"
    table = f"public.{name}"
    p0, p1 = TopicPartition("t", 0), TopicPartition("t", 1)

    def sink() -> PostgresSink:
        return PostgresSink(PostgresSinkConfig.model_validate({"dsn": pg_dsn, "table": table}),
                            ConnectorContext(name=name))

    async def go() -> None:
        conn = await asyncpg.connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, who text)")
        zombie, owner = sink(), sink()
        try:
            assert await zombie.start() == {}
            await zombie.write(rows(range(0, 5), 0, 0, "zombie"))  # then it pauses; p0 moves to the owner
            await zombie.write(rows(range(100, 103), 1, 0, "zombie"))

            assert await owner.start() == {}
            await owner.write(rows(range(0, 3), 0, 0, "owner"))
            await owner.flush({p0: 3})

            with pytest.raises(RetriableConnectorError, match=r"t-0 was moved on to offset 3 by another writer"):
                await zombie.flush({p0: 5, p1: 3})
            # nothing of the zombie's flush is there, not even its partition 1
            assert await conn.fetchval(f"SELECT count(*) FROM {table} WHERE who = 'zombie'") == 0
            assert await owner.stored_offsets() == {p0: 3}

            # the owner goes on; a restarted task (a fresh read of the offsets) flushes again
            await owner.write(rows(range(3, 5), 0, 3, "owner"))
            await owner.flush({p0: 5})
            again = sink()
            assert await again.start() == {p0: 5}
            await again.write(rows(range(100, 103), 1, 0, "again"))
            await again.flush({p1: 3})
            await again.stop()
            got = {r["id"]: r["who"] for r in await conn.fetch(f"SELECT id, who FROM {table}")}
            assert got == {**{i: "owner" for i in range(5)}, **{i: "again" for i in range(100, 103)}}
        finally:
            await zombie.stop()
            await owner.stop()
            await conn.execute(f"DROP TABLE {table}")
            await conn.close()

    asyncio.run(go())
