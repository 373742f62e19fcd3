"""What a user installs behaves like the checkout.

The wheel and the sdist are built from a copy of the checkout (offline: no
build isolation, the test venv's setuptools), then installed as a user would
into fresh virtual environments outside it, where the quickstart runs from a
temporary directory and ``millpond --version`` / ``millpond plugins`` are read:

- the wheel with every extra: the compiled speedups, every connector available;
- the sdist where a compiler is: it builds the speedups (dependencies borrowed
  from the test venv to keep this short; the wheel's venv installs them for real);
- the sdist where no compiler is (``CC=false``): the wheel builds anyway, the
  build says so once, and that wheel installed WITHOUT extras runs the file
  quickstart on the pure-Python paths while ``millpond plugins`` lists the
  Postgres and Cassandra connectors as unavailable with their pip command.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import time
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

import millpond
from millpond import speedups

REPO = Path(__file__).resolve().parents[1]
#: what the build reads (the sdist must carry the same)
SOURCES = ("pyproject.toml", "setup.py", "README.md", "core", "connectors")
VERSION = millpond.__version__
EXT_SUFFIX = sysconfig.get_config_var("EXT_SUFFIX")
#: extension module -> its (first) C source (setup.py's list, read independently of millpond.speedups)
C_SOURCES = dict(re.findall(r'Extension\("([\w.]+)", \["([\w/.]+)"', (REPO / "setup.py").read_text()))
#: every C file setup.py names (sources and headers an extension depends on)
C_FILES = set(re.findall(r'"((?:core|connectors)/[\w/]+\.[ch])"', (REPO / "setup.py").read_text()))
FALLBACK_SAID = "millpond: C speedups not built"

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Dists:
    wheel: Path
    sdist: Path


def run(args: list[str | Path], timeout: float = 600, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """A command with a clean environment: no switch, no venv or path of the test run leaks in."""
    env = {k: v for k, v in os.environ.items() if k not in (speedups.ENV, "PYTHONPATH", "VIRTUAL_ENV")}
    env.update(kwargs.pop("env", {}))  # type: ignore[call-overload]
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout, env=env,
                          **kwargs)  # type: ignore[call-overload,no-any-return]


def ok(done: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert done.returncode == 0, f"{done.args}: exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def dists(tmp_path_factory: pytest.TempPathFactory) -> Dists:
    root = tmp_path_factory.mktemp("dists")
    src, out = root / "src", root / "dist"
    src.mkdir()
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", "*.so", ".*")
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        else:
            shutil.copy(REPO / name, src / name)
    ok(run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src]))
    (wheel,) = out.glob("*.whl")
    (sdist,) = out.glob("*.tar.gz")
    return Dists(wheel, sdist)


def fresh_venv(root: Path, borrow: bool = False) -> Path:
    """A new venv; with ``borrow`` it also sees the test venv's packages (a .pth line), for ``--no-deps``."""
    ok(run([sys.executable, "-m", "venv", root]))
    if borrow:
        purelib = ok(run([root / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]))
        Path(purelib.stdout.strip(), "_borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return root


def pip_install(venv: Path, *args: str | Path) -> float:
    started = time.monotonic()
    ok(run([venv / "bin" / "python", "-m", "pip", "install", "-q", *args], cwd=venv))
    return time.monotonic() - started


def millpond_cmd(venv: Path, *args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run([venv / "bin" / "millpond", *args], timeout=180, cwd=cwd)


def assert_installed_here(venv: Path) -> None:
    where = ok(run([venv / "bin" / "python", "-c", "import millpond; print(millpond.__file__)"], cwd=venv)).stdout
    assert where.startswith(str(venv)), f"millpond must come from the fresh venv, not {where}"


def run_quickstart(venv: Path, workdir: Path) -> float:
    """configs/quickstart.yaml and its input in ``workdir``; run to idle; every line comes out once."""
    (workdir / "configs").mkdir(parents=True)
    shutil.copy(REPO / "configs" / "quickstart.yaml", workdir / "configs")
    shutil.copytree(REPO / "configs" / "quickstart-input", workdir / "configs" / "quickstart-input")
    started = time.monotonic()
    done = ok(millpond_cmd(venv, "run", "configs/quickstart.yaml", "--until-idle", cwd=workdir))
    elapsed = time.monotonic() - started
    assert "Traceback" not in done.stderr
    lines_in = Counter(line for f in (workdir / "configs" / "quickstart-input").iterdir()
                       for line in f.read_text().splitlines() if line)
    lines_out = Counter(line for f in (workdir / "out").glob("*.txt") for line in f.read_text().splitlines())
    assert lines_out == lines_in
    return elapsed


def plugin_rows(venv: Path, cwd: Path) -> dict[str, str]:
    done = ok(millpond_cmd(venv, "plugins", cwd=cwd))
    assert not done.stderr, done.stderr  # no plugin failed to load
    return {line.split()[0]: line for line in done.stdout.splitlines()[1:]}


def speedups_line(state: str) -> str:
    states = ", ".join(f"{name}={state}" for name in speedups.EXTENSIONS)
    return f"millpond {VERSION} (speedups: {states})"


def test_the_wheel_carries_the_compiled_speedups_and_the_type_information(dists: Dists) -> None:
    names = set(zipfile.ZipFile(dists.wheel).namelist())
    for module in C_SOURCES:
        assert module.replace(".", "/") + EXT_SUFFIX in names, f"{module} is not compiled into the wheel"
    assert {"millpond/py.typed", "millpond/log/_columns.pyi"} <= names
    assert not [n for n in names if n.endswith(".c")]
    assert not dists.wheel.name.endswith("-none-any.whl"), "a wheel with extensions is platform-specific"
    assert sorted(C_SOURCES) == sorted(speedups.EXTENSIONS.values())  # --version reports every one


def test_the_sdist_carries_what_builds_them(dists: Dists) -> None:
    prefix = f"millpond-{VERSION}/"
    names = {n.removeprefix(prefix) for n in tarfile.open(dists.sdist).getnames()}
    assert {"setup.py", "pyproject.toml", "README.md", "core/py.typed", "core/log/_columns.pyi"} <= names
    assert set(C_SOURCES.values()) <= C_FILES <= names


def test_the_wheel_with_every_extra_runs_the_quickstart_with_the_speedups(dists: Dists, tmp_path: Path) -> None:
    venv = fresh_venv(tmp_path / "venv")
    seconds = pip_install(venv, f"{dists.wheel}[all]")
    assert_installed_here(venv)
    work = tmp_path / "work"
    assert ok(millpond_cmd(venv, "--version", cwd=tmp_path)).stdout.strip() == speedups_line("C")
    rows = plugin_rows(venv, tmp_path)
    assert {"cassandra", "converters", "file", "postgres", "transforms"} <= set(rows)
    assert not [row for row in rows.values() if "unavailable" in row]
    quickstart = run_quickstart(venv, work)
    print(f"wheel {dists.wheel.stat().st_size} bytes; install [all] {seconds:.1f}s; quickstart {quickstart:.1f}s")


def test_the_sdist_builds_the_speedups_where_a_compiler_is(dists: Dists, tmp_path: Path) -> None:
    venv = fresh_venv(tmp_path / "venv", borrow=True)
    pip_install(venv, "--no-deps", dists.sdist)  # builds in isolation, as a user's pip does
    assert_installed_here(venv)
    assert ok(millpond_cmd(venv, "--version", cwd=tmp_path)).stdout.strip() == speedups_line("C")
    run_quickstart(venv, tmp_path / "work")


@pytest.fixture(scope="module")
def wheel_without_compiler(dists: Dists, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The sdist built into a wheel where the C compiler fails (``CC=false``), and the build's output."""
    out = tmp_path_factory.mktemp("no-compiler")
    done = ok(run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation",
                   "--wheel-dir", out, dists.sdist], env={"CC": "false"}, cwd=out))
    (wheel,) = out.glob("*.whl")
    return wheel, done.stdout + done.stderr


def test_without_a_compiler_the_sdist_falls_back_and_says_so_once(wheel_without_compiler: tuple[Path, str]) -> None:
    wheel, output = wheel_without_compiler
    assert output.count(FALLBACK_SAID) == 1, output[-3000:]
    said = next(line for line in output.splitlines() if FALLBACK_SAID in line)
    for module in C_SOURCES:
        assert module in said
    assert "pure-Python" in said
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.endswith(EXT_SUFFIX)]
    assert "millpond/log/batch.py" in names


