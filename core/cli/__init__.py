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
import logging
import os
import sys
from collections.abc import Awaitable, Callable, Sequence

from ..config import PipelineFileError
from ..errors import MillpondError
from ..units import human_bytes
from .common import _RELATIVE, UsageError, _at_least_one, format_table, parse_time, record_json
from .console import CONSUME_PROPERTIES, PRODUCE_PROPERTIES, consume, produce, split_line
from .dlq import DLQ_REPLAY_HELP, dlq_replay
from .groups import groups_describe, groups_list, groups_reset
from .pipelines import _await, cmd_plugins, cmd_run, cmd_validate
from .topics import (
    topics_alter,
    topics_compact,
    topics_create,
    topics_delete,
    topics_describe,
    topics_list,
    topics_repair,
    topics_retain,
)

__all__ = ["UsageError", "build_parser", "format_table", "human_bytes", "main", "parse_time", "record_json",
           "split_line"]

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
  millpond verify audit --public-key audit.pub --log ./data/audit            # tamper evidence, exit 3 if broken

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
    from .. import __version__, speedups

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

    from .. import top
    from . import audit

    top.add_parser(sub)
    audit.add_parser(sub, log)
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

