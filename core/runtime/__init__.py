"""The runtime: runs a pipeline's connector tasks in one asyncio worker.

``run_pipeline(config)`` is the entry point the CLI calls. See ``worker.py``
(supervision, signals), ``source_task.py`` and ``sink_task.py`` (the two
loops and their exactly-once hand-off), ``policy.py`` (fail / skip /
dead-letter) and ``scheduler.py`` (retention, compaction, commits, progress).
"""

from .worker import RuntimeOptions, Worker, run_pipeline, run_pipeline_async

__all__ = ["RuntimeOptions", "Worker", "run_pipeline", "run_pipeline_async"]
