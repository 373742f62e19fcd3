"""The runtime: runs a pipeline's connector tasks in one asyncio worker.

``run_pipeline(config)`` (``launch.py``) is the entry point the CLI calls. See
``worker.py`` (supervision), ``source_task.py`` and ``sink_task.py`` (the two
loops and their exactly-once hand-off), ``policy.py`` (fail / skip /
dead-letter) and ``scheduler.py`` (retention, compaction, commits, progress).

The names below load on first use, so that ``millpond.config`` (which reads
``runtime.settings``) and ``runtime.signals`` stay cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .launch import run_pipeline, run_pipeline_async
    from .worker import RuntimeOptions, Worker

__all__ = ["RuntimeOptions", "Worker", "run_pipeline", "run_pipeline_async"]


def __getattr__(name: str) -> Any:
    if name in ("run_pipeline", "run_pipeline_async"):
        from . import launch

        return getattr(launch, name)
    if name in __all__:
        from . import worker

        return getattr(worker, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
