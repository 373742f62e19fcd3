"""A Cassandra sink's offsets reset through the API while the worker runs, on a real Cassandra.

The sink's writes are idempotent by design (a deterministic key and ``USING TIMESTAMP`` from the
record), so the final rows alone cannot tell "replayed once" from "replayed twice" or "not at all",
and neither can ``writetime()``: a replay writes the very same timestamp. A counter table would count,
but counters cannot be written with ``INSERT ... USING TIMESTAMP`` and the sink maps no counters. The
one write Cassandra does not collapse is an element of a non-frozen ``list``: it is keyed by a
timeuuid the coordinator makes per write, so a table that opts in (``nonfrozen_lists: true``) keeps
one element per time a record was written. The list's length per row is Cassandra's own count of
writes, read back with a plain driver session; the sink task's ``records_out`` in ``/metrics`` is the
runtime's count of the same, and both must agree with "each record exactly once more per reset".
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from millpond.config import PipelineConfig

from ..connectors.cassandra.conftest import cql as cql  # noqa: F401 - the fixtures
from ..connectors.cassandra.conftest import keyspace as keyspace  # noqa: F401
from .test_worker_api import Running, _sink_offsets, drained, go, raw_config, running, until

pytestmark = pytest.mark.cassandra

N = 300
MORE = 50
LANE = {"kafka_topic": "lines", "kafka_partition": 0}


def line(i: int) -> str:
    return json.dumps({"id": i, "seen": ["w"]}) + "\n"


def test_cassandra_sink_reset_while_running_replays_each_record_once_per_reset(
    tmp_path: Path, cassandra_contact: tuple[str, int], cql: Any, keyspace: str  # noqa: F811
) -> None:
    raw = raw_config(tmp_path)
    raw["connectors"][1] = {
        "name": "out", "kind": "sink", "type": "cassandra", "topics": ["lines"],
        "converter": {"key": "string", "value": "json"}, "guarantee": "exactly_once",
        "config": {
            "contact_points": [cassandra_contact[0]], "port": cassandra_contact[1], "keyspace": keyspace,
            "tables": [{
                "topic": "lines", "table": "writes", "nonfrozen_lists": True,
                "columns": {"id": "value.id", "seen": "value.seen"},
                "create": {"columns": {"id": "int", "seen": "list<text>"}, "partition_key": ["id"]},
            }],
        },
    }
    config = PipelineConfig.model_validate(raw)
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "app.log").write_text("".join(line(i) for i in range(N)))

    def writes() -> dict[int, int]:
        """Times each id was written, on Cassandra's account: its list's length."""
        return {row.id: len(row.seen or []) for row in cql.execute(f"SELECT id, seen FROM {keyspace}.writes")}

    async def settled(w: Running, expected: dict[int, int]) -> None:
        """Wait for ``expected`` writes per id, then make sure no more come."""
        total = sum(expected.values())

        async def done() -> bool:
            sent = await w.metric("millpond_task_records_out_total", connector="out", task="0")
            return sent == total and await drained(w) and await asyncio.to_thread(writes) == expected

        await until(done, f"{total} writes", timeout=60)
        await asyncio.sleep(0.5)
        assert await asyncio.to_thread(writes) == expected
        assert await w.metric("millpond_task_records_out_total", connector="out", task="0") == total

    async def scenario() -> None:
        async with running(tmp_path, config) as w:
            await settled(w, {i: 1 for i in range(N)})
            (info,) = await w.backend.describe_topic("lines")
            mark = info.log_end_offset
            assert _sink_offsets(await w.get("/connectors/out/offsets")) == {("lines", 0): mark}
            # reset 1, to the earliest offset: every record once more
            await w.call("DELETE", "/connectors/out/offsets", 200)
            await settled(w, {i: 2 for i in range(N)})
            # new records, then reset 2 to where they start: those once more, nothing else
            with w.input.open("a") as f:
                f.write("".join(line(i) for i in range(N, N + MORE)))
            await settled(w, {i: 2 if i < N else 1 for i in range(N + MORE)})
            await w.call("PATCH", "/connectors/out/offsets", 200,
                         {"offsets": [{"partition": LANE, "offset": {"kafka_offset": mark}}]})
            await settled(w, {i: 2 for i in range(N + MORE)})
            assert Counter((await asyncio.to_thread(writes)).values()) == {2: N + MORE}
            (info,) = await w.backend.describe_topic("lines")
            assert _sink_offsets(await w.get("/connectors/out/offsets")) == {("lines", 0): info.log_end_offset}
            assert (await w.get("/connectors/out/status"))["tasks"][0]["state"] == "RUNNING"

    go(scenario())
