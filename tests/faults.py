"""Shared by the fault-injection tests: start the real `millpond` command, SIGKILL it, repeat."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

import pytest


def millpond_command() -> list[str]:
    """The console script beside this interpreter (as a user runs it), else the CLI module."""
    script = Path(sys.executable).with_name("millpond")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from millpond.cli import main; sys.exit(main(sys.argv[1:]))"]


def kill_repeatedly(
    command: list[str],
    *,
    cwd: Path,
    logfile: IO[bytes],
    kills: int,
    rng: random.Random,
    alive_s: tuple[float, float],
    env: Mapping[str, str] | None = None,
    after_kill: Callable[[], None] | None = None,
) -> int:
    """Start ``command``, let it work for a random time within ``alive_s``, SIGKILL it; ``kills`` times.

    A worker that exits on its own fails the test with the end of its log.
    """
    done = 0
    while done < kills:
        proc = subprocess.Popen(command, cwd=cwd, env=env, stdout=logfile, stderr=subprocess.STDOUT)
        time.sleep(rng.uniform(*alive_s))
        if proc.poll() is not None:
            logfile.flush()
            log = Path(logfile.name).read_text(errors="replace")[-3000:]
            pytest.fail(f"the worker exited on its own with {proc.returncode}:\n{log}")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done += 1
        if after_kill is not None:
            after_kill()
    return done
