"""Periodic jobs of a running pipeline, on APScheduler's AsyncIOScheduler.

- retention and compaction of the log (when the backend offers
  ``run_retention`` / ``run_compaction``; Kafka does these itself);
- a periodic flush request to every sink task, so offsets are committed and
  lag stays visible even while a sink sees a trickle of records;
- progress logging: records/s per task and the lag of every sink's group.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from ..backends.base import LogBackend
from .sink_task import SinkTask
from .source_task import SourceTask

log = logging.getLogger("millpond.runtime.scheduler")


@dataclass(slots=True)
class JobIntervals:
    retention_s: float = 300.0
    compaction_s: float = 600.0
    sink_flush_s: float = 5.0
    progress_s: float = 30.0


class PipelineJobs:
    """Owns the scheduler and the job functions (kept as methods so tests can call them directly)."""

    def __init__(
        self,
        backend: LogBackend,
        tasks: Sequence[SourceTask | SinkTask],
        intervals: JobIntervals | None = None,
    ) -> None:
        self.backend = backend
        self.tasks = list(tasks)
        self.intervals = intervals or JobIntervals()
        self.scheduler = AsyncIOScheduler()
        self._last_counts: dict[str, tuple[float, int]] = {}
        # for /metrics: runs of each maintenance job and what they did (segments deleted, partitions compacted)
        self.runs: dict[str, int] = {"retention": 0, "compaction": 0}
        self.failures: dict[str, int] = {"retention": 0, "compaction": 0}
        self.done: dict[str, int] = {"retention": 0, "compaction": 0}

    def start(self) -> None:
        aps = logging.getLogger("apscheduler")
        if aps.level == logging.NOTSET:  # its INFO lines ("Added job ...") are noise in `millpond -v run`
            aps.setLevel(logging.WARNING)
        iv = self.intervals
        common = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        if self.backend.maintenance is not None:
            self.scheduler.add_job(self.retention, "interval", seconds=iv.retention_s, id="retention", **common)
            self.scheduler.add_job(self.compaction, "interval", seconds=iv.compaction_s, id="compaction", **common)
        self.scheduler.add_job(self.flush_sinks, "interval", seconds=iv.sink_flush_s, id="sink-flush", **common)
        self.scheduler.add_job(self.progress, "interval", seconds=iv.progress_s, id="progress", **common)
        self.scheduler.start()

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    async def retention(self) -> None:
        try:
            assert self.backend.maintenance is not None
            result = await self.backend.maintenance.run_retention()
            log.debug("retention: %s", result)
            self._count("retention", result)
        except Exception:
            self.failures["retention"] += 1
            log.exception("retention job failed; it runs again at the next interval")

    async def compaction(self) -> None:
        try:
            assert self.backend.maintenance is not None
            result = await self.backend.maintenance.run_compaction()
            log.debug("compaction: %s", result)
            self._count("compaction", result)
        except Exception:
            self.failures["compaction"] += 1
            log.exception("compaction job failed; it runs again at the next interval")

    def _count(self, job: str, result: int) -> None:
        self.runs[job] += 1
        self.done[job] += result

    async def flush_sinks(self) -> None:
        for task in self.tasks:
            if isinstance(task, SinkTask):
                task.request_flush()

    async def progress(self) -> None:
        now = time.monotonic()
        for task in self.tasks:
            count = task.records_out if isinstance(task, SourceTask) else task.records_in
            then, before = self._last_counts.get(task.name, (now, count))
            rate = (count - before) / (now - then) if now > then else 0.0
            self._last_counts[task.name] = (now, count)
            if isinstance(task, SinkTask):
                try:
                    lag = sum(g.lag for g in await self.backend.describe_group(task.group))
                except Exception:
                    lag = -1
                log.info("%s %r: %d records (%.0f/s), lag %s", task.kind, task.name, count, rate,
                         lag if lag >= 0 else "unknown")
            else:
                log.info("%s %r: %d records (%.0f/s)", task.kind, task.name, count, rate)
