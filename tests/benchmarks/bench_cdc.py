"""Benchmark: Postgres change rows/s into the log, and log rows/s into Postgres.

    python tests/benchmarks/bench_cdc.py [--quick] [--changes N] [--txn-rows R] [--rounds N] [--compression C]

Uses ``MILLPOND_TEST_PG_DSN`` if set, else starts a throw-away server like
the test fixture. One table (bigint key, int, text, numeric, timestamptz)
gets N inserts in transactions of R rows, after two slots were created at
the same point:

* baseline: ``pg_logical_slot_get_binary_changes`` of the whole stream by
  one plain client call (the server decodes the WAL, the client only
  receives the bytes); also, for reference, the same call through a binary
  ``COPY`` (how the source reads: no Python object per row);
* CDC: the ``postgres-cdc`` source in the runtime (reads windows ahead
  through a temporary copy of the slot, renders inserts to JSON in C, one
  log transaction per batch with its LSN, the slot advanced behind the log)
  into a fresh embedded log whose topic is compressed with zstd (as in
  configs/postgres-cdc.yaml; ``--compression none`` for raw batches), timed
  from the tasks running until the source has committed every change
  (start-up is printed apart);
* the source alone (start/poll/commit, no log) and the sink alone (fed
  records directly), to show what the runtime adds;
* sink: a ``postgres`` sink pipeline reading that topic back from the log
  into an empty table (upserts + offsets per flush), timed until every row
  is flushed; baseline: a plain binary ``COPY`` of the same rows into an
  empty table.

The target table is checked against the source table. Last line: JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import asyncpg  # noqa: E402

from millpond.backends import open_backend  # noqa: E402
from millpond.connector import ConnectorContext  # noqa: E402
from millpond.connectors.postgres.sink import PostgresSink, PostgresSinkConfig  # noqa: E402
from millpond.connectors.postgres.source import PostgresSource, PostgresSourceConfig  # noqa: E402
from millpond.records import Record, TopicPartition  # noqa: E402
from millpond.config import PipelineConfig  # noqa: E402
from millpond.runtime import RuntimeOptions  # noqa: E402
from millpond.runtime.sink_task import SinkTask  # noqa: E402
from millpond.runtime.source_task import SourceTask  # noqa: E402
from millpond.runtime.worker import Worker, create_topics, preflight  # noqa: E402

TABLE = "bench_items"
TOPIC = f"bench.public.{TABLE}"
PUB = "millpond_bench_cdc"
SLOT = "millpond_bench_cdc"


def config(work: Path, dsn: str, source: bool, sink: bool, compression: str = "zstd") -> PipelineConfig:
    connectors: list[dict[str, Any]] = []
    if source:
        connectors.append({
            "name": "bench_cdc", "kind": "source", "type": "postgres-cdc", "topic": TOPIC,
            "config": {"dsn": dsn, "tables": [TABLE], "snapshot_mode": "never", "topic_prefix": "bench",
                       "slot": SLOT, "publication": PUB},
            "converter": {"key": "json", "value": "json"}, "guarantee": "exactly_once",
        })
    if sink:
        connectors.append({
            "name": "bench_sink", "kind": "sink", "type": "postgres", "topics": [TOPIC],
            "config": {"dsn": dsn, "table": f"{TABLE}_copy"},
            "converter": {"key": "json", "value": "json"}, "guarantee": "exactly_once",
        })
    return PipelineConfig.model_validate({
        "name": "bench-cdc",
        "log": {"embedded": {"dir": str(work / "log")}},
        "topics": [{"name": TOPIC, "partitions": 1, "config": {"compression.type": compression}}],
        "connectors": connectors,
    })


async def run_timed(cfg: PipelineConfig, done: Any) -> tuple[float, float]:
    """(start-up seconds, seconds from the tasks running until ``done``).

    Start-up (plugins, connections, slot checks) is a one-off and is reported
    apart, as the raw fetch's connection is: the ratio compares throughput.
    """
    preflight(cfg)
    backend = open_backend(cfg.log)
    await backend.open()
    try:
        await create_topics(cfg, backend)
        worker = Worker(cfg, backend, RuntimeOptions(install_signal_handlers=False))
        launched = time.perf_counter()
        run = asyncio.create_task(worker.run())
        start = None
        while True:
            await asyncio.sleep(0.001)
            if run.done():
                await run
                raise RuntimeError("the pipeline stopped early")
            if start is None and worker.tasks and all(t.running for t in worker.tasks):
                start = time.perf_counter()
            if start is not None and done(worker):
                break
        elapsed = time.perf_counter() - start
        worker.stop()
        await run
        return start - launched, elapsed
    finally:
        await backend.close()


def source_done(n: int) -> Any:
    def check(worker: Worker) -> bool:
        task = next(t for t in worker.tasks if isinstance(t, SourceTask))
        return task.records_out >= n
    return check


def sink_done(n: int) -> Any:
    def check(worker: Worker) -> bool:
        task = next(t for t in worker.tasks if isinstance(t, SinkTask))
        return task.records_in >= n and task.flushes > 0 and not task._unflushed  # noqa: SLF001
    return check


async def bench(dsn: str, changes: int, txn_rows: int, work: Path, compression: str) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    await conn.execute(f"DROP TABLE IF EXISTS {TABLE}, {TABLE}_copy, {TABLE}_copy2")
    await conn.execute(f"DROP PUBLICATION IF EXISTS {PUB}")
    for slot in (SLOT, "bench_raw", "bench_rawcopy", "bench_direct"):
        await conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", slot)
    await conn.execute(
        "CREATE TABLE IF NOT EXISTS millpond_sink_offsets (connector text, topic text, partition int, "
        "next_offset bigint, updated_at timestamptz DEFAULT now(), PRIMARY KEY (connector, topic, partition))"
    )
    # offsets of an earlier run would point the sink into this run's fresh log
    await conn.execute("DELETE FROM millpond_sink_offsets WHERE connector IN ('bench_sink', 'bench_direct')")
    ddl = "(id bigint PRIMARY KEY, qty int, name text, amount numeric(12,2), updated_at timestamptz)"
    await conn.execute(f"CREATE TABLE {TABLE} {ddl}")
    await conn.execute(f"CREATE TABLE {TABLE}_copy {ddl}")
    await conn.execute(f"CREATE TABLE {TABLE}_copy2 {ddl}")
    await conn.execute(f"CREATE PUBLICATION {PUB} FOR TABLE {TABLE}")
    await conn.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", SLOT)
    await conn.execute("SELECT pg_create_logical_replication_slot('bench_raw', 'pgoutput')")
    await conn.execute("SELECT pg_create_logical_replication_slot('bench_rawcopy', 'pgoutput')")
    await conn.execute("SELECT pg_create_logical_replication_slot('bench_direct', 'pgoutput')")
    t0 = time.perf_counter()
    for lo in range(0, changes, txn_rows):
        hi = min(changes, lo + txn_rows)
        await conn.execute(
            f"INSERT INTO {TABLE} SELECT g, g % 1000, 'item-' || g, (g % 100000) / 100.0, "
            f"'2024-01-01'::timestamptz + g * interval '1 second' FROM generate_series({lo + 1}, {hi}) g"
        )
    load_s = time.perf_counter() - t0
    wal = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
                              "FROM pg_replication_slots WHERE slot_name = 'bench_raw'")

    # baseline: one raw fetch of the same changes
    t0 = time.perf_counter()
    rows = await conn.fetch(
        "SELECT data FROM pg_logical_slot_get_binary_changes('bench_raw', NULL, NULL, "
        "'proto_version', '1', 'publication_names', $1)", PUB,
    )
    raw_s = time.perf_counter() - t0
    raw_changes = sum(1 for r in rows if r[0][:1] == b"I")
    del rows
    assert raw_changes == changes, (raw_changes, changes)

    # reference: the same fetch as a binary COPY, as the source reads
    received = 0

    async def count(chunk: bytes) -> None:
        nonlocal received
        received += len(chunk)

    t0 = time.perf_counter()
    await conn.copy_from_query(
        "SELECT lsn, data FROM pg_logical_slot_get_binary_changes('bench_rawcopy', NULL, NULL, "
        "'proto_version', '1', 'publication_names', $1)", PUB, output=count, format="binary",
    )
    raw_copy_s = time.perf_counter() - t0

    # the source alone (poll + commit, no log), to show what the runtime adds
    source = PostgresSource(
        PostgresSourceConfig(dsn=dsn, tables=[TABLE], snapshot_mode="never", slot="bench_direct",
                             publication=PUB, idle_sleep_s=0),
        ConnectorContext(name="bench_direct"),
    )
    t0 = time.perf_counter()
    await source.start(None)
    seen = 0
    while seen < changes:
        batch = await source.poll()
        if batch is not None:
            seen += len(batch.records) + sum(len(e) for e in batch.encoded)
            await source.commit(batch.offset)
    direct_s = time.perf_counter() - t0
    await source.stop()

    # CDC source -> embedded log, through the runtime
    cdc_start_s, cdc_s = await run_timed(config(work, dsn, source=True, sink=False, compression=compression), source_done(changes))

    # log -> postgres sink, through the runtime
    sink_start_s, sink_s = await run_timed(config(work, dsn, source=False, sink=True, compression=compression), sink_done(changes))
    copied = await conn.fetchval(
        f"SELECT count(*) FROM (SELECT * FROM {TABLE} EXCEPT SELECT * FROM {TABLE}_copy) d"
    )
    n_copy = await conn.fetchval(f"SELECT count(*) FROM {TABLE}_copy")
    if copied != 0 or n_copy != changes:
        raise RuntimeError(f"sink table differs from the source: {copied} rows differ, {n_copy} rows")

    # the sink alone, fed the rows as the JSON converter would hand them over
    data = await conn.fetch(f"SELECT * FROM {TABLE}")
    records = [tuple(r) for r in data]
    await conn.execute(f"TRUNCATE {TABLE}_copy")
    sink = PostgresSink(PostgresSinkConfig(dsn=dsn, table=f"{TABLE}_copy"), ConnectorContext(name="bench_direct"))
    await sink.start()
    t0 = time.perf_counter()
    for lo in range(0, changes, 10_000):
        batch_records = [
            Record(key={"id": r[0]}, topic=TOPIC, partition=0, offset=lo + i, value={
                "before": None, "op": "c", "source": {"table": TABLE}, "ts_ms": 0,
                "after": {"id": r[0], "qty": r[1], "name": r[2], "amount": str(r[3]), "updated_at": r[4].isoformat()},
            })
            for i, r in enumerate(records[lo:lo + 10_000])
        ]
        await sink.write(batch_records)
        await sink.flush({TopicPartition(TOPIC, 0): lo + len(batch_records)})
    sink_direct_s = time.perf_counter() - t0
    await sink.stop()

    # baseline: plain COPY of the same rows into an empty table
    t0 = time.perf_counter()
    await conn.copy_records_to_table(f"{TABLE}_copy2", records=records)
    copy_s = time.perf_counter() - t0
    await conn.execute(f"DROP PUBLICATION IF EXISTS {PUB}")
    for slot in (SLOT, "bench_raw", "bench_rawcopy", "bench_direct"):
        await conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", slot)
    await conn.execute("DELETE FROM millpond_sink_offsets WHERE connector IN ('bench_sink', 'bench_direct')")
    await conn.execute(f"DROP TABLE IF EXISTS {TABLE}, {TABLE}_copy, {TABLE}_copy2")
    await conn.close()
    return {
        "changes": changes, "txn_rows": txn_rows, "wal_bytes": wal, "load_s": load_s,
        "raw_s": raw_s, "raw_copy_s": raw_copy_s, "cdc_s": cdc_s, "sink_s": sink_s, "copy_s": copy_s,
        "direct_s": direct_s, "sink_direct_s": sink_direct_s,
        "cdc_start_s": cdc_start_s, "sink_start_s": sink_start_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 changes instead of 1,000,000")
    parser.add_argument("--changes", type=int)
    parser.add_argument("--txn-rows", type=int, default=1000, help="rows per source transaction")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the whole run and report the median time of each step (the machine is shared)")
    parser.add_argument("--compression", default="zstd", choices=("none", "gzip", "lz4", "zstd"),
                        help="the topic's compression.type (default zstd, as configs/postgres-cdc.yaml)")
    args = parser.parse_args()
    changes = args.changes or (100_000 if args.quick else 1_000_000)
    server = None
    dsn = os.environ.get("MILLPOND_TEST_PG_DSN")
    if not dsn:
        from tests.servers.postgres import start_postgres

        server = start_postgres()
        dsn = server.dsn
    try:
        runs = []
        for _ in range(max(1, args.rounds)):
            with tempfile.TemporaryDirectory(prefix="millpond-bench-cdc-") as tmp:
                runs.append(asyncio.run(bench(dsn, changes, args.txn_rows, Path(tmp), args.compression)))
        r = {k: statistics.median(run[k] for run in runs) for k in runs[0]}
    finally:
        if server is not None:
            server.stop()
    raw_rate = changes / r["raw_s"]
    cdc_rate = changes / r["cdc_s"]
    sink_rate = changes / r["sink_s"]
    copy_rate = changes / r["copy_s"]
    print(f"topic compression: {args.compression}")
    print(f"{changes:,} inserts in transactions of {args.txn_rows} rows ({r['wal_bytes'] / 1e6:.0f} MB of WAL, "
          f"loaded in {r['load_s']:.1f} s); median of {len(runs)} round(s)")
    print(f"baseline raw slot fetch: {r['raw_s']:8.3f} s {raw_rate:12,.0f} rows/s")
    print(f"  (the same fetch as a binary COPY: {changes / r['raw_copy_s']:,.0f} rows/s)")
    print(f"postgres-cdc -> log:     {r['cdc_s']:8.3f} s {cdc_rate:12,.0f} rows/s  "
          f"ratio {cdc_rate / raw_rate:.2f} (target >= 0.5); {cdc_rate * r['raw_copy_s'] / changes:.2f} "
          "of the binary COPY fetch")
    print(f"  (the source alone, poll + commit without the log: {changes / r['direct_s']:,.0f} rows/s; "
          f"pipeline start-up {r['cdc_start_s']:.3f} s, not timed)")
    print(f"baseline COPY:           {r['copy_s']:8.3f} s {copy_rate:12,.0f} rows/s")
    print(f"log -> postgres sink:    {r['sink_s']:8.3f} s {sink_rate:12,.0f} rows/s  "
          f"ratio {sink_rate / copy_rate:.2f} (target table verified equal)")
    print(f"  (the sink alone, fed records directly: {changes / r['sink_direct_s']:,.0f} rows/s)")
    print(json.dumps({
        "changes": changes,
        "txn_rows": args.txn_rows,
        "compression": args.compression,
        "rounds": len(runs),
        "cdc_rows_per_s": round(cdc_rate),
        "baseline_raw_fetch_rows_per_s": round(raw_rate),
        "cdc_ratio": round(cdc_rate / raw_rate, 3),
        "baseline_raw_copy_fetch_rows_per_s": round(changes / r["raw_copy_s"]),
        "sink_rows_per_s": round(sink_rate),
        "baseline_copy_rows_per_s": round(copy_rate),
        "sink_ratio": round(sink_rate / copy_rate, 3),
        "source_only_rows_per_s": round(changes / r["direct_s"]),
        "sink_only_rows_per_s": round(changes / r["sink_direct_s"]),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
