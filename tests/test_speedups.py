"""The C speedups (setup.py) are built wherever a compiler is, and always in CI.

They are optional at install time so millpond still installs without a C
compiler (the pure-Python paths give the same records, slower). CI must
measure and test the compiled paths, so there a missing build fails.
"""

from __future__ import annotations

import importlib
import os

import pytest

MODULES = ["millpond.log._columns", "millpond.connectors.postgres._decode"]


@pytest.mark.parametrize("module", MODULES)
def test_speedup_is_built(module: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{module} was not built ({exc}); is a C compiler installed? see setup.py")
        pytest.skip(reason=f"{module} not built ({exc}); CI=true fails instead")
