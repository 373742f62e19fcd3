"""The ``maintenance:`` block: intervals, cron schedules and their time zones."""

from __future__ import annotations

import re
from typing import Any

from pydantic import field_validator, model_validator

from .base import Model

_INTERVAL = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)")
_INTERVAL_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def interval_seconds(value: str | float) -> float:
    """``30s``, ``5m``, ``2h``, ``1d``, ``500ms`` or a number of seconds -> seconds; ValueError otherwise."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        found = _INTERVAL.fullmatch(str(value).strip())
        if not found:
            raise ValueError(f"{value!r} is not an interval (e.g. 30s, 5m, 2h, 1d, or seconds as a number)")
        seconds = float(found[1]) * _INTERVAL_S[found[2]]
    if seconds <= 0:
        raise ValueError(f"an interval must be longer than 0, not {value!r}")
    return seconds


class Schedule(Model):
    """When a maintenance job runs: ``interval: 5m`` or ``cron: "0 3 * * *"`` (APScheduler's triggers).

    A cron expression is read in ``timezone`` (an IANA name such as ``Europe/Paris``; default UTC)."""

    interval: str | float | None = None
    cron: str | None = None
    timezone: str = "UTC"

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: str | float | None) -> str | float | None:
        if value is not None:
            interval_seconds(value)
        return value

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        from apscheduler.triggers.cron import CronTrigger

        if value is not None:
            try:
                CronTrigger.from_crontab(value, timezone="UTC")
            except ValueError as exc:
                raise ValueError(f"cron {value!r} is not MINUTE HOUR DAY MONTH WEEKDAY: {exc}") from None
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"{value!r} is not a time zone (an IANA name such as UTC or Europe/Paris)") from None
        return value

    @model_validator(mode="after")
    def _one_trigger(self) -> Schedule:
        if (self.interval is None) == (self.cron is None):
            raise ValueError("give exactly one of 'interval' (e.g. 5m) or 'cron' (e.g. \"0 3 * * *\")")
        return self

    def trigger(self) -> Any:
        """The APScheduler trigger (IntervalTrigger or CronTrigger)."""
        from apscheduler.triggers.cron import CronTrigger
        from apscheduler.triggers.interval import IntervalTrigger

        if self.interval is not None:
            return IntervalTrigger(seconds=interval_seconds(self.interval), timezone=self.timezone)
        assert self.cron is not None
        return CronTrigger.from_crontab(self.cron, timezone=self.timezone)


class MaintenanceSettings(Model):
    """The ``maintenance:`` block: when the embedded log's retention and compaction run.

    A job left out runs on the default interval (retention every 5 minutes,
    compaction every 10); both can also be run at once through the API
    (``POST /admin/retention``) or the CLI (``millpond topics retain``)."""

    retention: Schedule | None = None
    compaction: Schedule | None = None
