"""The Cassandra sink connector (``type: cassandra``), registered like any plugin.

It needs the ``cassandra`` extra (cassandra-driver); the hook names the class
as ``Deferred`` so that nothing is imported until a pipeline uses it.
``CassandraSink`` and ``CassandraSinkConfig`` are still importable from here
(imported on first access).
"""

from __future__ import annotations

from typing import Any

from millpond.connector import Sink
from millpond.hookspecs import Deferred, hookimpl

__all__ = ["CassandraSink", "CassandraSinkConfig"]

_LAZY = {"CassandraSink": ".sink", "CassandraSinkConfig": ".config"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    return getattr(import_module(_LAZY[name], __name__), name)


@hookimpl
def millpond_sinks() -> dict[str, type[Sink] | Deferred]:
    return {"cassandra": Deferred(f"{__name__}.sink:CassandraSink", ("cassandra",),
                                  "pip install 'millpond[cassandra]'")}
