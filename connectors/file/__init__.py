"""Built-in file connectors: a tailing file source and a rolling file sink.

They register through the ``millpond`` entry point (``file``) like any
third-party plugin.
"""

from __future__ import annotations

from millpond.connector import Sink, Source
from millpond.hookspecs import hookimpl

from .sink import FileSink, FileSinkConfig
from .source import FileSource, FileSourceConfig

__all__ = ["FileSink", "FileSinkConfig", "FileSource", "FileSourceConfig"]


@hookimpl
def millpond_sources() -> dict[str, type[Source]]:
    return {"file": FileSource}


@hookimpl
def millpond_sinks() -> dict[str, type[Sink]]:
    return {"file": FileSink}
