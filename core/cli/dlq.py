"""``millpond dlq replay``: dead letters back to the stage that rejected them."""

from __future__ import annotations

import argparse
import sys

from ..progress import Progress
from .common import (
    _q,
    format_table,
    opened,
    through_worker,
)

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
    from ..runtime.dlq import plan_replay, replay

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
