"""The plugin system: documented hookspecs, discovery, distributions, bad plugins."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path
from typing import Any

import pluggy
import pytest

from millpond import hookspecs, plugins
from millpond.connector import Transform
from millpond.errors import PluginError
from millpond.hookspecs import hookimpl


def test_every_hookspec_is_documented_and_prefixed() -> None:
    specs = [
        (name, fn) for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
        if hasattr(fn, "millpond_spec")
    ]
    assert specs, "no hookspecs found"
    for name, fn in specs:
        assert name.startswith("millpond_"), name
        doc = inspect.getdoc(fn) or ""
        assert len(doc) > 20, f"hookspec {name} needs a docstring saying what it returns and when it is called"
    # every kind the registry knows has a hookspec
    assert {hook for hook in plugins.KINDS.values()} <= {name for name, _ in specs}


def test_builtins_register_through_entry_points() -> None:
    infos = {info.name: info for info in plugins.plugin_infos()}
    assert infos["converters"].distribution == "millpond"
    assert infos["converters"].provides == {"converter": ["bytes", "json", "string"]}
    assert infos["transforms"].version is not None
    assert infos["transforms"].provides["transform"] == ["drop", "filter", "mask", "rename", "route", "timestamp"]


def _fake_dist(tmp_path: Path, name: str, entry_points: dict[str, str]) -> None:
    info = tmp_path / f"{name}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[millpond]\n{lines}\n")


@pytest.fixture
def fake_plugins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "mp_fake_good.py").write_text(textwrap.dedent("""
        from millpond.connector import Transform
        from millpond.hookspecs import hookimpl

        class Upper(Transform):
            def apply(self, record):
                return [record]

        @hookimpl
        def millpond_transforms():
            return {"upper": Upper}
    """))
    _fake_dist(tmp_path, "mp-fake-good", {"fake_good": "mp_fake_good"})
    _fake_dist(tmp_path, "mp-fake-broken", {"fake_broken": "mp_fake_module_that_does_not_exist"})
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_discovery_distribution_and_broken_plugins(fake_plugins: Path) -> None:
    registry = plugins.make_registry()
    infos = {info.name: info for info in plugins.plugin_infos(registry)}
    assert infos["fake_good"].distribution == "mp-fake-good"
    assert infos["fake_good"].version == "1.2.3"
    assert infos["fake_good"].provides == {"transform": ["upper"]}
    (error,) = registry.errors
    assert error.name == "fake_broken" and error.distribution == "mp-fake-broken"
    assert "ModuleNotFoundError" in error.error
    assert "converters" in infos  # the others still load


def test_allow_list(fake_plugins: Path) -> None:
    registry = plugins.make_registry(allow="fake_good, converters")
    names = {info.name for info in plugins.plugin_infos(registry)}
    assert names == {"fake_good", "converters"}
    assert registry.errors == []


def _pm_with(*objects: object) -> pluggy.PluginManager:
    registry = plugins.make_registry(load=False)
    for i, obj in enumerate(objects):
        registry.pm.register(obj, name=f"p{i}")
    return registry.pm


class NoOp(Transform):
    def apply(self, record: Any) -> Any:
        return [record]


def test_duplicate_names_are_refused() -> None:
    class A:
        @hookimpl
        def millpond_transforms(self) -> dict[str, type[Transform]]:
            return {"noop": NoOp}

    class B:
        @hookimpl
        def millpond_transforms(self) -> dict[str, type[Transform]]:
            class Other(NoOp):
                pass

            return {"noop": Other}

    with pytest.raises(PluginError, match="'noop' is registered by both"):
        plugins.provided(_pm_with(A(), B()))


def test_wrong_class_kind_is_refused() -> None:
    class Bad:
        @hookimpl
        def millpond_sources(self) -> dict[str, type]:
            return {"oops": NoOp}

    with pytest.raises(PluginError, match="not a subclass of Source"):
        plugins.provided(_pm_with(Bad()))


def test_unknown_type_lists_installed() -> None:
    with pytest.raises(PluginError, match=r"unknown transform type 'nope' \(installed: drop, filter"):
        plugins.transform_class("nope")


def test_unknown_type_says_when_the_name_is_another_kind() -> None:
    with pytest.raises(PluginError, match="unknown source type 'mask'.*'mask' is a transform"):
        plugins.source_class("mask")
