"""The Cassandra sink connector (``type: cassandra``), registered like any plugin."""

from __future__ import annotations

from millpond.connector import Sink
from millpond.hookspecs import hookimpl

from .config import CassandraSinkConfig
from .sink import CassandraSink

__all__ = ["CassandraSink", "CassandraSinkConfig"]


@hookimpl
def millpond_sinks() -> dict[str, type[Sink]]:
    return {"cassandra": CassandraSink}