def test_without_extras_the_file_pipeline_runs_and_the_drivers_are_listed_unavailable(
    wheel_without_compiler: tuple[Path, str], tmp_path: Path
) -> None:
    wheel, _ = wheel_without_compiler
    venv = fresh_venv(tmp_path / "venv")
    pip_install(venv, wheel)  # `pip install millpond`: no extras
    assert_installed_here(venv)
    for driver in ("asyncpg", "cassandra"):
        missing = run([venv / "bin" / "python", "-c", f"import {driver}"], cwd=tmp_path)
        assert missing.returncode != 0, f"{driver} is installed; the test needs a venv without the extras"
    version = ok(millpond_cmd(venv, "--version", cwd=tmp_path)).stdout.strip()
    assert version == speedups_line("python")
    rows = plugin_rows(venv, tmp_path)
    assert rows["postgres"].endswith("(unavailable, needs asyncpg: pip install 'millpond[postgres]')")
    assert rows["cassandra"].endswith("(unavailable, needs cassandra: pip install 'millpond[cassandra]')")
    assert "unavailable" not in rows["file"]
    run_quickstart(venv, tmp_path / "work")
    # only a pipeline that uses a missing driver fails, with one line per connector and no traceback
    shutil.copy(REPO / "configs" / "postgres-cdc.yaml", tmp_path / "work" / "configs")
    done = millpond_cmd(venv, "run", "configs/postgres-cdc.yaml", cwd=tmp_path / "work")
    assert done.returncode == 1 and "Traceback" not in done.stderr
    problems = [line for line in done.stderr.splitlines() if "which is not installed" in line]
    assert len(problems) == 2, done.stderr
    assert all(line.endswith("install it with: pip install 'millpond[postgres]'") for line in problems)
