"""Which C speedups this process runs, and the switch that turns them off.

Five hot paths have an optional C twin built by ``setup.py``: building a record
batch from columns (``millpond.log._columns``), scanning pgoutput inserts
(``millpond.connectors.postgres._decode``), masking fields of JSON lines
(``millpond._jsonlines``, the mask transform's batch form), the audit chain's
canonical form of a batch's records and its SHA-256 (``millpond.audit._canon``,
what appends and verify hash), and the Postgres sink's scan of a poll's CDC
values for plain rows (``millpond.connectors.postgres._sink_scan``). Each gives the same bytes and records as the Python path, only faster, so a build without a compiler still
works; ``millpond --version`` says which path is running so nobody measures
the slow one by accident.

``MILLPOND_PURE_PYTHON=1`` makes the modules that import a speedup behave as
if it were not built (they call :func:`refuse` just before the import), so the
pure-Python paths can be tested on purpose where the C ones are installed.
"""

from __future__ import annotations

import importlib
import os

ENV = "MILLPOND_PURE_PYTHON"

#: short name -> the extension module itself (imported only by its user, never here)
EXTENSIONS: dict[str, str] = {
    "columns": "millpond.log._columns",
    "pgoutput": "millpond.connectors.postgres._decode",
    "jsonlines": "millpond._jsonlines",
    "canon": "millpond.audit._canon",
    "pgsink": "millpond.connectors.postgres._sink_scan",
}


def disabled() -> bool:
    """True when ``MILLPOND_PURE_PYTHON`` asks for the pure-Python paths."""
    return os.environ.get(ENV, "").strip().lower() not in ("", "0", "false", "no")


def refuse() -> None:
    """Called right before a speedup's import: raise ImportError when they are switched off."""
    if disabled():
        raise ImportError(f"C speedups switched off by {ENV}")


def status() -> dict[str, str]:
    """Each speedup's state: ``C``, ``python`` (not built) or ``off`` (switched off).

    Only the C extension modules are imported to find out, never their users:
    the pgoutput user imports asyncpg, which an install without the
    ``postgres`` extra does not have.
    """
    states = {}
    for name, module in EXTENSIONS.items():
        try:
            importlib.import_module(module)
        except ImportError:
            states[name] = "python"
        else:
            states[name] = "off" if disabled() else "C"
    return states


def describe() -> str:
    """``columns=C, pgoutput=C, jsonlines=C, canon=C, pgsink=C`` — what ``millpond --version`` appends."""
    return ", ".join(f"{name}={state}" for name, state in status().items())
