"""File sink: atomic commit by rename, offset ranges in names, resume, rolling."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from millpond.connector import ConnectorContext
from millpond.connectors.file import FileSink, FileSinkConfig
from millpond.errors import RecordError
from millpond.records import Record, TopicPartition

TP = TopicPartition("lines", 0)


def make(tmp: Path, **cfg: Any) -> FileSink:
    return FileSink(FileSinkConfig(dir=str(tmp), **cfg), ConnectorContext(name="out", extra={"topics": ["lines"]}))


def recs(values: list[Any], start: int, partition: int = 0) -> list[Record]:
    return [Record(value=v, topic="lines", partition=partition, offset=start + i) for i, v in enumerate(values)]


def test_flush_commits_by_rename_with_the_offset_range(tmp_path: Path) -> None:
    sink = make(tmp_path)

    async def go() -> None:
        assert await sink.start() == {}
        await sink.write(recs(["a", "b", "c"], 0))
        assert [n for n in os.listdir(tmp_path) if not n.startswith(".")] == []  # nothing visible before flush
        await sink.flush({TP: 4})  # offset 3 was a transaction marker
        await sink.stop()

    asyncio.run(go())
    assert os.listdir(tmp_path) == ["lines-0-00000000000000000000-00000000000000000003.jsonl"]
    assert (tmp_path / os.listdir(tmp_path)[0]).read_text() == "a\nb\nc\n"


def test_start_resumes_after_committed_names_and_drops_temp_files(tmp_path: Path) -> None:
    async def first() -> None:
        sink = make(tmp_path)
        await sink.start()
        await sink.write(recs(["a", "b"], 0))
        await sink.flush({TP: 2})
        await sink.write(recs(["c"], 2))  # never flushed: the process "dies" here
        # no stop(): leave the temp file behind like a kill -9 would

    asyncio.run(first())
    assert any(n.startswith(".millpond-tmp-") for n in os.listdir(tmp_path))

    async def second() -> dict[TopicPartition, int]:
        sink = make(tmp_path)
        resume = await sink.start()
        assert resume is not None
        await sink.write(recs(["c", "d"], 2))
        await sink.flush({TP: 4})
        await sink.stop()
        return dict(resume)

    assert asyncio.run(second()) == {TP: 2}
    names = sorted(os.listdir(tmp_path))
    assert names == [
        "lines-0-00000000000000000000-00000000000000000001.jsonl",
        "lines-0-00000000000000000002-00000000000000000003.jsonl",
    ]
    assert "".join((tmp_path / n).read_text() for n in names) == "a\nb\nc\nd\n"


def test_stop_without_flush_leaves_nothing_committed(tmp_path: Path) -> None:
    async def go() -> None:
        sink = make(tmp_path)
        await sink.start()
        await sink.write(recs(["a"], 0))
        await sink.stop()

    asyncio.run(go())
    assert os.listdir(tmp_path) == []


def test_rolls_by_records_with_contiguous_ranges(tmp_path: Path) -> None:
    async def go() -> None:
        sink = make(tmp_path, roll_records=3, suffix=".txt")
        await sink.start()
        for i in range(0, 10, 2):
            await sink.write(recs([f"v{i}", f"v{i + 1}"], i))
        await sink.flush({TP: 10})
        await sink.stop()

    asyncio.run(go())
    names = sorted(os.listdir(tmp_path))
    ranges = [(int(n.split("-")[2]), int(n.split("-")[3].split(".")[0])) for n in names]
    assert ranges == [(0, 3), (4, 7), (8, 9)]
    assert "".join((tmp_path / n).read_text() for n in names).split() == [f"v{i}" for i in range(10)]


def test_partitions_get_their_own_files(tmp_path: Path) -> None:
    async def go() -> dict[TopicPartition, int] | None:
        sink = make(tmp_path)
        await sink.start()
        await sink.write(recs(["p0-a"], 0, 0) + recs(["p1-a", "p1-b"], 5, 1) + recs(["p0-b"], 1, 0))
        await sink.flush({TP: 2, TopicPartition("lines", 1): 7})
        await sink.stop()
        return await make(tmp_path).start()

    resume = asyncio.run(go())
    assert resume == {TP: 2, TopicPartition("lines", 1): 7}
    assert (tmp_path / "lines-0-00000000000000000000-00000000000000000001.jsonl").read_text() == "p0-a\np0-b\n"


def test_json_values_are_written_as_json_lines(tmp_path: Path) -> None:
    async def go() -> None:
        sink = make(tmp_path)
        await sink.start()
        await sink.write(recs([{"user": "ann", "n": 1}, "multi\nline", None], 0))
        await sink.flush({TP: 3})

    asyncio.run(go())
    (name,) = os.listdir(tmp_path)
    lines = (tmp_path / name).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [{"user": "ann", "n": 1}, "multi\nline", None]


def test_text_format_refuses_a_multiline_value_before_writing_anything(tmp_path: Path) -> None:
    async def go() -> None:
        sink = make(tmp_path, format="text")
        await sink.start()
        with pytest.raises(RecordError, match="lines-0@1"):
            await sink.write(recs(["fine", "two\nlines"], 0))
        await sink.write(recs(["fine"], 0))
        await sink.flush({TP: 1})

    asyncio.run(go())
    (name,) = os.listdir(tmp_path)
    assert (tmp_path / name).read_text() == "fine\n"
