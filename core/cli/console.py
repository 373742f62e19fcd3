"""``millpond produce`` and ``consume``, with the habits of Kafka's console producer and consumer."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from typing import IO, Any

from ..api.client import WorkerClient
from ..backends.base import IsolationLevel, LogBackend
from ..errors import MillpondError
from ..progress import Progress
from ..records import Record, TopicPartition
from .common import (
    UsageError,
    _q,
    opened,
    parse_time,
    record_json,
    through_worker,
)

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

    from ..api.admin import RECORD_BATCH, encode_batch

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
