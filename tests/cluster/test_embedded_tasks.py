"""``tasks: N`` on the embedded log: one worker splits a topic's partitions among N sink tasks
(a fixed share each), every record lands once, and each task commits only its own partitions."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from millpond.backends import open_backend
from millpond.backends.base import TopicSpec
from millpond.config import PipelineConfig
from millpond.records import Record, TopicPartition
from millpond.runtime import RuntimeOptions, run_pipeline_async

PARTITIONS = 5


def config(tmp: Path, tasks: int) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "split",
        "log": {"embedded": {"dir": str(tmp / "log")}},
        "topics": [{"name": "lines", "partitions": PARTITIONS}],
        "connectors": [
            {"name": "out", "kind": "sink", "type": "file", "topics": ["lines"], "tasks": tasks,
             "config": {"dir": str(tmp / "out")},
             "converter": {"key": "string", "value": "string"}, "guarantee": "exactly_once"},
        ],
    })


async def fill(cfg: PipelineConfig, lines: list[str]) -> None:
    """The topic, with line i on partition i % PARTITIONS, in one transaction."""
    backend = open_backend(cfg.log)
    await backend.open()
    try:
        await backend.create_topic(TopicSpec("lines", PARTITIONS))
        producer = backend.producer("fill")
        await producer.begin()
        for i, line in enumerate(lines):
            await producer.send("lines", Record(line.encode(), None, 0), i % PARTITIONS)
        await producer.commit()
        await producer.close()
    finally:
        await backend.close()


def run(cfg: PipelineConfig) -> None:
    o = RuntimeOptions(idle_seconds=0.3, install_signal_handlers=False)
    o.sink_limits.poll_timeout_s = 0.05
    o.sink_limits.idle_flush_s = 0.05
    asyncio.run(asyncio.wait_for(run_pipeline_async(cfg, until_idle=True, options=o), 60))


def test_three_sink_tasks_split_five_partitions_and_write_each_line_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    lines = [f"line-{i}" for i in range(4000)]
    asyncio.run(fill(config(tmp_path, 3), lines))
    with caplog.at_level(logging.INFO, logger="millpond.runtime.sink"):
        run(config(tmp_path, tasks=3))
    out = [line for f in sorted((tmp_path / "out").iterdir()) for line in f.read_text().splitlines()]
    assert sorted(out) == sorted(lines)
    # the shares the tasks announced: disjoint, covering every partition
    owned = {r.getMessage().split(" owns ")[0]: r.getMessage().split(" owns ")[1]
             for r in caplog.records if " owns " in r.getMessage()}
    assert owned == {"sink 'out#0'": "lines-0, lines-3", "sink 'out#1'": "lines-1, lines-4",
                     "sink 'out#2'": "lines-2"}

    async def committed() -> dict[TopicPartition, int]:
        backend = open_backend(config(tmp_path, 3).log, readonly=True)
        await backend.open()
        try:
            ends = {TopicPartition(i.topic, i.partition): i.last_stable_offset
                    for i in await backend.describe_topic("lines")}
            got = await backend.committed("out")
            assert got == ends
            return got
        finally:
            await backend.close()

    assert len(asyncio.run(committed())) == PARTITIONS

    # a second run with one task more: nothing is written again
    run(config(tmp_path, tasks=4))
    again = [line for f in sorted((tmp_path / "out").iterdir()) for line in f.read_text().splitlines()]
    assert sorted(again) == sorted(lines)
