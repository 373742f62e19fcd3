"""A sink's ``flush:`` block: parsed and checked like every block, and obeyed by the sink task.

The sink task is run on the real embedded log with the file sink (every flush
commits one file per partition): its polls ask for at most ``records``, and
without the block one flush takes the whole backlog.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from millpond.backends import open_backend
from millpond.backends.embedded.backend import EmbeddedConsumer
from millpond.config import PipelineConfig, parse_pipeline
from millpond.records import Record
from millpond.runtime import RuntimeOptions, run_pipeline_async
from millpond.runtime.launch import create_topics
from millpond.runtime.sink_task import SinkLimits

PIPELINE = """\
name: flushes
log:
  embedded: {dir: /tmp/unused}
topics: [{name: lines}]
connectors:
  - name: out
    kind: sink
    type: file
    topics: [lines]
    config: {dir: /tmp/unused-out}
%s
"""


def parse(flush: str) -> tuple[PipelineConfig | None, list[str]]:
    config, problems = parse_pipeline(PIPELINE % flush)
    return config, [f"{p.line}: {p.path}: {p.message}" for p in problems]


def test_flush_block_parsed_with_kafka_name_for_poll_size() -> None:
    config, problems = parse("    flush: {records: 100, interval_s: 0.5, idle_s: 0.1, max.poll.records: 50}")
    assert problems == []
    assert config is not None
    flush = config.connectors[0].flush
    assert flush is not None
    assert (flush.records, flush.interval_s, flush.idle_s, flush.max_poll_records) == (100, 0.5, 0.1, 50)


@pytest.mark.parametrize(("flush", "where"), [
    ("    flush: {records: 0}", "connectors[0].flush.records: Input should be greater than or equal to 1"),
    ("    flush: {interval_s: -1}", "connectors[0].flush.interval_s: Input should be greater than 0"),
    ("    flush: {size: 10}", "connectors[0].flush.size: unknown key 'size'"),
])
def test_bad_flush_settings_named_with_their_line(flush: str, where: str) -> None:
    config, problems = parse(flush)
    assert config is None
    assert len(problems) == 1, problems
    assert problems == [f"11: {where}"]


def test_flush_on_a_source_refused() -> None:
    text = """\
log: {embedded: {dir: /tmp/unused}}
topics: [{name: lines}]
connectors:
  - {name: tail, kind: source, type: file, topic: lines, config: {path: /tmp/x.log}, flush: {records: 10}}
"""
    config, problems = parse_pipeline(text)
    assert config is None
    assert any("'flush' is for sinks" in p.message for p in problems), problems


def test_limits_take_what_the_block_sets_and_keep_the_rest() -> None:
    config, _ = parse("    flush: {records: 300}")
    assert config is not None
    base = SinkLimits(flush_interval_s=7.0)
    limits = base.with_flush(config.connectors[0].flush)
    # the poll is capped by records, so no flush overshoots; what the block leaves out stays
    assert (limits.flush_records, limits.max_poll_records, limits.flush_interval_s) == (300, 300, 7.0)
    assert base.with_flush(None) is base
    config, _ = parse("    flush: {records: 300, max_poll_records: 1000}")
    assert config is not None
    assert SinkLimits().with_flush(config.connectors[0].flush).max_poll_records == 1000


def run_file_sink(tmp: Path, lines: int, flush: dict[str, float] | None,
                  monkeypatch: pytest.MonkeyPatch) -> tuple[list[int], list[int]]:
    """``lines`` lines through the file sink; the line count of each file it wrote (one per
    partition and flush), and the record counts the sink task asked each poll for."""
    config = PipelineConfig.model_validate({
        "name": "flushes",
        "log": {"embedded": {"dir": str(tmp / "log")}},
        "topics": [{"name": "lines", "partitions": 1}],
        "connectors": [{"name": "out", "kind": "sink", "type": "file", "topics": ["lines"],
                        "config": {"dir": str(tmp / "out"), "format": "auto", "suffix": ".txt"},
                        "converter": {"key": "string", "value": "string"}, "guarantee": "exactly_once",
                        "flush": flush}],
    })

    async def produce() -> None:
        backend = open_backend(config.log)
        await backend.open()
        try:
            await create_topics(config, backend)
            producer = backend.producer(transactional_id="fill")
            await producer.begin()
            for at in range(0, lines, 64):  # stored batches of 64, as a source writes them
                await producer.send_batch("lines", 0, [Record(f"line {i}".encode(), None, 1)
                                                       for i in range(at, min(at + 64, lines))])
            await producer.commit()
        finally:
            await backend.close()

    asked: list[int] = []
    poll_batches = EmbeddedConsumer.poll_batches

    async def counting(self: EmbeddedConsumer, max_records: int = 10_000, timeout: float = 1.0) -> Any:
        asked.append(max_records)
        return await poll_batches(self, max_records, timeout)

    monkeypatch.setattr(EmbeddedConsumer, "poll_batches", counting)
    asyncio.run(produce())
    options = RuntimeOptions(idle_seconds=0.3, install_signal_handlers=False)
    options.sink_limits.poll_timeout_s = 0.05
    asyncio.run(asyncio.wait_for(run_pipeline_async(config, until_idle=True, options=options), 60))
    files = sorted((tmp / "out").iterdir())
    text = "".join(f.read_text() for f in files)
    assert sorted(text.splitlines(), key=lambda s: int(s.split()[1])) == [f"line {i}" for i in range(lines)]
    return [len(f.read_text().splitlines()) for f in files], asked


def test_the_sink_task_polls_and_flushes_by_the_block(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the embedded log hands over whole reads of a partition (up to 1 MB), so it may return more than
    # asked and the flush then takes the whole poll; Kafka's polls return at most what is asked
    sizes, asked = run_file_sink(tmp_path, 1000, {"records": 128}, monkeypatch)
    assert asked and set(asked) == {128}
    assert sum(sizes) == 1000


def test_without_the_block_one_flush_takes_everything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes, asked = run_file_sink(tmp_path, 1000, None, monkeypatch)
    assert sizes == [1000]
    assert set(asked) == {SinkLimits().max_poll_records}
