"""Benchmark: Postgres change rows/s into the log against the physical floor, and log rows/s into Postgres.

    python tests/benchmarks/bench_cdc.py [--quick] [--changes N] [--txn-rows R] [--rounds N] [--compression C]

Uses ``MILLPOND_TEST_PG_DSN`` if set, else starts a throw-away server like
the test fixture. One table (bigint key, int, text, numeric, timestamptz)
gets N inserts in transactions of R rows, after four slots were created at
the same point. Each reads the same stream once; the order of the four
changes every round (:func:`harness.rotate`), so no path always runs first:

* server decode: ``SELECT count(*) FROM pg_logical_slot_get_binary_changes(..)``
  — the server decodes the WAL and sends one number; no client can read the
  stream faster than this (``baseline_server_decode_rows_per_s``);
* raw fetch, the floor: the same call through a binary ``COPY`` into a
  callback that only counts bytes — decoding plus the transfer, nothing
  made of it (``baseline_raw_fetch_rows_per_s``; also under its former name
  ``baseline_raw_copy_fetch_rows_per_s``);
* CDC: the ``postgres-cdc`` source in the runtime into a fresh embedded log
  whose topic is compressed with zstd (as configs/postgres-cdc.yaml;
  ``--compression none`` for raw batches), timed from the worker's launch —
  the source's start included — until it has stopped, which includes the
  source's last slot advance (checked: the slot stands at the stream's end);
* the source alone (start, poll, commit, stop; no log), to show what the
  runtime adds;
* sink: a ``postgres`` sink pipeline reading that topic back into an empty
  table, timed until the group's committed offsets cover every row (with the
  JSON converters and no transform, the sink reads the log's values in columns,
  ``Sink.write_encoded``; ``sink_cpu_s`` is the process's CPU meanwhile, the
  steadier figure on a shared machine); baseline:
  a plain binary ``COPY`` of the same rows into an empty table; the sink alone
  fed records directly, in flushes of 10,000 (``sink_only_ratio``: what the
  sink costs without the runtime's read and JSON decoding of each record).

The target table is checked against the source table. Figures are medians
over rounds. Last line: JSON.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import asyncpg  # noqa: E402

from millpond.config import PipelineConfig  # noqa: E402
from millpond.connector import ConnectorContext  # noqa: E402
from millpond.connectors.postgres.sink import PostgresSink, PostgresSinkConfig  # noqa: E402
from millpond.connectors.postgres.source import PostgresSource, PostgresSourceConfig  # noqa: E402
from millpond.records import Record, TopicPartition  # noqa: E402
from tests.benchmarks import harness  # noqa: E402

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


SLOTS = {"decode": "bench_decode", "fetch": "bench_fetch", "cdc": SLOT, "direct": "bench_direct"}


async def _drop_slots(conn: asyncpg.Connection) -> None:
    for slot in SLOTS.values():
        await conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1", slot)


async def server_decode(conn: asyncpg.Connection) -> int:
    """Changes decoded by the server alone: one row (a count) comes back."""
    return int(await conn.fetchval(
        "SELECT count(*) FILTER (WHERE substr(data, 1, 1) = 'I'::bytea) FROM pg_logical_slot_get_binary_changes("
        "$1, NULL, NULL, 'proto_version', '1', 'publication_names', $2)", SLOTS["decode"], PUB,
    ))


async def raw_fetch(conn: asyncpg.Connection) -> int:
    """The stream as the source reads it (binary COPY of ``lsn, data``), only counted: bytes received."""
    received = 0

    async def count(chunk: bytes) -> None:
        nonlocal received
        received += len(chunk)

    await conn.copy_from_query(
        "SELECT lsn, data FROM pg_logical_slot_get_binary_changes($1, NULL, NULL, "
        "'proto_version', '1', 'publication_names', $2)", SLOTS["fetch"], PUB, output=count, format="binary",
    )
    return received


async def source_alone(dsn: str, changes: int) -> int:
    """start, poll + commit until every change is out, stop (which advances the slot to the end)."""
    source = PostgresSource(
        PostgresSourceConfig(dsn=dsn, tables=[TABLE], snapshot_mode="never", slot=SLOTS["direct"],
                             publication=PUB, idle_sleep_s=0),
        ConnectorContext(name="bench_direct"),
    )
    await source.start(None)
    seen = 0
    while seen < changes:
        batch = await source.poll()
        if batch is not None:
            seen += len(batch.records) + sum(len(e) for e in batch.encoded)
            await source.commit(batch.offset)
    await source.stop()
    return seen


async def bench(dsn: str, changes: int, txn_rows: int, work: Path, compression: str, round_no: int) -> dict[str, Any]:
    conn = await asyncpg.connect(dsn)
    await conn.execute(f"DROP TABLE IF EXISTS {TABLE}, {TABLE}_copy, {TABLE}_copy2")
    await conn.execute(f"DROP PUBLICATION IF EXISTS {PUB}")
    await _drop_slots(conn)
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
    for slot in SLOTS.values():
        await conn.execute("SELECT pg_create_logical_replication_slot($1, 'pgoutput')", slot)
    t0 = time.perf_counter()
    for lo in range(0, changes, txn_rows):
        hi = min(changes, lo + txn_rows)
        await conn.execute(
            f"INSERT INTO {TABLE} SELECT g, g % 1000, 'item-' || g, (g % 100000) / 100.0, "
            f"'2024-01-01'::timestamptz + g * interval '1 second' FROM generate_series({lo + 1}, {hi}) g"
        )
    load_s = time.perf_counter() - t0
    end_lsn = await conn.fetchval("SELECT pg_current_wal_lsn()")
    wal = await conn.fetchval("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint "
                              "FROM pg_replication_slots WHERE slot_name = $1", SLOTS["fetch"])

    async def run_decode() -> float:
        seconds, decoded = await harness.timed_async(server_decode(conn))
        assert decoded == changes, (decoded, changes)
        return seconds

    async def run_fetch() -> float:
        seconds, received = await harness.timed_async(raw_fetch(conn))
        assert received > changes * 40, received  # the whole stream came (an insert is > 40 bytes)
        return seconds

    async def run_cdc() -> float:
        times = await harness.run_pipeline(config(work, dsn, source=True, sink=False, compression=compression),
                                           harness.source_emitted(changes))
        figures["cdc_start_s"] = times.startup_s
        return times.stopped_s

    async def run_direct() -> float:
        seconds, seen = await harness.timed_async(source_alone(dsn, changes))
        assert seen == changes, (seen, changes)
        return seconds

    figures: dict[str, Any] = {}
    steps = {"raw_s": run_fetch, "decode_s": run_decode, "cdc_s": run_cdc, "direct_s": run_direct}
    for key in harness.rotate(list(steps), round_no):
        figures[key] = await steps[key]()
    # the CDC time included the source's last slot advance: the slot must stand at the stream's end
    confirmed = await conn.fetchval("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = $1", SLOT)
    if confirmed < end_lsn:
        raise RuntimeError(f"the CDC slot stopped at {confirmed}, before the stream's end {end_lsn}")

    # log -> postgres sink, through the runtime
    sink_times = await harness.run_pipeline(config(work, dsn, source=False, sink=True, compression=compression),
                                            harness.sink_committed(changes))
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
    # built before the clock starts: the records as the runtime hands them over, converted already
    batches = [
        [
            Record(key={"id": r[0]}, topic=TOPIC, partition=0, offset=lo + i, value={
                "before": None, "op": "c", "source": {"table": TABLE}, "ts_ms": 0,
                "after": {"id": r[0], "qty": r[1], "name": r[2], "amount": str(r[3]), "updated_at": r[4].isoformat()},
            })
            for i, r in enumerate(records[lo:lo + 10_000])
        ]
        for lo in range(0, changes, 10_000)
    ]
    t0 = time.perf_counter()
    for batch_records in batches:
        await sink.write(batch_records)
        await sink.flush({TopicPartition(TOPIC, 0): (batch_records[-1].offset or 0) + 1})
    sink_direct_s = time.perf_counter() - t0
    del batches
    await sink.stop()

    # baseline: plain COPY of the same rows into an empty table
    copy_s, _ = await harness.timed_async(conn.copy_records_to_table(f"{TABLE}_copy2", records=records))
    await conn.execute(f"DROP PUBLICATION IF EXISTS {PUB}")
    await _drop_slots(conn)
    await conn.execute("DELETE FROM millpond_sink_offsets WHERE connector IN ('bench_sink', 'bench_direct')")
    await conn.execute(f"DROP TABLE IF EXISTS {TABLE}, {TABLE}_copy, {TABLE}_copy2")
    await conn.close()
    return {
        **figures, "wal_bytes": wal, "load_s": load_s, "sink_s": sink_times.done_s,
        "sink_start_s": sink_times.startup_s, "sink_cpu_s": sink_times.cpu_s, "copy_s": copy_s,
        "sink_direct_s": sink_direct_s,
    }


def main() -> int:
    parser = harness.parser(__doc__ or "", quick="100,000 changes instead of 1,000,000")
    parser.add_argument("--changes", type=int)
    parser.add_argument("--txn-rows", type=int, default=1000, help="rows per source transaction")
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
        for round_no in range(max(1, args.rounds)):
            with tempfile.TemporaryDirectory(prefix="millpond-bench-cdc-") as tmp:
                runs.append(asyncio.run(bench(dsn, changes, args.txn_rows, Path(tmp), args.compression, round_no)))
        r = harness.median(runs)
    finally:
        if server is not None:
            server.stop()
    decode_rate = changes / r["decode_s"]
    raw_rate = changes / r["raw_s"]
    cdc_rate = changes / r["cdc_s"]
    sink_rate = changes / r["sink_s"]
    copy_rate = changes / r["copy_s"]
    print(f"topic compression: {args.compression}")
    print(f"{changes:,} inserts in transactions of {args.txn_rows} rows ({r['wal_bytes'] / 1e6:.0f} MB of WAL, "
          f"loaded in {r['load_s']:.1f} s); median of {len(runs)} round(s), order rotated per round")
    print(harness.rate_line("server decode alone", changes, r["decode_s"]))
    print(harness.rate_line("raw fetch (binary COPY; floor)", changes, r["raw_s"]))
    print(harness.rate_line("postgres-cdc -> log", changes, r["cdc_s"],
                            note=f"(start {r['cdc_start_s']:.3f} s and last slot advance included)"))
    print(harness.rate_line("source alone, no log", changes, r["direct_s"], note="(start and stop included)"))
    print(harness.ratio_line("cdc / raw fetch (floor)", cdc_rate, raw_rate, target=0.5))
    print(harness.ratio_line("cdc / server decode", cdc_rate, decode_rate))
    print(harness.rate_line("baseline COPY into a table", changes, r["copy_s"]))
    print(harness.rate_line("log -> postgres sink", changes, r["sink_s"],
                            note=f"(target table verified equal; start {r['sink_start_s']:.3f} s, "
                                 f"{r['sink_cpu_s']:.3f} s of this process's CPU)"))
    print(harness.rate_line("sink alone, fed records", changes, r["sink_direct_s"]))
    print(harness.ratio_line("sink / COPY", sink_rate, copy_rate, target=0.5))
    print(harness.ratio_line("sink alone / COPY (no runtime, no converter)", changes / r["sink_direct_s"], copy_rate))
    harness.emit({
        "changes": changes,
        "txn_rows": args.txn_rows,
        "compression": args.compression,
        "rounds": len(runs),
        "cdc_rows_per_s": round(cdc_rate),
        "baseline_raw_fetch_rows_per_s": round(raw_rate),
        "baseline_server_decode_rows_per_s": round(decode_rate),
        "cdc_ratio": round(cdc_rate / raw_rate, 3),
        "cdc_vs_server_decode_ratio": round(cdc_rate / decode_rate, 3),
        "baseline_raw_copy_fetch_rows_per_s": round(raw_rate),
        "cdc_start_s": round(r["cdc_start_s"], 3),
        "sink_rows_per_s": round(sink_rate),
        "baseline_copy_rows_per_s": round(copy_rate),
        "sink_ratio": round(sink_rate / copy_rate, 3),
        "sink_start_s": round(r["sink_start_s"], 3),
        "sink_cpu_s": round(r["sink_cpu_s"], 3),
        "source_only_rows_per_s": round(changes / r["direct_s"]),
        "sink_only_rows_per_s": round(changes / r["sink_direct_s"]),
        "sink_only_ratio": round(changes / r["sink_direct_s"] / copy_rate, 3),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
