"""Retention and compaction on the schedule the pipeline file sets, and run on demand."""

from __future__ import annotations

import asyncio
import textwrap
from datetime import datetime, timezone
from pathlib import Path

import pytest
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from millpond.backends.embedded import EmbeddedBackend
from millpond.config import PipelineConfig, Schedule, interval_seconds, validate_file
from millpond.errors import ConfigError
from millpond.runtime.scheduler import JobIntervals, PipelineJobs, run_maintenance


def config(maintenance: object, tmp_path: Path) -> PipelineConfig:
    return PipelineConfig.model_validate({"log": {"embedded": {"dir": str(tmp_path / "log")}},
                                          "maintenance": maintenance})


def test_intervals_and_cron_become_apscheduler_triggers(tmp_path: Path) -> None:
    assert [interval_seconds(v) for v in ("30s", "5m", "2h", "1d", "500ms", 90)] == [30, 300, 7200, 86400, 0.5, 90]
    c = config({"retention": {"interval": "5m"}, "compaction": {"cron": "0 3 * * *"}}, tmp_path)
    jobs = PipelineJobs(EmbeddedBackend(tmp_path / "log"), [], JobIntervals(retention_s=1, compaction_s=2),
                        c.maintenance)
    retention, compaction = jobs.trigger("retention"), jobs.trigger("compaction")
    assert isinstance(retention, IntervalTrigger) and retention.interval.total_seconds() == 300
    assert isinstance(compaction, CronTrigger)
    now = datetime(2026, 12, 2, 4, 0, tzinfo=timezone.utc)
    assert compaction.get_next_fire_time(None, now) == datetime(2026, 12, 3, 3, 0, tzinfo=timezone.utc)
    # a job the file leaves out keeps the runtime's interval
    only = PipelineJobs(EmbeddedBackend(tmp_path / "log"), [], JobIntervals(retention_s=1, compaction_s=2),
                        config({"compaction": {"interval": 60}}, tmp_path).maintenance)
    default = only.trigger("retention")
    assert isinstance(default, IntervalTrigger) and default.interval.total_seconds() == 1


def test_validate_names_a_bad_schedule_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(f"""\
        log: {{embedded: {{dir: {tmp_path / 'log'}}}}}
        maintenance:
          retention:
            interval: 5 minutes
          compaction:
            cron: "0 27 * * *"
    """))
    problems = [p.format(str(path)) for p in validate_file(path)]
    assert len(problems) == 2, problems
    assert problems[0].startswith(f"{path}:4: maintenance.retention.interval: '5 minutes' is not an interval")
    assert problems[1].startswith(f"{path}:6: maintenance.compaction.cron: cron '0 27 * * *' is not MINUTE HOUR")
    with pytest.raises(ValueError, match="exactly one of 'interval'"):
        Schedule(interval="5m", cron="0 3 * * *")
    with pytest.raises(ValueError, match="exactly one of 'interval'"):
        Schedule()


def test_scheduled_and_manual_runs_are_counted_once_each(tmp_path: Path) -> None:
    async def main() -> None:
        backend = EmbeddedBackend(tmp_path / "log", fsync=False)
        await backend.open()
        try:
            jobs = PipelineJobs(backend, [], maintenance=config({"retention": {"interval": "50ms"}},
                                                                 tmp_path).maintenance)
            jobs.start()
            try:
                report = await jobs.run_now("compaction")
                assert report.job == "compaction" and report.count == 0 and report.bytes_reclaimed == 0
                assert report.shape()["partitions_compacted"] == 0
                for _ in range(100):
                    if jobs.runs["retention"] >= 2:
                        break
                    await asyncio.sleep(0.05)
                assert jobs.runs["retention"] >= 2 and jobs.runs["compaction"] == 1
            finally:
                jobs.shutdown()
        finally:
            await backend.close()
        with pytest.raises(ConfigError, match="Kafka brokers' job"):
            await run_maintenance(None, "retention")

    asyncio.run(main())


def test_a_worker_runs_maintenance_on_the_files_schedule(tmp_path: Path) -> None:
    from millpond.runtime import RuntimeOptions, run_pipeline_async

    c = config({"retention": {"interval": "50ms"}, "compaction": {"cron": "0 3 1 1 *"}}, tmp_path)
    options = RuntimeOptions(install_signal_handlers=False, idle_seconds=0.1)
    options.jobs = JobIntervals(retention_s=3600, compaction_s=0.05)  # the file's schedule wins over these

    async def main() -> None:
        worker = await run_pipeline_async(c, until_idle=True, options=options)
        assert worker is not None and worker.jobs is not None
        assert worker.jobs.runs["retention"] >= 2
        assert worker.jobs.runs["compaction"] == 0  # next on January 1st at 03:00

    asyncio.run(asyncio.wait_for(main(), 30))
