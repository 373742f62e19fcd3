"""C speedups; everything else about the build is in pyproject.toml.

Both extensions are optional: without a C compiler millpond installs and runs
on its pure-Python paths (tests/test_speedups.py fails under CI=true if they
were not built, so CI never measures the slow path by accident).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension("millpond.log._columns", ["core/log/_columns.c"], optional=True),
        Extension("millpond.connectors.postgres._decode", ["connectors/postgres/_decode.c"], optional=True),
    ]
)
