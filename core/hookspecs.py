"""Hook specifications: the contract between millpond and its plugins.

A plugin is a module (or any object) with functions named like these hooks,
decorated with ``millpond.hookspecs.hookimpl``, and registered through the
``millpond`` entry-point group of its distribution::

    [project.entry-points.millpond]
    syslog = "millpond_syslog"

The built-in connectors, transforms and converters register through the very
same hooks and group, so a third-party plugin has no lesser access. Every
hook takes no arguments and returns a mapping from the name used in pipeline
YAML (``type: syslog``) to a class; a name must be unique per kind across all
installed plugins, and each class must subclass the matching base in
``millpond.connector``. Hooks are called whenever the registry is asked (at
validation, at start-up, by ``millpond plugins``), so they must be cheap and
free of side effects: import heavy client libraries inside the connector, not
at plugin import.

A connector that needs a client library the user may not have installed
(an optional extra) names its class with :class:`Deferred` instead of
importing it::

    return {"postgres": Deferred("millpond.connectors.postgres.sink:PostgresSink",
                                 needs=("asyncpg",), install="pip install 'millpond[postgres]'")}

Nothing is imported until a pipeline uses that type, so a file-to-file
pipeline runs without asyncpg; when a needed module is missing,
``millpond plugins`` lists the type as unavailable with the install command and
only a pipeline that uses it fails, with that one line.

``MILLPOND_PLUGINS=name,name`` restricts which entry points load; a plugin
that fails to import is reported by ``millpond plugins`` and does not stop the
others from loading.
"""

from __future__ import annotations

from dataclasses import dataclass

import pluggy

from .connector import Converter, Sink, Source, Transform

hookspec = pluggy.HookspecMarker("millpond")
hookimpl = pluggy.HookimplMarker("millpond")


@dataclass(frozen=True, slots=True)
class Deferred:
    """A class a hook names without importing it: ``target`` is ``"package.module:Class"``.

    ``needs`` are the top-level modules it imports (``asyncpg``); they are looked
    up without being imported to tell whether the type is available.
    ``install`` is the command that makes it so, quoted in the error and by
    ``millpond plugins``.
    """

    target: str
    needs: tuple[str, ...] = ()
    install: str | None = None


@hookspec
def millpond_sources() -> dict[str, type[Source] | Deferred]:  # type: ignore[empty-body]
    """Source connector classes by type name, e.g. ``{"file": FileSource}``.

    The YAML ``type:`` of a ``kind: source`` connector is looked up here. The
    class's ``config_model`` (a ``ConnectorConfig`` subclass) validates its
    ``config:`` block, and its errors are reported at
    ``connectors[i].config.<field>`` with their line. The class's
    ``guarantee`` is the strongest delivery guarantee it can give; a pipeline
    asking for more is refused, quoting the optional ``guarantee_reason``
    class attribute.
    """


@hookspec
def millpond_sinks() -> dict[str, type[Sink] | Deferred]:  # type: ignore[empty-body]
    """Sink connector classes by type name, e.g. ``{"postgres": PostgresSink}``.

    Same rules as ``millpond_sources``: ``config_model`` validates ``config:``,
    ``guarantee`` (and ``guarantee_reason``) bound what a pipeline may ask for.
    """


@hookspec
def millpond_transforms() -> dict[str, type[Transform] | Deferred]:  # type: ignore[empty-body]
    """Transform classes by type name, used in a connector's ``transforms:`` chain.

    Each is built once per connector task with its validated ``config_model``
    and then called per record; it raises ``RecordError`` for a record it
    cannot handle, and the connector's error policy decides what happens.
    """


@hookspec
def millpond_converters() -> dict[str, type[Converter] | Deferred]:  # type: ignore[empty-body]
    """Converter classes by name (``json``, ``string``, ``bytes`` are built in).

    A connector's ``converter: {key: NAME, value: NAME}`` picks them; they are
    constructed without arguments and turn values into the bytes the log
    stores, and back.
    """
