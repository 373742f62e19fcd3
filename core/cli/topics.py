"""``millpond topics``: list, describe, create, alter, delete, repair, retain, compact."""

from __future__ import annotations

import argparse
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from ..backends.base import TopicSpec
from ..progress import Progress
from ..units import human_bytes
from .common import (
    UsageError,
    _q,
    _setting,
    format_table,
    opened,
    through_worker,
)


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
    from ..backends.embedded import EmbeddedBackend

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
    from ..config import check_topic_name

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
    from ..api.admin import alter_topic_config

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
    from ..runtime.scheduler import MaintenanceReport, run_maintenance

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
