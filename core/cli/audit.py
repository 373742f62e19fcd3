"""``millpond verify``: the tamper evidence of an audit topic (see millpond.audit.verify).

Exit 0: every partition's chain is intact (and, with ``--public-key``, every
checkpoint's signature). Exit 3: evidence broken; one line per broken partition
names the offset, segment file, byte position and what kind of change it is.
Usage errors exit 2 and errors reading the log 1, as every other command.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from ..errors import ConfigError
from ..progress import Progress
from .common import UsageError, _at_least_one, log_config, opened, parse_time

EVIDENCE_BROKEN = 3

VERIFY_HELP = """\
Recompute the hash chain of a topic created with audit.chain=sha256, from the log start (or the
segment holding --from-time), and check it against the signed checkpoints in __audit_checkpoints.
Reads the log read-only, so it runs beside a worker.

Ends with OK and counts: records proven (up to the last checkpoint whose hash matches), chained but
not yet signed (after it). Or with the first place where the evidence breaks, per partition:
edited record, inserted / removed record or batch, reordered batch, replaced segment, tail cut after
a signed checkpoint, chain differs from a signed checkpoint, bad signature, damaged batch.

exit codes: 0 intact, 3 evidence broken, 1 the log cannot be read, 2 usage
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser], log: argparse.ArgumentParser) -> None:
    p = sub.add_parser("verify", parents=[log], help="check an audit topic's hash chain and signed checkpoints",
                       description=VERIFY_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("topic")
    p.add_argument("--partition", type=int, action="append", metavar="P", help="only this partition (repeatable)")
    p.add_argument("--from-time", metavar="TIME", help="start at the segment holding TIME (ISO, epoch ms, -30d)")
    p.add_argument("--public-key", metavar="FILE", help="Ed25519 public key (PEM) the checkpoints must be signed "
                   "with; without it, checkpoint hashes are compared but signatures not checked")
    p.add_argument("--report", metavar="FILE", help="also write what was checked, as JSON, to FILE")
    p.add_argument("--jobs", type=_at_least_one, metavar="N", help="check up to N partitions at once, each in its "
                   "own process, where the log is large enough to repay starting them (default: as many as "
                   "there are CPUs; 1 leaves more to a worker beside it)")
    p.set_defaults(func=verify)


def verify(args: argparse.Namespace) -> int:
    from ..audit.checkpoints import load_public_key
    from ..audit.verify import verify_topic
    from ..log.store import LogStore

    config = log_config(args)
    from_time = parse_time(args.from_time) if args.from_time else None
    public_key = load_public_key(args.public_key) if args.public_key else None
    if config.embedded is None:
        if args.from_time or args.partition:
            raise UsageError("--from-time and --partition read segment files: an embedded log only")
        report = asyncio.run(_through_backend(args, public_key))
        return _finish(args, report)
    store = LogStore(config.embedded.dir, writable=False)
    try:
        topic = store.topic(args.topic)
        if topic.settings.audit_chain == "none":
            raise ConfigError(f"topic {args.topic!r} has no hash chain (set audit.chain=sha256 when creating it)")
        partitions = args.partition
        for number in partitions or ():
            if not 0 <= number < len(topic.partitions):
                raise UsageError(f"--partition {number}: topic {args.topic!r} has {len(topic.partitions)} partition(s)")
        total = sum(p.log_end_offset - p.log_start_offset for i, p in enumerate(topic.partitions)
                    if partitions is None or i in partitions)
        with Progress(f"verifying {args.topic}", total=total, approximate=True) as progress:
            report = verify_topic(store, args.topic, partitions=partitions, from_time=from_time,
                                  public_key=public_key, progress=progress, jobs=args.jobs or os.cpu_count() or 1)
    finally:
        store.close()
    return _finish(args, report)


async def _through_backend(args: argparse.Namespace, public_key: Any) -> Any:
    """A Kafka log: the topic read through the consumer (places named by offset, not file)."""
    from ..audit.verify import verify_through_backend

    async with opened(args, readonly=True) as backend:
        with Progress(f"verifying {args.topic}", approximate=True) as progress:
            return await verify_through_backend(backend, args.topic, public_key=public_key, progress=progress)


def _finish(args: argparse.Namespace, report: Any) -> int:
    if args.report:
        try:
            report.write(args.report)
        except OSError as exc:
            raise ConfigError(f"--report {args.report}: cannot write it ({exc.strerror})") from None
    print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else EVIDENCE_BROKEN
