"""Periodic jobs of a running pipeline, on APScheduler's AsyncIOScheduler.

- retention and compaction of the log (when the backend offers
  ``run_retention`` / ``run_compaction``; Kafka does these itself), on the
  interval or cron trigger of the file's ``maintenance:`` block, and on demand
  (``POST /admin/retention``, ``millpond topics retain``), one run of a job at
  a time;
- a periodic flush request to every sink task, so offsets are committed and
  lag stays visible even while a sink sees a trickle of records;
- progress logging: records/s per task and the lag of every sink's group;
  a sink that finds a lag of at least ``CATCH_UP_RECORDS`` reports its
  catch-up instead (records written of the lag at start, rate, estimate)
  until the lag is down to a tenth of that.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ..backends.base import LogBackend, LogMaintenance
from ..config import MaintenanceSettings
from ..errors import ConfigError
from ..progress import Progress
from .sink_task import SinkTask
from .source_task import SourceTask

log = logging.getLogger("millpond.runtime.scheduler")

#: a sink this far behind is catching up: its progress lines say how far along it is and when it will be done
CATCH_UP_RECORDS = 100_000


@dataclass(slots=True)
class JobIntervals:
    retention_s: float = 300.0
    compaction_s: float = 600.0
    sink_flush_s: float = 5.0
    progress_s: float = 30.0


Job = Literal["retention", "compaction"]


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    """What one run of a maintenance job did (the answer of ``POST /admin/<job>``)."""

    job: str
    #: retention: segments deleted; compaction: partitions cleaned
    count: int
    bytes_reclaimed: int
    seconds: float

    def shape(self) -> dict[str, Any]:
        what = "segments_deleted" if self.job == "retention" else "partitions_compacted"
        out = asdict(self)
        out[what] = out.pop("count")
        return out

    def line(self) -> str:
        what = "segment(s) deleted" if self.job == "retention" else "partition(s) compacted"
        return f"{self.job}: {self.count} {what}, {self.bytes_reclaimed} bytes reclaimed in {self.seconds:.2f}s"


async def run_maintenance(maintenance: LogMaintenance | None, job: Job) -> MaintenanceReport:
    """Run ``job`` once on ``maintenance`` and say what it did; ConfigError when the log has none (Kafka)."""
    if maintenance is None:
        raise ConfigError(f"{job} is the Kafka brokers' job on this log; millpond runs it only on the embedded log")
    before = maintenance.bytes_reclaimed.get(job, 0)
    started = time.monotonic()
    if job == "retention":
        count = await maintenance.run_retention()
    else:
        count = await maintenance.run_compaction()
    return MaintenanceReport(job, count, maintenance.bytes_reclaimed.get(job, 0) - before,
                             time.monotonic() - started)


class PipelineJobs:
    """Owns the scheduler and the job functions (kept as methods so tests can call them directly)."""

    def __init__(
        self,
        backend: LogBackend,
        tasks: Sequence[SourceTask | SinkTask],
        intervals: JobIntervals | None = None,
        maintenance: MaintenanceSettings | None = None,
    ) -> None:
        self.backend = backend
        self.tasks = list(tasks)
        self.intervals = intervals or JobIntervals()
        #: the file's ``maintenance:`` block; a job it leaves out runs every ``intervals``' seconds
        self.maintenance = maintenance or MaintenanceSettings()
        self.scheduler = AsyncIOScheduler()
        # the first progress line's rate is over its first interval, not "0/s" from a sample with no predecessor
        started = time.monotonic()
        self._last_counts: dict[str, tuple[float, int]] = {
            t.name: (started, t.records_out if isinstance(t, SourceTask) else t.records_in) for t in self.tasks}
        # for /metrics: runs of each maintenance job and what they did (segments deleted, partitions compacted)
        self.runs: dict[str, int] = {"retention": 0, "compaction": 0}
        self.failures: dict[str, int] = {"retention": 0, "compaction": 0}
        self.done: dict[str, int] = {"retention": 0, "compaction": 0}
        self.bytes_reclaimed: dict[str, int] = {"retention": 0, "compaction": 0}
        self._running: dict[str, asyncio.Lock] = {}
        self._catch_ups: dict[str, tuple[int, Progress]] = {}  # sink name -> (records_in at start, its progress)
        self.clock: Callable[[], float] = time.monotonic  # of the catch-up reports (a test's fake clock)

    def trigger(self, job: Job) -> BaseTrigger:
        """When ``job`` runs: the file's schedule, else every ``intervals`` seconds."""
        schedule = self.maintenance.retention if job == "retention" else self.maintenance.compaction
        if schedule is not None:
            trigger: BaseTrigger = schedule.trigger()
            return trigger
        seconds = self.intervals.retention_s if job == "retention" else self.intervals.compaction_s
        return IntervalTrigger(seconds=seconds)

    def start(self) -> None:
        aps = logging.getLogger("apscheduler")
        if aps.level == logging.NOTSET:  # its INFO lines ("Added job ...") are noise in `millpond -v run`
            aps.setLevel(logging.WARNING)
        iv = self.intervals
        common = {"coalesce": True, "max_instances": 1, "misfire_grace_time": None}
        if self.backend.maintenance is not None:
            self.scheduler.add_job(self.retention, self.trigger("retention"), id="retention", **common)
            self.scheduler.add_job(self.compaction, self.trigger("compaction"), id="compaction", **common)
        self.scheduler.add_job(self.flush_sinks, "interval", seconds=iv.sink_flush_s, id="sink-flush", **common)
        self.scheduler.add_job(self.progress, "interval", seconds=iv.progress_s, id="progress", **common)
        self.scheduler.start()

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    async def run_now(self, job: Job) -> MaintenanceReport:
        """Run ``job`` now (after a run in progress ends) and count it for ``/metrics``."""
        lock = self._running.setdefault(job, asyncio.Lock())
        async with lock:
            try:
                report = await run_maintenance(self.backend.maintenance, job)
            except Exception:
                self.failures[job] += 1
                raise
        self.runs[job] += 1
        self.done[job] += report.count
        self.bytes_reclaimed[job] += report.bytes_reclaimed
        log.debug("%s", report.line())
        return report

    async def retention(self) -> None:
        await self._scheduled("retention")

    async def compaction(self) -> None:
        await self._scheduled("compaction")

    async def _scheduled(self, job: Job) -> None:
        try:
            await self.run_now(job)
        except Exception:
            log.exception("%s job failed; it runs again at its next scheduled time", job)

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
                if self._catch_up(task, count, lag):
                    continue
                log.info("%s %r: %d records (%.0f/s), lag %s", task.kind, task.name, count, rate,
                         lag if lag >= 0 else "unknown")
            else:
                log.info("%s %r: %d records (%.0f/s)", task.kind, task.name, count, rate)

    def _catch_up(self, task: SinkTask, count: int, lag: int) -> bool:
        """Report ``task``'s catch-up of a large lag; False when it is not catching up (the plain line then)."""
        running = self._catch_ups.get(task.name)
        if running is None:
            if lag < CATCH_UP_RECORDS:
                return False
            # the first sample is now: the first line with a rate comes at the next run, never "0/s"
            progress = Progress(f"{task.kind} {task.name!r} catching up", total=lag, logger=log, tty=False,
                                first=0.0, interval=0.0, window=4 * self.intervals.progress_s,
                                clock=self.clock)
            self._catch_ups[task.name] = (count, progress)
            log.info("%s %r: %d records, catching up a lag of %d", task.kind, task.name, count, lag)
            return True
        start, progress = running
        if count < start:  # the task started over (its counters too): measure again from here
            del self._catch_ups[task.name]
            return self._catch_up(task, count, lag)
        if 0 <= lag < CATCH_UP_RECORDS // 10:
            progress.close()
            del self._catch_ups[task.name]
            log.info("%s %r: caught up, %d records written in %.0f s, lag %d", task.kind, task.name,
                     count - start, progress.clock() - progress.started, lag)
            return True
        progress.update(count - start)
        return True
