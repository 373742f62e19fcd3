"""Packaging stays consistent: every package folder is installed, entry points resolve,
and the plugin distribution declares itself the way third-party plugins must."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path
from typing import Any

import millpond
from millpond import plugins, speedups

REPO = Path(__file__).resolve().parents[1]


def _pyproject(path: Path = REPO / "pyproject.toml") -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def _package_dirs(root: Path, prefix: str) -> set[str]:
    found = set()
    for directory in [root, *root.rglob("*")]:
        if directory.is_dir() and "__pycache__" not in directory.parts and any(directory.glob("*.py")):
            found.add(".".join((prefix, *directory.relative_to(root).parts)))
    return found


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(_pyproject()["tool"]["setuptools"]["packages"])
    folders = _package_dirs(REPO / "core", "millpond") | _package_dirs(REPO / "connectors", "millpond.connectors")
    missing = sorted(folders - listed)
    assert not missing, f"add these to [tool.setuptools] packages in pyproject.toml: {missing}"
    for package in listed:
        importlib.import_module(package)


def test_version_is_one_number() -> None:
    assert _pyproject()["project"]["version"] == millpond.__version__


def test_console_script_and_entry_points_resolve() -> None:
    project = _pyproject()["project"]
    module, _, attr = project["scripts"]["millpond"].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    registered = {info.name for info in plugins.plugin_infos()}
    for name, target in project["entry-points"]["millpond"].items():
        module_obj = importlib.import_module(target)
        hooks = [n for n in plugins.KINDS.values() if hasattr(module_obj, n)]
        assert hooks, f"entry point {name} = {target} implements no millpond_ hook"
        assert name in registered, f"entry point {name!r} is declared but not registered (reinstall: pip install -e .)"


def test_plugin_distribution_declares_its_entry_point() -> None:
    for pyproject in (REPO / "plugins").glob("*/pyproject.toml"):
        project = _pyproject(pyproject)["project"]
        assert project["entry-points"]["millpond"], f"{pyproject}: no [project.entry-points.millpond]"
        assert any(dep.startswith("millpond") for dep in project["dependencies"]), pyproject
        assert (pyproject.parent / "tests").is_dir(), f"{pyproject.parent} has no tests"


def test_setup_py_builds_every_speedup_millpond_reports() -> None:
    declared = dict(re.findall(r'Extension\("([\w.]+)", \["([\w/.]+)"', (REPO / "setup.py").read_text()))
    assert sorted(declared) == sorted(speedups.EXTENSIONS.values())
    package_dir = _pyproject()["tool"]["setuptools"]["package-dir"]
    for module, source in declared.items():
        assert (REPO / source).is_file(), source
        # the C source sits in the folder of the package the module is installed into
        package = module.rpartition(".")[0]
        key = max((p for p in package_dir if package == p or package.startswith(p + ".")), key=len)
        folder = Path(package_dir[key], *package.split(".")[len(key.split(".")):])
        assert Path(source).parent == folder, f"{module} built from {source}, not from {folder}"


def test_type_information_is_package_data() -> None:
    patterns = _pyproject()["tool"]["setuptools"]["package-data"]["*"]
    assert {"py.typed", "*.pyi"} <= set(patterns)
    assert (REPO / "core" / "py.typed").is_file()
    stubs = list((REPO / "core").rglob("*.pyi")) + list((REPO / "connectors").rglob("*.pyi"))
    assert stubs, "the C speedup's stub"
    requires = _pyproject()["build-system"]["requires"]
    assert any(re.fullmatch(r"setuptools>=(\d+)", r) and int(r.split(">=")[1]) >= 69 for r in requires), (
        "setuptools before 69 leaves py.typed and *.pyi out of the wheel"
    )


def test_every_builtin_connector_loads_where_the_extras_are_installed() -> None:
    """A typo in a Deferred target would otherwise show only when a pipeline uses that type."""
    for item in plugins.provided():
        if item.plugin in ENTRY_POINT_NAMES:
            assert issubclass(item.load(), plugins.BASES[item.kind]), item


ENTRY_POINT_NAMES = set(_pyproject()["project"]["entry-points"]["millpond"])
