"""``millpond groups``: list, describe and reset, for consumer groups and source connectors alike."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..api.client import WorkerClient
from ..backends.base import LogBackend
from ..errors import MillpondError
from ..records import TopicPartition
from .common import (
    _RELATIVE,
    _UNIT_MS,
    UsageError,
    _q,
    format_table,
    opened,
    parse_time,
    through_worker,
)

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
    from ..runtime.source_offsets import source_offsets_of

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
    from ..runtime.source_offsets import source_offsets_of

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
    from ..runtime.source_offsets import write_source_offsets

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
