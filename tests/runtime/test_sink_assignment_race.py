"""A poll that was out while the group's assignment sought a partition to the sink's own offset.

On Kafka the fetcher of a newly assigned partition starts from the group's
committed offset. A sink that keeps its own offsets (Postgres) commits them
with its rows and only then commits the group's, so when a worker dies between
the two, the group's offset is behind the sink's. If a poll returns records
fetched from there before the assignment callback (waiting for the task's turn)
seeks the partition to the sink's offset, those records were already written by
the previous owner: the task must not write them again, and must read on from
the sought offset (bench_scaleout's failover counted such rows twice).
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from pathlib import Path

from millpond.backends.base import TopicSpec
from millpond.config import PipelineConfig
from millpond.connector import Guarantee, Sink
from millpond.records import Record, TopicPartition
from millpond.runtime.sink_task import SinkLimits, SinkTask

from .fakes import FakeBackend, FakeConsumer

TP = TopicPartition("t", 0)
#: the previous owner wrote offsets 0..9 into the sink, then died before committing them to the group
SINK_OFFSET = 10


class RacyConsumer(FakeConsumer):
    """A group member: the first poll gets the partition assigned at the group's committed offset (0)
    and returns what it fetched from there, while the assignment callback runs and seeks."""

    rebalances = True

    async def poll(self, max_records: int = 10_000, timeout: float = 1.0) -> list[Record]:
        if not self.positions and self.membership is not None:
            self.positions = {TP: 0}
            callback = asyncio.create_task(self.membership.listener.on_partitions_assigned({TP}))
            self.callbacks.append(callback)
            await asyncio.sleep(0)  # the callback takes the turn and asks the sink where to resume
            fetched = [copy.copy(r) for r in self.backend.logs[TP][:5]]
            self.positions[TP] = 5
            return fetched
        return await super().poll(max_records, timeout)


class OwnOffsetsSink(Sink):
    guarantee = Guarantee.exactly_once

    def __init__(self) -> None:  # noqa: D107 - built by the test, not from config
        self.written: list[int] = []

    async def start(self) -> Mapping[TopicPartition, int] | None:
        return {TP: SINK_OFFSET}

    async def stored_offsets(self) -> dict[TopicPartition, int]:
        await asyncio.sleep(0.05)  # a round trip to the database, holding the turn
        return {TP: SINK_OFFSET}

    async def write(self, records: list[Record]) -> None:
        self.written.extend(int(r.offset or 0) for r in records)

    async def flush(self, offsets: Mapping[TopicPartition, int]) -> None:
        pass


def test_records_fetched_before_the_seek_are_not_written(tmp_path: Path) -> None:
    backend = FakeBackend()
    backend.topics["t"] = TopicSpec("t", 1)
    backend.logs[TP] = [Record(f"v{i}".encode(), None, 0, [], "t", 0, i) for i in range(20)]
    consumers: list[RacyConsumer] = []

    def consumer(topics: list[str], group: str | None = None, isolation: object = None, reset: str = "earliest",
                 membership: object = None) -> RacyConsumer:
        c = RacyConsumer(backend, [], group, reset)
        c.membership = membership  # type: ignore[assignment]
        c.callbacks = []
        consumers.append(c)
        return c

    backend.consumer = consumer  # type: ignore[method-assign, assignment]
    config = PipelineConfig.model_validate({
        "name": "race",
        "log": {"embedded": {"dir": str(tmp_path / "log")}},
        "topics": [{"name": "t", "partitions": 1}],
        "connectors": [{"name": "out", "kind": "sink", "type": "file", "topics": ["t"],
                        "config": {"dir": str(tmp_path / "out")}, "converter": {"key": "string", "value": "string"}}],
    })
    sink = OwnOffsetsSink()
    task = SinkTask(config, config.connectors[0], backend, 0,  # type: ignore[arg-type]
                    SinkLimits(poll_timeout_s=0.01, idle_flush_s=0.01), sink_factory=lambda: sink)

    async def go() -> None:
        stop = asyncio.Event()
        run = asyncio.create_task(task.run(stop))
        for _ in range(300):
            await asyncio.sleep(0.01)
            if len(sink.written) >= 10 or run.done():
                break
        stop.set()
        await run
        await asyncio.gather(*consumers[0].callbacks)

    asyncio.run(asyncio.wait_for(go(), 30))
    # offsets 0..4 were fetched from the group's offset: the previous owner had written them
    assert sink.written == list(range(SINK_OFFSET, 20))
