"""C speedups; everything else about the build is in pyproject.toml.

Every extension is optional: without a C compiler (or without Python's
headers) millpond installs and runs on its pure-Python paths, and the build
says so once, naming what was not built. ``millpond --version`` shows which
paths an install runs; tests/test_speedups.py fails under CI=true if they
were not built, so CI never measures the slow path by accident.
"""

from __future__ import annotations

import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import BaseError, CCompilerError

#: what a missing or failing compiler raises (BaseError is distutils' DistutilsError)
BUILD_ERRORS = (CCompilerError, BaseError, OSError)

FALLBACK = (
    "millpond: C speedups not built ({names}): {reason}. millpond will run on its pure-Python "
    "paths (same records, slower); install a C compiler and the Python headers, then reinstall "
    "to build them. `millpond --version` shows which paths run."
)


class OptionalBuildExt(build_ext):
    """Builds every extension it can and reports the ones it could not in one message."""

    def run(self) -> None:
        self._failed: list[tuple[str, str]] = []
        try:
            super().run()
        except BUILD_ERRORS as exc:
            # no usable compiler at all: nothing was built
            self._failed = [(ext.name, str(exc)) for ext in self.extensions]
        if self._failed:
            names = ", ".join(name for name, _ in self._failed)
            reason = " ".join(self._failed[0][1].split()) or "the compiler failed"
            reason = reason if len(reason) <= 200 else reason[:200] + "..."
            print(FALLBACK.format(names=names, reason=reason), file=sys.stderr)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except BUILD_ERRORS as exc:
            self._failed.append((ext.name, str(exc)))


setup(
    ext_modules=[
        # optional: an editable install then skips copying what was not built
        Extension("millpond.log._columns", ["core/log/_columns.c"], optional=True),
        Extension("millpond.connectors.postgres._decode", ["connectors/postgres/_decode.c"], optional=True),
        Extension("millpond.connectors.postgres._sink_scan", ["connectors/postgres/_sink_scan.c"], optional=True),
        Extension("millpond._jsonlines", ["core/_jsonlines.c"], optional=True),
        Extension("millpond.audit._canon", ["core/audit/_canon.c", "core/audit/_sha256.c"],
                  depends=["core/audit/_sha256.h"], optional=True),
    ],
    cmdclass={"build_ext": OptionalBuildExt},
)
