"""Helpers for the Postgres connector tests: unique names and a source driver."""

from __future__ import annotations

import itertools
import os
from typing import Any

import asyncpg
import pytest

from millpond.connector import ConnectorContext, SourceBatch
from millpond.connectors.postgres.source import PostgresSource, PostgresSourceConfig
from millpond.records import Record
from millpond.runtime.source_task import decode_json

_counter = itertools.count()


@pytest.fixture
def name() -> str:
    """A name unique in this session (tables, slots, publications, connectors)."""
    return f"t{os.getpid()}_{next(_counter)}"


def make_source(dsn: str, name: str, tables: list[str], **cfg: Any) -> PostgresSource:
    config = PostgresSourceConfig(dsn=dsn, tables=tables, **cfg)
    return PostgresSource(config, ConnectorContext(name=name))


def records_of(batch: SourceBatch) -> list[Record]:
    """A batch's records as values: the stream comes as JSON columns (``encoded``)."""
    return batch.records + [r for encoded in batch.encoded for r in decode_json(encoded)]


async def drain(source: PostgresSource, commit: bool = True, max_idle: int = 3) -> tuple[list[Record], Any]:
    """Poll until the source has nothing for ``max_idle`` polls in a row; commit each batch."""
    out: list[Record] = []
    offset: Any = None
    idle = 0
    while idle < max_idle:
        batch = await source.poll()
        if batch is None:
            idle += 1
            continue
        idle = 0
        out.extend(records_of(batch))
        offset = batch.offset
        if commit:
            await source.commit(batch.offset)
    return out, offset


async def connect(dsn: str) -> asyncpg.Connection:
    return await asyncpg.connect(dsn)
