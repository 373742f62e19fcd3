"""file -> embedded log -> file, in process, on the real embedded backend."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

from millpond.backends import open_backend
from millpond.config import PipelineConfig
from millpond.records import TopicPartition
from millpond.runtime import RuntimeOptions, run_pipeline_async
from millpond.runtime.source_offsets import read_source_offset


def config(tmp: Path, **sink: Any) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "it",
        "log": {"embedded": {"dir": str(tmp / "log")}},
        "topics": [{"name": "lines", "partitions": 2}],
        "connectors": [
            {"name": "tail", "kind": "source", "type": "file", "topic": "lines",
             "config": {"path": str(tmp / "in" / "*.log"), "key": "path", "rescan_ms": 50},
             "converter": {"key": "string", "value": "string"}, "guarantee": "exactly_once"},
            {"name": "out", "kind": "sink", "type": "file", "topics": ["lines"],
             "config": {"dir": str(tmp / "out"), **sink},
             "converter": {"key": "string", "value": "string"}, "guarantee": "exactly_once"},
        ],
    })


def options() -> RuntimeOptions:
    o = RuntimeOptions(idle_seconds=0.3, install_signal_handlers=False)
    o.sink_limits.poll_timeout_s = 0.05
    o.sink_limits.idle_flush_s = 0.05
    return o


def run(cfg: PipelineConfig) -> None:
    asyncio.run(asyncio.wait_for(run_pipeline_async(cfg, until_idle=True, options=options()), 60))


def output(tmp: Path) -> dict[int, list[str]]:
    per_partition: dict[int, list[str]] = {}
    for f in sorted((tmp / "out").iterdir()):
        assert not f.name.startswith(".")
        partition = int(f.name.split("-")[1])
        per_partition.setdefault(partition, []).extend(f.read_text().splitlines())
    return per_partition


def test_file_to_log_to_file_exactly_once_and_incremental(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    a = [f"a-{i}" for i in range(3000)]
    b = [f"b-{i}" for i in range(10)]
    (tmp_path / "in" / "a.log").write_text("".join(x + "\n" for x in a))
    (tmp_path / "in" / "b.log").write_text("".join(x + "\n" for x in b))
    run(config(tmp_path))
    out = output(tmp_path)
    lines = [x for p in out.values() for x in p]
    assert sorted(lines) == sorted(a + b)
    for part in out.values():  # each file's lines in order within its partition
        assert [x for x in part if x.startswith("a-")] in ([], a)
        assert [x for x in part if x.startswith("b-")] in ([], b)

    # a second run moves only what was appended
    with open(tmp_path / "in" / "a.log", "a") as f:
        f.write("a-new\n")
    run(config(tmp_path))
    lines = [x for p in output(tmp_path).values() for x in p]
    assert sorted(lines) == sorted(a + b + ["a-new"])

    async def inspect() -> None:
        backend = open_backend(config(tmp_path).log)
        await backend.open()
        try:
            offset = await read_source_offset(backend, "tail")
            assert {f["path"]: f["position"] for f in offset["files"]} == {
                str(tmp_path / "in" / "a.log"): sum(len(x) + 1 for x in a) + len("a-new\n"),
                str(tmp_path / "in" / "b.log"): sum(len(x) + 1 for x in b),
            }
            lag = {g.topic_partition: g.lag for g in await backend.describe_group("out")}
            assert set(lag.values()) == {0}
            assert set(lag) == {TopicPartition("lines", 0), TopicPartition("lines", 1)}
        finally:
            await backend.close()

    asyncio.run(inspect())


def test_undecodable_records_under_dead_letter_policy(tmp_path: Path) -> None:
    """The sink reads JSON; plain-text lines go to the dead-letter topic, JSON lines to the files."""
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "e.log").write_text('{"n": 1}\nnot json\n{"n": 2}\n')
    cfg = config(tmp_path)
    cfg.connectors[1].converter.value = "json"
    cfg.connectors[1].errors.policy = "dead_letter"
    cfg.connectors[1].errors.topic = "lines-dlq"
    run(cfg)
    lines = [json.loads(x) for p in output(tmp_path).values() for x in p]
    assert lines == [{"n": 1}, {"n": 2}]

    async def dead() -> list[tuple[bytes | None, dict[str, bytes | None]]]:
        backend = open_backend(cfg.log)
        await backend.open()
        try:
            consumer = backend.consumer(["lines-dlq"])
            records = await consumer.poll(100, 0.5)
            await consumer.close()
            return [(r.value, dict(r.headers)) for r in records]
        finally:
            await backend.close()

    ((value, headers),) = asyncio.run(dead())
    assert value == b"not json"
    assert headers["millpond.error.connector"] == b"out"
    assert headers["millpond.error.topic"] == b"lines"
    assert b"not valid JSON" in headers["millpond.error"]  # type: ignore[operator]


def test_scheduler_compaction_keeps_the_latest_source_offset(tmp_path: Path) -> None:
    """Many transactions leave many checkpoints in __source_offsets; compaction keeps the last."""
    from millpond.backends.base import TopicSpec
    from millpond.runtime.scheduler import PipelineJobs
    from millpond.runtime.source_offsets import SOURCE_OFFSETS_TOPIC, encode_offset, ensure_source_offsets_topic

    async def go() -> None:
        backend = open_backend(config(tmp_path).log)
        await backend.open()
        try:
            await ensure_source_offsets_topic(backend)
            await backend.create_topic(TopicSpec("lines", 1), exist_ok=True)
            producer = backend.producer("t1")
            for i in range(300):
                await producer.begin()
                await producer.send(SOURCE_OFFSETS_TOPIC, encode_offset("tail", {"n": i}, 1000 + i), None)
                await producer.send(SOURCE_OFFSETS_TOPIC, encode_offset("other", {"n": -i}, 1000 + i), None)
                await producer.commit()
            await producer.close()
            jobs = PipelineJobs(backend, [])
            await jobs.compaction()
            await jobs.retention()
            assert await read_source_offset(backend, "tail") == {"n": 299}
            assert await read_source_offset(backend, "other") == {"n": -299}
        finally:
            await backend.close()

    asyncio.run(go())


def test_sink_failure_mid_flush_restarts_and_writes_each_line_once(
    tmp_path: Path, monkeypatch: Any, caplog: Any
) -> None:
    """An OSError after the sink renamed one file but before the group commit: the restarted
    task resumes from the committed names, so nothing is doubled."""
    import logging

    from millpond.connectors.file.sink import FileSink

    (tmp_path / "in").mkdir()
    lines = [f"l-{i}" for i in range(500)]
    (tmp_path / "in" / "a.log").write_text("".join(x + "\n" for x in lines))
    real = FileSink._commit_files
    calls = {"n": 0}

    def flaky(self: FileSink, work: Any) -> None:
        calls["n"] += 1
        real(self, work)
        if calls["n"] == 1:
            raise OSError(28, "No space left on device (injected)")

    monkeypatch.setattr(FileSink, "_commit_files", flaky)
    cfg = config(tmp_path)
    cfg.connectors[0].config["key"] = "none"
    opts = options()
    opts.backoff_initial_s = 0.05
    with caplog.at_level(logging.WARNING, logger="millpond.runtime"):
        asyncio.run(asyncio.wait_for(run_pipeline_async(cfg, until_idle=True, options=opts), 60))
    assert "No space left on device (injected)" in caplog.text and "restart #1" in caplog.text
    out = [x for p in output(tmp_path).values() for x in p]
    assert sorted(out) == sorted(lines)
