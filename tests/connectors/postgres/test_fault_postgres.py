"""configs/postgres-cdc.yaml as users run it, and SIGKILLed under write load.

The shipped pipeline (postgres-cdc source -> embedded log -> postgres sink)
runs as a separate ``millpond run`` process against the real Postgres of the
test harness, in a scratch directory. Source tables live in their own schema,
the replica tables in another (created ``LIKE`` the source ones).

``test_pipeline_config_runs`` runs it once to the end. The fault test keeps
two writer connections busy (inserts, updates with and without the TOASTed
``notes`` column, key changes, deletes, the odd truncate of ``orders``) while
the worker is killed with SIGKILL at random moments, at least 20 times, and
started again; a last run drains everything (``--until-idle``). Then the
replica tables must equal the source tables row for row, and the log must hold
each streamed source transaction once: no change (txid, LSN, op, key) twice,
and every txid in the log one that a writer committed.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.faults import kill_repeatedly, millpond_command

pytestmark = [pytest.mark.postgres]

REPO = Path(__file__).resolve().parents[3]
#: at least 20 by default; MILLPOND_FAULT_KILLS changes it (e.g. to debug with fewer)
KILLS = int(os.environ.get("MILLPOND_FAULT_KILLS", "20"))


async def setup_schemas(dsn: str, schema: str, replica: str, customers: int) -> None:
    conn = await asyncpg.connect(dsn)
    await conn.execute(f"CREATE SCHEMA {schema}")
    await conn.execute(
        f"CREATE TABLE {schema}.customers (id bigint PRIMARY KEY, name text, email text, "
        "balance numeric(12,2), tags text[], notes text, updated_at timestamptz)"
    )
    await conn.execute(f"ALTER TABLE {schema}.customers ALTER notes SET STORAGE EXTERNAL")
    await conn.execute(
        f"CREATE TABLE {schema}.orders (id bigint PRIMARY KEY, customer_id bigint, total numeric(12,2), "
        "items jsonb, created_at timestamptz)"
    )
    await conn.execute(
        f"INSERT INTO {schema}.customers SELECT g, 'seed-' || g, NULL, g / 100.0, ARRAY['s'], "
        f"repeat('n', 3000), now() FROM generate_series(1, {customers}) g"
    )
    await conn.execute(f"CREATE SCHEMA {replica}")
    for table in ("customers", "orders"):
        await conn.execute(f"CREATE TABLE {replica}.{table} (LIKE {schema}.{table} INCLUDING ALL)")
    await conn.close()


class Writer(threading.Thread):
    """Random transactions on the source tables; remembers each committed txid."""

    def __init__(self, dsn: str, schema: str, seed: int, rate: float) -> None:
        super().__init__(daemon=True)
        self.dsn, self.schema, self.rng, self.rate = dsn, schema, random.Random(seed), rate
        self.stop_flag = threading.Event()
        self.txids: set[int] = set()
        self.counts: Counter[str] = Counter()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    async def _run(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        rng, s = self.rng, self.schema
        next_id = 1_000_000 + rng.randrange(1000) * 10_000
        while not self.stop_flag.is_set():
            async with conn.transaction():
                for _ in range(rng.randint(1, 6)):
                    roll = rng.random()
                    cid = rng.randint(1, 3000)
                    if roll < 0.25:
                        next_id += 1
                        notes = "N" * rng.choice([0, 10, 4000])
                        await conn.execute(
                            f"INSERT INTO {s}.customers VALUES ($1, $2, $3, $4, $5, $6, now()) "
                            "ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name",
                            next_id, f"c{next_id}", f"c{next_id}@x.test", f"{rng.randint(0, 10**6) / 100:.2f}",
                            rng.sample(["a", "b", "c"], rng.randint(0, 3)), notes,
                        )
                        self.counts["insert"] += 1
                    elif roll < 0.55:  # leaves the TOASTed notes alone: 'u' in the WAL
                        await conn.execute(
                            f"UPDATE {s}.customers SET balance = balance + 1, updated_at = now() WHERE id = $1", cid
                        )
                        self.counts["update"] += 1
                    elif roll < 0.65:
                        await conn.execute(f"UPDATE {s}.customers SET notes = $2 WHERE id = $1", cid,
                                           f"rewritten {rng.random()} " + "r" * 3000)
                        self.counts["update_toast"] += 1
                    elif roll < 0.7:
                        next_id += 1
                        await conn.execute(f"UPDATE {s}.customers SET id = $2 WHERE id = $1", cid, next_id)
                        self.counts["key_change"] += 1
                    elif roll < 0.8:
                        await conn.execute(f"DELETE FROM {s}.customers WHERE id = $1", cid)
                        self.counts["delete"] += 1
                    elif roll < 0.995:
                        next_id += 1
                        await conn.execute(
                            f"INSERT INTO {s}.orders VALUES ($1, $2, $3, $4, now())",
                            next_id, cid, f"{rng.randint(1, 10**5) / 100:.2f}",
                            json.dumps({"sku": [rng.randint(1, 9) for _ in range(rng.randint(1, 4))]}),
                        )
                        self.counts["order"] += 1
                    else:
                        await conn.execute(f"TRUNCATE {s}.orders")
                        self.counts["truncate"] += 1
                txid = await conn.fetchval("SELECT txid_current()")
            self.txids.add(int(txid) & 0xFFFFFFFF)
            await asyncio.sleep(rng.uniform(0, 2 / self.rate))
        await conn.close()


async def tables_differ(dsn: str, schema: str, replica: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    out = {}
    for t in ("customers", "orders"):
        out[t] = await conn.fetchval(
            f"SELECT count(*) FROM ((SELECT to_jsonb(a) FROM {schema}.{t} a EXCEPT ALL SELECT to_jsonb(b) FROM {replica}.{t} b) "
            f"UNION ALL (SELECT to_jsonb(b) FROM {replica}.{t} b EXCEPT ALL SELECT to_jsonb(a) FROM {schema}.{t} a)) d"
        )
        out[f"{t}_rows"] = await conn.fetchval(f"SELECT count(*) FROM {schema}.{t}")
        if out[t]:
            sample = await conn.fetch(
                f"SELECT a.id, b.id AS replica_id, (SELECT array_agg(k) FROM jsonb_each(to_jsonb(a)) e(k, v) "
                f"WHERE v IS DISTINCT FROM to_jsonb(b) -> k) AS columns "
                f"FROM {schema}.{t} a FULL JOIN {replica}.{t} b ON a.id = b.id "
                f"WHERE to_jsonb(a) IS DISTINCT FROM to_jsonb(b) LIMIT 5"
            )
            out[f"{t}_sample"] = [dict(r) for r in sample]  # type: ignore[assignment]
    await conn.close()
    return out


async def drop(dsn: str, schema: str, replica: str) -> None:
    if os.environ.get("MILLPOND_FAULT_KEEP"):
        return  # left for a look (MILLPOND_FAULT_KEEP=1)
    conn = await asyncpg.connect(dsn)
    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    await conn.execute(f"DROP SCHEMA IF EXISTS {replica} CASCADE")
    await conn.execute(
        "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = 'millpond_shop_cdc'"
    )
    await conn.execute("DROP PUBLICATION IF EXISTS millpond_shop_cdc")
    await conn.execute("DELETE FROM millpond_sink_offsets WHERE connector = 'shop-replica'")
    await conn.close()


def scratch(tmp_path: Path, dsn: str, schema: str, replica: str, chunk: int) -> tuple[list[str], dict[str, str]]:
    (tmp_path / "configs").mkdir()
    shutil.copy(REPO / "configs" / "postgres-cdc.yaml", tmp_path / "configs" / "postgres-cdc.yaml")
    env = {**os.environ, "PG_DSN": dsn, "PG_SCHEMA": schema, "PG_TARGET_SCHEMA": replica,
           "PG_SNAPSHOT_CHUNK_ROWS": str(chunk)}
    return millpond_command() + ["run", "configs/postgres-cdc.yaml"], env


def log_changes(tmp_path: Path, env: dict[str, str]) -> list[dict[str, Any]]:
    out = subprocess.run(
        millpond_command() + ["consume", "shop.customers", "shop.orders", "--log", "data/postgres-cdc",
                              "--from-beginning", "--format", "json"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def test_pipeline_config_runs(tmp_path: Path, pg_dsn: str) -> None:
    schema, replica = f"src_{os.getpid()}_a", f"dst_{os.getpid()}_a"
    asyncio.run(setup_schemas(pg_dsn, schema, replica, customers=500))
    command, env = scratch(tmp_path, pg_dsn, schema, replica, chunk=200)
    try:
        conn_writes = Writer(pg_dsn, schema, seed=7, rate=200)
        conn_writes.start()
        time.sleep(1.0)
        conn_writes.stop_flag.set()
        conn_writes.join()
        assert conn_writes.error is None, conn_writes.error
        final = subprocess.run(command + ["--until-idle"], cwd=tmp_path, env=env, capture_output=True,
                               text=True, timeout=300)
        assert final.returncode == 0, final.stderr[-3000:]
        diff = asyncio.run(tables_differ(pg_dsn, schema, replica))
        assert diff["customers"] == 0 and diff["orders"] == 0, diff
        assert diff["customers_rows"] > 400
        assert "millpond-test-pw" not in final.stderr + final.stdout  # the DSN's password is never logged
    finally:
        asyncio.run(drop(pg_dsn, schema, replica))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_postgres_pipeline_survives_sigkill(tmp_path: Path, pg_dsn: str) -> None:
    schema, replica = f"src_{os.getpid()}_f", f"dst_{os.getpid()}_f"
    asyncio.run(setup_schemas(pg_dsn, schema, replica, customers=3000))
    command, env = scratch(tmp_path, pg_dsn, schema, replica, chunk=500)
    seed = int(os.environ.get("MILLPOND_FAULT_SEED", random.randrange(1 << 30)))
    print(f"seed {seed}")
    rng = random.Random(seed)
    writers = [Writer(pg_dsn, schema, seed + i, rate=60) for i in range(2)]
    try:
        with open(tmp_path / "worker.log", "wb") as logfile:
            for w in writers:
                w.start()
            try:
                kills = kill_repeatedly(
                    command, cwd=tmp_path, env=env, logfile=logfile, kills=KILLS, rng=rng,
                    alive_s=(0.5, 7.0),  # the runtime flushes sinks every few seconds
                )
            finally:
                for w in writers:
                    w.stop_flag.set()
                for w in writers:
                    w.join()
            final = subprocess.run(command + ["--until-idle"], cwd=tmp_path, env=env, stdout=logfile,
                                   stderr=subprocess.STDOUT, timeout=300)
        worker_log = (tmp_path / "worker.log").read_text(errors="replace")
        assert final.returncode == 0, worker_log[-3000:]
        for w in writers:
            assert w.error is None, w.error
        counts = sum((w.counts for w in writers), Counter())
        assert kills >= KILLS and counts["delete"] > 0 and counts["key_change"] > 0, counts

        diff = asyncio.run(tables_differ(pg_dsn, schema, replica))
        assert diff["customers"] == 0 and diff["orders"] == 0, diff

        changes = log_changes(tmp_path, env)
        streamed = [c for c in changes if c["value"] is not None and c["value"]["op"] != "r"]
        seen = Counter(
            (c["value"]["source"]["txid"], c["value"]["source"]["lsn"], c["value"]["op"], json.dumps(c["key"]))
            for c in streamed
        )
        twice = [k for k, n in seen.items() if n > 1]
        assert not twice, f"changes appended to the log more than once: {twice[:5]}"
        committed = set().union(*(w.txids for w in writers))
        in_log = {c["value"]["source"]["txid"] for c in streamed}
        assert in_log <= committed, f"txids in the log that no writer committed: {sorted(in_log - committed)[:5]}"
        assert len(in_log) > len(committed) // 2, (len(in_log), len(committed))
        assert "millpond-test-pw" not in worker_log
        print(f"{kills} kills, {len(committed)} writer transactions ({dict(counts)}), "
              f"{len(in_log)} streamed into the log, {len(changes)} log records, {diff}")
    finally:
        asyncio.run(drop(pg_dsn, schema, replica))
