"""The ``millpond`` command.

Exit codes: 0 ok, 1 a user error (one line, no traceback, for any
``MillpondError``), 2 a usage error, 130 interrupted.

Commands that read the log (``topics list``, ``consume``, ``groups describe``)
open it read-only, so they work beside a running worker; commands that write
(``topics create``, ``produce``, ``groups reset``) need the writer lock and
say so clearly when a worker holds it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
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

from .backends.base import IsolationLevel, LogBackend, TopicSpec
from .config import EmbeddedLog, LogConfig, PipelineFileError, load_pipeline, validate_file
from .errors import MillpondError
from .records import Record, TopicPartition


class UsageError(Exception):
    """The command line itself is wrong (exit 2)."""


# -- output helpers ----------------------------------------------------------


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


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


class Progress:
    """Counts on stderr while a long operation runs: in place on a terminal, a
    line every few seconds otherwise, and a closing line at the end."""

    def __init__(self, what: str, stream: IO[str] | None = None) -> None:
        self.what = what
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.count = 0
        self._last = time.monotonic()
        self._every = 0.5 if self.tty else 5.0

    def add(self, n: int = 1) -> None:
        self.count += n
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            end = "\r" if self.tty else "\n"
            print(f"{self.what} {self.count:,} records", end=end, file=self.stream, flush=True)

    def done(self, suffix: str = "") -> None:
        clear = "\r\033[K" if self.tty else ""
        print(f"{clear}{self.what} {self.count:,} records{suffix}", file=self.stream, flush=True)


def parse_time(text: str) -> int:
    """ISO-8601 (naive means UTC) or epoch milliseconds -> epoch milliseconds."""
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"not an ISO-8601 time: {text!r} (e.g. 2024-05-01T12:00:00Z)") from None
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


# -- commands: pipelines -----------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    config = load_pipeline(args.file)
    from .runtime import run_pipeline  # lazily: the runtime pulls in the scheduler

    run_pipeline(config, until_idle=args.until_idle)
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
                              "version": info.version, "provides": info.provides}))
        return 0
    rows = [
        (info.name, info.distribution or "-", info.version or "-",
         "; ".join(f"{kind}: {', '.join(names)}" for kind, names in info.provides.items()) or "-")
        for info in infos
    ]
    print(format_table(("PLUGIN", "DISTRIBUTION", "VERSION", "PROVIDES"), rows))
    for error in plugins.load_errors():
        print(f"failed to load plugin {error.name!r} ({error.distribution} {error.version}): {error.error}",
              file=sys.stderr)
    return 0


# -- commands: topics --------------------------------------------------------


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
            settings_of = getattr(backend, "topic_settings", None)
            settings = await settings_of(name) if settings_of else {}
            if i:
                print()
            print(f"Topic: {name}   partitions: {len(parts)}")
            if settings:
                pairs = ", ".join(f"{k}={v}" for k, v in sorted(settings.items()))
                print(textwrap.fill(pairs, width=100, initial_indent="Settings: ", subsequent_indent="  "))
            rows: list[Sequence[Any]] = [
                (p.partition, p.log_start_offset, p.log_end_offset, p.last_stable_offset,
                 p.log_end_offset - p.log_start_offset, human_bytes(p.size_bytes), p.segments)
                for p in parts
            ]
            rows.append(("total", "", "", "", sum(p.log_end_offset - p.log_start_offset for p in parts),
                         human_bytes(sum(p.size_bytes for p in parts)), sum(p.segments for p in parts)))
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
        done = backend.store.repair(args.topic, args.partition, "restore" if args.restore else "discard")
    for line in done:
        print(line, file=sys.stderr)
    if not done:
        print(f"nothing is quarantined in topic {args.topic!r}", file=sys.stderr)
    return 0


async def topics_create(args: argparse.Namespace) -> int:
    from .config import check_topic_name

    check_topic_name(args.topic)
    settings = dict(_setting(s) for s in args.setting)
    async with opened(args, readonly=False) as backend:
        await backend.create_topic(TopicSpec(args.topic, args.partitions, settings), exist_ok=args.if_not_exists)
    print(f"created topic {args.topic!r} with {args.partitions} partition(s)", file=sys.stderr)
    return 0


async def topics_delete(args: argparse.Namespace) -> int:
    async with opened(args, readonly=False) as backend:
        for name in args.topics:
            await backend.delete_topic(name)
            print(f"deleted topic {name!r}", file=sys.stderr)
    return 0


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


async def produce(args: argparse.Namespace, stdin: IO[bytes] | None = None) -> int:
    stdin = stdin or sys.stdin.buffer
    progress = Progress(f"produced to {args.topic}:")
    async with opened(args, readonly=False) as backend:
        await backend.partitions_for(args.topic)  # fails early, naming the topic, if it does not exist
        producer = backend.producer()
        try:
            pending = 0
            for number, raw in enumerate(stdin, 1):
                line = raw.rstrip(b"\r\n")
                if not line:
                    continue
                key, value = split_line(line, args.key_field, args.key_separator, number)
                record = Record(value=value, key=key, timestamp=int(time.time() * 1000))
                await producer.send(args.topic, record, args.partition)
                pending += 1
                if pending >= 5000:
                    await producer.flush()
                    progress.add(pending)
                    pending = 0
        finally:
            await producer.flush()
            progress.add(pending)
            await producer.close()
            progress.done()
    return 0


async def _start_offsets(backend: LogBackend, args: argparse.Namespace, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    """Where each partition starts when an option says so (empty: committed or latest)."""
    if not (args.from_beginning or args.offset is not None or args.from_time):
        return {}
    infos = {TopicPartition(p.topic, p.partition): p for t in args.topics for p in await backend.describe_topic(t)}
    start: dict[TopicPartition, int] = {}
    for tp in tps:
        info = infos[tp]
        if args.from_beginning:
            start[tp] = info.log_start_offset
        elif args.offset is not None:
            wanted = args.offset if args.offset >= 0 else info.log_end_offset + args.offset
            start[tp] = min(max(wanted, info.log_start_offset), info.log_end_offset)
        else:
            found = await backend.offset_for_time(tp, parse_time(args.from_time))
            start[tp] = info.log_end_offset if found is None else found
    return start


async def consume(args: argparse.Namespace, out: IO[str] | None = None) -> int:
    out = out or sys.stdout
    progress = Progress(f"consumed from {', '.join(args.topics)}:")
    async with opened(args, readonly=args.group is None) as backend:
        consumer = backend.consumer(args.topics, group=args.group, isolation=IsolationLevel.read_committed,
                                    reset="earliest" if args.from_beginning else "latest")
        try:
            tps = sorted(consumer.assignment())
            for tp, offset in (await _start_offsets(backend, args, tps)).items():
                await consumer.seek(tp, offset)
            ends = {TopicPartition(p.topic, p.partition): p.last_stable_offset
                    for t in args.topics for p in await backend.describe_topic(t)}
            stalled = 0
            while True:
                if not args.follow:
                    positions = [await consumer.position(tp) for tp in tps]
                    if all(pos >= ends[tp] for pos, tp in zip(positions, tps)):
                        break
                records = await consumer.poll(max_records=1000, timeout=1.0 if args.follow else 0.2)
                if not args.follow:
                    # a guard, not a rule: positions that stop moving short of the end mean stop
                    moved = records or positions != [await consumer.position(tp) for tp in tps]
                    stalled = 0 if moved else stalled + 1
                    if stalled >= 25:
                        logging.getLogger(__name__).warning("no progress towards the end offsets %s; stopping", ends)
                        break
                if args.max is not None:
                    records = records[: args.max - progress.count]
                for record in records:
                    out.write(record_json(record, args.format) + "\n")
                out.flush()
                progress.add(len(records))
                if args.group and records:
                    nexts: dict[TopicPartition, int] = {}
                    for r in records:
                        nexts[r.topic_partition] = max(nexts.get(r.topic_partition, 0), (r.offset or 0) + 1)
                    await consumer.commit(nexts)
                if args.max is not None and progress.count >= args.max:
                    break
        finally:
            await consumer.close()
    if not args.follow:
        hint = "" if progress.count or args.from_beginning or args.group else " (use --from-beginning for older records)"
        progress.done(hint)
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
    async with opened(args, readonly=True) as backend:
        offsets = await backend.describe_group(args.group)
        if not offsets:
            known = ", ".join(await backend.list_groups()) or "none"
            raise MillpondError(f"group {args.group!r} has no committed offsets (groups: {known})")
    rows: list[Sequence[Any]] = [
        (o.topic_partition.topic, o.topic_partition.partition, o.committed, o.log_end_offset, o.lag) for o in offsets
    ]
    rows.append(("total", "", "", "", sum(o.lag for o in offsets)))
    print(f"Group: {args.group}")
    print(format_table(("TOPIC", "PARTITION", "COMMITTED", "END", "LAG"), rows))
    return 0


async def reset_plan(backend: LogBackend, args: argparse.Namespace) -> list[tuple[TopicPartition, int | None, int]]:
    """(partition, current committed offset, new offset) for each partition the reset touches."""
    committed = await backend.committed(args.group)
    if args.topic:
        tps = [TopicPartition(t, p) for t in args.topic for p in range(await backend.partitions_for(t))]
    else:
        tps = sorted(committed)
    if not tps:
        raise MillpondError(f"group {args.group!r} has no committed offsets; name the partitions with --topic")
    plan = []
    for tp in tps:
        info = next(p for p in await backend.describe_topic(tp.topic) if p.partition == tp.partition)
        if args.to_earliest:
            new = info.log_start_offset
        elif args.to_latest:
            new = info.log_end_offset
        elif args.to_offset is not None:
            new = min(max(args.to_offset, info.log_start_offset), info.log_end_offset)
        else:
            found = await backend.offset_for_time(tp, parse_time(args.to_time))
            new = info.log_end_offset if found is None else found
        plan.append((tp, committed.get(tp), new))
    return plan


async def groups_reset(args: argparse.Namespace) -> int:
    async with opened(args, readonly=args.dry_run) as backend:
        plan = await reset_plan(backend, args)
        if not args.dry_run:
            await backend.reset_offsets(args.group, {tp: new for tp, _, new in plan})
    rows = [(tp.topic, tp.partition, "-" if cur is None else cur, new) for tp, cur, new in plan]
    print(format_table(("TOPIC", "PARTITION", "CURRENT", "NEW"), rows))
    if args.dry_run:
        print(f"dry run: group {args.group!r} not changed", file=sys.stderr)
    else:
        print(f"reset {len(plan)} partition(s) of group {args.group!r}", file=sys.stderr)
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
  millpond groups reset out --to-earliest --dry-run --log ./data/quickstart

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
    from . import __version__

    parser.add_argument("--version", action="version", version=f"millpond {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    log = argparse.ArgumentParser(add_help=False)
    where = log.add_argument_group("log")
    where.add_argument("--log", metavar="DIR", default=os.environ.get("MILLPOND_LOG"),
                       help="embedded log directory (default: $MILLPOND_LOG)")
    where.add_argument("-c", "--pipeline", metavar="FILE", help="use the log: block of this pipeline file")

    p = sub.add_parser("run", help="run a pipeline")
    p.add_argument("file")
    p.add_argument("--until-idle", action="store_true", help="stop once every source is drained and sinks caught up")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("validate", help="check a pipeline file; print every problem as FILE:LINE: path: message")
    p.add_argument("file")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("plugins", help="list installed plugins and what they provide")
    p.add_argument("--json", action="store_true", help="one JSON object per plugin")
    p.set_defaults(func=cmd_plugins)

    topics = sub.add_parser("topics", help="list, describe, create, delete, repair topics").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = topics.add_parser("list", parents=[log], help="topics with partitions and size")
    p.add_argument("--all", action="store_true", help="include internal topics (__...)")
    p.set_defaults(func=_async(topics_list))
    p = topics.add_parser("describe", parents=[log], help="per-partition offsets and size")
    p.add_argument("topics", nargs="+", metavar="TOPIC")
    p.set_defaults(func=_async(topics_describe))
    p = topics.add_parser("create", parents=[log], help="create a topic")
    p.add_argument("topic")
    p.add_argument("-p", "--partitions", type=int, default=1)
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
    p = topics.add_parser("delete", parents=[log], help="delete topics and their data")
    p.add_argument("topics", nargs="+", metavar="TOPIC")
    p.set_defaults(func=_async(topics_delete))

    p = sub.add_parser("produce", parents=[log], help="append stdin lines (empty ones skipped) to a topic")
    p.add_argument("topic")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument("--key-field", metavar="FIELD", help="lines are JSON; the key is this field")
    keys.add_argument("--key-separator", metavar="SEP", help="lines are KEY<SEP>VALUE")
    p.add_argument("--partition", type=int, help="this partition instead of the key's")
    p.set_defaults(func=_async(produce))

    p = sub.add_parser("consume", parents=[log], help="print records as JSON lines")
    p.add_argument("topics", nargs="+", metavar="TOPIC")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-beginning", action="store_true")
    start.add_argument("--offset", type=int, metavar="N", help="start offset per partition; negative counts from the end")
    start.add_argument("--from-time", metavar="ISO", help="first record at or after this time")
    p.add_argument("-f", "--follow", action="store_true", help="keep waiting for new records")
    p.add_argument("-g", "--group", help="read as this consumer group and commit its offsets")
    p.add_argument("-n", "--max", type=int, metavar="N", help="stop after N records")
    p.add_argument("--format", choices=("auto", "json", "text", "base64"), default="auto",
                   help="how values are printed (auto: JSON when they parse, else text)")
    p.set_defaults(func=_async(consume))

    groups = sub.add_parser("groups", help="list, describe (with lag), reset consumer groups").add_subparsers(
        dest="action", metavar="ACTION", required=True)
    p = groups.add_parser("list", parents=[log], help="groups with their topics and total lag")
    p.set_defaults(func=_async(groups_list))
    p = groups.add_parser("describe", parents=[log], help="committed offset and lag per partition")
    p.add_argument("group")
    p.set_defaults(func=_async(groups_describe))
    p = groups.add_parser("reset", parents=[log], help="move a group's committed offsets")
    p.add_argument("group")
    p.add_argument("--topic", action="append", help="reset every partition of this topic (repeatable)")
    to = p.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-earliest", action="store_true")
    to.add_argument("--to-latest", action="store_true")
    to.add_argument("--to-offset", type=int, metavar="N")
    to.add_argument("--to-time", metavar="ISO")
    p.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    p.set_defaults(func=_async(groups_reset))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
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
