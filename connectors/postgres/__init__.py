"""Postgres connectors: ``postgres-cdc`` (logical decoding source) and ``postgres`` (sink).

Registered through the ``millpond`` entry point like any third-party plugin.
Needs the ``postgres`` extra (asyncpg).
"""

from __future__ import annotations

from millpond.connector import Sink, Source
from millpond.hookspecs import hookimpl


@hookimpl
def millpond_sources() -> dict[str, type[Source]]:
    from .source import PostgresSource

    return {"postgres-cdc": PostgresSource}


@hookimpl
def millpond_sinks() -> dict[str, type[Sink]]:
    from .sink import PostgresSink

    return {"postgres": PostgresSink}
