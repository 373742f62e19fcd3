"""The file sink shared by several writers (tasks of one connector, on one worker or several):
a live writer's temp file survives another's ``start``, and a writer that lost its partition
(a zombie) cannot commit a range the new owner committed."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from millpond.connector import ConnectorContext
from millpond.connectors.file import FileSink, FileSinkConfig
from millpond.errors import RetriableConnectorError
from millpond.records import Record, TopicPartition

TP = TopicPartition("lines", 0)


def make(tmp: Path) -> FileSink:
    return FileSink(FileSinkConfig(dir=str(tmp)), ConnectorContext(name="out", extra={"topics": ["lines"]}))


def recs(values: list[str], start: int, partition: int = 0) -> list[Record]:
    return [Record(value=v, topic="lines", partition=partition, offset=start + i) for i, v in enumerate(values)]


def temps(tmp: Path) -> list[str]:
    return sorted(n for n in os.listdir(tmp) if n.startswith(".millpond-tmp-"))


def test_start_leaves_a_live_writers_temp_file_and_removes_an_abandoned_one(tmp_path: Path) -> None:
    async def go() -> None:
        live = make(tmp_path)
        await live.start()
        await live.write(recs(["a", "b"], 0, partition=1))
        assert len(temps(tmp_path)) == 1
        abandoned = tmp_path / ".millpond-tmp-lines-0-deadbeef"  # what a killed writer leaves: nobody locks it
        abandoned.write_bytes(b"x\n")

        other = make(tmp_path)  # a second task starting on the same directory
        assert await other.start() == {}
        assert temps(tmp_path) == [n for n in temps(tmp_path) if n != abandoned.name]
        assert len(temps(tmp_path)) == 1, "the live writer's temp file must survive"

        await live.flush({TopicPartition("lines", 1): 2})  # the live writer still commits its file
        assert (tmp_path / "lines-1-00000000000000000000-00000000000000000001.jsonl").read_text() == "a\nb\n"
        await live.stop()
        await other.stop()

    asyncio.run(go())


def test_a_zombie_cannot_commit_a_range_the_new_owner_committed(tmp_path: Path) -> None:
    async def go() -> None:
        zombie = make(tmp_path)
        assert await zombie.start() == {}
        await zombie.write(recs(["a", "b", "c", "d"], 0))  # then it pauses and loses partition 0

        owner = make(tmp_path)
        assert await owner.start() == {}
        await owner.write(recs(["a", "b"], 0))
        await owner.flush({TP: 2})
        assert await zombie.stored_offsets() == {TP: 2}  # what a re-assigned task would seek to

        with pytest.raises(RetriableConnectorError, match=r"lines-0 offsets 0\.\.3 overlap"):
            await zombie.flush({TP: 4})
        await zombie.stop()
        await owner.write(recs(["c", "d"], 2))
        await owner.flush({TP: 4})
        await owner.stop()

    asyncio.run(go())
    names = sorted(n for n in os.listdir(tmp_path))
    assert names == ["lines-0-00000000000000000000-00000000000000000001.jsonl",
                     "lines-0-00000000000000000002-00000000000000000003.jsonl"]
    assert "".join((tmp_path / n).read_text() for n in names) == "a\nb\nc\nd\n"


def test_the_same_range_committed_twice_keeps_the_first_file(tmp_path: Path) -> None:
    async def go() -> None:
        first, second = make(tmp_path), make(tmp_path)
        await first.start()
        await second.start()
        await first.write(recs(["a", "b"], 0))
        await second.write(recs(["A", "B"], 0))
        await first.flush({TP: 2})
        with pytest.raises(RetriableConnectorError, match="overlap"):
            await second.flush({TP: 2})
        await first.stop()
        await second.stop()

    asyncio.run(go())
    assert os.listdir(tmp_path) == ["lines-0-00000000000000000000-00000000000000000001.jsonl"]
    assert (tmp_path / os.listdir(tmp_path)[0]).read_text() == "a\nb\n"
