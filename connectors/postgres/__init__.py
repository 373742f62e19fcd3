"""Postgres connectors: ``postgres-cdc`` (logical decoding source) and ``postgres`` (sink).

Registered through the ``millpond`` entry point like any third-party plugin.
They need the ``postgres`` extra (asyncpg); the hooks name the classes as
``Deferred`` so that nothing here imports asyncpg until a pipeline uses them.
"""

from __future__ import annotations

from millpond.connector import Sink, Source
from millpond.hookspecs import Deferred, hookimpl

NEEDS = ("asyncpg",)
INSTALL = "pip install 'millpond[postgres]'"


@hookimpl
def millpond_sources() -> dict[str, type[Source] | Deferred]:
    return {"postgres-cdc": Deferred(f"{__name__}.source:PostgresSource", NEEDS, INSTALL)}


@hookimpl
def millpond_sinks() -> dict[str, type[Sink] | Deferred]:
    return {"postgres": Deferred(f"{__name__}.sink:PostgresSink", NEEDS, INSTALL)}
