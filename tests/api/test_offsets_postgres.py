"""A Postgres sink's offsets reset through the API while the worker runs, on the real server.

The sink owns its offsets (its offsets table); a reset must reach that table, or the sink would
resume where it was and replay nothing. A trigger counts every write per key, so "each record
exactly once per reset" is checked on the database's own account, not on the final rows alone.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from millpond.api.server import ApiServer
from millpond.backends import open_backend
from millpond.config import PipelineConfig
from millpond.records import Record
from millpond.runtime import RuntimeOptions, Worker
from millpond.runtime.launch import create_topics

from ..connectors.postgres.conftest import connect
from ..connectors.postgres.conftest import name as name  # noqa: F401 - the fixture

pytestmark = pytest.mark.postgres

N = 200


def test_postgres_sink_reset_while_running_replays_each_record_once_per_reset(
    tmp_path: Path, pg_dsn: str, name: str
) -> None:
    config = PipelineConfig.model_validate({
        "name": "api-pg",
        "log": {"embedded": {"dir": str(tmp_path / "log"), "fsync": False}},
        "topics": [{"name": "rows"}],
        "connectors": [{
            "name": name, "kind": "sink", "type": "postgres", "topics": ["rows"],
            "config": {"dsn": pg_dsn, "table": name}, "converter": {"key": "json", "value": "json"},
            "guarantee": "exactly_once",
        }],
    })

    async def scenario() -> None:
        conn = await connect(pg_dsn)
        await conn.execute(f"CREATE TABLE {name} (id int PRIMARY KEY, v text)")
        await conn.execute(f"CREATE TABLE {name}_writes (id int PRIMARY KEY, n int NOT NULL)")
        await conn.execute(f"""
            CREATE FUNCTION {name}_count() RETURNS trigger AS $$ BEGIN
              INSERT INTO {name}_writes VALUES (NEW.id, 1) ON CONFLICT (id) DO UPDATE SET n = {name}_writes.n + 1;
              RETURN NEW; END $$ LANGUAGE plpgsql""")
        await conn.execute(f"CREATE TRIGGER {name}_count AFTER INSERT OR UPDATE ON {name} "
                           f"FOR EACH ROW EXECUTE FUNCTION {name}_count()")
        backend = open_backend(config.log)
        await backend.open()
        await create_topics(config, backend)
        producer = backend.producer()
        for i in range(N):
            await producer.send("rows", Record(value=json.dumps({"id": i, "v": f"v{i}"}).encode(),
                                               key=json.dumps({"id": i}).encode()), 0)
        await producer.flush()
        await producer.close()
        options = RuntimeOptions(install_signal_handlers=False)
        options.sink_limits.idle_flush_s = 0.05
        worker = Worker(config, backend, options)
        api = ApiServer(worker, "127.0.0.1:0")
        await api.start()
        run = asyncio.create_task(worker.run())

        async def writes() -> dict[int, int]:
            return {r["id"]: r["n"] for r in await conn.fetch(f"SELECT id, n FROM {name}_writes")}

        async def until(expected: dict[int, int]) -> None:
            deadline = time.monotonic() + 30
            while await writes() != expected:
                assert time.monotonic() < deadline, f"writes per id: {await writes()}"
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # and nothing more comes
            assert await writes() == expected

        try:
            async with aiohttp.ClientSession() as http:
                async def call(method: str, path: str, body: Any = None) -> Any:
                    async with http.request(method, f"{api.url}/connectors/{name}{path}", json=body) as r:
                        assert r.status == 200, await r.text()
                        return await r.json()

                await until({i: 1 for i in range(N)})
                stored = await conn.fetchval(
                    "SELECT next_offset FROM millpond_sink_offsets WHERE connector = $1 AND topic = 'rows'", name)
                assert stored == N
                plan = await call("DELETE", "/offsets?dry_run=true")
                assert plan["changes"] == [{"partition": {"kafka_topic": "rows", "kafka_partition": 0},
                                            "from": {"kafka_offset": N}, "to": {"kafka_offset": 0}}]
                await call("DELETE", "/offsets")
                await until({i: 2 for i in range(N)})
                await call("PATCH", "/offsets", {"offsets": [{
                    "partition": {"kafka_topic": "rows", "kafka_partition": 0}, "offset": {"kafka_offset": 150}}]})
                await until({i: 2 if i < 150 else 3 for i in range(N)})
                offsets = (await call("GET", "/offsets"))["offsets"]
                assert offsets == [{"partition": {"kafka_topic": "rows", "kafka_partition": 0},
                                    "offset": {"kafka_offset": N}}]
                async with http.get(f"{api.url}/connectors/{name}/status") as r:
                    assert (await r.json())["tasks"][0]["state"] == "RUNNING"
        finally:
            worker.stop()
            await asyncio.wait_for(run, 30)
            await api.close()
            await backend.close()
            await conn.close()

    asyncio.run(asyncio.wait_for(scenario(), 90))
