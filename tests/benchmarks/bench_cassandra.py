"""Rows/s from the log into Cassandra vs the driver's own execute_concurrent_with_args.

Three ways write the same rows (same columns, same ``USING TIMESTAMP``) into
three tables of the same shape on the same real Cassandra, in the same run,
with the same concurrency:

* ``baseline_driver``: ``execute_concurrent_with_args`` binding ready-made tuples;
* ``sink`` (the headline figure): the records sit JSON-encoded in an embedded
  log and the millpond runtime consumes them into CassandraSink (converter,
  ``write()`` per poll, ``flush()`` and the group's offset commit), timed from
  the worker's start until every record is flushed and committed;
* ``sink_direct``: CassandraSink's ``write()``/``flush()`` fed deserialized
  records directly (20,000 per call), i.e. the sink without the log.

Each round runs all three, rotating which goes first; rows/s are the best
round of each, and ``ratio`` is the median over rounds of sink / baseline
measured in the same round (this machine's neighbours make single figures
swing by half).

Uses MILLPOND_TEST_CASSANDRA=host:port if set, else starts the test harness's
Cassandra. ``--quick`` writes 20,000 rows instead of 200,000. The last line is
JSON with ``sink_rows_per_s``, ``baseline_driver_rows_per_s``, ``ratio`` (sink /
baseline), ``sink_direct_rows_per_s`` and ``direct_ratio``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from millpond.connector import ConnectorContext  # noqa: E402
from millpond.connectors.cassandra import CassandraSink  # noqa: E402
from millpond.records import Record  # noqa: E402
from tests.benchmarks import harness  # noqa: E402

KEYSPACE = "bench_millpond"
TOPIC = "bench"
BATCH = 20_000  # the runtime's max_poll_records
BASE_TS = 1_700_000_000_000
TABLES = ("via_sink", "via_driver", "via_log")


def make_records(n: int) -> list[Record]:
    return [
        Record(
            value={"id": i, "name": f"customer-{i % 997}", "amount": i * 0.01, "qty": i % 100, "active": i % 2 == 0},
            key={"id": i},
            timestamp=BASE_TS + i // 10,
            topic=TOPIC,
            partition=0,
            offset=i,
        )
        for i in range(n)
    ]


def prepare_tables(session: Any) -> None:
    session.execute(
        f"CREATE KEYSPACE IF NOT EXISTS {KEYSPACE} WITH replication = "
        "{'class': 'SimpleStrategy', 'replication_factor': 1}"
    )
    for table in TABLES:
        session.execute(
            f"CREATE TABLE IF NOT EXISTS {KEYSPACE}.{table} "
            "(id bigint PRIMARY KEY, name text, amount double, qty int, active boolean)"
        )


def truncate(session: Any) -> None:
    for table in TABLES:
        session.execute(f"TRUNCATE {KEYSPACE}.{table}", timeout=60)


def run_baseline(session: Any, records: list[Record], concurrency: int) -> float:
    from cassandra.concurrent import execute_concurrent_with_args

    prepared = session.prepare(
        f"INSERT INTO {KEYSPACE}.via_driver (id, name, amount, qty, active) VALUES (?, ?, ?, ?, ?) USING TIMESTAMP ?"
    )
    rows = [
        (v["id"], v["name"], v["amount"], v["qty"], v["active"], r.timestamp * 1000 + r.offset)  # type: ignore[operator]
        for r in records
        for v in (r.value,)
    ]
    elapsed, results = harness.timed(
        lambda: execute_concurrent_with_args(session, prepared, rows, concurrency=concurrency, raise_on_first_error=True)
    )
    assert all(ok for ok, _ in results)
    return len(rows) / elapsed


def run_sink(host: str, port: int, records: list[Record], concurrency: int) -> float:
    config = {
        "contact_points": [host],
        "port": port,
        "keyspace": KEYSPACE,
        "tables": [{"topic": TOPIC, "table": "via_sink"}],
        "concurrency": concurrency,
    }

    async def go() -> float:
        sink = CassandraSink(config, ConnectorContext(name="bench"))
        await sink.start()

        async def write_all() -> None:
            for start in range(0, len(records), BATCH):
                await sink.write(records[start : start + BATCH])
            await sink.flush({})

        try:
            elapsed, _ = await harness.timed_async(write_all())
        finally:
            await sink.stop()
        return len(records) / elapsed

    return asyncio.run(go())


def fill_log(directory: Path, records: list[Record]) -> None:
    """Append the records, JSON-encoded as the json converter would, to an embedded log."""
    from millpond.backends import open_backend
    from millpond.backends.base import TopicSpec
    from millpond.config import EmbeddedLog, LogConfig

    async def go() -> None:
        backend = open_backend(LogConfig(embedded=EmbeddedLog(dir=str(directory))))
        await backend.open()
        try:
            await backend.create_topic(TopicSpec(TOPIC, 1), exist_ok=True)
            producer = backend.producer()
            for start in range(0, len(records), BATCH):
                chunk = [
                    Record(value=json.dumps(r.value).encode(), key=str(r.value["id"]).encode(), timestamp=r.timestamp)
                    for r in records[start : start + BATCH]
                ]
                await producer.send_batch(TOPIC, 0, chunk)
                await producer.flush()
            await producer.close()
        finally:
            await backend.close()

    asyncio.run(go())


def run_pipeline(host: str, port: int, directory: Path, n: int, concurrency: int, group: str) -> float:
    """Seconds from the worker's start until the sink flushed and committed all ``n`` records."""
    from millpond.config import PipelineConfig

    config = PipelineConfig.model_validate({
        "name": "bench-cassandra",
        "log": {"embedded": {"dir": str(directory)}},
        "topics": [{"name": TOPIC, "partitions": 1}],
        "connectors": [{
            "name": group, "kind": "sink", "type": "cassandra", "topics": [TOPIC],
            "converter": {"key": "string", "value": "json"}, "guarantee": "exactly_once",
            "config": {"contact_points": [host], "port": port, "keyspace": KEYSPACE,
                       "tables": [{"topic": TOPIC, "table": "via_log"}], "concurrency": concurrency},
        }],
    })

    async def go() -> float:
        times = await harness.run_pipeline(config, harness.sink_committed(n), poll_s=0.005)
        return times.done_s

    return n / asyncio.run(go())


