"""What every server fixture shares: ports, waiting, and the CI rule.

The CI rule: under ``CI=true`` a server that cannot start fails the run with
the reason; elsewhere the tests that need it are skipped with that reason.
The flag is read by ``tests.ci.in_ci``, the one reading every test shares.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from tests.ci import in_ci

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[2]
#: Downloads (server jars) are cached here between runs; the Makefile names it too.
CACHE_DIR = Path(os.environ.get("MILLPOND_CACHE", REPO / ".cache"))


def server_unavailable(what: str, reason: str) -> None:
    """Fail (in CI) or skip (elsewhere) the test that needs ``what``."""
    message = f"{what} could not start: {reason}"
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(reason=message)  # outside CI only: CI fails above, with the same reason


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until 127.0.0.1:port accepts connections; fail early if ``proc`` died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server process exited with code {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"nothing answered on 127.0.0.1:{port} after {timeout:.0f}s")


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def start_with_retry(start: Callable[[], T], attempts: int = 2) -> T:
    """Run ``start`` up to ``attempts`` times; re-raise the last error."""
    last: Exception | None = None
    for _ in range(attempts):
        try:
            return start()
        except Exception as exc:  # noqa: BLE001 - any start failure is retried once
            last = exc
    assert last is not None
    raise last
