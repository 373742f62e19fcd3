"""Capabilities a connector declares are checked once, at start-up."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from millpond.config import parse_pipeline
from millpond.connector import Sink, Source
from millpond.errors import ConfigError
from millpond.hookspecs import hookimpl
from millpond.plugins import plugin_manager
from millpond.records import Record, TopicPartition
from millpond.runtime.launch import preflight

from .test_worker import pipeline


class HalfOwnSink(Sink):
    """Keeps its own offsets but cannot reset them: a plugin that forgot half of the contract."""

    owns_offsets = True

    async def start(self) -> Mapping[TopicPartition, int] | None:
        return {}

    async def write(self, records: list[Record]) -> None:
        pass

    async def flush(self, offsets: Mapping[TopicPartition, int]) -> None:
        pass


class _Plugin:
    @hookimpl
    def millpond_sinks(self) -> dict[str, type[Sink]]:
        return {"test-half-own": HalfOwnSink}


def test_a_sink_that_owns_offsets_must_be_able_to_reset_them() -> None:
    pm = plugin_manager()
    pm.register(_Plugin(), name="test-half-own")
    try:
        with pytest.raises(ConfigError, match="keeps its own offsets but cannot reset them"):
            preflight(pipeline([1], sink={"type": "test-half-own"}))
    finally:
        pm.unregister(name="test-half-own")


def test_validate_reports_a_sink_that_owns_offsets_without_reset_at_its_line() -> None:
    pm = plugin_manager()
    pm.register(_Plugin(), name="test-half-own")
    try:
        config, problems = parse_pipeline(
            "log: {embedded: {dir: /nonexistent}}\n"
            "topics: [{name: t}]\n"
            "connectors:\n"
            "  - {name: dst, kind: sink, type: test-half-own, topics: [t]}\n"
        )
    finally:
        pm.unregister(name="test-half-own")
    assert config is None
    assert [(p.path, p.line) for p in problems] == [("connectors[0].type", 4)]
    assert "keeps its own offsets but cannot reset them" in problems[0].message


def test_a_source_offset_is_a_json_object_unless_the_source_says_more() -> None:
    assert Source.validate_offset({"next": 3}) == {"next": 3}
    with pytest.raises(ValueError, match="JSON object"):
        Source.validate_offset([1, 2])


def test_the_file_source_offset_names_files_and_positions(tmp_path: Any) -> None:
    from millpond.connectors.file.source import FileSource

    f = tmp_path / "a.log"
    f.write_text("x\n")
    offset = FileSource.validate_offset({"files": [{"path": str(f), "position": 1}]})
    (entry,) = offset["files"]
    assert (entry["dev"], entry["inode"], entry["origin"]) == (f.stat().st_dev, f.stat().st_ino, str(f))
    for bad, why in [({"files": [{"path": str(f), "position": -1}]}, "position"),
                     ({"files": [{"position": 0}]}, "path"),
                     ({"files": [{"path": str(tmp_path / "gone"), "position": 0}]}, "gone"),
                     ({"lsn": "0/1"}, "files")]:
        with pytest.raises(ValueError, match=why):
            FileSource.validate_offset(bad)


def test_the_postgres_source_offset_is_an_lsn() -> None:
    pytest.importorskip("asyncpg")
    from millpond.connectors.postgres.source import PostgresSource

    assert PostgresSource.validate_offset({"lsn": "0/16B3748"}) == {"lsn": "0/16B3748"}
    for bad in ({"lsn": "16B3748"}, {"files": []}, "0/1"):
        with pytest.raises(ValueError):
            PostgresSource.validate_offset(bad)
