"""The plugin system: documented hookspecs, discovery, distributions, bad plugins."""

from __future__ import annotations

import inspect
import shutil
import subprocess
import sys
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
    # the folder name escapes '-' as a wheel's does (PEP 427); discovery reads a distribution's name from it
    info = tmp_path / f"{name.replace('-', '_')}-1.2.3.dist-info"
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


# -- deferred classes: a connector whose client library is missing ------------------

REPO = Path(__file__).resolve().parents[1]


class Lazy:
    """A plugin naming its classes without importing them, as the Postgres and Cassandra plugins do."""

    @hookimpl
    def millpond_transforms(self) -> dict[str, type[Transform] | hookspecs.Deferred]:
        return {
            "later": hookspecs.Deferred(f"{__name__}:NoOp"),
            "never": hookspecs.Deferred(f"{__name__}:NoOp", ("mp_no_such_driver",), "pip install 'mp[never]'"),
            "wrong": hookspecs.Deferred(f"{__name__}:Lazy"),
        }


def test_a_deferred_class_is_imported_when_looked_up_and_checked_then() -> None:
    pm = _pm_with(Lazy())
    assert plugins.lookup("transform", "later", pm) is NoOp
    with pytest.raises(PluginError, match="registers transform 'wrong' as .*not a subclass of Transform"):
        plugins.lookup("transform", "wrong", pm)


def test_a_missing_client_library_is_one_line_with_the_install_command() -> None:
    pm = _pm_with(Lazy())
    with pytest.raises(PluginError) as caught:
        plugins.lookup("transform", "never", pm)
    assert str(caught.value) == (
        "transform type 'never' needs mp_no_such_driver, which is not installed;"
        " install it with: pip install 'mp[never]'"
    )
    registry = plugins.make_registry(load=False)
    registry.pm.register(Lazy(), name="lazy")
    (info,) = plugins.plugin_infos(registry)
    assert info.provides == {"transform": ["later", "never", "wrong"]}
    assert info.unavailable == "needs mp_no_such_driver: pip install 'mp[never]'"


def _without_drivers(code: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``code`` where asyncpg and cassandra-driver cannot be imported (as without the extras).

    ``sys.modules[name] = None`` is what the import system itself uses for "not importable":
    ``import`` raises ImportError and ``importlib.util.find_spec`` answers None.
    """
    prelude = "import sys\nfor m in ('asyncpg', 'cassandra'): sys.modules[m] = None\n"
    return subprocess.run([sys.executable, "-c", prelude + code, *args], capture_output=True, text=True,
                          timeout=120, cwd=cwd)


def test_without_the_extras_file_pipelines_resolve_and_plugins_lists_what_is_missing(tmp_path: Path) -> None:
    done = _without_drivers(
        "from millpond import plugins\n"
        "assert plugins.source_class('file').__name__ == 'FileSource'\n"
        "assert plugins.sink_class('file').__name__ == 'FileSink'\n"
        "from millpond.cli import main\n"
        "code = main(['plugins'])\n"
        "print('DRIVERS', sorted(m for m in sys.modules if m.split('.')[0] in ('asyncpg', 'cassandra')"
        " and sys.modules[m] is not None))\n"
        "raise SystemExit(code)\n"
    )
    assert done.returncode == 0, done.stderr
    assert "DRIVERS []" in done.stdout  # resolving the file connector imported neither driver
    rows = {line.split()[0]: line for line in done.stdout.splitlines()[1:] if line and line[0].isalpha()}
    assert rows["postgres"].endswith(
        "sink: postgres; source: postgres-cdc (unavailable, needs asyncpg: pip install 'millpond[postgres]')")
    assert rows["cassandra"].endswith(
        "sink: cassandra (unavailable, needs cassandra: pip install 'millpond[cassandra]')")
    assert "unavailable" not in rows["file"]


def test_without_the_extras_only_a_pipeline_that_uses_postgres_fails_with_one_line(tmp_path: Path) -> None:
    pipeline = tmp_path / "pg.yaml"
    shutil.copy(REPO / "configs" / "postgres-cdc.yaml", pipeline)
    for command in ("validate", "run"):
        done = _without_drivers("from millpond.cli import main; raise SystemExit(main(sys.argv[1:]))",
                                command, str(pipeline), cwd=tmp_path)
        assert done.returncode == 1, (command, done.stdout, done.stderr)
        out = done.stdout + done.stderr
        assert "Traceback" not in out
        problems = [line for line in out.splitlines() if "needs asyncpg" in line]
        assert problems, (command, out)
        assert all(line.endswith("install it with: pip install 'millpond[postgres]'") for line in problems)
