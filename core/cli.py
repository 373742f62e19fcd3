"""The ``millpond`` command.

Exit codes: 0 ok, 1 a user error (one line, no traceback, for any
``MillpondError``), 2 a usage error, 130 interrupted.

Commands that read the log (``topics list``, ``consume``, ``groups describe``)
open it read-only, so they work beside a running worker. Commands that write
(``topics create|alter|delete|retain|compact``, ``produce``, ``groups reset
--execute``, ``dlq replay --execute``) go through the API of the worker that
holds an embedded log (``api/client.py``), and open the log themselves when
no process holds it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from typing import IO, Any

from .api.client import WorkerClient
from .backends.base import IsolationLevel, LogBackend, TopicSpec
from .config import EmbeddedLog, LogConfig, PipelineFileError, load_pipeline, validate_file
from .errors import MillpondError
from .progress import Progress
from .records import Record, TopicPartition
from .units import human_bytes


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
    from .backends import open_backend

    backend = open_backend(log_config(args), readonly=readonly)
    await backend.open()
    try:
        yield backend
    finally:
        await backend.close()


def through_worker(args: argparse.Namespace) -> WorkerClient | None:
    """The worker holding the embedded log these arguments name, or None: act directly.

    LogLockedError when a process holds it without an API (``--api off``)."""
    from .api.client import find_worker

    config = log_config(args)
    return find_worker(config.embedded.dir if config.embedded is not None else None)


def _q(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="")


# -- commands: pipelines -----------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from .runtime.signals import StopSignals

    signals = StopSignals.install()  # first: SIGTERM from now on stops cleanly, not with exit -15
    config = load_pipeline(args.file)
    from .runtime import run_pipeline  # lazily: the runtime pulls in the scheduler

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
    from . import plugins

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


# -- commands: topics --------------------------------------------------------


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


async def topics_list(args: argparse.Namespace) -> int:
    async with opened(args, readonly=True) as backend:
        rows = []
        for name in await backend.list_topics():
            if name.startswith("__") and not args.all:
                continue
            parts = await backend.describe_topic(name)
            rows.append((name, len(parts), sum(p.log_end_offset - p.log_start_offset for p in parts),
                         human_bytes(sum(p.size_bytes for p in parts))))
    if rows:
        print(format_table(("TOPIC", "PARTITIONS", "OFFSETS", "SIZE"), rows))
    else:
        print("no topics", file=sys.stderr)
    return 0


async def topics_describe(args: argparse.Namespace) -> int:
    async with opened(args, readonly=True) as backend:
        for i, name in enumerate(args.topics):
            parts = await backend.describe_topic(name)
            settings = await backend.topic_settings(name)
            if i:
                print()
            print(f"Topic: {name}   partitions: {len(parts)}")
            if settings:
                pairs = ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))
                print(textwrap.fill(pairs, width=100, initial_indent="Settings: ", subsequent_indent="  "))
            # Kafka's DescribeLogDirs gives sizes but no segment count: "-", not a false 0
            counted = getattr(backend, "reports_segments", True)
            rows: list[Sequence[Any]] = [
                (p.partition, p.log_start_offset, p.log_end_offset, p.last_stable_offset,
                 p.log_end_offset - p.log_start_offset, human_bytes(p.size_bytes), p.segments if counted else "-")
                for p in parts
            ]
            rows.append(("total", "", "", "", sum(p.log_end_offset - p.log_start_offset for p in parts),
                         human_bytes(sum(p.size_bytes for p in parts)),
                         sum(p.segments for p in parts) if counted else "-"))
            print(format_table(("PARTITION", "START", "END", "STABLE", "OFFSETS", "SIZE", "SEGMENTS"), rows))
            for p in parts:
                for problem in p.problems:
                    print(f"DAMAGED partition {p.partition}: {problem}")
    return 0


async def topics_repair(args: argparse.Namespace) -> int:
    from .backends.embedded import EmbeddedBackend

    async with opened(args, readonly=False) as backend:
        if not isinstance(backend, EmbeddedBackend):
            raise UsageError("topics repair works on an embedded log (--log DIR)")
        with Progress(f"checking quarantined segments of {args.topic}", unit="bytes") as checking:
            done = backend.store.repair(args.topic, args.partition, "restore" if args.restore else "discard",
                                        checking)
    for line in done:
        print(line, file=sys.stderr)
    if not done:
        print(f"nothing is quarantined in topic {args.topic!r}", file=sys.stderr)
    return 0


async def topics_create(args: argparse.Namespace) -> int:
    from .config import check_topic_name

    check_topic_name(args.topic)
    settings = dict(_setting(s) for s in args.setting)
    client = through_worker(args)
    if client is not None:
        client.request("POST", "/topics", {"name": args.topic, "partitions": args.partitions, "config": settings,
                                           "if_not_exists": args.if_not_exists})
    else:
        async with opened(args, readonly=False) as backend:
            await backend.create_topic(TopicSpec(args.topic, args.partitions, settings),
                                       exist_ok=args.if_not_exists)
    print(f"created topic {args.topic!r} with {args.partitions} partition(s)", file=sys.stderr)
    return 0


async def topics_alter(args: argparse.Namespace) -> int:
    """kafka-configs --alter: set some settings, put others back to their defaults; the rest stay."""
    from .api.admin import alter_topic_config

    settings = dict(_setting(s) for s in args.setting)
    if not settings and not args.delete_config:
        raise UsageError("say what to change: --config KEY=VALUE and/or --delete-config KEY")
    client = through_worker(args)
    if client is not None:
        answer = client.request("PATCH", f"/topics/{_q(args.topic)}/config",
                                {"set": settings, "delete": args.delete_config})
        changes = {k: (old, new) for k, (old, new) in answer["changes"].items()}
        if changes and answer.get("declared_in_pipeline"):
            print(f"note: the worker's pipeline file declares topic {args.topic!r}; its settings there apply "
                  f"again when the worker restarts (change them in the file to keep them)", file=sys.stderr)
    else:
        async with opened(args, readonly=False) as backend:
            changes = await alter_topic_config(backend, args.topic, settings, args.delete_config)
    for key, (old, new) in sorted(changes.items()):
        print(f"topic {args.topic!r}: {key} {old} -> {new}", file=sys.stderr)
    if not changes:
        print(f"topic {args.topic!r}: nothing changed", file=sys.stderr)
    return 0


async def topics_delete(args: argparse.Namespace) -> int:
    client = through_worker(args)
    if client is not None:
        for name in args.topics:
            client.request("DELETE", f"/topics/{_q(name)}")
            print(f"deleted topic {name!r}", file=sys.stderr)
        return 0
    async with opened(args, readonly=False) as backend:
        for name in args.topics:
            await backend.delete_topic(name)
            print(f"deleted topic {name!r}", file=sys.stderr)
    return 0


async def _maintenance(args: argparse.Namespace, job: str) -> int:
    from .runtime.scheduler import MaintenanceReport, run_maintenance

    client = through_worker(args)
    if client is not None:
        shape = client.request("POST", f"/admin/{job}")
        report = MaintenanceReport(job, shape.get("segments_deleted", shape.get("partitions_compacted", 0)),
                                   shape["bytes_reclaimed"], shape["seconds"])
        where = f" (by the worker at {client.url})"
    else:
        async with opened(args, readonly=False) as backend:
            report = await run_maintenance(backend.maintenance, "retention" if job == "retention" else "compaction")
        where = ""
    print(report.line() + where)
    return 0


async def topics_retain(args: argparse.Namespace) -> int:
    return await _maintenance(args, "retention")


async def topics_compact(args: argparse.Namespace) -> int:
    return await _maintenance(args, "compaction")


# -- commands: produce / consume ---------------------------------------------


def split_line(line: bytes, key_field: str | None, key_separator: str | None, number: int) -> tuple[bytes | None, bytes]:
    """A stdin line -> (key, value) as the options say."""
    if key_separator is not None:
        key, sep, value = line.partition(key_separator.encode())
        if not sep:
            raise MillpondError(f"line {number}: no key separator {key_separator!r}")
        return key, value
    if key_field is not None:
        try:
            obj = json.loads(line)
        except ValueError:
            raise MillpondError(f"line {number}: not JSON (--key-field needs JSON lines)") from None
        if not isinstance(obj, dict) or key_field not in obj:
            raise MillpondError(f"line {number}: no field {key_field!r} for the key")
        key = obj[key_field]
        return (None if key is None else (key if isinstance(key, str) else json.dumps(key)).encode()), line
    return None, line


#: kafka-console-producer's ``--property`` names -> this command's options
PRODUCE_PROPERTIES = {
    "parse.key": "parse_key", "key.separator": "key_separator", "parse.headers": "parse_headers",
    "headers.delimiter": "headers_delimiter", "headers.separator": "headers_separator",
    "headers.key.separator": "headers_key_separator", "null.marker": "null_marker",
}
#: kafka-console-consumer's formatter ``--property`` names -> this command's options
CONSUME_PROPERTIES = {
    "print.key": "print_key", "print.headers": "print_headers", "print.timestamp": "print_timestamp",
    "print.offset": "print_offset", "print.partition": "print_partition", "print.value": "print_value",
    "key.separator": "key_separator", "line.separator": "line_separator",
    "headers.separator": "headers_separator", "headers.key.separator": "headers_key_separator",
    "null.literal": "null_literal",
}
_BOOLEAN = {"true": True, "false": False}


def apply_properties(args: argparse.Namespace, names: dict[str, str]) -> None:
    """Fold Kafka-style ``--property name=value`` into the equivalent options; applied after them, so a
    property given beside its option wins."""
    for text in getattr(args, "property", None) or []:
        name, sep, value = text.partition("=")
        if not sep or name not in names:
            known = ", ".join(sorted(names))
            raise UsageError(f"--property takes NAME=VALUE with NAME one of {known}; got {text!r}")
        dest = names[name]
        default = getattr(args, dest)
        if isinstance(default, bool):
            if value.lower() not in _BOOLEAN:
                raise UsageError(f"--property {name} takes true or false, got {value!r}")
            setattr(args, dest, _BOOLEAN[value.lower()])
        elif default is None or dest.endswith("separator") or dest.endswith("delimiter"):
            # "\t" as Kafka users write it on a shell line
            setattr(args, dest, value.encode().decode("unicode_escape") if "\\" in value else value)
        else:
            setattr(args, dest, value)


class LineReader:
    """Parses one stdin line into a record, the way kafka-console-producer's LineMessageReader does:
    ``[HEADERS<headers.delimiter>][KEY<key.separator>]VALUE``, where HEADERS is
    ``k1:v1,k2:v2`` and a field equal to the null marker is null (a value of null is a tombstone)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.key_field: str | None = args.key_field
        self.key_separator: str | None = args.key_separator
        if args.parse_key and self.key_separator is None:
            self.key_separator = "\t"
        self.parse_headers: bool = args.parse_headers
        self.headers_delimiter = args.headers_delimiter.encode()
        self.headers_separator = args.headers_separator.encode()
        self.headers_key_separator = args.headers_key_separator.encode()
        self.null_marker = None if args.null_marker is None else args.null_marker.encode()
        self.timestamp = None if args.timestamp is None else parse_time(args.timestamp)
        self.timestamp_field: str | None = args.timestamp_field

    def _null(self, data: bytes | None) -> bytes | None:
        return None if self.null_marker is not None and data == self.null_marker else data

    def record(self, line: bytes, number: int) -> Record:
        headers: list[tuple[str, bytes | None]] = self._headers(line, number) if self.parse_headers else []
        if self.parse_headers:
            line = line.partition(self.headers_delimiter)[2]
        key: bytes | None = None
        value: bytes | None = line
        if self.key_separator is not None or self.key_field is not None:
            key, line = split_line(line, self.key_field, self.key_separator, number)
            value = line
        if self.null_marker is not None:
            key, value = self._null(key), self._null(line)
        if self.timestamp_field is not None:
            timestamp = self._timestamp_of(line, number)
        else:
            timestamp = self.timestamp if self.timestamp is not None else int(time.time() * 1000)
        return Record(value, key, timestamp, headers)

    def _headers(self, line: bytes, number: int) -> list[tuple[str, bytes | None]]:
        block, sep, _ = line.partition(self.headers_delimiter)
        if not sep:
            raise MillpondError(f"line {number}: no headers delimiter {self.headers_delimiter.decode()!r}")
        headers: list[tuple[str, bytes | None]] = []
        if block and block != self.null_marker:
            for item in block.split(self.headers_separator):
                name, sep, value = item.partition(self.headers_key_separator)
                if not sep or not name:
                    raise MillpondError(
                        f"line {number}: header {item.decode(errors='replace')!r} is not "
                        f"NAME{self.headers_key_separator.decode()}VALUE"
                    )
                headers.append((name.decode(errors="surrogateescape"), self._null(value)))
        return headers

    def _timestamp_of(self, value: bytes, number: int) -> int:
        try:
            obj = json.loads(value)
        except ValueError:
            raise MillpondError(f"line {number}: not JSON (--timestamp-field needs JSON values)") from None
        field = self.timestamp_field
        if not isinstance(obj, dict) or obj.get(field) is None:
            raise MillpondError(f"line {number}: no field {field!r} for the timestamp")
        found = obj[field]
        if isinstance(found, (int, float)) and not isinstance(found, bool):
            return int(found)
        try:
            return parse_time(str(found))
        except UsageError:
            raise MillpondError(f"line {number}: field {field!r} is not a time: {found!r}") from None


