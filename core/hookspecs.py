"""Hook specifications: the contract between millpond and its plugins.

A plugin is any module or object with functions named like these hooks,
registered through the ``millpond`` entry-point group (see ``plugins.py``).
The built-in connectors, transforms and converters register through the very
same hooks. Every hook returns a mapping from the name used in pipeline YAML
to a class; names must be unique across all installed plugins.
"""

from __future__ import annotations

import pluggy

from .connector import Converter, Sink, Source, Transform

hookspec = pluggy.HookspecMarker("millpond")
hookimpl = pluggy.HookimplMarker("millpond")


@hookspec
def millpond_sources() -> dict[str, type[Source]]:  # type: ignore[empty-body]
    """Source connector classes by type name, e.g. ``{"file": FileSource}``.

    The YAML ``type:`` of a source connector is looked up here; the class's
    ``config_model`` validates its ``config:`` block.
    """


@hookspec
def millpond_sinks() -> dict[str, type[Sink]]:  # type: ignore[empty-body]
    """Sink connector classes by type name, e.g. ``{"postgres": PostgresSink}``."""


@hookspec
def millpond_transforms() -> dict[str, type[Transform]]:  # type: ignore[empty-body]
    """Transform classes by type name, used in a connector's ``transforms:`` chain."""


@hookspec
def millpond_converters() -> dict[str, type[Converter]]:  # type: ignore[empty-body]
    """Converter classes by name (``json``, ``string``, ``bytes`` are built in)."""
