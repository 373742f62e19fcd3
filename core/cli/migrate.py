"""``millpond migrate``: move a pipeline's embedded log to Kafka (see ``millpond.migrate``)."""

from __future__ import annotations

import argparse

from ..config import load_pipeline
from .common import UsageError, _at_least_one

MIGRATE_HELP = """\
Copy the pipeline's embedded log to a Kafka cluster: every topic with its settings and
committed records, consumer-group offsets and sinks' own offsets translated to Kafka's,
source checkpoints. Then switch the file's log: block to kafka and run it: it continues
where it stopped. Interrupted, run it again: it resumes. Refused while a worker holds the log.

  millpond migrate configs/quickstart.yaml --to-bootstrap kafka:9092 --dry-run
  millpond migrate configs/quickstart.yaml --to-bootstrap kafka:9092
  millpond migrate configs/quickstart.yaml --to quickstart-on-kafka.yaml   # its log: {kafka: ...}
"""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from . import _async

    p = sub.add_parser("migrate", help="copy a pipeline's embedded log to Kafka (resumable)",
                       description=MIGRATE_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("file", metavar="PIPELINE", help="the pipeline file whose embedded log moves")
    to = p.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-bootstrap", metavar="HOST:PORT[,...]", help="the Kafka cluster's bootstrap servers")
    to.add_argument("--to", metavar="FILE", help="a pipeline file whose log: {kafka: ...} block names the cluster "
                    "(with its security and client settings)")
    p.add_argument("--transaction-records", type=_at_least_one, default=None, metavar="N",
                   help="records per copy transaction (default 20000); the progress is written with each")
    p.add_argument("--dry-run", action="store_true", help="print the plan (topics, records, groups, checkpoints); "
                   "change nothing")
    p.set_defaults(func=_async(migrate))


async def migrate(args: argparse.Namespace) -> int:
    from ..migrate import CHUNK_RECORDS, Migration, target_backend

    config = load_pipeline(args.file)
    if config.log.embedded is None:
        raise UsageError(f"{args.file}: its log: block is not an embedded log; nothing to migrate")
    kafka = target_backend(args.to_bootstrap, args.to)
    migration = Migration(config, kafka, chunk_records=args.transaction_records or CHUNK_RECORDS)
    if not args.dry_run:
        await migration.check_log()
    async with kafka:
        if args.dry_run:
            await migration.dry_run()
        else:
            await migration.run()
    return 0
