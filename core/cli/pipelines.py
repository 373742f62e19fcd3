"""``millpond run``, ``validate`` and ``plugins``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable
from typing import Any

from ..config import load_pipeline, validate_file
from .common import (
    format_table,
)

# -- commands: pipelines -----------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from ..runtime.signals import StopSignals

    signals = StopSignals.install()  # first: SIGTERM from now on stops cleanly, not with exit -15
    config = load_pipeline(args.file)
    from ..runtime import run_pipeline  # lazily: the runtime pulls in the scheduler

    run_pipeline(config, until_idle=args.until_idle, api=args.api, signals=signals, worker_id=args.worker_id)
    return 0


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


def cmd_validate(args: argparse.Namespace) -> int:
    problems = validate_file(args.file)
    for problem in problems:
        print(problem.format(args.file))
    if problems:
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        print(f"{args.file}: {count}", file=sys.stderr)
        return 1
    print(f"{args.file}: ok")
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    from .. import plugins

    infos = plugins.plugin_infos()
    if args.json:
        for info in infos:
            print(json.dumps({"name": info.name, "distribution": info.distribution,
                              "version": info.version, "provides": info.provides,
                              "unavailable": info.unavailable}))
        return 0
    rows = [
        (info.name, info.distribution or "-", info.version or "-",
         ("; ".join(f"{kind}: {', '.join(names)}" for kind, names in info.provides.items()) or "-")
         + (f" (unavailable, {info.unavailable})" if info.unavailable else ""))
        for info in infos
    ]
    print(format_table(("PLUGIN", "DISTRIBUTION", "VERSION", "PROVIDES"), rows))
    for error in plugins.load_errors():
        print(f"failed to load plugin {error.name!r} ({error.distribution} {error.version}): {error.error}",
              file=sys.stderr)
    return 0