def count(session: Any, table: str) -> int:
    return int(session.execute(f"SELECT count(*) FROM {KEYSPACE}.{table}", timeout=120).one()[0])


def main() -> None:
    parser = harness.parser(__doc__ or "", quick="20,000 rows and 1 round instead of 200,000 and 3", rounds=0)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=128)
    args = parser.parse_args()
    n = args.rows or (20_000 if args.quick else 200_000)
    rounds = args.rounds or (1 if args.quick else 3)

    server = None
    contact = os.environ.get("MILLPOND_TEST_CASSANDRA")
    if contact:
        host, _, port_text = contact.rpartition(":")
        port = int(port_text)
    else:
        from tests.servers.cassandra import CassandraServer, cassandra_lib

        server = CassandraServer(cassandra_lib())
        server.start()
        host, port = "127.0.0.1", server.port
        print(f"started Apache Cassandra on {host}:{port} in {server.started_in:.1f}s", flush=True)

    from cassandra.cluster import Cluster

    cluster = Cluster([host], port=port, protocol_version=5)
    try:
        session = cluster.connect()
        prepare_tables(session)
        records = make_records(n)
        work = Path(tempfile.mkdtemp(prefix="bench-cassandra-"))
        fill_log(work / "log", records)
        warm = records[: min(5_000, n)]
        run_baseline(session, warm, args.concurrency)  # warm up both paths and the server's JIT
        run_sink(host, port, warm, args.concurrency)
        best = {"baseline": 0.0, "sink": 0.0, "direct": 0.0}
        ratios: list[float] = []
        direct_ratios: list[float] = []
        runs = {
            "baseline": lambda: run_baseline(session, records, args.concurrency),
            "sink": lambda: run_pipeline(host, port, work / "log", n, args.concurrency, f"bench-{round_no}"),
            "direct": lambda: run_sink(host, port, records, args.concurrency),
        }
        for round_no in range(rounds):
            truncate(session)
            order = harness.rotate(list(runs), round_no)  # no path always goes first
            figures = {name: runs[name]() for name in order}
            for name, value in figures.items():
                best[name] = max(best[name], value)
            ratios.append(figures["sink"] / figures["baseline"])
            direct_ratios.append(figures["direct"] / figures["baseline"])
            print(f"round {round_no + 1}: driver {figures['baseline']:,.0f} rows/s, log->sink "
                  f"{figures['sink']:,.0f} rows/s, sink direct {figures['direct']:,.0f} rows/s", flush=True)
        written = tuple(count(session, t) for t in TABLES)
        if written != (n, n, n):
            raise SystemExit(f"row counts differ from {n}: {dict(zip(TABLES, written))}")
        shutil.rmtree(work, ignore_errors=True)
        session.execute(f"DROP KEYSPACE {KEYSPACE}", timeout=60)
    finally:
        cluster.shutdown()
        if server is not None:
            server.stop()
            server.cleanup()
    # the ratio pairs figures measured side by side in one round (a busy neighbour slows
    # both), then takes the median over rounds
    ratio = statistics.median(ratios)
    direct_ratio = statistics.median(direct_ratios)
    print(f"{n:,} rows, concurrency {args.concurrency}: log -> runtime -> sink {best['sink']:,.0f} rows/s, "
          f"sink direct {best['direct']:,.0f} rows/s, driver execute_concurrent_with_args "
          f"{best['baseline']:,.0f} rows/s; ratio {ratio:.2f} (direct {direct_ratio:.2f}), target >= 0.7")
    harness.emit({
        "rows": n,
        "concurrency": args.concurrency,
        "sink_rows_per_s": round(best["sink"]),
        "baseline_driver_rows_per_s": round(best["baseline"]),
        "ratio": round(ratio, 3),
        "sink_direct_rows_per_s": round(best["direct"]),
        "direct_ratio": round(direct_ratio, 3),
    })


if __name__ == "__main__":
    main()
