"""The C speedups (setup.py) are built wherever a compiler is, and always in CI;
``MILLPOND_PURE_PYTHON=1`` switches them off, and ``millpond --version`` says which path runs.

They are optional at install time so millpond still installs without a C
compiler (the pure-Python paths give the same records, slower). CI must
measure and test the compiled paths, so there a missing build fails.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import subprocess
import sys

import pytest

import millpond
from millpond import speedups
from tests.ci import speedups_required

MODULES = ["millpond.log._columns", "millpond.connectors.postgres._decode", "millpond._jsonlines",
           "millpond.audit._canon", "millpond.connectors.postgres._sink_scan"]


@pytest.mark.parametrize("module", MODULES)
def test_speedup_is_built(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        if speedups_required():
            pytest.fail(f"{module} was not built ({exc}); is a C compiler installed? see setup.py")
        pytest.skip(reason=f"{module} not built ({exc}); CI=true fails instead")


def test_every_speedup_is_reported() -> None:
    assert sorted(speedups.EXTENSIONS.values()) == sorted(MODULES)


def _in_child(code: str, pure: bool) -> str:
    env = {k: v for k, v in os.environ.items() if k != speedups.ENV}
    if pure:
        env[speedups.ENV] = "1"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("pure", [False, True])
def test_the_switch_reaches_both_import_sites_and_the_version(pure: bool) -> None:
    built = {name: importlib.util.find_spec(module) is not None for name, module in speedups.EXTENSIONS.items()}
    out = _in_child(
        "from millpond.log import batch; from millpond.connectors.postgres import decoding;"
        "from millpond import transforms; from millpond.audit import chain; from millpond.cli import main;"
        "from millpond.connectors.postgres import sink_envelope;"
        "print(batch._columns is not None, decoding._scan is not None, transforms._jsonlines is not None,"
        " chain.canonical_in_c(), sink_envelope.scan_rows is not None);"
        "main(['--version'])",
        pure,
    )
    active, version = out.splitlines()
    assert active == " ".join(str(built[name] and not pure) for name in ("columns", "pgoutput", "jsonlines", "canon", "pgsink"))

    def state(name: str) -> str:
        return ("off" if pure else "C") if built[name] else "python"

    speeds = (f"columns={state('columns')}, pgoutput={state('pgoutput')}, jsonlines={state('jsonlines')}, "
              f"canon={state('canon')}, pgsink={state('pgsink')}")
    assert version == f"millpond {millpond.__version__} (speedups: {speeds})"