async def produce(args: argparse.Namespace, stdin: IO[bytes] | None = None) -> int:
    """Stdin lines -> records, all-or-nothing per transaction.

    Up to ``--transaction-records`` lines are parsed first, then written in
    one transaction, so a bad line leaves nothing of that input in the log.
    A larger input is written in several transactions; when a later one
    stops at a bad line, the message says how many records went in and up
    to which line.
    """
    apply_properties(args, PRODUCE_PROPERTIES)
    reader = LineReader(args)
    stdin = stdin or sys.stdin.buffer
    progress = Progress(f"produced to {args.topic}")
    written_to = 0  # the last line number of the last committed transaction
    client = through_worker(args)
    async with contextlib.AsyncExitStack() as stack:
        stack.enter_context(progress)  # an error clears the bar first
        write: Callable[[list[Record]], Awaitable[None]]
        if client is not None:
            write = _through(client, args)  # the worker checks the topic and partition at the first request
        else:
            backend = await stack.enter_async_context(opened(args, readonly=False))
            partitions = await backend.partitions_for(args.topic)  # fails early, naming the topic
            if args.partition is not None and not 0 <= args.partition < partitions:
                raise MillpondError(f"topic {args.topic!r} has partitions 0-{partitions - 1}, not {args.partition}")
            producer = backend.producer(transactional_id=f"millpond-cli-produce-{args.topic}")
            await producer.init()
            stack.push_async_callback(producer.close)

            async def write(records: list[Record]) -> None:
                await _write(producer, args, records)

        batch: list[Record] = []
        number = 0
        for number, raw in enumerate(stdin, 1):
            line = raw.rstrip(b"\r\n")
            if not line:
                continue
            try:
                batch.append(reader.record(line, number))
            except MillpondError as exc:
                if progress.count:
                    raise MillpondError(
                        f"{exc}; {progress.count:,} records of lines 1-{written_to} are in topic "
                        f"{args.topic!r}, nothing from line {written_to + 1} on"
                    ) from None
                raise MillpondError(f"{exc}; nothing was written to topic {args.topic!r}") from None
            if len(batch) >= args.transaction_records:
                await write(batch)
                progress.add(len(batch))
                written_to, batch = number, []
        if batch:
            await write(batch)
            progress.add(len(batch))
    progress.done()
    return 0


