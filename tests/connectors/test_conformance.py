"""The built-in file connectors pass millpond.testing's contract checks, as a plugin's would."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from millpond.connector import ConnectorContext, Guarantee, Sink, Source, SourceBatch
from millpond.connectors.file import FileSink, FileSinkConfig, FileSource, FileSourceConfig
from millpond.records import Record
from millpond.testing import ContractError, check_sink, check_source, log_records


def test_file_source_resumes_after_each_checkpoint(tmp_path: Path) -> None:
    for name, lines in (("a.log", 30), ("b.log", 25)):
        (tmp_path / name).write_text("".join(f"{name} line {i}\n" for i in range(lines)))

    def make() -> Source:
        config = FileSourceConfig(path=str(tmp_path / "*.log"), rescan_ms=0, max_batch_lines=7, key="path")
        return FileSource(config, ConnectorContext(name="tail"))

    report = asyncio.run(check_source(make, min_records=55, order_within=lambda r: r.key))
    assert report.records == 55
    assert report.offsets >= 8 and report.resumed_from == 3


def test_file_sink_flushes_durably_and_resumes_from_its_names(tmp_path: Path) -> None:
    out = tmp_path / "out"
    records = log_records([f"v{i}" for i in range(40)], topic="lines", partitions=2)

    def make() -> Sink:
        return FileSink(FileSinkConfig(dir=str(out)), ConnectorContext(name="out"))

    async def read_back() -> list[Any]:
        lines: list[str] = []
        for path in sorted(out.glob("lines-*")):
            lines += path.read_text().splitlines()
        return sorted(lines)

    def expected(rs: Any) -> list[Any]:
        return sorted(r.value for r in rs)

    asyncio.run(check_sink(make, records, read_back, expected=expected))


class _Repeats(Source):
    """Claims exactly once, but starts over whatever source offset it is given."""

    guarantee = Guarantee.exactly_once

    async def start(self, offset: Any | None) -> None:
        self.left = list(range(6))

    async def poll(self) -> SourceBatch | None:
        if not self.left:
            return None
        value = self.left.pop(0)
        return SourceBatch([Record(value)], {"next": value + 1})


def test_the_source_check_catches_a_source_that_ignores_its_checkpoint() -> None:
    with pytest.raises(ContractError, match="started from source offset"):
        asyncio.run(check_source(lambda: _Repeats(None, ConnectorContext(name="r"))))


class _Forgets(Sink):
    """Claims exactly once with its own offsets, but forgets them on restart."""

    guarantee = Guarantee.exactly_once
    rows: list[Any] = []

    async def start(self) -> Any:
        return {}

    async def write(self, records: list[Record]) -> None:
        _Forgets.rows += [r.value for r in records]

    async def flush(self, offsets: Any) -> None:
        pass


def test_the_sink_check_catches_a_sink_that_doubles_on_replay() -> None:
    async def read_back() -> list[Any]:
        return list(_Forgets.rows)

    with pytest.raises(ContractError):
        asyncio.run(check_sink(lambda: _Forgets(None, ConnectorContext(name="f")), log_records(list(range(10))), read_back))
