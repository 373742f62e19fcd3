"""File sink, batches as the log stores them (``write_batches``): the same files as ``write`` gives.

The model is the record path: the same records decoded the way the sink task
decodes them under string converters, handed to ``write``. Where a value is
not one line of UTF-8, ``write_batches`` must decline having written nothing,
so the runtime's record path (and its error policy) takes over.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from millpond.connector import ConnectorContext
from millpond.connectors.file import FileSink, FileSinkConfig
from millpond.log import batch as batch_format
from millpond.records import PartitionBatches, Record, TopicPartition

TP = TopicPartition("lines", 0)


def make(tmp: Path, **cfg: Any) -> FileSink:
    return FileSink(FileSinkConfig(dir=str(tmp), **cfg), ConnectorContext(name="out", extra={"topics": ["lines"]}))


def stored(values: list[bytes | None], base: int) -> bytes:
    buf = batch_format.build_batch([Record(v, None, 1, []) for v in values])
    batch_format.set_base_offset(buf, base)
    return bytes(buf)


def files(tmp: Path) -> dict[str, bytes]:
    return {name: (tmp / name).read_bytes() for name in sorted(os.listdir(tmp))}


def run(sink: FileSink, polls: list[list[PartitionBatches]], end: int) -> list[int | None]:
    async def go() -> list[int | None]:
        await sink.start()
        taken = []
        for poll in polls:
            count = await sink.write_batches(poll)
            taken.append(count)
            if count is None:  # what the sink task does then
                await sink.write([
                    Record(r.value.decode(), None, r.timestamp, r.headers, r.topic, r.partition, r.offset)
                    for part in poll for r in part.records()
                ])
        await sink.flush({TP: end})
        await sink.stop()
        return taken

    return asyncio.run(go())


@pytest.mark.parametrize("fmt", ["text", "auto"])
def test_same_files_as_the_record_path(tmp_path: Path, fmt: str) -> None:
    first = [f"line {i} \u00e9".encode() for i in range(300)]
    second = [b"", b"x" * 5000, b"tail"]
    polls = [
        [PartitionBatches(TP, [stored(first[:100], 0), stored(first[100:], 101)], 0)],  # 100: a marker
        [PartitionBatches(TP, [stored(second, 301)], 301)],
    ]
    taken = run(make(tmp_path / "batches", format=fmt), polls, 305)
    assert taken == [300, 3]
    model = tmp_path / "records"
    records = [Record(v.decode(), topic="lines", partition=0, offset=o) for v, o in
               [*zip(first, [*range(100), *range(101, 301)]), *zip(second, range(301, 304))]]

    async def write_records() -> None:
        sink = make(model, format=fmt)
        await sink.start()
        await sink.write(records)
        await sink.flush({TP: 305})
        await sink.stop()

    asyncio.run(write_records())
    assert files(tmp_path / "batches") == files(model)
    assert list(files(model)) == ["lines-0-00000000000000000000-00000000000000000304.jsonl"]


def test_from_offset_skips_what_was_read_before(tmp_path: Path) -> None:
    polls = [[PartitionBatches(TP, [stored([b"a", b"b", b"c", b"d"], 10)], 12)]]
    assert run(make(tmp_path), polls, 14) == [2]
    assert files(tmp_path) == {"lines-0-00000000000000000012-00000000000000000013.jsonl": b"c\nd\n"}


@pytest.mark.parametrize("bad", [None, b"two\nlines", b"\xff not utf-8"])
def test_declines_what_is_not_a_line_and_writes_nothing(tmp_path: Path, bad: bytes | None) -> None:
    other = TopicPartition("lines", 1)
    sink = make(tmp_path, format="auto")

    async def go() -> None:
        await sink.start()
        good = PartitionBatches(other, [stored([b"fine"], 0)], 0)
        assert await sink.write_batches([good, PartitionBatches(TP, [stored([b"ok", bad], 0)], 0)]) is None
        assert sink.open_files == {}  # not even the partition before the bad one
        await sink.stop()

    asyncio.run(go())


def test_json_format_takes_records_only(tmp_path: Path) -> None:
    sink = make(tmp_path, format="json")

    async def go() -> None:
        await sink.start()
        assert await sink.write_batches([PartitionBatches(TP, [stored([b"a"], 0)], 0)]) is None
        await sink.stop()

    asyncio.run(go())
