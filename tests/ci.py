"""The one reading of the CI flag and the pure-Python switch that every test shares.

``.ci/run`` exports ``CI=true`` (as CI services do), so a developer running it
gets CI's rule: a test that needs a server or a compiled speedup fails instead
of skipping. ``MILLPOND_PURE_PYTHON=1`` turns the C speedups off on purpose
(``make test``'s second lane); then their own tests skip, in CI too.
"""

from __future__ import annotations

import os

from millpond import speedups


def in_ci() -> bool:
    """True under ``CI=true`` (or 1/yes): missing servers and speedups fail, never skip."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def speedups_required() -> bool:
    """Must the C speedups be there? In CI, unless the run disabled them on purpose."""
    return in_ci() and not speedups.disabled()


def need_speedup(loaded: bool, what: str) -> None:
    """Skip (saying why) a test of a C speedup that is not built — or fail, when it must be there."""
    if loaded:
        return
    import pytest

    if speedups_required():
        pytest.fail(f"{what} is not built, and under CI=true the C speedups must be")
    pytest.skip(f"{what} is not built here ({'switched off by MILLPOND_PURE_PYTHON' if speedups.disabled() else 'no compiler at install'}); its Python fallback is tested")
