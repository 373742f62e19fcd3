"""The plugin manager: finds plugins and answers "which class is type X?".

Plugins (built-in ones included) are found through the ``millpond``
entry-point group, one entry point per plugin module. ``MILLPOND_PLUGINS``
(comma-separated entry-point names), when set, is an allow-list.

A plugin that fails to import does not take the others down: it is recorded
in :func:`load_errors`, shown by ``millpond plugins``, and named when a type
it might have provided is not found. A type a plugin names as
:class:`~millpond.hookspecs.Deferred` is imported only by :func:`lookup`, so a
connector whose client library is not installed costs nothing until a
pipeline uses it, and then a one-line :class:`PluginError` with the install
command.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from . import hookspecs
from .connector import Converter, Sink, Source, Transform
from .errors import PluginError
from .hookspecs import Deferred

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
    target: type[Any] | Deferred
    plugin: str

    def missing(self) -> list[str]:
        """The modules a deferred class needs that are not installed (found without importing them)."""
        if not isinstance(self.target, Deferred):
            return []
        return [module for module in self.target.needs if importlib.util.find_spec(module) is None]

    def unavailable(self) -> str | None:
        """Why this type cannot be used here, with the command that fixes it; None when it can."""
        missing = self.missing()
        if not missing:
            return None
        assert isinstance(self.target, Deferred)
        which = ", ".join(missing)
        how = f"; install it with: {self.target.install}" if self.target.install else ""
        return f"{self.kind} type {self.name!r} needs {which}, which is not installed{how}"

    def load(self) -> type[Any]:
        """The class itself, importing a deferred one now; PluginError (one line) when it cannot be."""
        if not isinstance(self.target, Deferred):
            return self.target
        reason = self.unavailable()
        if reason is not None:
            raise PluginError(reason)
        module_name, _, attr = self.target.target.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise PluginError(f"plugin {self.plugin!r}: {self.kind} type {self.name!r} ({self.target.target})"
                              f" cannot be loaded: {type(exc).__name__}: {exc}") from exc
        _check_class(self.plugin, self.kind, self.name, cls)
        return cls  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One registered plugin, as ``millpond plugins`` shows it."""

    name: str
    distribution: str | None
    version: str | None
    provides: dict[str, list[str]] = field(default_factory=dict)
    #: why some of what it provides cannot be used here, with the install command; None when all can
    unavailable: str | None = None


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


def _entry_points() -> list[tuple[EntryPoint, str, str]]:
    """Each plugin entry point with its distribution's name and version.

    ``entry_points`` keeps the first of a distribution found twice on sys.path and tells them
    apart by their folder names, so only the distributions that declare a plugin have their
    METADATA read (reading every installed distribution's cost about 0.2 s per start)."""
    found: list[tuple[EntryPoint, str, str]] = []
    for ep in entry_points(group=GROUP):
        dist = ep.dist
        found.append((ep, (dist.metadata["Name"] or "?") if dist else "?", dist.version if dist else "?"))
    return found


def make_registry(allow: str | None = None, load: bool = True) -> _Registry:
    """A fresh plugin manager with the hookspecs and (when ``load``) every entry-point plugin."""
    registry = _Registry(pluggy.PluginManager(GROUP))
    registry.pm.add_hookspecs(hookspecs)
    if not load:
        return registry
    allowed = {n.strip() for n in allow.split(",") if n.strip()} if allow else None
    for ep, dist_name, version in _entry_points():
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


def _check_class(plugin: str, kind: str, name: str, cls: object) -> None:
    if not (isinstance(cls, type) and issubclass(cls, BASES[kind])):
        raise PluginError(
            f"plugin {plugin!r} registers {kind} {name!r} as {cls!r}, which is not a subclass of {BASES[kind].__name__}"
        )


def provided(pm: pluggy.PluginManager | None = None) -> list[Provided]:
    """Everything every plugin provides, checking names are unique per kind and
    classes are of the kind they are registered as (a deferred one when it is loaded)."""
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
            for name, target in mapping.items():
                if not isinstance(target, Deferred):
                    _check_class(plugin, kind, name, target)
                item = Provided(kind, name, target, plugin)
                other = seen.get((kind, name))
                if other is not None and other.target != target:
                    raise PluginError(f"{kind} {name!r} is registered by both {other.plugin!r} and {plugin!r}")
                seen[(kind, name)] = item
    return list(seen.values())


def plugin_infos(registry: _Registry | None = None) -> list[PluginInfo]:
    """Each registered plugin with its distribution, version and what it provides."""
    registry = registry or _default_registry()
    by_plugin: dict[str, dict[str, list[str]]] = {}
    reasons: dict[str, list[str]] = {}
    for item in provided(registry.pm):
        by_plugin.setdefault(item.plugin, {}).setdefault(item.kind, []).append(item.name)
        missing = item.missing()
        if missing:
            assert isinstance(item.target, Deferred)
            reason = f"needs {', '.join(missing)}" + (f": {item.target.install}" if item.target.install else "")
            if reason not in reasons.setdefault(item.plugin, []):
                reasons[item.plugin].append(reason)
    infos = []
    for plugin in registry.pm.get_plugins():
        name = _plugin_name(registry.pm, plugin)
        dist, version = registry.dists.get(name, (None, None))
        provides = {kind: sorted(names) for kind, names in sorted(by_plugin.get(name, {}).items())}
        unavailable = "; ".join(reasons.get(name, [])) or None
        infos.append(PluginInfo(name, dist, version, provides, unavailable))
    return sorted(infos, key=lambda info: info.name)


def lookup(kind: str, name: str, pm: pluggy.PluginManager | None = None) -> type[Any]:
    """The class registered as ``name`` for ``kind``; a clear error listing the choices otherwise."""
    everything = provided(pm)
    items = [p for p in everything if p.kind == kind]
    for item in items:
        if item.name == name:
            return item.load()
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
