"""The plugin manager: finds plugins and answers "which class is type X?".

Plugins (built-in ones included) are found through the ``millpond``
entry-point group, one entry point per plugin module. ``MILLPOND_PLUGINS``
(comma-separated entry-point names), when set, is an allow-list.

A plugin that fails to import does not take the others down: it is recorded
in :func:`load_errors`, shown by ``millpond plugins``, and named when a type
it might have provided is not found.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import Distribution, EntryPoint, distributions
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
BASES: dict[str, type[Any]] = {
    "source": Source,
    "sink": Sink,
    "transform": Transform,
    "converter": Converter,
}
GROUP = "millpond"


@dataclass(frozen=True, slots=True)
class Provided:
    kind: str
    name: str
    cls: type[Any]
    plugin: str


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One registered plugin, as ``millpond plugins`` shows it."""

    name: str
    distribution: str | None
    version: str | None
    provides: dict[str, list[str]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class LoadError:
    """An entry point that could not be loaded, and why."""

    name: str
    distribution: str
    version: str
    error: str


@dataclass(slots=True)
class _Registry:
    pm: pluggy.PluginManager
    dists: dict[str, tuple[str, str]] = field(default_factory=dict)
    errors: list[LoadError] = field(default_factory=list)


def _entry_points() -> list[tuple[EntryPoint, Distribution]]:
    found: list[tuple[EntryPoint, Distribution]] = []
    seen: set[str] = set()
    for dist in distributions():
        name = dist.metadata["Name"] or "?"
        if name.lower() in seen:  # the same distribution twice on sys.path: first one wins
            continue
        seen.add(name.lower())
        found.extend((ep, dist) for ep in dist.entry_points if ep.group == GROUP)
    return found


def make_registry(allow: str | None = None, load: bool = True) -> _Registry:
    """A fresh plugin manager with the hookspecs and (when ``load``) every entry-point plugin."""
    registry = _Registry(pluggy.PluginManager(GROUP))
    registry.pm.add_hookspecs(hookspecs)
    if not load:
        return registry
    allowed = {n.strip() for n in allow.split(",") if n.strip()} if allow else None
    for ep, dist in _entry_points():
        dist_name, version = dist.metadata["Name"] or "?", dist.version
        if (allowed is not None and ep.name not in allowed) or registry.pm.has_plugin(ep.name):
            continue
        try:
            registry.pm.register(ep.load(), name=ep.name)
        except Exception as exc:  # noqa: BLE001 - a broken plugin is reported, not fatal
            registry.errors.append(LoadError(ep.name, dist_name, version, f"{type(exc).__name__}: {exc}"))
            continue
        registry.dists[ep.name] = (dist_name, version)
    return registry


@cache
def _default_registry() -> _Registry:
    return make_registry(os.environ.get("MILLPOND_PLUGINS"))


def plugin_manager() -> pluggy.PluginManager:
    """The process-wide plugin manager (loaded once)."""
    return _default_registry().pm


def load_errors() -> list[LoadError]:
    return list(_default_registry().errors)


def reset() -> None:
    """Forget the loaded plugins (tests, or after installing one in-process)."""
    _default_registry.cache_clear()


def _plugin_name(pm: pluggy.PluginManager, plugin: object) -> str:
    return pm.get_name(plugin) or repr(plugin)


def provided(pm: pluggy.PluginManager | None = None) -> list[Provided]:
    """Everything every plugin provides, checking names are unique per kind and
    classes are of the kind they are registered as."""
    pm = pm or plugin_manager()
    seen: dict[tuple[str, str], Provided] = {}
    for kind, hook_name in KINDS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            plugin = _plugin_name(pm, impl.plugin)
            mapping = impl.function()
            if mapping is None:
                continue
            if not isinstance(mapping, dict):
                raise PluginError(f"plugin {plugin!r}: {hook_name}() must return a dict of name -> class")
            for name, cls in mapping.items():
                if not (isinstance(cls, type) and issubclass(cls, BASES[kind])):
                    raise PluginError(
                        f"plugin {plugin!r} registers {kind} {name!r} as {cls!r},"
                        f" which is not a subclass of {BASES[kind].__name__}"
                    )
                item = Provided(kind, name, cls, plugin)
                other = seen.get((kind, name))
                if other is not None and other.cls is not cls:
                    raise PluginError(f"{kind} {name!r} is registered by both {other.plugin!r} and {plugin!r}")
                seen[(kind, name)] = item
    return list(seen.values())


def plugin_infos(registry: _Registry | None = None) -> list[PluginInfo]:
    """Each registered plugin with its distribution, version and what it provides."""
    registry = registry or _default_registry()
    by_plugin: dict[str, dict[str, list[str]]] = {}
    for item in provided(registry.pm):
        by_plugin.setdefault(item.plugin, {}).setdefault(item.kind, []).append(item.name)
    infos = []
    for plugin in registry.pm.get_plugins():
        name = _plugin_name(registry.pm, plugin)
        dist, version = registry.dists.get(name, (None, None))
        provides = {kind: sorted(names) for kind, names in sorted(by_plugin.get(name, {}).items())}
        infos.append(PluginInfo(name, dist, version, provides))
    return sorted(infos, key=lambda info: info.name)


def lookup(kind: str, name: str, pm: pluggy.PluginManager | None = None) -> type[Any]:
    """The class registered as ``name`` for ``kind``; a clear error listing the choices otherwise."""
    everything = provided(pm)
    items = [p for p in everything if p.kind == kind]
    for item in items:
        if item.name == name:
            return item.cls
    choices = ", ".join(sorted(p.name for p in items)) or "none"
    message = f"unknown {kind} type {name!r} (installed: {choices})"
    elsewhere = sorted(p.kind for p in everything if p.name == name)
    if elsewhere:
        message += f"; {name!r} is a {' and a '.join(elsewhere)}"
    broken = [e.name for e in load_errors()] if pm is None else []
    if broken:
        message += f"; plugins that failed to load: {', '.join(broken)} (see 'millpond plugins')"
    raise PluginError(message)


def source_class(name: str) -> type[Source]:
    return lookup("source", name)


def sink_class(name: str) -> type[Sink]:
    return lookup("sink", name)


def transform_class(name: str) -> type[Transform]:
    return lookup("transform", name)


def converter_class(name: str) -> type[Converter]:
    return lookup("converter", name)
