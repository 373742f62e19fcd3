"""The plugin manager: finds plugins and answers "which class is type X?".

Plugins (built-in ones included) are found through the ``millpond``
entry-point group. ``MILLPOND_PLUGINS`` (comma-separated entry-point names),
when set, is an allow-list.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from typing import Any

import pluggy

from . import hookspecs
from .connector import Converter, Sink, Source, Transform
from .errors import PluginError

KINDS = {
    "source": "millpond_sources",
    "sink": "millpond_sinks",
    "transform": "millpond_transforms",
    "converter": "millpond_converters",
}


@dataclass(frozen=True, slots=True)
class Provided:
    kind: str
    name: str
    cls: type[Any]
    plugin: str


@cache
def plugin_manager() -> pluggy.PluginManager:
    pm = pluggy.PluginManager("millpond")
    pm.add_hookspecs(hookspecs)
    allow = os.environ.get("MILLPOND_PLUGINS")
    if allow:
        allowed = {name.strip() for name in allow.split(",") if name.strip()}
        from importlib.metadata import entry_points

        for ep in entry_points(group="millpond"):
            if ep.name not in allowed:
                pm.set_blocked(ep.name)
    pm.load_setuptools_entrypoints("millpond")
    return pm


def provided(pm: pluggy.PluginManager | None = None) -> list[Provided]:
    """Everything every plugin provides, checking that names are unique per kind."""
    pm = pm or plugin_manager()
    seen: dict[tuple[str, str], Provided] = {}
    for kind, hook_name in KINDS.items():
        hook = getattr(pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            mapping = impl.function()
            for name, cls in (mapping or {}).items():
                plugin = pm.get_name(impl.plugin) or repr(impl.plugin)
                item = Provided(kind, name, cls, plugin)
                other = seen.get((kind, name))
                if other is not None and other.cls is not cls:
                    raise PluginError(
                        f"{kind} {name!r} is registered by both {other.plugin!r} and {plugin!r}"
                    )
                seen[(kind, name)] = item
    return list(seen.values())


def lookup(kind: str, name: str, pm: pluggy.PluginManager | None = None) -> type[Any]:
    """The class registered as ``name`` for ``kind``; a clear error listing the choices otherwise."""
    items = [p for p in provided(pm) if p.kind == kind]
    for item in items:
        if item.name == name:
            return item.cls
    choices = ", ".join(sorted(p.name for p in items)) or "none installed"
    raise PluginError(f"unknown {kind} type {name!r} (installed: {choices})")


def source_class(name: str) -> type[Source]:
    return lookup("source", name)


def sink_class(name: str) -> type[Sink]:
    return lookup("sink", name)


def transform_class(name: str) -> type[Transform]:
    return lookup("transform", name)


def converter_class(name: str) -> type[Converter]:
    return lookup("converter", name)
