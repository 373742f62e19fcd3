"""What every ``millpond`` command shares: output, times, opening the log or reaching its worker."""

from __future__ import annotations

import argparse
import base64
import json
import re
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import Any

from ..api.client import WorkerClient
from ..backends.base import LogBackend
from ..config import EmbeddedLog, LogConfig, load_pipeline
from ..errors import MillpondError
from ..records import Record


class UsageError(Exception):
    """The command line itself is wrong (exit 2)."""


# -- output helpers ----------------------------------------------------------


_SIZE = re.compile(r"\d+(\.\d)? (B|KiB|MiB|GiB|TiB)")


def _numeric(cell: Any) -> bool:
    """Numbers, sizes like "2.0 KiB", and the blanks and labels that sit among them."""
    if isinstance(cell, (int, float)):
        return True
    return cell in (None, "", "-", "total") or (isinstance(cell, str) and _SIZE.fullmatch(cell) is not None)


def format_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A plain aligned table: numeric columns right-aligned, text left-aligned."""
    data = [list(row) for row in rows]
    numeric = [
        all(_numeric(row[i]) for row in data)
        for i in range(len(headers))
    ]
    cells = [list(headers)] + [["" if c is None else str(c) for c in row] for row in data]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [
            row[i].rjust(widths[i]) if numeric[i] else row[i].ljust(widths[i]) for i in range(len(headers))
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


_RELATIVE = re.compile(r"([+-])(\d+)([smhdw])")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, "w": 604_800_000}


def parse_time(text: str, now_ms: int | None = None) -> int:
    """A time on the command line -> epoch milliseconds.

    ISO-8601 (naive means UTC), epoch milliseconds, ``now``, or a time
    relative to now: ``-1h``, ``-30m``, ``-2d``, ``+10s`` (units s m h d w).
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    text = text.strip()
    if text.isdigit():
        return int(text)
    if text == "now":
        return now
    relative = _RELATIVE.fullmatch(text)
    if relative:
        sign, amount, unit = relative.groups()
        delta = int(amount) * _UNIT_MS[unit]
        return now - delta if sign == "-" else now + delta
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"not a time: {text!r} (ISO-8601 such as 2024-05-01T12:00:00Z, epoch ms, now, or -1h / -30m / -2d)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp() * 1000)


def _decode(data: bytes | None, fmt: str) -> Any:
    if data is None:
        return None
    if fmt == "base64":
        return {"base64": base64.b64encode(data).decode()}
    try:
        text = data.decode()
    except UnicodeDecodeError:
        if fmt == "text":
            return data.decode("utf-8", "replace")
        return {"base64": base64.b64encode(data).decode()}
    if fmt == "text":
        return text
    try:
        return json.loads(text)
    except ValueError:
        if fmt == "json":
            raise MillpondError(f"value is not JSON: {text[:60]!r} (use --format text)") from None
        return text


def record_json(record: Record, fmt: str = "auto") -> str:
    """One JSON line per record; bytes that are not UTF-8 become ``{"base64": ...}``."""
    return json.dumps(
        {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": record.timestamp,
            "key": _decode(record.key, "text" if fmt == "auto" else fmt),
            "value": _decode(record.value, fmt),
            "headers": [[k, _decode(v, "text")] for k, v in record.headers],
        },
        ensure_ascii=False,
    )


# -- the log -----------------------------------------------------------------


def log_config(args: argparse.Namespace) -> LogConfig:
    if getattr(args, "log", None):
        return LogConfig(embedded=EmbeddedLog(dir=args.log))
    if getattr(args, "pipeline", None):
        return load_pipeline(args.pipeline).log
    raise UsageError("say which log: --log DIR (an embedded log directory) or -c FILE (a pipeline file)")


@asynccontextmanager
async def opened(args: argparse.Namespace, *, readonly: bool) -> AsyncIterator[LogBackend]:
    from ..backends import open_backend

    backend = open_backend(log_config(args), readonly=readonly)
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


def through_worker(args: argparse.Namespace) -> WorkerClient | None:
    """The worker holding the embedded log these arguments name, or None: act directly.

    LogLockedError when a process holds it without an API (``--api off``)."""
    from ..api.client import find_worker

    config = log_config(args)
    return find_worker(config.embedded.dir if config.embedded is not None else None)


def _q(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")



def _at_least_one(text: str) -> int:
    """An argparse type; argparse names the option in its message."""
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {count}")
    return count


def _setting(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UsageError(f"--config takes KEY=VALUE, got {text!r}")
    try:
        return key, int(value)
    except ValueError:
        return key, value
