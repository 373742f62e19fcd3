"""Rows/s through CassandraSink vs the driver's own execute_concurrent_with_args.

Both write the same rows (same columns, same ``USING TIMESTAMP``) into two
tables of the same shape on the same real Cassandra, in the same run, with the
same concurrency. The sink gets records as the runtime hands them over
(deserialized JSON values, 20,000 per ``write()``), so its figure includes
mapping, type coercion, write-timestamp derivation and the asyncio bridge; the
baseline binds ready-made tuples. Rounds alternate (baseline, sink, ...) and
the best round of each counts, so a noisy neighbour hurts both alike.

Uses MILLPOND_TEST_CASSANDRA=host:port if set, else starts the test harness's
Cassandra. ``--quick`` writes 20,000 rows instead of 200,000. The last line is
JSON with ``sink_rows_per_s``, ``baseline_driver_rows_per_s`` and ``ratio``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from millpond.connector import ConnectorContext  # noqa: E402
from millpond.connectors.cassandra import CassandraSink  # noqa: E402
from millpond.records import Record  # noqa: E402

KEYSPACE = "bench_millpond"
TOPIC = "bench"
BATCH = 20_000  # the runtime's max_poll_records
BASE_TS = 1_700_000_000_000


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
    for table in ("via_sink", "via_driver"):
        session.execute(
            f"CREATE TABLE IF NOT EXISTS {KEYSPACE}.{table} "
            "(id bigint PRIMARY KEY, name text, amount double, qty int, active boolean)"
        )


def truncate(session: Any) -> None:
    for table in ("via_sink", "via_driver"):
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
    began = time.perf_counter()
    results = execute_concurrent_with_args(session, prepared, rows, concurrency=concurrency, raise_on_first_error=True)
    elapsed = time.perf_counter() - began
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
        try:
            began = time.perf_counter()
            for start in range(0, len(records), BATCH):
                await sink.write(records[start : start + BATCH])
            await sink.flush({})
            elapsed = time.perf_counter() - began
        finally:
            await sink.stop()
        return len(records) / elapsed

    return asyncio.run(go())


def count(session: Any, table: str) -> int:
    return int(session.execute(f"SELECT count(*) FROM {KEYSPACE}.{table}", timeout=120).one()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 rows instead of 200,000")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=128)
    args = parser.parse_args()
    n = args.rows or (20_000 if args.quick else 200_000)
    rounds = args.rounds or (1 if args.quick else 2)

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
        warm = records[: min(5_000, n)]
        run_baseline(session, warm, args.concurrency)  # warm up both paths and the server's JIT
        run_sink(host, port, warm, args.concurrency)
        best_sink = best_base = 0.0
        for round_no in range(rounds):
            truncate(session)
            base = run_baseline(session, records, args.concurrency)
            sink = run_sink(host, port, records, args.concurrency)
            best_base, best_sink = max(best_base, base), max(best_sink, sink)
            print(f"round {round_no + 1}: driver {base:,.0f} rows/s, sink {sink:,.0f} rows/s", flush=True)
        written = count(session, "via_sink"), count(session, "via_driver")
        if written != (n, n):
            raise SystemExit(f"row counts differ from {n}: sink {written[0]}, driver {written[1]}")
        session.execute(f"DROP KEYSPACE {KEYSPACE}", timeout=60)
    finally:
        cluster.shutdown()
        if server is not None:
            server.stop()
            server.cleanup()
    ratio = best_sink / best_base
    print(f"{n:,} rows, concurrency {args.concurrency}: sink {best_sink:,.0f} rows/s, "
          f"driver execute_concurrent_with_args {best_base:,.0f} rows/s, ratio {ratio:.2f} (target >= 0.7)")
    print(json.dumps({
        "rows": n,
        "concurrency": args.concurrency,
        "sink_rows_per_s": round(best_sink),
        "baseline_driver_rows_per_s": round(best_base),
        "ratio": round(ratio, 3),
    }))


if __name__ == "__main__":
    main()
