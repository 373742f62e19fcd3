"""In-memory source and sink registered through the plugin hooks, for runtime unit tests."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any, ClassVar

from millpond.connector import ConnectorConfig, Guarantee, Sink, Source, SourceBatch
from millpond.errors import ConfigError, DiskFullError, RecordError
from millpond.hookspecs import hookimpl
from millpond.records import JsonRecords, Record, TopicPartition


class ListSourceConfig(ConnectorConfig):
    values: list[Any]
    batch: int = 2
    keyed: bool = False
    #: hand records over as JSON columns (SourceBatch.encoded), as the CDC source does
    encoded: bool = False
    fail_on_start: bool = False
    #: raise RuntimeError (not millpond's own) from every poll: a bug or a driver exception
    fail_always: bool = False
    #: raise DiskFullError from this many polls (counted across restarts), then work
    disk_full_polls: int = 0


class ListSource(Source):
    """Emits ``values`` in batches; the source offset is the index after the batch."""

    guarantee = Guarantee.exactly_once
    config_model = ListSourceConfig
    started_with: ClassVar[list[Any]] = []
    committed: ClassVar[list[Any]] = []
    disk_full_raised: ClassVar[list[float]] = []

    async def start(self, offset: Any | None) -> None:
        if self.config.fail_on_start:
            raise ConfigError(f"source {self.context.name!r}: told to fail")
        ListSource.started_with.append(offset)
        self.pos = 0 if offset is None else int(offset["next"])

    async def poll(self) -> SourceBatch | None:
        if self.config.fail_always:
            raise RuntimeError("driver exploded")
        if len(ListSource.disk_full_raised) < self.config.disk_full_polls:
            ListSource.disk_full_raised.append(time.monotonic())
            raise DiskFullError("no space left on device", path="/fake/log", free_bytes=1234)
        values = self.config.values
        if self.pos >= len(values):
            return None
        chunk = values[self.pos : self.pos + self.config.batch]
        self.pos += len(chunk)
        records = [Record(value=v, key=(str(v) if self.config.keyed else None)) for v in chunk]
        if self.config.encoded:
            columns = JsonRecords(self.context.extra.get("topic", "t"))
            for r in records:
                columns.append(None if r.key is None else json.dumps(r.key).encode(), json.dumps(r.value).encode(), 1)
            return SourceBatch([], {"next": self.pos}, [columns])
        return SourceBatch(records, {"next": self.pos})

    async def commit(self, offset: Any) -> None:
        ListSource.committed.append(offset)


class WeakSource(ListSource):
    guarantee = Guarantee.at_least_once


class MemorySinkConfig(ConnectorConfig):
    own_offsets: bool = False
    reject: list[str] = []


class MemorySink(Sink):
    """Keeps written records per connector name; with ``own_offsets`` it stores offsets like a transactional store."""

    guarantee = Guarantee.exactly_once
    config_model = MemorySinkConfig
    written: ClassVar[dict[str, list[Record]]] = {}
    durable: ClassVar[dict[str, list[Record]]] = {}
    offsets: ClassVar[dict[str, dict[TopicPartition, int]]] = {}

    async def start(self) -> Mapping[TopicPartition, int] | None:
        self.buffer: list[Record] = []
        MemorySink.durable.setdefault(self.context.name, [])
        if self.config.own_offsets:
            return MemorySink.offsets.get(self.context.name)
        return None

    async def write(self, records: list[Record]) -> None:
        for r in records:
            if isinstance(r.value, str) and r.value in self.config.reject:
                raise RecordError(f"value {r.value!r} is rejected")
        self.buffer.extend(records)
        MemorySink.written.setdefault(self.context.name, []).extend(records)

    async def flush(self, offsets: Mapping[TopicPartition, int]) -> None:
        MemorySink.durable[self.context.name].extend(self.buffer)
        self.buffer = []
        MemorySink.offsets[self.context.name] = dict(offsets)


class _Plugin:
    @hookimpl
    def millpond_sources(self) -> dict[str, type[Source]]:
        return {"test-list": ListSource, "test-weak": WeakSource}

    @hookimpl
    def millpond_sinks(self) -> dict[str, type[Sink]]:
        return {"test-memory": MemorySink}


plugin = _Plugin()


def reset() -> None:
    ListSource.started_with.clear()
    ListSource.committed.clear()
    ListSource.disk_full_raised.clear()
    MemorySink.written.clear()
    MemorySink.durable.clear()
    MemorySink.offsets.clear()
