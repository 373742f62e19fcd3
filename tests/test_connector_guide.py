"""docs/writing-a-connector.md, followed word for word.

Every fenced block whose first line is ``# <path>`` is written to that path in
an empty folder; every ``sh`` block is run there, line by line, in a fresh
virtual environment that has millpond installed from this checkout. The
plugin the guide builds is pip-installed, runs a pipeline, and passes its own
tests, which use ``millpond.testing``'s contract checks.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
GUIDE = REPO / "docs" / "writing-a-connector.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```$", re.S | re.M)

pytestmark = pytest.mark.slow


def blocks() -> list[tuple[str, str]]:
    return [(m[1], m[2]) for m in BLOCK.finditer(GUIDE.read_text())]


def test_the_guide_names_every_file_it_shows() -> None:
    files = [body.splitlines()[0] for lang, body in blocks() if lang in ("python", "toml", "yaml")]
    assert all(first.startswith("# ") for first in files), files
    assert any(lang == "sh" for lang, _ in blocks())


def test_following_the_guide_builds_a_working_plugin(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    # millpond's own dependencies are borrowed from the test venv (a .pth line) to keep this fast;
    # millpond itself and the guide's plugin are installed into the fresh venv with pip.
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             check=True, capture_output=True, text=True).stdout.strip()
    Path(purelib, "_borrowed_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    checkout = tmp_path / "millpond-src"
    ignore = shutil.ignore_patterns("build", "*.egg-info", "__pycache__", ".*", "*.so")
    for name in ("core", "connectors"):
        shutil.copytree(REPO / name, checkout / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, checkout / name)
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(checkout)],
                          capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-3000:]

    work = tmp_path / "work"
    work.mkdir()
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    outputs: dict[str, str] = {}  # command line -> its stdout
    for lang, body in blocks():
        first = body.splitlines()[0]
        if lang in ("python", "toml", "yaml") and first.startswith("# "):
            path = work / first[2:].strip()
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(body)
        elif lang == "sh":
            for line in body.splitlines():
                done = subprocess.run(line, shell=True, cwd=work, env=env, capture_output=True, text=True,
                                      timeout=300)
                assert done.returncode == 0, f"$ {line}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
                outputs[line] = done.stdout


    def out(prefix: str) -> str:
        return next(text for line, text in outputs.items() if line.startswith(prefix))

    row = next(line for line in out("millpond plugins").splitlines() if line.startswith("example "))
    assert row.split()[1:3] == ["millpond-example", "0.1.0"] and "source: csv" in row and "sink: sqlite" in row
    assert out("python -c").strip() == "3", "the guide promises 3 rows in users.db"
    assert " passed" in out("python -m pytest") and "failed" not in out("python -m pytest")
    again = subprocess.run("millpond run pipeline.yaml --until-idle", shell=True, cwd=work, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    count = subprocess.run([str(python), "-c", "import sqlite3; print(sqlite3.connect('users.db')"
                            ".execute('SELECT count(*) FROM users').fetchone()[0])"],
                           cwd=work, capture_output=True, text=True, check=True)
    assert count.stdout.strip() == "3"