def _through(client: WorkerClient, args: argparse.Namespace) -> Callable[[list[Record]], Awaitable[None]]:
    """Write one transaction's records through the worker: one request each, all or nothing, in the
    log's own batch format (encoded in C here, decoded in C there)."""
    from urllib.parse import urlencode

    from .api.admin import RECORD_BATCH, encode_batch

    query = {"transactional_id": f"millpond-cli-produce-{args.topic}"}
    if args.partition is not None:
        query["partition"] = str(args.partition)
    path = f"/topics/{_q(args.topic)}/records?{urlencode(query)}"

    async def write(records: list[Record]) -> None:
        client.request("POST", path, data=encode_batch(records), content_type=RECORD_BATCH)

    return write


async def _write(producer: Any, args: argparse.Namespace, records: list[Record]) -> None:
    await producer.begin()
    try:
        for record in records:
            await producer.send(args.topic, record, args.partition)
        await producer.commit()
    except BaseException:
        await producer.abort()
        raise


async def _start_offsets(backend: LogBackend, args: argparse.Namespace, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """Where each partition starts when an option says so (empty: committed or latest)."""
    if not (args.from_beginning or args.offset is not None or args.from_time):
        return {}
    infos = {TopicPartition(p.topic, p.partition): p for t in args.topics for p in await backend.describe_topic(t)}
    start: dict[TopicPartition, int] = {}
    from_ms = parse_time(args.from_time) if args.from_time else 0
    for tp in tps:
        info = infos[tp]
        if args.from_beginning:
            start[tp] = info.log_start_offset
        elif args.offset is not None and args.offset < 0:
            start[tp] = await _last_records_start(backend, tp, -args.offset, info.log_start_offset,
                                                  info.last_stable_offset)
        elif args.offset is not None:
            start[tp] = min(max(args.offset, info.log_start_offset), info.log_end_offset)
        else:
            found = await backend.offset_for_time(tp, from_ms)
            start[tp] = info.log_end_offset if found is None else found
    return start


async def _last_records_start(backend: LogBackend, tp: TopicPartition, n: int, log_start: int, end: int) -> int:
    """The offset from which ``tp`` holds its last ``n`` committed records.

    Offsets are not records: transaction markers, aborted batches and
    compaction take or leave offsets, so the window is widened (doubling)
    until it holds ``n`` records or reaches the log start.
    """
    width = n
    while True:
        start = max(log_start, end - width)
        consumer = backend.consumer([tp.topic], group=None, isolation=IsolationLevel.read_committed)
        offsets: list[int] = []
        try:
            for info in await backend.describe_topic(tp.topic):
                if info.partition != tp.partition:  # nothing wanted from the other partitions
                    await consumer.seek(TopicPartition(tp.topic, info.partition), info.log_end_offset)
            await consumer.seek(tp, start)
            empty = 0
            while await consumer.position(tp) < end and empty < 25:
                records = await consumer.poll(max_records=10_000, timeout=0.2)
                offsets += [r.offset or 0 for r in records if r.topic_partition == tp and (r.offset or 0) < end]
                empty = 0 if records else empty + 1
        finally:
            await consumer.close()
        if len(offsets) >= n or start == log_start:
            return offsets[-n] if len(offsets) >= n else start
        width *= 2


class TextFormatter:
    """kafka-console-consumer's DefaultMessageFormatter: the value, optionally preceded by
    ``CreateTime:TS``, ``Partition:P``, ``Offset:O``, the headers and the key, in that order,
    separated by ``key.separator`` (TAB); null prints as ``null.literal``."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.sep = args.key_separator
        self.null = args.null_literal

    def _text(self, data: bytes | None) -> str:
        return self.null if data is None else data.decode("utf-8", "replace")

    def __call__(self, record: Record) -> str:
        a = self.args
        parts = []
        if a.print_timestamp:
            parts.append("NO_TIMESTAMP" if record.timestamp is None else f"CreateTime:{record.timestamp}")
        if a.print_partition:
            parts.append(f"Partition:{record.partition}")
        if a.print_offset:
            parts.append(f"Offset:{record.offset}")
        if a.print_headers:
            parts.append(a.headers_separator.join(f"{k}{a.headers_key_separator}{self._text(v)}"
                                                  for k, v in record.headers) or "NO_HEADERS")
        if a.print_key:
            parts.append(self._text(record.key))
        if a.print_value:
            parts.append(self._text(record.value))
        return str(self.sep).join(parts)


_PRINT_FLAGS = ("print_key", "print_headers", "print_timestamp", "print_offset", "print_partition")


async def consume(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    """Print records until the end of the log (the last stable offsets when it started), ``--to-time``,
    ``--max-messages`` or, with ``--follow``, ``--timeout-ms`` of silence; the count goes to stderr."""
    apply_properties(args, CONSUME_PROPERTIES)
    if args.format is None:  # Kafka's print.* properties mean the plain text form
        args.format = "text" if any(getattr(args, f) for f in _PRINT_FLAGS) else "auto"
    elif args.format != "text" and any(getattr(args, f) for f in _PRINT_FLAGS):
        raise UsageError(f"--print-* options shape --format text, not --format {args.format}")
    line_of: Callable[[Record], str] = (
        TextFormatter(args) if args.format == "text" else lambda r: record_json(r, args.format))
    out = out or sys.stdout
    to_ms = parse_time(args.to_time) if args.to_time else None
    progress = Progress(f"consumed from {', '.join(args.topics)}")
    reason = "the end of the log"
    async with opened(args, readonly=args.group is None) as backend, progress:  # an error clears the bar first
        consumer = backend.consumer(args.topics, group=args.group, isolation=IsolationLevel.read_committed,
                                    reset="earliest" if args.from_beginning else "latest")
        try:
            tps = sorted(consumer.assignment())
            for tp, offset in (await _start_offsets(backend, args, tps)).items():
                await consumer.seek(tp, offset)
            # where each partition stops: None = not known yet (--follow)
            stops: dict[TopicPartition, int | None] = {tp: None for tp in tps}
            if not args.follow:
                stops.update({TopicPartition(p.topic, p.partition): p.last_stable_offset
                              for t in args.topics for p in await backend.describe_topic(t)})
            timed: set[TopicPartition] = set()  # partitions that stop at --to-time, not at their end
            if to_ms is not None:
                for tp in tps:
                    found = await backend.offset_for_time(tp, to_ms)
                    current = stops[tp]
                    if found is not None and (current is None or found < current):
                        stops[tp] = found
                        timed.add(tp)
            if tps and all(stops[tp] is not None for tp in tps):
                # the bar's total: offsets to go, "about" because control records and aborted ones are not shown
                progress.approximate = True
                progress.total = sum([max(0, (stops[tp] or 0) - await consumer.position(tp)) for tp in tps])
                if args.max is not None:
                    progress.total = min(progress.total, args.max)
            stalled = 0
            quiet_since = time.monotonic()
            while True:
                positions = [await consumer.position(tp) for tp in tps]
                bounded = [stops[tp] for tp in tps]
                if all(stop is not None and pos >= stop for pos, stop in zip(positions, bounded)):
                    reason = "--to-time" if timed else "the end of the log"
                    break
                records = await consumer.poll(max_records=1000, timeout=1.0 if args.follow else 0.2)
                if not args.follow:
                    # a guard, not a rule: positions that stop moving short of the end mean stop
                    moved = records or positions != [await consumer.position(tp) for tp in tps]
                    stalled = 0 if moved else stalled + 1
                    if stalled >= 25:
                        logging.getLogger(__name__).warning("no progress towards the end offsets %s; stopping",
                                                            stops)
                        break
                elif records:
                    quiet_since = time.monotonic()
                elif args.timeout_ms is not None and time.monotonic() - quiet_since >= args.timeout_ms / 1000:
                    reason = f"{args.timeout_ms} ms without a record (--timeout-ms)"
                    break
                shown = []
                for r in records:
                    tp = r.topic_partition
                    stop = stops[tp]
                    if stop is None and to_ms is not None and (r.timestamp or 0) >= to_ms:
                        stops[tp] = stop = r.offset or 0
                        timed.add(tp)
                    if stop is None or (r.offset or 0) < stop:
                        shown.append(r)
                if args.max is not None:
                    shown = shown[: args.max - progress.count]
                for record in shown:
                    out.write(line_of(record) + args.line_separator)
                out.flush()
                progress.add(len(shown))
                if args.group and shown:
                    nexts: dict[TopicPartition, int] = {}
                    for r in shown:
                        nexts[r.topic_partition] = max(nexts.get(r.topic_partition, 0), (r.offset or 0) + 1)
                    await consumer.commit(nexts)
                if args.max is not None and progress.count >= args.max:
                    reason = f"--max-messages {args.max}"
                    break
        finally:
            await consumer.close()
    hint = "" if progress.count or args.from_beginning or args.group or args.follow \
        else " (use --from-beginning for older records)"
    progress.done(f", stopped at {reason}{hint}")
    return 0


# -- commands: groups --------------------------------------------------------


async def groups_list(args: argparse.Namespace) -> int:
    async with opened(args, readonly=True) as backend:
        rows = []
        for group in await backend.list_groups():
            offsets = await backend.describe_group(group)
            topics = sorted({o.topic_partition.topic for o in offsets})
            rows.append((group, ", ".join(topics) or "-", sum(o.lag for o in offsets)))
    if rows:
        print(format_table(("GROUP", "TOPICS", "LAG"), rows))
    else:
        print("no consumer groups", file=sys.stderr)
    return 0


async def groups_describe(args: argparse.Namespace) -> int:
    from .runtime.source_offsets import source_offsets_of

    async with opened(args, readonly=True) as backend:
        offsets = await backend.describe_group(args.group)
        if not offsets:
            checkpoints = await source_offsets_of(backend, args.group)
            if checkpoints:  # a source connector: its progress is a checkpoint, not group offsets
                print(f"Source connector: {args.group}")
                print(format_table(("SOURCE TASK", "CHECKPOINT"),
                                   [(k, json.dumps(v, sort_keys=True)) for k, v in checkpoints.items()]))
                return 0
            known = ", ".join(await backend.list_groups()) or "none"
            raise MillpondError(f"group {args.group!r} has no committed offsets (groups: {known})")
    rows: list[Sequence[Any]] = [
        (o.topic_partition.topic, o.topic_partition.partition, o.committed, o.log_end_offset, o.lag) for o in offsets
    ]
    rows.append(("total", "", "", "", sum(o.lag for o in offsets)))
    print(f"Group: {args.group}")
    print(format_table(("TOPIC", "PARTITION", "COMMITTED", "END", "LAG"), rows))
    return 0


_ISO_DURATION = re.compile(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?")


def parse_duration(text: str) -> int:
    """``PnDTnHnMnS`` (kafka-consumer-groups' --by-duration) or ``1h`` / ``-1h`` / ``30m`` -> milliseconds."""
    iso = _ISO_DURATION.fullmatch(text.upper())
    if iso and text.upper() not in ("P", "PT"):
        days, hours, minutes, seconds = iso.groups()
        return int((int(days or 0) * 86_400 + int(hours or 0) * 3_600 + int(minutes or 0) * 60
                    + float(seconds or 0)) * 1000)
    relative = _RELATIVE.fullmatch(text if text[:1] in "+-" else "-" + text)
    if relative:
        return int(relative.group(2)) * _UNIT_MS[relative.group(3)]
    raise UsageError(f"not a duration: {text!r} (e.g. P1DT2H30M, PT1H, 1h, -30m)")


async def reset_plan(backend: LogBackend, args: argparse.Namespace) -> list[tuple[TopicPartition, int | None, int]]:
    """(partition, current committed offset, new offset) for each partition the reset touches."""
    committed = await backend.committed(args.group)
    if args.topic:
        tps = [TopicPartition(t, p) for t in args.topic for p in range(await backend.partitions_for(t))]
    else:
        tps = sorted(committed)
    if not tps:
        known = ", ".join(await backend.list_groups()) or "none"
        raise MillpondError(f"group {args.group!r} has no committed offsets and no source connector of that name "
                            f"has a checkpoint; name the partitions with --topic (groups: {known})")
    at_ms = None
    if args.to_time:
        at_ms = parse_time(args.to_time)
    elif args.by_duration:
        at_ms = int(time.time() * 1000) - parse_duration(args.by_duration)
    plan = []
    for tp in tps:
        info = next(p for p in await backend.describe_topic(tp.topic) if p.partition == tp.partition)
        current = committed.get(tp)
        if args.to_earliest:
            new = info.log_start_offset
        elif args.to_latest:
            new = info.log_end_offset
        elif args.to_current:
            new = info.log_end_offset if current is None else current
        elif args.to_offset is not None:
            new = args.to_offset
        elif args.shift_by is not None:
            if current is None:
                raise MillpondError(f"group {args.group!r} has no committed offset for {tp.topic}-{tp.partition} "
                                    f"to shift; use --to-offset or --to-earliest")
            new = current + args.shift_by
        else:
            assert at_ms is not None
            found = await backend.offset_for_time(tp, at_ms)
            new = info.log_end_offset if found is None else found
        # as kafka-consumer-groups does: a target outside the log is moved to its nearest end
        plan.append((tp, current, min(max(new, info.log_start_offset), info.log_end_offset)))
    return plan


Drop = Callable[[list[str]], Awaitable[None]]
Move = Callable[[dict[TopicPartition, int]], Awaitable[None]]


async def _source_reset(backend: LogBackend, args: argparse.Namespace, drop: Drop | None) -> int | None:
    """Reset a source connector's checkpoints (plan only when ``drop`` is None), or None when
    ``args.group`` names no source connector."""
    from .runtime.source_offsets import source_offsets_of

    if args.topic or await backend.committed(args.group):  # a consumer group's name wins
        return None
    checkpoints = await source_offsets_of(backend, args.group)
    if not checkpoints:
        return None
    if not args.to_earliest:
        raise MillpondError(
            f"{args.group!r} is a source connector: its checkpoint is a position in its source, not an offset in "
            f"the log; --to-earliest drops it so the connector starts from the beginning (a Postgres source: a new "
            f"snapshot)")
    rows = [(key, json.dumps(value, sort_keys=True), "(none): from the beginning")
            for key, value in checkpoints.items()]
    print(format_table(("SOURCE TASK", "NEW", "CURRENT CHECKPOINT"), [(k, new, cur) for k, cur, new in rows]))
    if drop is None:
        print(f"plan only: source connector {args.group!r} not changed (add --execute to apply)", file=sys.stderr)
        return 0
    await drop(list(checkpoints))
    print(f"dropped the checkpoint of {len(checkpoints)} task(s) of source connector {args.group!r}; "
          f"it starts from the beginning at its next run", file=sys.stderr)
    return 0


def _worker_reset(client: WorkerClient, group: str) -> tuple[Drop, Move]:
    """How a running worker applies a reset: a connector's offsets through ``/connectors/{name}/offsets``
    (it pauses the connector, writes to the offsets' owner, resumes), another group through ``/groups``."""
    kind = client.connector_type(group)

    async def drop(keys: list[str]) -> None:
        if kind != "source":
            raise MillpondError(f"source connector {group!r} has a checkpoint, but the worker at {client.url} "
                                f"(pid {client.pid}) does not run it; stop that worker to reset it")
        client.request("DELETE", f"/connectors/{_q(group)}/offsets")

    async def move(offsets: dict[TopicPartition, int]) -> None:
        if kind == "sink":
            client.request("PATCH", f"/connectors/{_q(group)}/offsets", {"offsets": [
                {"partition": {"kafka_topic": tp.topic, "kafka_partition": tp.partition},
                 "offset": {"kafka_offset": new}} for tp, new in sorted(offsets.items())]})
        elif kind is None:
            client.request("PATCH", f"/groups/{_q(group)}/offsets", {"offsets": [
                {"topic": tp.topic, "partition": tp.partition, "offset": new} for tp, new in sorted(offsets.items())]})
        else:
            raise MillpondError(f"{group!r} is a source connector of the worker at {client.url}; its consumer "
                                f"group offsets cannot be moved while it runs (stop the worker)")

    return drop, move


async def groups_reset(args: argparse.Namespace) -> int:
    """A plan by default (kafka-consumer-groups' habit); ``--execute`` applies it, through the worker
    that holds the log when one does."""
    from .runtime.source_offsets import write_source_offsets

    execute = bool(args.execute)
    client = through_worker(args) if execute else None
    async with opened(args, readonly=not execute or client is not None) as backend:
        drop: Drop | None = None
        move: Move | None = None
        if client is not None:
            drop, move = _worker_reset(client, args.group)
        elif execute:
            async def drop(keys: list[str]) -> None:
                await write_source_offsets(backend, "millpond-cli-source-offsets", dict.fromkeys(keys))

            async def move(offsets: dict[TopicPartition, int]) -> None:
                await backend.reset_offsets(args.group, offsets)
        done = await _source_reset(backend, args, drop)
        if done is not None:
            return done
        plan = await reset_plan(backend, args)
        if move is not None:
            await move({tp: new for tp, _, new in plan})
    rows = [(tp.topic, tp.partition, "-" if cur is None else cur, new) for tp, cur, new in plan]
    print(format_table(("TOPIC", "PARTITION", "CURRENT", "NEW"), rows))
    if execute:
        where = f" through the worker at {client.url}" if client is not None else ""
        print(f"reset {len(plan)} partition(s) of group {args.group!r}{where}", file=sys.stderr)
    else:
        print(f"plan only: group {args.group!r} not changed (add --execute to apply)", file=sys.stderr)
    return 0


# -- commands: dlq ---------------------------------------------------------------

DLQ_REPLAY_HELP = """\
Re-feed a dead-letter topic's records to the stage that rejected them, once the cause is fixed.
Shows the plan by default; --execute replays.

  a record a SINK rejected is appended again to the topic and partition it was read from: its new
    offset is after the sink's position, so the sink reads it again (as does every other reader
    of that topic: it is a new record there);
  a record a SOURCE rejected (before it reached the log) is appended to the source's target topic
    as it was dead-lettered (partition by key); the source's converter and transforms do not run again.

The millpond.error.* headers are removed. Exactly once: the records and the offsets of the consumer
group DLQ.replay on the dead-letter topic are committed in one transaction, so a second replay
replays nothing already replayed. With --connector, only that connector's dead letters are
replayed, and the replay stops at the first dead letter of another connector in each partition.
Goes through the worker that holds the log when one runs.
"""


async def dlq_replay(args: argparse.Namespace) -> int:
    from .runtime.dlq import plan_replay, replay

    execute = bool(args.execute)
    client = through_worker(args) if execute else None
    if client is not None:
        shape = client.request("POST", f"/admin/dlq/{_q(args.topic)}/replay",
                               {"connector": args.connector, "execute": True})
    else:
        async with opened(args, readonly=not execute) as backend:
            with Progress(f"reading dead letters of {args.topic}", approximate=True) as reading:
                plan = await plan_replay(backend, args.topic, args.connector, reading)
            if execute:
                with Progress(f"replaying dead letters of {args.topic}", total=len(plan.letters)) as writing:
                    await replay(backend, plan, writing)
            shape = plan.shape(executed=execute)
    records = shape["records"]
    if records:
        print(format_table(
            ("DLQ PARTITION", "DLQ OFFSET", "CONNECTOR", "STAGE", "REJECTED BY", "FROM", "TO"),
            [(r["dlq_partition"], r["dlq_offset"], r["connector"], r["stage"], r["rejected_by"], r["origin"],
              r["topic"] + ("" if r["partition"] is None else f"-{r['partition']}") +
              (" (by key)" if r["partition"] is None else "")) for r in records]))
    for stop in shape["stopped"]:
        print(f"partition {stop['partition']}: stops at offset {stop['offset']}, a dead letter of connector "
              f"{stop['connector']!r} (replay it with --connector {stop['connector']}, or without --connector)",
              file=sys.stderr)
    group = shape["group"]
    if not execute:
        print(f"plan only: {len(records)} dead letter(s) of {args.topic!r} would be replayed "
              f"(add --execute to apply)", file=sys.stderr)
    elif records or shape["commit_to"]:
        where = f" through the worker at {client.url}" if client is not None else ""
        print(f"replayed {len(records)} dead letter(s) of {args.topic!r}{where}; group {group!r} committed with "
              f"them", file=sys.stderr)
    else:
        print(f"nothing to replay: group {group!r} is at the end of {args.topic!r}", file=sys.stderr)
    return 0


# -- the parser --------------------------------------------------------------


def _async(fn: Callable[[argparse.Namespace], Awaitable[int]]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return asyncio.run(_await(fn(args)))  # type: ignore[no-any-return]

    run.__name__ = fn.__name__
    return run


EXAMPLES = """\
examples:
  millpond validate configs/quickstart.yaml
  millpond run configs/quickstart.yaml
  millpond topics describe lines -c configs/quickstart.yaml
  seq 10 | millpond produce lines --log ./data/quickstart
  millpond consume lines --from-time 2024-05-01T00:00:00Z --log ./data/quickstart
  millpond groups reset out --to-earliest --log ./data/quickstart            # the plan
  millpond groups reset out --to-earliest --execute --log ./data/quickstart  # apply it
  millpond dlq replay lines-dlq --execute --log ./data/quickstart            # dead letters go home

exit codes: 0 ok, 1 error (one line on stderr), 2 usage, 130 interrupted
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="millpond",
        description="Connector-based data integration on a commit log.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr")
    from . import __version__, speedups

    parser.add_argument("--version", action="version",
                        version=f"millpond {__version__} (speedups: {speedups.describe()})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    log = argparse.ArgumentParser(add_help=False)
    where = log.add_argument_group("log")
    where.add_argument("--log", metavar="DIR", default=os.environ.get("MILLPOND_LOG"),
                       help="embedded log directory (default: $MILLPOND_LOG)")
    where.add_argument("-c", "--pipeline", metavar="FILE", help="use the log: block of this pipeline file")

    p = sub.add_parser("run", help="run a pipeline")
    p.add_argument("file")
    p.add_argument("--until-idle", action="store_true", help="stop once every source is drained and sinks caught up")
    p.add_argument("--api", metavar="HOST:PORT", help="where the worker's HTTP API listens (port 0: a free one), "
                   "or 'off' (default: the file's api: block, else 127.0.0.1:8083)")
    p.add_argument("--worker-id", metavar="ID", help="this worker's name in status and in groups describe "
                   "(default: the file's worker: {id: ...}, else HOST:PID)")
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output (tracebacks)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a pipeline file; print every problem as FILE:LINE: path: message")
    p.add_argument("file")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plugins", help="list installed plugins and what they provide")
    p.add_argument("--json", action="store_true", help="one JSON object per plugin")
    p.set_defaults(func=cmd_plugins)

    topics = sub.add_parser("topics", help="list, describe, create, alter, delete, repair topics; run retention "
                            "or compaction").add_subparsers(dest="action", metavar="ACTION", required=True)
    p = topics.add_parser("list", parents=[log], help="topics with partitions and size")
    p.add_argument("--all", action="store_true", help="include internal topics (__...)")
    p.set_defaults(func=_async(topics_list))
    p = topics.add_parser("describe", parents=[log], help="per-partition offsets and size")
    p.add_argument("topics", nargs="+", metavar="TOPIC")
    p.set_defaults(func=_async(topics_describe))
    p = topics.add_parser("create", parents=[log], help="create a topic")
    p.add_argument("topic")
    p.add_argument("-p", "--partitions", type=_at_least_one, default=1)
    p.add_argument("--config", dest="setting", action="append", default=[], metavar="KEY=VALUE",
                   help="a topic setting such as retention.ms=86400000 (repeatable)")
    p.add_argument("--if-not-exists", action="store_true")
    p.set_defaults(func=_async(topics_create))
    p = topics.add_parser("repair", parents=[log], help="put back or discard data recovery moved into quarantine")
    p.add_argument("topic")
    p.add_argument("--partition", type=int, help="only this partition (default: every quarantined one)")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--restore", action="store_true", help="put the files back and recover again")
    action.add_argument("--discard", action="store_true", help="delete the quarantined files for good")
    p.set_defaults(func=_async(topics_repair))
    p = topics.add_parser("alter", parents=[log], help="change a topic's settings (kafka-configs --alter)")
    p.add_argument("topic")
    p.add_argument("--config", dest="setting", action="append", default=[], metavar="KEY=VALUE",
                   help="set this setting (repeatable)")
    p.add_argument("--delete-config", action="append", default=[], metavar="KEY",
                   help="put this setting back to its default (repeatable)")
    p.set_defaults(func=_async(topics_alter))
    p = topics.add_parser("delete", parents=[log], help="delete topics and their data")
    p.add_argument("topics", nargs="+", metavar="TOPIC")
    p.set_defaults(func=_async(topics_delete))
    p = topics.add_parser("retain", parents=[log], help="run retention now (delete segments past retention.*)")
    p.set_defaults(func=_async(topics_retain))
    p = topics.add_parser("compact", parents=[log], help="run compaction now (topics with cleanup.policy=compact)")
    p.set_defaults(func=_async(topics_compact))

    p = sub.add_parser("produce", parents=[log], help="append stdin lines (empty ones skipped) to a topic",
                       description="Append stdin lines to a topic, one record per line. Every line is checked "
                       "before any is written: up to --transaction-records lines go in one transaction, so a "
                       "bad line leaves nothing of that input in the log.")
    p.add_argument("topic")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--key-field", metavar="FIELD", help="lines are JSON; the key is this field")
    keys.add_argument("--key-separator", metavar="SEP", help="lines are KEY<SEP>VALUE")
    keys.add_argument("--parse-key", action="store_true", help="lines are KEY<TAB>VALUE (Kafka's parse.key)")
    p.add_argument("--parse-headers", action="store_true",
                   help="lines start with NAME:VALUE,NAME:VALUE<TAB> (Kafka's parse.headers)")
    p.add_argument("--headers-delimiter", default="\t", metavar="SEP", help="after the headers (default TAB)")
    p.add_argument("--headers-separator", default=",", metavar="SEP", help="between headers (default ,)")
    p.add_argument("--headers-key-separator", default=":", metavar="SEP", help="in a header (default :)")
    p.add_argument("--null-marker", metavar="TEXT",
                   help="a key, value or header value equal to TEXT is null (a null value is a tombstone)")
    stamp = p.add_mutually_exclusive_group()
    stamp.add_argument("--timestamp", metavar="TIME", help="every record's timestamp (ISO, epoch ms, now, -1h)")
    stamp.add_argument("--timestamp-field", metavar="FIELD",
                       help="values are JSON; the timestamp is this field (epoch ms or ISO)")
    p.add_argument("--partition", type=int, help="this partition instead of the key's")
    p.add_argument("--property", action="append", default=[], metavar="NAME=VALUE",
                   help="kafka-console-producer's properties: " + ", ".join(PRODUCE_PROPERTIES))
    p.add_argument("--transaction-records", type=_at_least_one, default=100_000, metavar="N",
                   help="lines per transaction (default 100000); a larger input is written in several")
    p.set_defaults(func=_async(produce))

    p = sub.add_parser("consume", parents=[log], help="print records (JSON lines, or text like Kafka's console consumer)",
                       description="Print records from the start position to the end of the log as it was at "
                       "start (or --to-time, --max-messages; with --follow, until Ctrl-C or --timeout-ms). "
                       "Exit 0 with the count on stderr.")
    p.add_argument("topics", nargs="+", metavar="TOPIC")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-beginning", action="store_true")
    start.add_argument("--offset", type=int, metavar="N", help="start offset per partition; negative counts from the end")
    start.add_argument("--from-time", metavar="TIME", help="first record at or after TIME (ISO, epoch ms, now, -1h)")
    p.add_argument("--to-time", metavar="TIME", help="stop before the first record at or after TIME (per partition)")
    p.add_argument("-f", "--follow", action="store_true", help="keep waiting for new records")
    p.add_argument("--timeout-ms", type=int, metavar="MS", help="with --follow: stop after MS without a record")
    p.add_argument("-g", "--group", help="read as this consumer group and commit its offsets")
    p.add_argument("-n", "--max", "--max-messages", dest="max", type=_at_least_one, metavar="N",
                   help="stop after N records")
    p.add_argument("--format", choices=("auto", "json", "text", "base64"), default=None,
                   help="auto/json/base64: a JSON line per record, its value parsed as JSON when it is (auto), "
                   "always (json) or never (base64); text: the value alone, as kafka-console-consumer prints it")
    text = p.add_argument_group("--format text (kafka-console-consumer's formatter properties)")
    for flag in ("timestamp", "partition", "offset", "headers", "key"):
        text.add_argument(f"--print-{flag}", action="store_true", help=f"print the {flag} before the value")
    text.add_argument("--no-print-value", dest="print_value", action="store_false", help="leave the value out")
    text.add_argument("--key-separator", default="\t", metavar="SEP", help="between printed fields (default TAB)")
    text.add_argument("--headers-separator", default=",", metavar="SEP", help="between headers (default ,)")
    text.add_argument("--headers-key-separator", default=":", metavar="SEP", help="in a header (default :)")
    text.add_argument("--null-literal", default="null", metavar="TEXT", help="how null prints (default null)")
    p.add_argument("--property", action="append", default=[], metavar="NAME=VALUE",
                   help="kafka-console-consumer's formatter properties: " + ", ".join(CONSUME_PROPERTIES))
    p.set_defaults(func=_async(consume), line_separator="\n")

    groups = sub.add_parser("groups", help="list, describe (with lag), reset consumer groups").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = groups.add_parser("list", parents=[log], help="groups with their topics and total lag")
    p.set_defaults(func=_async(groups_list))
    p = groups.add_parser("describe", parents=[log], help="committed offset and lag per partition")
    p.add_argument("group")
    p.set_defaults(func=_async(groups_describe))
    p = groups.add_parser("reset", parents=[log], help="move a group's offsets, or drop a source's checkpoint",
                          description="Show the plan for moving a consumer group's committed offsets (or, for a "
                          "source connector, dropping its checkpoint with --to-earliest); --execute applies it.")
    p.add_argument("group", help="a consumer group (a sink connector's name) or a source connector's name")
    p.add_argument("--topic", action="append", help="reset every partition of this topic (repeatable)")
    to = p.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true")
    to.add_argument("--to-latest", action="store_true")
    to.add_argument("--to-current", action="store_true", help="the committed offsets (the log end where none)")
    to.add_argument("--to-offset", type=int, metavar="N")
    to.add_argument("--shift-by", type=int, metavar="N", help="move the committed offsets by N (negative: back)")
    to.add_argument("--to-time", "--to-datetime", dest="to_time", metavar="TIME",
                    help="the first offset at or after TIME (ISO, epoch ms, now, -1h)")
    to.add_argument("--by-duration", metavar="DURATION", help="the first offset at or after now minus DURATION "
                    "(PnDTnHnM such as PT1H, or 1h, 30m, 2d)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--execute", action="store_true", help="apply the plan")
    mode.add_argument("--dry-run", action="store_true", help="show the plan, change nothing (the default)")
    p.set_defaults(func=_async(groups_reset))

    dlq = sub.add_parser("dlq", help="replay dead letters").add_subparsers(dest="action", metavar="ACTION",
                                                                          required=True)
    p = dlq.add_parser("replay", parents=[log], help="re-feed a dead-letter topic to the stage that rejected it",
                       description=DLQ_REPLAY_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("topic", metavar="DLQ_TOPIC")
    p.add_argument("--connector", metavar="NAME", help="only the dead letters of this connector")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--execute", action="store_true", help="replay (default: show the plan)")
    mode.add_argument("--dry-run", action="store_true", help="show the plan, change nothing (the default)")
    p.set_defaults(func=_async(dlq_replay))

    from . import top

    top.add_parser(sub)
    return parser


#: options whose value may be a relative time such as ``-1h``
_TIME_OPTIONS = ("--from-time", "--to-time", "--timestamp", "--to-datetime", "--by-duration")


def _glue_relative_times(argv: Sequence[str]) -> list[str]:
    """``--from-time -1h`` -> ``--from-time=-1h``: argparse takes a value that starts with '-' for an option."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in _TIME_OPTIONS and _RELATIVE.fullmatch(arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(_glue_relative_times(sys.argv[1:] if argv is None else argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    # `run` is long: its progress (records/s, lag) is logged at INFO, so show INFO there
    base = logging.INFO if args.command == "run" else logging.WARNING
    logging.basicConfig(level=max(logging.DEBUG, base - 10 * args.verbose), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args))
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"millpond: error: {exc}", file=sys.stderr)
        return 2
    except PipelineFileError as exc:
        for problem in exc.problems:
            print(problem.format(exc.filename), file=sys.stderr)
        return 1
    except MillpondError as exc:
        print(f"millpond: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (consume | head): not an error
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
